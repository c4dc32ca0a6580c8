"""The OpenAI routes in the worker (handlers/protocols/openai.py), in-process: the request
frames TorchServe writes for /predictions/<model>/<version>/v1/..., the replies read back as
the frontend reads them. Answers are checked against the HF route of the same worker."""

from __future__ import annotations

import base64
import json
import struct

import pytest

CHAT = "v1/chat/completions"
MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def chat(chat_static):
    return chat_static


@pytest.fixture(scope="module")
def embedder(embed_static):
    return embed_static


def one(worker, body, path):
    [answer] = worker.predict([body], path=path)
    return answer


def events(answer) -> list:
    """The SSE events of a streamed answer (chunks sent, then the last reply), [DONE] as a str."""
    text = "".join(answer.chunks) + (answer.body if isinstance(answer.body, str) else json.dumps(answer.body))
    assert text.endswith("\n\n") and all(part.startswith("data: ") for part in text.split("\n\n")[:-1]), text
    return [part[6:] if part[6:] == "[DONE]" else json.loads(part[6:]) for part in text.split("\n\n")[:-1]]


def test_greedy_chat_is_the_hf_routes_text(chat):
    hf = one(chat, {"messages": MESSAGES, "parameters": {"max_new_tokens": 24, "do_sample": False}}, None).body
    answer = one(chat, {"model": "smollm2-chat", "messages": MESSAGES, "max_tokens": 24, "temperature": 0}, CHAT)
    assert answer.status == 200
    body = answer.body
    assert body["object"] == "chat.completion" and body["model"] == "smollm2-chat" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": hf["generated_text"]}
    assert choice["finish_reason"] == {"eos": "stop", "length": "length"}[hf["details"]["finish_reason"]]
    assert body["usage"] == {"prompt_tokens": hf["details"]["prompt_tokens"],
                             "completion_tokens": hf["details"]["generated_tokens"],
                             "total_tokens": hf["details"]["prompt_tokens"] + hf["details"]["generated_tokens"]}


def test_content_parts_and_the_developer_role_read_as_the_plain_chat(chat):
    plain = one(chat, {"model": "smollm2-chat", "messages": MESSAGES, "max_tokens": 12, "temperature": 0}, CHAT).body
    parts = [{"role": "developer", "content": [{"type": "text", "text": MESSAGES[0]["content"]}]},
             {"role": "user", "content": [{"type": "text", "text": MESSAGES[1]["content"]}]}]
    same = one(chat, {"model": "smollm2-chat", "messages": parts, "max_tokens": 12, "temperature": 0}, CHAT).body
    assert same["choices"] == plain["choices"]


def test_a_streamed_chat_is_sse_deltas_that_concatenate_to_the_answer(chat):
    whole = one(chat, {"model": "smollm2-chat", "messages": MESSAGES, "max_tokens": 24, "temperature": 0}, CHAT).body
    answer = one(chat, {"model": "smollm2-chat", "messages": MESSAGES, "max_tokens": 24, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}}, CHAT)
    assert answer.status == 200 and answer.chunks, "nothing was streamed before the end"
    *chunks, done = events(answer)
    assert done == "[DONE]"
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *deltas, usage = chunks
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in deltas)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in deltas)
    assert text == whole["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in deltas][-1] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in deltas[:-1])


def test_completions_end_before_the_stop_string_and_answer_each_prompt(chat):
    prompts = ["The capital of France is", "One, two, three,"]
    hf = one(chat, {"inputs": prompts, "parameters": {"max_new_tokens": 16, "do_sample": False, "stop": ["."]}}, None).body
    body = one(chat, {"model": "smollm2-chat", "prompt": prompts, "max_tokens": 16, "temperature": 0, "stop": "."},
               "v1/completions").body
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["text"] for c in body["choices"]] == [a["generated_text"] for a in hf]
    assert [c["finish_reason"] for c in body["choices"]] == [
        {"stop": "stop", "eos": "stop", "length": "length"}[a["details"]["finish_reason"]] for a in hf]
    assert "stop" in [a["details"]["finish_reason"] for a in hf]  # the stop string was met
    assert all("." not in c["text"] for c in body["choices"])


def test_a_streamed_completion_is_text_chunks(chat):
    request = {"model": "smollm2-chat", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    whole = one(chat, request, "v1/completions").body
    *chunks, done = events(one(chat, {**request, "stream": True}, "v1/completions"))
    assert done == "[DONE]" and all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]


def test_a_seed_gives_the_same_sample_on_both_routes(chat):
    hf = one(chat, {"messages": MESSAGES, "parameters": {"max_new_tokens": 16, "temperature": 0.9, "top_p": 0.95, "seed": 7}},
             None).body
    body = one(chat, {"model": "smollm2-chat", "messages": MESSAGES, "max_tokens": 16, "temperature": 0.9, "top_p": 0.95,
                      "seed": 7}, CHAT).body
    assert body["choices"][0]["message"]["content"] == hf["generated_text"]


def test_embeddings_as_floats_and_base64_are_the_hf_routes_vectors(embedder):
    texts = ["TorchServe serves transformers models.", "A sentence to embed."]
    hf = one(embedder, {"inputs": texts}, None).body
    floats = one(embedder, {"model": "minilm-embed", "input": texts, "encoding_format": "float"}, "v1/embeddings").body
    packed = one(embedder, {"model": "minilm-embed", "input": texts, "encoding_format": "base64"}, "v1/embeddings").body
    assert floats["object"] == "list" and floats["model"] == "minilm-embed"
    assert [d["index"] for d in floats["data"]] == [0, 1] and all(d["object"] == "embedding" for d in floats["data"])
    assert [d["embedding"] for d in floats["data"]] == hf["embeddings"]
    assert floats["usage"] == {"prompt_tokens": hf["input_tokens"], "total_tokens": hf["input_tokens"]}
    for d, vector in zip(packed["data"], hf["embeddings"]):
        raw = base64.b64decode(d["embedding"])
        assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(vector, abs=1e-7)
    single = one(embedder, {"model": "minilm-embed", "input": texts[0], "dimensions": 384}, "v1/embeddings").body
    assert single["data"][0]["embedding"] == pytest.approx(hf["embeddings"][0], abs=1e-5)  # alone: no padding


def test_the_model_list_names_this_model(embedder):
    body = one(embedder, b"", "v1/models").body
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["minilm-embed"]


REFUSED = [
    # (route, body, status, param, words in the message)
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "n": 2}, 400, "n", "n=1"),
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "logprobs": True}, 400, "logprobs", "log probabilities"),
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "tools": [{"type": "function"}]}, 400, "tools", "tool"),
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "colour": "red"}, 400, "colour", "unknown parameter"),
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "temperature": 3}, 400, "temperature", "0 to 2"),
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "top_p": 0}, 400, "top_p", "top_p"),
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "max_tokens": 100000}, 400, "max_tokens", "above this model's limit"),
    (CHAT, {"model": "smollm2-chat", "messages": MESSAGES, "stream_options": {"include_usage": True}}, 400,
     "stream_options", "only allowed when 'stream' is true"),
    (CHAT, {"model": "smollm2-chat", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages", "only text parts"),
    (CHAT, {"model": "smollm2-chat", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages", "role"),
    (CHAT, {"model": "smollm2-chat"}, 400, "messages", "'messages' is required"),
    (CHAT, {"model": "gpt-4o", "messages": MESSAGES}, 404, None, "does not exist"),
    (CHAT, "just text", 400, None, "JSON object"),
    (CHAT, b"{not json", 400, None, 'expected e.g. {"model": "<name>", "messages"'),
    ("v1/completions", {"model": "smollm2-chat", "prompt": [1, 2, 3]}, 400, "prompt", "token ids"),
    ("v1/completions", {"model": "smollm2-chat", "prompt": "a", "echo": True}, 400, "echo", "echo"),
    ("v1/completions", {"model": "smollm2-chat", "prompt": "word " * 3000}, 413, None, "the prompt is 3001 tokens"),
    ("v1/completions", {"model": "smollm2-chat", "prompt": ["a", 7]}, 400, "prompt", "prompt[1] must be a string"),
    ("v1/embeddings", {"model": "smollm2-chat", "input": "a"}, 404, None, "task is generation"),
    ("v1/responses", {"model": "smollm2-chat", "input": "a"}, 404, None, "no such path"),
]


@pytest.mark.parametrize("route, body, status, param, words", REFUSED, ids=[f"{r[0]}-{r[3] or r[2]}" for r in REFUSED])
def test_refusals_are_openai_error_bodies(chat, route, body, status, param, words):
    answer = one(chat, body, route)
    assert answer.status == status, answer.body
    assert set(answer.body) == {"error"} and set(answer.body["error"]) == {"message", "type", "param", "code"}
    error = answer.body["error"]
    assert words in error["message"] and error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert answer.phrase.isascii()


def test_neutral_values_of_unsupported_parameters_are_accepted(chat):
    body = {"model": "smollm2-chat", "messages": MESSAGES, "max_completion_tokens": 4, "temperature": 0, "n": 1,
            "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "response_format": {"type": "text"},
            "user": "someone", "tool_choice": "none", "stream": False}
    answer = one(chat, body, CHAT)
    assert answer.status == 200 and answer.body["usage"]["completion_tokens"] <= 4


def test_embedding_refusals(embedder):
    for body, param, words in [
        ({"model": "minilm-embed", "input": "a", "dimensions": 128}, "dimensions", "384 dimensions"),
        ({"model": "minilm-embed", "input": [[101, 102]]}, "input", "token ids"),
        ({"model": "minilm-embed", "input": "a", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"model": "minilm-embed", "input": []}, "input", "non-empty list"),
        ({"model": "minilm-embed", "input": "a", "messages": []}, "messages", "unknown parameter"),
    ]:
        answer = one(embedder, body, "v1/embeddings")
        assert answer.status == 400 and answer.body["error"]["param"] == param, answer.body
        assert words in answer.body["error"]["message"], answer.body
    assert one(embedder, {"model": "minilm-embed", "messages": MESSAGES}, CHAT).status == 404


def test_a_bad_request_beside_good_ones_leaves_them_answered(chat):
    good = {"model": "smollm2-chat", "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    answers = chat.predict([good, {**good, "n": 3}, {"inputs": "Hello", "parameters": {"max_new_tokens": 4}}], path=CHAT)
    assert [a.status for a in answers] == [200, 400, 400]  # the HF body on this route is refused, not guessed at
    assert answers[0].body["choices"][0]["message"]["content"]

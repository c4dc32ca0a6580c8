"""Text generation in-process on SmolLM2-135M-Instruct (converted from the package's GGUF),
checked against transformers' own `model.generate` on the same files."""

from __future__ import annotations

import json

import pytest
import torch


CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]
PROMPTS = ["The quick brown fox", "Paris is the capital of", "def fibonacci(n):\n    ", "Once upon a time, in a small village by the sea, there lived"]


@pytest.fixture(scope="module")
def worker(chat_static):
    return chat_static


@pytest.fixture(scope="module")
def reference(worker):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(worker.model_dir, dtype=torch.float32, use_safetensors=True).eval()
    return model, worker.handler.task.tokenizer


def generate(reference, ids: list[int], n: int) -> list[int]:
    model, _ = reference
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def expected_answer(reference, ids: list[int], n: int) -> tuple[str, int, str]:
    _, tokenizer = reference
    tokens = generate(reference, ids, n)
    finish = "eos" if tokens[-1] == tokenizer.eos_token_id else "length"
    return tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), finish


def test_greedy_is_token_for_token_generate_in_one_batch(worker, reference):
    """Four prompts of different lengths in one TorchServe batch (left padded together)."""
    _, tokenizer = reference
    answers = worker.predict([{"inputs": p, "parameters": {"max_new_tokens": 24}} for p in PROMPTS])
    for prompt, answer in zip(PROMPTS, answers):
        text, count, finish = expected_answer(reference, tokenizer(prompt).input_ids, 24)
        assert answer.status == 200
        assert answer.body["generated_text"] == text, prompt
        assert answer.body["details"] == {
            "finish_reason": finish, "prompt_tokens": len(tokenizer(prompt).input_ids), "generated_tokens": count,
        }


def test_chat_messages_are_rendered_with_the_template(worker, reference):
    _, tokenizer = reference
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert "<|im_start|>user" in tokenizer.decode(ids)
    [answer] = worker.predict([{"messages": CHAT, "parameters": {"max_new_tokens": 40}}])
    text, count, finish = expected_answer(reference, ids, 40)
    assert answer.status == 200
    assert (answer.body["generated_text"], answer.body["details"]["generated_tokens"]) == (text, count)
    assert answer.body["details"]["prompt_tokens"] == len(ids)


def test_same_seed_same_text_whatever_the_batch(worker):
    sampled = {"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 7}}
    alone = worker.predict([sampled])[0].body
    again, other_seed, _ = worker.predict([
        sampled,
        {**sampled, "parameters": {**sampled["parameters"], "seed": 8}},
        {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 5}},
    ])
    assert again.body == alone
    assert alone["details"]["seed"] == 7
    assert other_seed.body["generated_text"] != alone["generated_text"]


def test_unseeded_sampling_reports_its_seed_and_replays_with_it(worker):
    first = worker.predict([{"inputs": PROMPTS[1], "parameters": {"max_new_tokens": 16, "do_sample": True}}])[0].body
    seed = first["details"]["seed"]
    replay = worker.predict([{"inputs": PROMPTS[1], "parameters": {"max_new_tokens": 16, "do_sample": True, "seed": seed}}])[0].body
    assert replay == first


def test_stop_cuts_the_text_before_the_stop_string(worker):
    full = worker.predict([{"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 40}}])[0].body["generated_text"]
    words = full.split()
    stop = words[len(words) // 2]
    [cut] = worker.predict([{"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 40, "stop": ["@@never@@", stop]}}])
    assert cut.body["generated_text"] == full[: full.find(stop)]
    assert cut.body["details"]["finish_reason"] == "stop"


@pytest.mark.parametrize("request_body", [
    {"messages": CHAT, "parameters": {"max_new_tokens": 40}},
    {"inputs": PROMPTS[2], "parameters": {"max_new_tokens": 30, "stop": "\n\n"}},
])
def test_streamed_chunks_concatenate_to_the_unstreamed_text(worker, request_body):
    plain, streamed = worker.predict([request_body, {**request_body, "stream": True}])
    chunks = [json.loads(line) for line in streamed.chunks] + [streamed.body]
    assert len(streamed.chunks) >= 5, "one chunk per few tokens, not one at the end"
    assert all(set(c) == {"text"} for c in chunks[:-1]) and set(chunks[-1]) == {"text", "details"}
    assert "".join(c["text"] for c in chunks) == plain.body["generated_text"]
    assert chunks[-1]["details"] == plain.body["details"]
    assert plain.chunks == []


def test_repetition_penalty_changes_a_repetitive_answer(worker):
    prompt = {"inputs": "red red red red red red", "parameters": {"max_new_tokens": 12}}
    plain, penalized = worker.predict([prompt, {**prompt, "parameters": {"max_new_tokens": 12, "repetition_penalty": 1.8}}])
    assert plain.body["generated_text"].count("red") > penalized.body["generated_text"].count("red")


def test_length_limit_and_truncation(worker):
    task = worker.handler.task
    long_prompt = "word " * (task.max_length + 50)
    refused, kept = worker.predict([
        {"inputs": long_prompt, "parameters": {"max_new_tokens": 2}},
        {"inputs": long_prompt, "parameters": {"max_new_tokens": 2, "truncate": True}},
    ])
    assert refused.status == 413 and "the prompt limit is 2048 tokens" in refused.body["message"]
    assert kept.status == 200 and kept.body["details"]["prompt_tokens"] == task.max_length


@pytest.mark.parametrize(
    "request_body, status, message",
    [
        ({"inputs": "x", "parameters": {"max_new_tokens": 513}}, 400, "513 is above this model's limit 512"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, 400, "max_new_tokens: must be >= 1"),
        ({"inputs": "x", "parameters": {"temperature": 0}}, 400, "temperature: must be >= 0.01"),
        ({"inputs": "x", "parameters": {"top_p": 1.5}}, 400, "top_p: must be > 0 and <= 1"),
        ({"inputs": "x", "parameters": {"top_k": 0}}, 400, "top_k: must be >= 1"),
        ({"inputs": "x", "parameters": {"seed": -1}}, 400, "seed: must be between 0"),
        ({"inputs": "x", "parameters": {"stop": ["a"] * 9}}, 400, "stop: at most 8 strings"),
        ({"inputs": "x", "parameters": {"stop": [""]}}, 400, "each stop must be a string"),
        ({"inputs": "x", "parameters": {"temperature": "hot"}}, 400, "temperature: expected float or null"),
        ({"inputs": "x", "parameters": {"beam_width": 4}}, 400, "unknown key 'beam_width'"),
        ({"inputs": ["a", "b"], "stream": True}, 400, "'stream' needs a single prompt"),
        ({"inputs": ["a"] * 9}, 413, "9 inputs in one request; the limit is 8"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}, 400, "role must be one of"),
        (b"\xc3\x28 not utf-8", 400, "not valid UTF-8"),
        ({"inputs": ""}, 400, "is empty"),
    ],
)
def test_a_bad_request_fails_alone(worker, request_body, status, message):
    good = {"inputs": PROMPTS[1], "parameters": {"max_new_tokens": 4}}
    before, bad, after = worker.predict([good, request_body, good])
    assert bad.status == status, bad.body
    assert message in bad.body["message"]
    assert before.status == after.status == 200
    assert before.body == after.body


def test_generation_metrics_count_tokens_and_time_them(worker, caplog):
    import logging
    import re

    caplog.set_level(logging.INFO)
    answers = worker.predict([
        {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 6}},
        {"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 9}},
    ])
    lines = [r.getMessage() for r in caplog.records if "[METRICS]transerve_" in r.getMessage()]

    def values(name):
        return [float(m.group(1)) for line in lines if (m := re.search(rf"\[METRICS\]{name}\.\w+:([-0-9.e]+)\|", line))]

    generated = sum(a.body["details"]["generated_tokens"] for a in answers)
    prompt = sum(a.body["details"]["prompt_tokens"] for a in answers)
    assert values("transerve_generated_tokens_total") == [generated]
    assert values("transerve_input_tokens_total") == [prompt]
    first, per_token = values("transerve_time_to_first_token_seconds"), values("transerve_time_per_output_token_seconds")
    assert len(first) == len(per_token) == 2 and all(0 < v < 30 for v in first + per_token)
    assert all('task:generation' in line for line in lines)


def test_kserve_v1_instances_get_one_generation_each(worker):
    parameters = {"max_new_tokens": 6}
    v1, plain = worker.predict([{"instances": PROMPTS[:2], "parameters": parameters},
                                {"inputs": PROMPTS[:2], "parameters": parameters}])
    assert v1.status == 200 and v1.body == {"predictions": plain.body}


def test_ignore_eos_generates_the_whole_budget(worker):
    chat = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
    natural = worker.predict([{**chat, "parameters": {"max_new_tokens": 40}}])[0].body
    assert natural["details"]["finish_reason"] == "eos" and natural["details"]["generated_tokens"] < 40
    forced = worker.predict([{**chat, "parameters": {"max_new_tokens": 40, "ignore_eos": True}}])[0].body
    assert (forced["details"]["finish_reason"], forced["details"]["generated_tokens"]) == ("length", 40)


# The decoder (handlers/generation/decoder.py): rows join and leave a running batch between steps.

def rows_for(worker, bodies):
    """Decoder rows for request bodies, as the handler builds them (parse, then collate)."""
    from handlers.protocols.hf import decode

    task = worker.handler.task
    items = []
    for index, body in enumerate(bodies):
        item = task.parse(decode({"body": body}, 8, 20_000))
        item.index = index
        items.append(item)
    return task.collate(items).rows


def decoder_for(worker):
    return worker.handler.task.decoder()


def run_to_end(decoder, rows=(), joining=(), after: int = 0):
    """Admit `rows`, step `after` times, admit `joining`, then step until every row is done."""
    decoder.admit(list(rows))
    for _ in range(after):
        decoder.step()
    decoder.admit(list(joining))
    with torch.inference_mode():
        while decoder.busy:
            decoder.step()


@pytest.mark.parametrize("after", [1, 7])
def test_a_row_admitted_mid_decode_is_token_for_token_generate(worker, reference, after):
    _, tokenizer = reference
    long_prompts = [PROMPTS[3], PROMPTS[1]]
    running = rows_for(worker, [{"inputs": p, "parameters": {"max_new_tokens": 20}} for p in long_prompts])
    [late] = rows_for(worker, [{"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 12}}])
    with torch.inference_mode():
        run_to_end(decoder_for(worker), running, [late], after=after)
    for prompt, row in zip([*long_prompts, PROMPTS[0]], [*running, late]):
        assert row.tokens == generate(reference, tokenizer(prompt).input_ids, row.max_new), prompt
        assert row.finish in ("length", "eos")


def test_evicting_a_row_leaves_the_others_unchanged(worker, reference):
    _, tokenizer = reference
    rows = rows_for(worker, [{"inputs": p, "parameters": {"max_new_tokens": 16}} for p in PROMPTS[:3]])
    decoder = decoder_for(worker)
    with torch.inference_mode():
        decoder.admit(rows)
        decoder.step()
        decoder.step()
        decoder.evict([rows[1]])
        assert decoder.rows == [rows[0], rows[2]]
        while decoder.busy:
            decoder.step()
    assert len(rows[1].tokens) == 2 and rows[1].finish is None
    for prompt, row in ((PROMPTS[0], rows[0]), (PROMPTS[2], rows[2])):
        assert row.tokens == generate(reference, tokenizer(prompt).input_ids, 16), prompt


def test_a_seeded_row_samples_the_same_text_when_it_joins_late(worker):
    body = {"inputs": PROMPTS[2], "parameters": {"max_new_tokens": 16, "temperature": 0.8, "seed": 5}}
    [alone] = rows_for(worker, [body])
    with torch.inference_mode():
        run_to_end(decoder_for(worker), [alone])
    running = rows_for(worker, [{"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 24}}])
    [late] = rows_for(worker, [body])
    with torch.inference_mode():
        run_to_end(decoder_for(worker), running, [late], after=5)
    assert late.tokens == alone.tokens and late.text == alone.text


def test_a_batch_that_never_empties_keeps_only_the_positions_its_rows_use(worker, reference):
    """Rows leave and join for many steps (continuous batching under steady load): the cache
    is as wide as the running rows need, not every position the batch ever held, and the
    rows still decode generate's tokens."""
    _, tokenizer = reference
    decoder = decoder_for(worker)
    widest, finished = 0, []
    bodies = [{"inputs": PROMPTS[(3, 0, 1)[n % 3]], "parameters": {"max_new_tokens": 6 + n % 4}} for n in range(9)]
    with torch.inference_mode():
        for body in bodies:
            decoder.admit(rows_for(worker, [body]))
            for _ in range(3):
                finished += decoder.step().finished
            kv = decoder.engine  # the torch engine's cache and mask
            if decoder.rows:
                widest = max(widest, kv.mask.shape[1])
                need = max(len(r.prompt) + len(r.tokens) for r in decoder.rows)
                assert kv.mask.shape[1] <= need  # the chosen token is fed at the next step
                assert all(layer.keys.shape[-2] == kv.mask.shape[1] for layer in kv.cache.layers)
        while decoder.busy:
            finished += decoder.step().finished
    assert len(finished) == len(bodies)
    longest = len(tokenizer(PROMPTS[3]).input_ids) + 9
    assert widest <= longest, (widest, longest)  # without trimming: ~27 steps past the first prompt
    for row in finished:
        assert row.tokens == generate(reference, row.prompt, row.max_new)


@pytest.mark.parametrize("chunk", [3, 7])
def test_a_row_prefilled_in_chunks_is_token_for_token_generate(worker, reference, chunk):
    """A long prompt prefilled `chunk` columns a step while other rows decode: it and they
    still decode generate's tokens; a sampled row keeps its seeded text."""
    _, tokenizer = reference
    running = rows_for(worker, [{"inputs": PROMPTS[1], "parameters": {"max_new_tokens": 16}},
                                {"inputs": PROMPTS[2], "parameters": {"max_new_tokens": 16, "temperature": 0.8, "seed": 5}}])
    [alone] = rows_for(worker, [{"inputs": PROMPTS[2], "parameters": {"max_new_tokens": 16, "temperature": 0.8, "seed": 5}}])
    joining = rows_for(worker, [{"inputs": PROMPTS[3], "parameters": {"max_new_tokens": 12}},
                                {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 12}}])
    decoder = decoder_for(worker)
    with torch.inference_mode():
        run_to_end(decoder_for(worker), [alone])
        decoder.admit(running)
        decoder.step()
        decoder.admit(joining, chunk=chunk)
        steps = 0
        while decoder.prefilling is not None:
            decoder.step()
            steps += 1
        while decoder.busy:
            decoder.step()
    width = len(tokenizer(PROMPTS[3]).input_ids)
    assert steps == -(-width // chunk)  # ceil: one chunk a step
    for prompt, row in ((PROMPTS[1], running[0]), (PROMPTS[3], joining[0]), (PROMPTS[0], joining[1])):
        assert row.tokens == generate(reference, tokenizer(prompt).input_ids, row.max_new), prompt
    assert running[1].tokens == alone.tokens

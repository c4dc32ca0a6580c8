"""The OpenAI API through the official `openai` Python client: the gateway (transerve/edge/gateway.py)
in front of the test session's TorchServe, the handler's OpenAI routes behind it.

smollm2-chat serves generation, each test on 2.0 (torch) and then on 3.0 (llama.cpp, the default), both
under continuous batching; minilm-embed 1.0 (and 1.1, rolled out) embeddings; answers are checked
against the HF route and sentence-transformers."""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import requests

from transerve.build import archive
from transerve.torchserve.management import ApiError
from transerve.build.spec import find_spec
from transerve.torchserve.waiting import wait_until

MESSAGES = [{"role": "user", "content": "Name three colours."}]
SENTENCES = ["TorchServe serves transformers models.", "A sentence to embed.", "Ünïcödé and emoji 🙂 too."]


@pytest.fixture(scope="module", params=["2.0", "3.0"])
def chat_version(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def chat_model(torchserve, management, chat_version):
    """smollm2-chat registered alone, at that version (continuous batching): the gateway's default."""
    mv = find_spec("smollm2-chat").version(chat_version)
    archive.build(mv, torchserve.model_store, log=lambda _: None)
    management.register(mv.archive_name, initial_workers=1)
    yield mv.name
    with contextlib.suppress(ApiError):
        management.unregister(mv.name, mv.version)


@pytest.fixture(scope="module")
def embed_model(minilm_registered):
    return minilm_registered


@pytest.fixture(scope="module")
def client(torchserve):
    return openai.OpenAI(base_url=torchserve.url("openai"), api_key=torchserve.keys()["inference"], max_retries=0,
                         timeout=300)


def hf_chat(torchserve, inference, model: str, version: str, body: dict) -> dict:
    answer = requests.post(f"{torchserve.url('inference')}/predictions/{model}/{version}", json=body,
                           headers={"Authorization": f"Bearer {torchserve.keys()['inference']}"}, timeout=300)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_models_list_names_every_served_model(client, chat_model, embed_model):
    ids = [m.id for m in client.models.list()]
    assert {"smollm2-chat", "minilm-embed"} <= set(ids)
    assert client.models.retrieve("minilm-embed").id == "minilm-embed"


def test_embeddings_equal_sentence_transformers(client, embed_model, minilm):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm.version().source_dir()), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    default = client.embeddings.create(model=embed_model, input=SENTENCES)  # the client asks for base64
    floats = client.embeddings.create(model=embed_model, input=SENTENCES, encoding_format="float")
    for answer in (default, floats):
        assert answer.model == embed_model and len(answer.data) == len(SENTENCES)
        vectors = np.array([d.embedding for d in sorted(answer.data, key=lambda d: d.index)])
        cosine = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() >= 0.99999, cosine
        assert answer.usage.prompt_tokens > 0


def test_greedy_chat_is_the_hf_routes_text_and_streams_the_same(client, chat_model, chat_version, torchserve, inference):
    hf = hf_chat(torchserve, inference, chat_model, chat_version,
                 {"messages": MESSAGES, "parameters": {"max_new_tokens": 32, "do_sample": False}})
    answer = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=32, temperature=0)
    assert answer.choices[0].message.content == hf["generated_text"]
    assert answer.usage.completion_tokens == hf["details"]["generated_tokens"]
    assert answer.choices[0].finish_reason == {"eos": "stop", "length": "length"}[hf["details"]["finish_reason"]]
    stream = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=32, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == hf["generated_text"]
    assert deltas[-1].choices[0].finish_reason == answer.choices[0].finish_reason
    assert len(deltas) > 2, "the answer came in one piece, not streamed"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == hf["details"]["generated_tokens"]


def test_completions_end_before_the_stop_string(client, chat_model):
    request = {"model": chat_model, "prompt": "Monday, Tuesday, Wednesday,", "max_tokens": 24, "temperature": 0}
    free = client.completions.create(**request).choices[0].text
    words = free.split()
    assert len(words) > 4, free
    stop = words[len(words) // 2]  # a word the greedy text reaches halfway
    [choice] = client.completions.create(**request, stop=[stop]).choices
    assert choice.text == free[: free.index(stop)] and choice.finish_reason == "stop", (free, stop, choice)


def test_the_clients_own_exceptions(client, chat_model, torchserve):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=chat_model, messages=MESSAGES, n=2)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert unknown.value.body["code"] == "model_not_found"
    wrong = openai.OpenAI(base_url=torchserve.url("openai"), api_key="not-the-key", max_retries=0)
    for call in (lambda: wrong.chat.completions.create(model=chat_model, messages=MESSAGES),
                 lambda: wrong.models.list()):
        with pytest.raises(openai.AuthenticationError) as refused:
            call()
        assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"


def test_raw_http_errors_are_openai_bodies(torchserve, chat_model):
    url, key = torchserve.url("openai"), {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    for answer, status in [
        (requests.post(f"{url}/chat/completions", data="{not json", headers=key, timeout=30), 400),
        (requests.post(f"{url}/chat/completions", json={"messages": MESSAGES}, headers=key, timeout=30), 400),
        (requests.post(f"{url}/responses", json={"model": chat_model}, headers=key, timeout=30), 404),
        (requests.get(f"{url}/models", timeout=30), 401),
        (requests.post(f"{url}/embeddings", json={"model": chat_model, "input": "a"}, headers=key, timeout=30), 404),
    ]:
        assert answer.status_code == status, answer.text
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}, answer.text
        assert answer.headers["Server"] == "transerve"  # no software versions on the wire


def test_the_gateway_follows_a_rollout_and_a_rollback(client, embed_model, management, torchserve, tmp_path):
    import shutil

    from transerve.cli import main

    # The CLI against this server, with a rollout history of this test's own.
    for name in ("config.properties", "key_file.json", "guard.json"):
        shutil.copy(torchserve.run_dir / name, tmp_path / name)
    argv = ["--run-dir", str(tmp_path), "--model-store", str(torchserve.model_store)]
    long = "word " * 200  # 1.1 reads 128 tokens, 1.0 256: their vectors differ

    def version_and_vector() -> tuple[str, list[float]]:
        answer = client.embeddings.with_raw_response.create(model=embed_model, input=long, encoding_format="float")
        return answer.headers["x-transerve-model-version"], answer.parse().data[0].embedding

    old, before = version_and_vector()
    assert old == "1.0"
    try:
        assert main([*argv, "rollout", embed_model, "1.1"]) == 0
        time.sleep(1.0)  # the gateway reuses a looked-up default version for at most 0.5 s
        new, after = version_and_vector()
        assert new == "1.1" and after != before
        assert main([*argv, "rollback", embed_model]) == 0
        time.sleep(1.0)
        assert version_and_vector() == ("1.0", before)
    finally:
        with contextlib.suppress(ApiError):
            management.set_default(embed_model, "1.0")
            management.unregister(embed_model, "1.1")


def test_twelve_concurrent_streamed_chats_all_complete(client, chat_model):
    def chat(i: int) -> tuple[str, str]:
        stream = client.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=24,
            temperature=0.7, seed=i, stream=True)
        chunks = list(stream)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(chat, range(12)))
    assert all(text and finish in ("stop", "length") for text, finish in answers), answers
    # sampled with a seed: the same text again, sent alone instead of beside 11 others
    assert [chat(i) for i in range(4)] == answers[:4]
    assert len({text for text, _ in answers}) > 6  # and the seeds (and prompts) do change the texts


def test_an_abandoned_stream_is_dropped_upstream(torchserve, client, chat_model, chat_version, metric):
    """Closing a stream at the gateway frees its rows in TorchServe: continuous batching's
    evicted{reason="disconnected"} counter goes up by one."""

    def evicted() -> float:
        return metric("transerve_generation_rows_evicted_total", model_name="smollm2-chat", model_version=chat_version,
                      reason="disconnected")

    before = evicted()
    body = {"model": chat_model, "messages": MESSAGES, "max_tokens": 400, "ignore_eos": True, "stream": True}
    key = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    with requests.post(f"{torchserve.url('openai')}/chat/completions", json=body, headers=key, stream=True, timeout=60) as answer:
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/event-stream")
        first = next(answer.iter_lines())
        assert first.startswith(b"data: ") and json.loads(first[6:])["object"] == "chat.completion.chunk"
    time.sleep(2)  # TorchServe drops the request after its next chunk; its rows leave at the handler's next call
    client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=2)  # that next call
    wait_until(lambda: evicted() != before, 20, lambda: AssertionError("the abandoned stream's row was not evicted in 20 s"))
    assert evicted() == before + 1


def test_status_json_reports_the_base_url(torchserve, capsys, chat_model):
    from transerve.cli import main

    assert main(["--run-dir", str(torchserve.run_dir), "--model-store", str(torchserve.model_store), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["openai_base_url"] == torchserve.url("openai")
    assert any(m["name"] == chat_model and m["is_default"] for m in status["models"])

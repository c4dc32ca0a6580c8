"""The walking skeleton end to end: real TorchServe, real archives, real HTTP."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from transerve.torchserve.management import ApiError

LONG = " ".join(["Serving transformers on TorchServe needs a handler that batches well."] * 20)


@pytest.fixture(scope="module")
def registered(management, minilm):
    """minilm-embed 1.0 registered through the management API, its worker READY."""
    message = management.register("minilm-embed-1.0.mar", initial_workers=1)
    assert "registered" in message
    yield "minilm-embed"
    # Every version left, the default last (TorchServe refuses to remove the default while another
    # version is registered); only "not registered" is fine: a version left behind changes the next module.
    try:
        versions = management.describe("minilm-embed")
    except ApiError as e:
        assert e.status == 404, f"describing minilm-embed: {e}"
        versions = []
    for version in sorted(versions, key=lambda v: v.is_default):
        try:
            management.unregister("minilm-embed", version.version)
        except ApiError as e:
            assert e.status == 404, f"unregistering minilm-embed {version.version}: {e}"


@pytest.fixture(scope="module")
def reference(store):
    from sentence_transformers import SentenceTransformer

    from transerve.operate.inprocess import LocalWorker
    from transerve.build.spec import find_spec

    local = LocalWorker(find_spec("minilm-embed").version("1.0"))
    yield SentenceTransformer(str(local.model_dir), device="cpu")
    local.close()


def post(server, path, key="inference", **kwargs):
    headers = kwargs.pop("headers", {})
    if key:
        headers["Authorization"] = f"Bearer {server.keys()[key]}"
    return requests.post(f"{server.url('inference')}{path}", headers=headers, timeout=60, **kwargs)


def test_registered_model_has_a_ready_worker_with_the_spec_runtime(management, registered, minilm):
    runtime = minilm.version("1.0").runtime
    [version] = management.describe(registered)
    assert (version.version, version.is_default) == ("1.0", True)
    assert (version.batch_size, version.max_batch_delay) == (runtime.batchSize, runtime.maxBatchDelay)
    # One worker, as registered: fewer than the spec's minWorkers needs max = min too,
    # since TorchServe stops workers only above max_worker.
    assert runtime.minWorkers > 1, "the archive alone would start more than one worker"
    assert (version.ready_workers, version.min_workers, version.max_workers) == (1, 1, 1)


def test_inference_with_token_matches_sentence_transformers(inference, registered, reference):
    texts = ["TorchServe answers over HTTP.", LONG, "naïve café ☕"]
    answer = inference.predict(registered, {"inputs": texts})
    expected = reference.encode(texts, normalize_embeddings=True)
    assert len(answer["embeddings"]) == 3
    for got, ref in zip(answer["embeddings"], expected):
        assert float(np.dot(got, ref)) >= 0.99999


def test_plain_text_body_is_one_input(inference, registered):
    answer = inference.predict(registered, "just some text")
    assert len(answer["embeddings"]) == 1 and answer["dimensions"] == 384


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}])
def test_inference_without_the_right_token_is_refused(torchserve, registered, headers):
    # TorchServe 0.12 refuses a missing or wrong token with 400 InvalidKeyException (not 401).
    answer = post(torchserve, f"/predictions/{registered}", key=None, headers=headers, json={"inputs": "x"})
    assert answer.status_code == 400
    assert answer.json()["type"] == "InvalidKeyException"


def test_management_key_does_not_open_inference(torchserve, registered):
    answer = post(torchserve, f"/predictions/{registered}", key="management", json={"inputs": "x"})
    assert answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"


@pytest.mark.parametrize(
    "data, content_type, status, message",
    [
        (b"\xff\xfe\xfd", "application/octet-stream", 400, "not valid UTF-8"),
        (b'{"inputs": [', "application/json", 400, "not valid JSON"),
        (b'{"inputs": []}', "application/json", 400, "empty list"),
        (b'{"inputs": "x", "parameters": {"top_k": 2}}', "application/json", 400, "unknown key 'top_k'"),
        (b'{"inputs": ["a", 1]}', "application/json", 400, r"inputs\[1\] must be a string"),
        (b'{"inputs": "' + b"word " * 400 + b'", "parameters": {"truncate": false}}', "application/json", 413, "longer than 256 tokens"),
        (b'{"inputs": ' + str(["x"] * 65).replace("'", '"').encode() + b"}", "application/json", 413, "the limit is 64"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "application/json", 400, "'messages' is for chat models"),
        (b"hello world", "application/x-www-form-urlencoded", 415, "arrived as HTML form fields"),
        (b'{"inputs": "x", "stream": true}', "application/json", 400, "'stream' is for text generation"),
        (b'{"inputs": "x", "parameters": {"normalize": "yes"}}', "application/json", 400, "normalize: expected bool or null"),
    ],
)
def test_bad_input_gets_its_4xx_and_a_message(torchserve, registered, data, content_type, status, message):
    answer = post(torchserve, f"/predictions/{registered}", data=data, headers={"Content-Type": content_type})
    assert answer.status_code == status
    assert re.search(message, answer.json()["message"])


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(torchserve, inference, registered):
    bodies = [{"inputs": [f"request {i} " + "word " * (i * 7)] * (1 + i % 3)} for i in range(12)]
    bodies[5] = {"inputs": []}
    alone = {i: inference.predict(registered, b) for i, b in enumerate(bodies) if i != 5}
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: post(torchserve, f"/predictions/{registered}", json=b), bodies))
    assert answers[5].status_code == 400
    for i, answer in alone.items():
        assert answers[i].status_code == 200
        got = answers[i].json()["embeddings"]
        assert len(got) == len(bodies[i]["inputs"])
        for u, v in zip(got, answer["embeddings"]):
            assert float(np.dot(u, v)) >= 0.99999


def test_scale_to_two_workers_and_back(management, registered):
    management.scale(registered, min_workers=2, max_workers=2)
    try:
        [version] = management.describe(registered)
        assert (len(version.workers), version.ready_workers) == (2, 2)
    finally:  # back to the one worker the other tests of this module expect, whatever failed
        # TorchServe stops workers only above max_worker: back to one means max 1 too.
        management.scale(registered, min_workers=1)
    [version] = management.describe(registered)
    assert (len(version.workers), version.min_workers, version.max_workers) == (1, 1, 1)


def test_two_versions_side_by_side_and_set_default(management, inference, registered):
    management.register("minilm-embed-1.1.mar", initial_workers=1)
    try:
        versions = {v.version: v for v in management.describe(registered)}
        assert set(versions) == {"1.0", "1.1"} and versions["1.0"].is_default
        # 1.1 keeps 128 tokens, 1.0 keeps 256: a long input tells them apart.
        old = inference.predict(registered, {"inputs": LONG}, version="1.0")["input_tokens"]
        new = inference.predict(registered, {"inputs": LONG}, version="1.1")["input_tokens"]
        assert (old, new) == (256, 128)
        assert inference.predict(registered, {"inputs": LONG})["input_tokens"] == 256
        management.set_default(registered, "1.1")
        assert management.default_version(registered) == "1.1"
        assert inference.predict(registered, {"inputs": LONG})["input_tokens"] == 128
    finally:  # the module's one version again, as the other tests of this module expect it
        management.set_default(registered, "1.0")
        management.unregister(registered, "1.1")
    assert [v.version for v in management.describe(registered)] == ["1.0"]


def test_metrics_api_counts_inference_requests(metric, inference, registered):
    inference.predict(registered, {"inputs": "count me"})
    assert metric("ts_inference_requests_total", model_name="minilm-embed") >= 1


@pytest.mark.parametrize(
    "call, status, message",
    [
        (lambda m: m.describe("no-such-model"), 404, "Model not found: no-such-model"),
        (lambda m: m.set_default("minilm-embed", "9.9"), 404, "9.9"),
        (lambda m: m.register("no-such-archive.mar"), 404, "no-such-archive.mar"),
    ],
)
def test_management_errors_surface_the_servers_message(management, registered, call, status, message):
    with pytest.raises(ApiError) as caught:
        call(management)
    assert caught.value.status == status and message in caught.value.message


def test_management_refuses_a_call_without_the_key(torchserve, registered):
    answer = requests.get(f"{torchserve.url('management')}/models", timeout=10)
    assert answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"


def test_registering_a_remote_url_is_refused(management):
    # by transerve's client before anything is sent ...
    with pytest.raises(ValueError, match="register takes an archive's file name"):
        management.register("https://example.invalid/evil.mar")
    # ... by the management guard, when the API is called directly ...
    with pytest.raises(ApiError, match="registration refused by transerve's guard"):
        management._call("POST", "/models", params={"url": "https://example.invalid/evil.mar"})

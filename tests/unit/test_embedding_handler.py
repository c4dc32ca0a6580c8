"""The handler in-process, loaded as a TorchServe worker loads it (real ts Context)."""

from __future__ import annotations

import numpy as np
import pytest

from handlers.tasks.base import micro_batches
from transerve.operate.inprocess import LocalWorker

SENTENCES = [
    "Hello world.",
    "TorchServe runs Python workers behind a Java frontend.",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé characters, accents: café, naïve, résumé.",
    "日本語の文章も埋め込めます。",
    "Привет, как дела?",
    "emoji 🚀🔥 in text",
    "Numbers 1234567890 and symbols #$%&*()",
    "   leading and trailing spaces   ",
    "UPPER CASE SENTENCE",
    "tabs\tand\nnewlines",
    "Sentence embeddings map text to dense vectors for semantic search.",
    "What is the capital of France?",
    "Paris is the capital of France.",
    "def f(x): return x * 2",
    "A much longer sentence that keeps going with many clauses, describing how dynamic padding "
    "pads each batch only to its longest member rather than to the model's maximum length.",
    "https://example.com/path?query=1",
    "Short.",
    "Ein deutscher Satz über maschinelles Lernen.",
    # Over max_length (256 tokens): truncated the same way by both.
    " ".join(["overflowing"] * 400),
]


@pytest.fixture(scope="module", params=[("1.0", None), ("1.0", 48), ("2.0", None), ("2.0", 48)],
                ids=["torch-one-call", "torch-micro-batches", "onnxruntime-one-call", "onnxruntime-micro-batches"])
def worker(request, minilm):
    """minilm-embed 1.0 (torch) and 2.0 (ONNX Runtime), each also with max_batch_tokens small
    enough that the test batches run as many length-sorted micro-batches."""
    version, budget = request.param
    mv = minilm.version(version)
    local = LocalWorker(mv.with_handler(max_batch_tokens=budget))
    yield local
    local.close()


@pytest.fixture(scope="module")
def reference(minilm):
    """sentence-transformers on the model's own files (the torch weights, whatever the engine)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm.version("1.0").source_dir()), device="cpu")


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_worker_loads_on_cpu_without_a_gpu(worker):
    assert str(worker.handler.device) == "cpu"
    assert worker.handler.task.max_length == 256
    engine = worker.handler.task.engine.name
    assert engine == ("torch" if worker.mv.handler.engine == "torch" else "onnxruntime (CPUExecutionProvider)")


def test_the_onnx_version_carries_the_graph_and_no_torch_weights(minilm):
    mv = minilm.version("2.0")
    local = LocalWorker(mv)
    try:
        names = {p.name for p in local.model_dir.rglob("*")}
    finally:
        local.close()
    assert {"model.onnx", "model.onnx.data", "tokenizer.json", "config.json"} <= names
    assert not any(name.endswith((".safetensors", ".bin")) for name in names)


def test_embeddings_match_sentence_transformers(worker, reference):
    expected = reference.encode(SENTENCES, normalize_embeddings=True)
    [answer] = worker.predict([{"inputs": SENTENCES}])
    assert answer.status == 200
    got = answer.body["embeddings"]
    assert len(got) == len(SENTENCES) and answer.body["dimensions"] == 384
    for text, vector, ref in zip(SENTENCES, got, expected):
        assert cosine(vector, ref) >= 0.99999, text
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5


def test_batch_of_mixed_requests_returns_each_its_own_vectors(worker):
    requests = [
        {"inputs": SENTENCES[16]},
        {"inputs": [SENTENCES[0], SENTENCES[5], SENTENCES[2]]},
        SENTENCES[3],
        {"inputs": [SENTENCES[20]]},
        {"inputs": SENTENCES[13], "parameters": {"normalize": False}},
    ]
    batched = worker.predict(requests)
    alone = [worker.predict([r])[0] for r in requests]
    assert [a.status for a in batched] == [200] * len(requests)
    for together, single in zip(batched, alone):
        assert len(together.body["embeddings"]) == len(single.body["embeddings"])
        for u, v in zip(together.body["embeddings"], single.body["embeddings"]):
            assert cosine(u, v) >= 0.99999
    assert abs(np.linalg.norm(batched[4].body["embeddings"][0]) - 1.0) > 1e-3  # normalize=false honoured


def test_bad_request_in_batch_fails_alone(worker):
    answers = worker.predict([
        {"inputs": "good one"},
        b"\xff\xfe not utf-8",
        {"inputs": "x", "parameters": {"temperature": 0.5}},
        {"inputs": " ".join(["long"] * 400), "parameters": {"truncate": False}},
        {"inputs": ["good", "two"]},
    ])
    assert [a.status for a in answers] == [200, 400, 400, 413, 200]
    assert "UTF-8" in answers[1].body["message"]
    assert "unknown key 'temperature'" in answers[2].body["message"]
    assert "longer than 256 tokens" in answers[3].body["message"]
    assert len(answers[4].body["embeddings"]) == 2


def test_a_batch_of_only_bad_requests_answers_each(worker):
    answers = worker.predict([{"inputs": []}, {"nope": 1}])
    assert [a.status for a in answers] == [400, 400]


def test_kserve_v1_instances_get_one_prediction_each(worker):
    v1, plain = worker.predict([{"instances": SENTENCES[:3]}, {"inputs": SENTENCES[:3]}])
    assert (v1.status, list(v1.body)) == (200, ["predictions"])
    assert len(v1.body["predictions"]) == 3
    for u, v in zip(v1.body["predictions"], plain.body["embeddings"]):
        assert cosine(u, v) >= 0.99999


@pytest.mark.parametrize("lengths, budget, groups", [
    ([5, 3, 9, 3], None, [[0, 1, 2, 3]]),          # no budget: one call, rows in order
    ([5, 3, 9, 3], 10, [[1, 3], [0], [2]]),        # sorted by length; 3 x 5 > 10 cuts before row 0
    ([5, 3, 9, 3], 100, [[1, 3, 0, 2]]),           # all fit: one call, sorted
    ([300, 4], 256, [[1], [0]]),                   # a row over the budget goes alone
])
def test_micro_batches_sort_rows_by_length_within_the_budget(lengths, budget, groups):
    assert micro_batches(lengths, budget) == groups


def test_int8_opt_in_quantizes_every_linear_layer_and_stays_close(minilm, reference):
    mv = minilm.version("1.0")
    int8 = LocalWorker(mv.with_handler(quantize="int8"))
    try:
        model = int8.handler.task.model
        kinds = {type(m).__module__ for m in model.modules() if "Linear" in type(m).__name__}
        assert kinds and all("quantized" in kind for kind in kinds), kinds
        [answer] = int8.predict([{"inputs": SENTENCES}])
    finally:
        int8.close()
    expected = reference.encode(SENTENCES, normalize_embeddings=True)
    # Close, not equal: bench/results reports the agreement (cosine >= 0.95 on its corpus).
    assert min(cosine(v, r) for v, r in zip(answer.body["embeddings"], expected)) > 0.9

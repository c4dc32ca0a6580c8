"""minilm-embed 2.0 on ONNX Runtime, served by the real TorchServe beside 1.0 on torch: the
archive carries the proved graph and no torch weights, and both engines answer alike."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

from transerve.build import archive
from transerve.torchserve.management import ApiError

SENTENCES = ["TorchServe serves transformers models.", "a", "Ünïcödé and emoji 🙂 too.", " ".join(["long"] * 400)]


@pytest.fixture(scope="module")
def onnx_version(torchserve, management, minilm, minilm_registered):
    mv = minilm.version("2.0")
    assert mv.handler.engine == "onnxruntime"
    record = archive.build(mv, torchserve.model_store, log=lambda _: None)
    management.register(mv.archive_name, initial_workers=1)
    yield mv, record
    try:
        management.unregister(mv.name, mv.version)
    except ApiError as e:  # only "not registered" is fine: a version left behind changes the next module
        assert e.status == 404, f"unregistering {mv.name} {mv.version}: {e}"


def test_the_archive_carries_the_graph_not_the_torch_weights(onnx_version):
    _, record = onnx_version
    with zipfile.ZipFile(record.path) as z:
        names = set(z.namelist())
        assert {"model.onnx", "model.onnx.data", "tokenizer.json", "config.json", "model-config.yaml"} <= names
        assert not [n for n in names if n.endswith(".safetensors")]
        assert "engine: onnxruntime" in z.read("model-config.yaml").decode()
    assert archive.read_index(Path(record.path).parent)["minilm-embed-2.0.mar"]["sha256"] == record.sha256


def test_onnx_and_torch_versions_answer_alike_and_as_sentence_transformers(onnx_version, inference, minilm, torchserve):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm.version("1.0").source_dir()), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    onnx = np.array(inference.predict("minilm-embed", {"inputs": SENTENCES}, version="2.0")["embeddings"])
    torch_ = np.array(inference.predict("minilm-embed", {"inputs": SENTENCES}, version="1.0")["embeddings"])
    assert (onnx * reference).sum(1).min() >= 0.99999
    assert (onnx * torch_).sum(1).min() >= 0.99999
    log = (torchserve.log_dir / "model_log.log").read_text(errors="replace")
    assert "engine onnxruntime (CPUExecutionProvider)" in log


def test_bad_input_to_the_onnx_version_is_a_400_and_the_worker_lives(onnx_version, torchserve):
    url = f"{torchserve.url('inference')}/predictions/minilm-embed/2.0"
    headers = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    for body, status, words in (({"inputs": []}, 400, "inputs"), ({"inputs": "x" * 30_000}, 413, "20000"),
                                ({"inputs": " ".join(["long"] * 400), "parameters": {"truncate": False}}, 413, "256 tokens")):
        answer = requests.post(url, json=body, headers=headers, timeout=60)
        assert answer.status_code == status and words in answer.text, answer.text
    answer = requests.post(url, json={"inputs": "still here"}, headers=headers, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["embeddings"][0]) == 384

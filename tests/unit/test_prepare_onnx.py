"""The ONNX export at preparation: proved against torch before it is kept, cached until the
source changes, and refused (nothing kept) when the proof fails."""

from __future__ import annotations

import json

import pytest
import torch

from transerve.build import prepare
from transerve.build.prepare import STAMP, PrepareError, compare, prepare_onnx

LABELS = ["negative", "positive"]


@pytest.fixture
def classifier(tmp_path, tiny_bert):
    from transformers import BertForSequenceClassification

    mv, weights = tiny_bert(tmp_path, BertForSequenceClassification, "classification", LABELS)
    return mv.with_handler(engine="onnxruntime"), weights


def test_an_export_is_proved_kept_and_reused_until_its_source_changes(tmp_path, classifier):
    mv, weights = classifier
    cache = tmp_path / "cache"
    lines: list[str] = []
    first = prepare_onnx(weights, mv, cache, lines.append)
    proof = json.loads((first / STAMP).read_text())["proof"]
    assert proof["kept"] and proof["same_labels"] and proof["worst_score_difference"] <= 1e-4
    assert proof["fused"]  # ONNX Runtime's fused operators went in
    assert proof["probe_shape"][0] == len(prepare.PROBE)
    assert {"model.onnx", "model.onnx.data", "config.json", "tokenizer.json"} <= {p.name for p in first.iterdir()}
    assert not list(first.glob("*.safetensors"))
    assert any("kept: labels equal" in line for line in lines)

    lines.clear()
    graph = (first / "model.onnx").stat().st_mtime_ns
    assert prepare_onnx(weights, mv, cache, lines.append) == first and lines == []  # reused, silently
    assert (first / "model.onnx").stat().st_mtime_ns == graph

    config = weights / "config.json"  # a changed source is exported again
    config.write_text(config.read_text().replace('"negative"', '"bad"'))
    second = prepare_onnx(weights, mv, cache, lines.append)
    assert second != first and "bad" in (second / "config.json").read_text()


def test_a_graph_that_misses_the_bound_is_not_kept(tmp_path, classifier, monkeypatch):
    mv, weights = classifier
    cache = tmp_path / "cache"
    monkeypatch.setattr(prepare, "SCORE_TOLERANCE", -1.0)  # no graph can be that close: the real proof fails
    with pytest.raises(PrepareError, match=r"does not reproduce torch \(labels equal on \d+ rows, largest score difference .*\); not kept"):
        prepare_onnx(weights, mv, cache, lambda line: None)
    assert list(cache.iterdir()) == []


def test_generation_is_not_exported(tmp_path, classifier):
    mv, weights = classifier
    with pytest.raises(prepare.SpecError, match="onnxruntime runs classification, embedding, token_classification, not generation"):
        prepare_onnx(weights, mv.with_handler(task="generation"), tmp_path, lambda line: None)


def test_embeddings_are_compared_by_cosine_over_both_poolings():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    assert compare("embedding", hidden, hidden + 1e-7, mask)["kept"]
    noisy = hidden.clone()
    noisy[1, 0] += 0.5  # the CLS token of one row: mean pooling barely moves, CLS pooling does
    verdict = compare("embedding", hidden, noisy, mask)
    assert not verdict["kept"] and verdict["worst_cosine"] < 0.99999
    padded = hidden.clone()
    padded[1, 4] += 100.0  # padding is outside both poolings
    assert compare("embedding", hidden, padded, mask)["kept"]


def test_classifiers_need_equal_labels_and_close_scores_on_real_tokens_only():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert compare("token_classification", logits, logits + 1e-6, mask)["kept"]
    flipped = logits.clone()
    flipped[0, 2] = torch.tensor([0.0, 9.0])  # a padding position: never read
    assert compare("token_classification", logits, flipped, mask)["kept"]
    flipped[0, 1] = torch.tensor([1.0, 0.0])  # a real token changes label
    verdict = compare("token_classification", logits, flipped, mask)
    assert not verdict["kept"] and not verdict["same_labels"]
    rows = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    assert not compare("classification", rows, rows + torch.tensor([1e-2, 0.0]), torch.ones(2, 1))["kept"]  # scores off by > 1e-4

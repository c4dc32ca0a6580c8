"""Text classification in-process, checked against transformers' own pipeline."""

from __future__ import annotations

import pytest
import torch

from transerve.inprocess import LocalWorker
from transerve.spec import load_spec

TEXTS = [
    "I loved this film.", "Terrible service, never again.", "It was fine, I guess.", "a", "ok",
    "The plot was thin but the acting carried it through to the end.", "¡Qué maravilla!",
    "Das Essen war kalt.", "10/10 would recommend", "meh", "Worst. Day. Ever.",
    "Shipping took three weeks and the box arrived crushed, yet the product inside worked perfectly.",
    "neutral statement about the weather", "🙂🙂🙂", "Why would anyone do that?",
    " ".join(["long"] * 600),
]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def build_model(root, minilm, problem_type):
    """A 2-layer BERT with all-MiniLM-L6-v2's tokenizer and its own labels, saved as safetensors."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        initializer_range=0.5, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, problem_type=problem_type,
    )
    weights = root / "weights"
    BertForSequenceClassification(config).save_pretrained(weights)
    AutoTokenizer.from_pretrained(minilm.version().source_dir()).save_pretrained(weights)
    spec = root / "tiny-classifier" / "model.yaml"
    spec.parent.mkdir()
    spec.write_text(
        "name: tiny-classifier\ntask: classification\nsource: {dir: ../weights}\n"
        "runtime: {batchSize: 8}\nversions: {'1.0': {}}\n"
    )
    return load_spec(spec).version("1.0"), weights


@pytest.fixture(scope="module", params=["single_label_classification", "multi_label_classification"])
def classifier(request, tmp_path_factory, minilm):
    from transformers import pipeline

    mv, weights = build_model(tmp_path_factory.mktemp("classifier"), minilm, request.param)
    worker = LocalWorker(mv)
    reference = pipeline("text-classification", model=str(weights), top_k=None, device="cpu", truncation=True)
    yield worker, reference
    worker.close()


def test_scores_and_labels_match_the_pipeline(classifier):
    worker, reference = classifier
    [answer] = worker.predict([{"inputs": TEXTS, "parameters": {"top_k": None}}])
    assert answer.status == 200
    for text, got, expected in zip(TEXTS, answer.body, reference(TEXTS)):
        assert [d["label"] for d in got] == [d["label"] for d in expected], text
        assert all(abs(g["score"] - e["score"]) < 1e-5 for g, e in zip(got, expected)), text


def test_top_k_defaults_to_one_and_single_input_gets_a_flat_list(classifier):
    worker, reference = classifier
    default, two, flat = worker.predict([
        {"inputs": [TEXTS[0], TEXTS[1]]},
        {"inputs": [TEXTS[0]], "parameters": {"top_k": 2}},
        TEXTS[2],
    ])
    assert [len(per_input) for per_input in default.body] == [1, 1]
    assert default.body[0][0]["label"] == reference([TEXTS[0]])[0][0]["label"]
    assert len(two.body[0]) == 2
    assert isinstance(flat.body, list) and set(flat.body[0]) == {"label", "score"}


@pytest.mark.parametrize("parameters, message", [({"top_k": 0}, "top_k must be >= 1"), ({"top_k": "all"}, "top_k: expected int or null")])
def test_bad_top_k_is_a_400(classifier, parameters, message):
    worker, _ = classifier
    [answer] = worker.predict([{"inputs": "x", "parameters": parameters}])
    assert answer.status == 400 and message in answer.body["message"]

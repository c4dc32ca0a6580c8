"""Text classification in-process, checked against transformers' own pipeline."""

from __future__ import annotations

import pytest

from transerve.operate.inprocess import LocalWorker
from transerve.build.prepare import SCORE_TOLERANCE

TEXTS = [
    "I loved this film.", "Terrible service, never again.", "It was fine, I guess.", "a", "ok",
    "The plot was thin but the acting carried it through to the end.", "¡Qué maravilla!",
    "Das Essen war kalt.", "10/10 would recommend", "meh", "Worst. Day. Ever.",
    "Shipping took three weeks and the box arrived crushed, yet the product inside worked perfectly.",
    "neutral statement about the weather", "🙂🙂🙂", "Why would anyone do that?",
    " ".join(["long"] * 600),
]
LABELS = ["negative", "neutral", "positive"]


# (problem type, max_batch_tokens, engine): a budget runs the batches as length-sorted
# micro-batches; onnxruntime runs the graph exported (and proved) at preparation.
@pytest.fixture(scope="module", params=[
    ("single_label_classification", None, "torch"), ("multi_label_classification", 32, "torch"),
    ("single_label_classification", 32, "onnxruntime"), ("multi_label_classification", None, "onnxruntime"),
], ids=lambda p: "-".join(str(x) for x in p))
def classifier(request, tmp_path_factory, tiny_bert):
    from transformers import BertForSequenceClassification, pipeline

    problem_type, budget, engine = request.param
    mv, weights = tiny_bert(
        tmp_path_factory.mktemp("classifier"), BertForSequenceClassification, "classification", LABELS,
        problem_type=problem_type,
    )
    worker = LocalWorker(mv.with_handler(max_batch_tokens=budget, engine=engine))
    reference = pipeline("text-classification", model=str(weights), top_k=None, device="cpu", truncation=True)
    yield worker, reference
    worker.close()


def test_scores_and_labels_match_the_pipeline(classifier):
    worker, reference = classifier
    [answer] = worker.predict([{"inputs": TEXTS, "parameters": {"top_k": None}}])
    assert answer.status == 200
    tolerance = 1e-5 if worker.mv.handler.engine == "torch" else SCORE_TOLERANCE  # the ONNX graph's proof
    for text, got, expected in zip(TEXTS, answer.body, reference(TEXTS)):
        assert [d["label"] for d in got] == [d["label"] for d in expected], text
        assert all(abs(g["score"] - e["score"]) < tolerance for g, e in zip(got, expected)), text


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


def test_kserve_v1_instances_get_the_ranked_labels_of_each(classifier):
    worker, _ = classifier
    v1, plain = worker.predict([{"instances": TEXTS[:2], "parameters": {"top_k": 2}},
                                {"inputs": TEXTS[:2], "parameters": {"top_k": 2}}])
    assert v1.status == 200 and v1.body == {"predictions": plain.body}

"""Token classification in-process, checked against transformers' own pipeline."""

from __future__ import annotations

import pytest

from transerve.operate.inprocess import LocalWorker
from transerve.build.prepare import SCORE_TOLERANCE

TEXTS = [
    "Angela Merkel met Emmanuel Macron in Paris.", "Hugging Face is based in New York City.",
    "John works at Microsoft in Seattle.", "no entities here at all", "x",
    "Dr. Jürgen Müller flew from Zürich to São Paulo on Lufthansa.", "I ❤️ Tokyo",
    "The United Nations met in Geneva on 12 March 2024.", "apple, banana, cherry",
    "Barack Obama was born in Honolulu, Hawaii.", "unbelievably antidisestablishmentarianism",
    "Email bob@example.com or call +1-555-0100.", "Ms. O'Neil-Smith visited the Louvre.",
    "東京 is Tokyo", "   leading and trailing spaces   ",
    "Sundar Pichai leads Google and Alphabet from Mountain View, California.",
    " ".join(["Berlin"] * 400),
]
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
STRATEGIES = ["none", "simple", "first", "max", "average"]


@pytest.fixture(scope="module", params=[(None, "torch"), (32, "torch"), (None, "onnxruntime"), (32, "onnxruntime")],
                ids=["torch-one-call", "torch-micro-batches", "onnxruntime-one-call", "onnxruntime-micro-batches"])
def tagger(request, tmp_path_factory, tiny_bert):
    """A tiny BERT token classifier (in one model call per batch, or in length-sorted
    micro-batches of at most 32 padded tokens; on torch, or on the ONNX graph exported at
    preparation), and transformers' pipeline on the same files."""
    budget, engine = request.param
    from transformers import BertForTokenClassification, pipeline

    mv, weights = tiny_bert(
        tmp_path_factory.mktemp("tagger"), BertForTokenClassification, "token_classification", LABELS, seed=1,
    )
    worker = LocalWorker(mv.with_handler(max_batch_tokens=budget, engine=engine))
    yield worker, lambda strategy: pipeline("token-classification", model=str(weights), aggregation_strategy=strategy, device="cpu")
    worker.close()


def tolerance(worker) -> float:
    """Scores from torch match the pipeline's to 1e-5; the ONNX graph is proved to 1e-4."""
    return 1e-5 if worker.mv.handler.engine == "torch" else SCORE_TOLERANCE


def same_entities(got: list[dict], expected: list[dict], tol: float) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert set(g) == set(e)
        for key in e:
            if key == "score":
                assert abs(g[key] - float(e[key])) < tol
            else:
                assert g[key] == e[key], key


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_entities_match_the_pipeline(tagger, strategy):
    worker, pipeline_for = tagger
    reference = pipeline_for(strategy)
    [answer] = worker.predict([{"inputs": TEXTS, "parameters": {"aggregation_strategy": strategy}}])
    assert answer.status == 200
    found = 0
    for text, got in zip(TEXTS, answer.body):
        expected = reference(text)
        same_entities(got, expected, tolerance(worker))
        found += len(expected)
    assert found > len(TEXTS)  # the random model does tag things: the comparison is not of empty lists


@pytest.mark.parametrize("text", [TEXTS[5], TEXTS[12], TEXTS[13]])
def test_offsets_tile_the_text(tagger, text):
    """With nothing ignored, the entities' spans cover every non-space character once, in order."""
    worker, _ = tagger
    [answer] = worker.predict([{"inputs": text, "parameters": {"aggregation_strategy": "first", "ignore_labels": []}}])
    assert answer.status == 200 and isinstance(answer.body[0], dict), "a single input gets a flat list of entities"
    spans = [(e["start"], e["end"]) for e in answer.body]
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert "".join(text[s:e] for s, e in spans).replace(" ", "") == text.replace(" ", "")


def test_default_aggregation_is_simple_and_ignore_labels_applies(tagger):
    worker, pipeline_for = tagger
    default, everything = worker.predict([
        {"inputs": TEXTS[0]},
        {"inputs": TEXTS[0], "parameters": {"aggregation_strategy": "none", "ignore_labels": []}},
    ])
    same_entities(default.body, pipeline_for("simple")(TEXTS[0]), tolerance(worker))
    assert len(everything.body) == len([t for t in worker.handler.task.tokenizer(TEXTS[0])["input_ids"]]) - 2


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"aggregation_strategy": "longest"}, "aggregation_strategy: expected"),
        ({"ignore_labels": "O"}, "ignore_labels: expected list"),
        ({"ignore_labels": [1]}, "ignore_labels must be a list of label strings"),
        ({"top_k": 3}, "unknown key 'top_k'"),
    ],
)
def test_bad_parameters_are_a_400(tagger, parameters, message):
    worker, _ = tagger
    bad, good = worker.predict([{"inputs": "Paris", "parameters": parameters}, {"inputs": "Paris"}])
    assert bad.status == 400 and message in bad.body["message"]
    assert good.status == 200


def test_messages_and_stream_are_refused_by_a_non_chat_task(tagger):
    worker, _ = tagger
    chat, stream = worker.predict([
        {"messages": [{"role": "user", "content": "hi"}]},
        {"inputs": "hi", "stream": True},
    ])
    assert chat.status == 400 and "'messages' is for chat models" in chat.body["message"]
    assert stream.status == 400 and "'stream' is for text generation" in stream.body["message"]

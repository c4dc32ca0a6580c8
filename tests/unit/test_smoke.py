"""The smoke checks a rollout runs on a new version's answers: shapes per task, expected subsets."""

from __future__ import annotations

import pytest

from transerve.operate.smoke import mismatches, problems

GOOD = [
    ("embedding", {"inputs": ["a", "b"]}, {"embeddings": [[0.1, 0.2], [0.3, 0.4]], "dimensions": 2, "input_tokens": 4}),
    ("embedding", "plain text", {"embeddings": [[0.1, 0.2]], "dimensions": 2, "input_tokens": 2}),
    ("classification", {"inputs": "x"}, [{"label": "pos", "score": 0.9}]),
    ("classification", {"inputs": ["x", "y"]}, [[{"label": "pos", "score": 0.9}], [{"label": "neg", "score": 0.8}]]),
    ("token_classification", {"inputs": "Paris"}, [{"entity_group": "LOC", "score": 0.9, "word": "paris", "start": 0, "end": 5}]),
    ("token_classification", {"inputs": ["nothing"]}, [[]]),
    ("generation", {"messages": [{"role": "user", "content": "hi"}]},
     {"generated_text": "Hello!", "details": {"finish_reason": "eos", "prompt_tokens": 9, "generated_tokens": 3}}),
]


@pytest.mark.parametrize("task, request_body, answer", GOOD)
def test_well_formed_answers_pass(task, request_body, answer):
    assert problems(task, request_body, answer) == []


@pytest.mark.parametrize(
    "task, request_body, answer, problem",
    [
        ("embedding", {"inputs": ["a", "b"]}, {"embeddings": [[0.1, 0.2]], "dimensions": 2}, "1 embeddings for 2 inputs"),
        ("embedding", {"inputs": "a"}, {"embeddings": [[0.1, float("nan")]], "dimensions": 2}, "not 2 finite numbers"),
        ("embedding", {"inputs": "a"}, {"error": "x"}, "expected an object with 'embeddings'"),
        ("classification", {"inputs": "x"}, [{"label": 3, "score": 0.9}], "is not {label: str, score: number}"),
        ("classification", {"inputs": ["x", "y"]}, [[{"label": "a", "score": 1}]], "expected a list of 2 results"),
        ("token_classification", {"inputs": "x"}, [{"entity_group": "LOC", "score": 0.9}], "is not {entity_group"),
        ("generation", {"inputs": "x"}, {"generated_text": "", "details": {"finish_reason": "crash"}}, "finish_reason is 'crash'"),
        ("generation", {"inputs": "x"}, {"text": "hi"}, "expected {generated_text, details}"),
        ("speech", {"inputs": "x"}, {}, "no shape check for task 'speech'"),
    ],
)
def test_malformed_answers_are_named(task, request_body, answer, problem):
    found = problems(task, request_body, answer)
    assert found and problem in found[0]


def test_expected_output_is_matched_as_a_subset_with_tolerance():
    answer = {"dimensions": 384, "embeddings": [[0.12345, 0.5]], "input_tokens": 7}
    assert mismatches({"dimensions": 384, "embeddings": [[0.1239, 0.5]]}, answer) == []
    assert mismatches({"dimensions": 512}, answer) == ["answer.dimensions: expected 512, got 384"]
    assert mismatches({"embeddings": [[0.2, 0.5]]}, answer) == ["answer.embeddings[0][0]: expected 0.2, got 0.12345"]
    assert mismatches({"model": "x"}, answer) == ["answer: no key 'model'"]
    assert mismatches([{"label": "pos"}], [{"label": "neg", "score": 1.0}]) == ["answer[0].label: expected 'pos', got 'neg'"]

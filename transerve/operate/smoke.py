"""Is an answer what a model version of this task should give? Used before a version takes traffic.

`problems(task, request, answer)` checks the shape the task promises (one result per
input, the keys and types of each); `mismatches(expect, answer)` checks a sample's
expected output, matched as a subset; `check` does both for a spec sample. All return
what is wrong, in words; [] is fine.
"""

from __future__ import annotations

import math
from typing import Any

FINISH_REASONS = ("length", "stop", "eos")


def _inputs(request: Any) -> tuple[int, bool]:
    """(how many results the answer must hold, whether it is one result not in a list)."""
    if isinstance(request, dict) and isinstance(request.get("inputs"), list):
        return len(request["inputs"]), False
    return 1, True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _embedding(answer: Any, n: int, single: bool) -> list[str]:
    if not isinstance(answer, dict) or not isinstance(answer.get("embeddings"), list):
        return [f"expected an object with 'embeddings', got {str(answer)[:100]}"]
    vectors, dims = answer["embeddings"], answer.get("dimensions")
    problems = []
    if len(vectors) != n:
        problems.append(f"{len(vectors)} embeddings for {n} inputs")
    if not isinstance(dims, int) or dims < 1:
        problems.append(f"'dimensions' is {dims!r}")
    for i, v in enumerate(vectors):
        if not isinstance(v, list) or len(v) != dims or not all(_number(x) for x in v):
            problems.append(f"embeddings[{i}] is not {dims} finite numbers")
            break
    return problems


def _labels(result: Any, where: str) -> list[str]:
    if not isinstance(result, list) or not result:
        return [f"{where}: expected a non-empty list of {{label, score}}, got {str(result)[:100]}"]
    for d in result:
        if not isinstance(d, dict) or not isinstance(d.get("label"), str) or not _number(d.get("score")):
            return [f"{where}: {str(d)[:100]} is not {{label: str, score: number}}"]
    return []


def _entities(result: Any, where: str) -> list[str]:
    if not isinstance(result, list):
        return [f"{where}: expected a list of entities, got {str(result)[:100]}"]
    for e in result:
        ok = (
            isinstance(e, dict)
            and isinstance(e.get("entity_group", e.get("entity")), str)
            and _number(e.get("score"))
            and isinstance(e.get("word"), str)
            and isinstance(e.get("start"), int)
            and isinstance(e.get("end"), int)
        )
        if not ok:
            return [f"{where}: {str(e)[:100]} is not {{entity_group, score, word, start, end}}"]
    return []


def _generated(result: Any, where: str) -> list[str]:
    details = result.get("details") if isinstance(result, dict) else None
    if (
        not isinstance(result, dict)
        or not isinstance(result.get("generated_text"), str)
        or not isinstance(details, dict)
    ):
        return [f"{where}: expected {{generated_text, details}}, got {str(result)[:100]}"]
    if details.get("finish_reason") not in FINISH_REASONS:
        return [f"{where}: details.finish_reason is {details.get('finish_reason')!r}"]
    if not isinstance(details.get("generated_tokens"), int) or details["generated_tokens"] < 1:
        return [f"{where}: details.generated_tokens is {details.get('generated_tokens')!r}"]
    return []


PER_RESULT = {"classification": _labels, "token_classification": _entities, "generation": _generated}


def problems(task: str, request: Any, answer: Any) -> list[str]:
    """What is wrong with the shape of `answer` to `request` for a model of `task`."""
    n, single = _inputs(request)
    if task == "embedding":
        return _embedding(answer, n, single)
    check = PER_RESULT.get(task)
    if check is None:
        return [f"no shape check for task {task!r}"]
    if single:
        return check(answer, "answer")
    if not isinstance(answer, list) or len(answer) != n:
        return [f"expected a list of {n} results, got {str(answer)[:100]}"]
    return [p for i, result in enumerate(answer) for p in check(result, f"answer[{i}]")]


def check(task: str, sample, answer: Any) -> list[str]:
    """Everything wrong with `answer` to a spec sample: its shape, then its expected output."""
    wrong = problems(task, sample.request, answer)
    if sample.expect is not None:
        wrong += mismatches(sample.expect, answer)
    return wrong


def mismatches(expect: Any, answer: Any, where: str = "answer") -> list[str]:
    """Where `answer` differs from `expect`: keys `expect` names, list items, numbers within 1e-3."""
    if isinstance(expect, dict):
        if not isinstance(answer, dict):
            return [f"{where}: expected an object, got {str(answer)[:80]}"]
        return [
            m
            for key, value in expect.items()
            for m in (
                mismatches(value, answer[key], f"{where}.{key}") if key in answer else [f"{where}: no key {key!r}"]
            )
        ]
    if isinstance(expect, list):
        if not isinstance(answer, list) or len(answer) != len(expect):
            return [f"{where}: expected a list of {len(expect)}, got {str(answer)[:80]}"]
        return [m for i, (e, a) in enumerate(zip(expect, answer)) for m in mismatches(e, a, f"{where}[{i}]")]
    if _number(expect) and _number(answer):
        return [] if abs(expect - answer) <= 1e-3 else [f"{where}: expected {expect}, got {answer}"]
    return [] if expect == answer else [f"{where}: expected {expect!r}, got {str(answer)[:80]!r}"]

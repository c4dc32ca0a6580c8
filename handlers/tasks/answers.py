"""The answer each task promises on the HF route, checked as a client reads it.

One checker per task, named by its entry in the registry (handlers.tasks); each takes the
answer, how many inputs the request sent, and whether it sent one input not in a list,
and says in words what is wrong ([] is fine). transerve's smoke checks (transerve.operate.smoke)
run them on a sample's answer before a version takes traffic. Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

FINISH_REASONS = ("length", "stop", "eos")


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def embeddings(answer: Any, n: int, single: bool) -> list[str]:
    """One object for the whole request: {embeddings: n vectors, dimensions}."""
    if not isinstance(answer, dict) or not isinstance(answer.get("embeddings"), list):
        return [f"expected an object with 'embeddings', got {str(answer)[:100]}"]
    vectors, dims = answer["embeddings"], answer.get("dimensions")
    problems = []
    if len(vectors) != n:
        problems.append(f"{len(vectors)} embeddings for {n} inputs")
    if not isinstance(dims, int) or dims < 1:
        problems.append(f"'dimensions' is {dims!r}")
    for i, v in enumerate(vectors):
        if not isinstance(v, list) or len(v) != dims or not all(number(x) for x in v):
            problems.append(f"embeddings[{i}] is not {dims} finite numbers")
            break
    return problems


def per_input(check: Callable[[Any, str], list[str]]) -> Callable[[Any, int, bool], list[str]]:
    """A checker of one result made a checker of the answer: the result itself for one input
    not in a list, else a list of n results."""

    def answer_check(answer: Any, n: int, single: bool) -> list[str]:
        if single:
            return check(answer, "answer")
        if not isinstance(answer, list) or len(answer) != n:
            return [f"expected a list of {n} results, got {str(answer)[:100]}"]
        return [p for i, result in enumerate(answer) for p in check(result, f"answer[{i}]")]

    answer_check.__doc__ = check.__doc__
    return answer_check


@per_input
def labels(result: Any, where: str) -> list[str]:
    """Per input: a non-empty list of {label, score}."""
    if not isinstance(result, list) or not result:
        return [f"{where}: expected a non-empty list of {{label, score}}, got {str(result)[:100]}"]
    for d in result:
        if not isinstance(d, dict) or not isinstance(d.get("label"), str) or not number(d.get("score")):
            return [f"{where}: {str(d)[:100]} is not {{label: str, score: number}}"]
    return []


@per_input
def entities(result: Any, where: str) -> list[str]:
    """Per input: a list of {entity_group (or entity), score, word, start, end}."""
    if not isinstance(result, list):
        return [f"{where}: expected a list of entities, got {str(result)[:100]}"]
    for e in result:
        ok = (
            isinstance(e, dict)
            and isinstance(e.get("entity_group", e.get("entity")), str)
            and number(e.get("score"))
            and isinstance(e.get("word"), str)
            and isinstance(e.get("start"), int)
            and isinstance(e.get("end"), int)
        )
        if not ok:
            return [f"{where}: {str(e)[:100]} is not {{entity_group, score, word, start, end}}"]
    return []


@per_input
def generated(result: Any, where: str) -> list[str]:
    """Per input: {generated_text, details: {finish_reason, generated_tokens >= 1}}."""
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

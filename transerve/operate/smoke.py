"""Is an answer what a model version of this task should give? Used before a version takes traffic.

`problems(task, request, answer)` checks the shape the task promises (one result per
input, the keys and types of each); `mismatches(expect, answer)` checks a sample's
expected output, matched as a subset; `check` does both for a spec sample. All return
what is wrong, in words; [] is fine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from handlers.tasks import entry
from handlers.tasks.answers import number

if TYPE_CHECKING:
    from transerve.build.spec import Sample


def _inputs(request: Any) -> tuple[int, bool]:
    """(how many results the answer must hold, whether it is one result not in a list)."""
    if isinstance(request, dict) and isinstance(request.get("inputs"), list):
        return len(request["inputs"]), False
    return 1, True


def problems(task: str, request: Any, answer: Any) -> list[str]:
    """What is wrong with the shape of `answer` to `request` for a model of `task` (the task's
    `answer` check in the registry: handlers.tasks.answers)."""
    try:
        shape = entry(task).answer
    except ValueError:
        return [f"no shape check for task {task!r}"]
    return shape(answer, *_inputs(request))


def check(task: str, sample: Sample, answer: Any) -> list[str]:
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
    if number(expect) and number(answer):
        return [] if abs(expect - answer) <= 1e-3 else [f"{where}: expected {expect}, got {answer}"]
    return [] if expect == answer else [f"{where}: expected {expect!r}, got {str(answer)[:80]!r}"]

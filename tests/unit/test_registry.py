"""The task registry (handlers/tasks/__init__.py) is the one place a task is described.

Each entry names things that exist (its class, transformers' loader, handler keys, engines,
OpenAI routes), what `init` writes for a task is a spec that loads, and no module outside the
registry decides by comparing a task's name: a comparison with a task's name in handlers/ or
transerve/ fails here, naming the line."""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path

import pytest
import transformers

from handlers.config import HandlerConfig
from handlers.protocols.openai import MODELS, ROUTES
from handlers.tasks import TASKS, TaskName, entry, task_class
from handlers.tasks.base import Task

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "handlers" / "tasks" / "__init__.py"
NAMES = {name.value for name in TaskName}


@pytest.mark.parametrize("name", list(TaskName))
def test_an_entry_names_what_exists(name):
    task = TASKS[name]
    cls = task_class(name)
    assert issubclass(cls, Task) and cls.name is name and task.name is name
    assert isinstance(getattr(transformers, task.auto_class), type)
    fields = {f.name for f in dataclasses.fields(HandlerConfig)}
    assert set(task.keys) <= fields - {"task"}
    assert set(task.engines) <= set(typing.get_args(typing.get_type_hints(HandlerConfig)["engine"]))
    assert "torch" in task.engines  # every task runs on the engine every machine has
    assert set(task.openai_routes) <= set(ROUTES) - {MODELS}
    assert task.decodes == cls.streams  # decoding tasks are the ones that stream


def test_every_enum_member_has_one_entry_and_unknown_names_say_the_known_ones():
    assert list(TASKS) == list(TaskName)
    assert entry("generation") is TASKS[TaskName.GENERATION]
    with pytest.raises(ValueError, match="unknown task 'translation'; known tasks: embedding, classification"):
        entry("translation")


@pytest.mark.parametrize("name", list(TaskName))
def test_init_writes_a_spec_of_each_task_that_loads(tmp_path, name):
    from transerve.build.scaffold import settings
    from transerve.build.spec import load_spec

    handler, runtime, sample = settings(name, {}, 4, chat=True)
    spec = {"name": "m", "task": name.value, "source": {"dir": str(tmp_path)}, "handler": handler, "runtime": runtime,
            "samples": [sample], "versions": {"1.0": {}}}
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.yaml").write_text(json.dumps(spec))  # JSON is YAML
    mv = load_spec(tmp_path / "model.yaml").version("1.0")
    assert mv.handler.task == name and mv.runtime.continuousBatching == (TASKS[name].decodes or None)


def _task_name_comparisons(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        constants = [c for o in operands for c in ([o] if isinstance(o, ast.Constant) else getattr(o, "elts", []))]
        if any(isinstance(c, ast.Constant) and c.value in NAMES for c in constants):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_the_registry_compares_a_task_name():
    found = [hit for package in ("handlers", "transerve") for path in sorted((ROOT / package).rglob("*.py"))
             if path != REGISTRY for hit in _task_name_comparisons(path)]
    assert found == [], "read the task's entry in handlers/tasks (TASKS) instead:\n" + "\n".join(found)


def test_the_comparison_finder_finds_one(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text('if cfg.task == "generation" or task in ("embedding", "other"):\n    pass\n')
    assert len(_task_name_comparisons(sample)) == 2

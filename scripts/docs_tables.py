"""The docs' reference tables, rendered from the code's own tables.

A page holds each table between `<!-- BEGIN generated:NAME -->` and `<!-- END generated:NAME -->`.

    python scripts/docs_tables.py           # rewrite every generated table in docs/ in place
    python scripts/docs_tables.py --check   # exit 1 naming each table that is stale or missing

tests/unit/test_docs.py runs the same check, so a new metric, spec key or OpenAI field fails
the tests until the page says it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

# The code's tables, all imported here (where they move, only this block changes).
from handlers.config import TASK_KEYS, UNIONS, HandlerConfig
from handlers.metrics import LABELS, METRICS
from handlers.protocols.openai import KEYS as OPENAI_KEYS
from handlers.protocols.openai import NEUTRAL as OPENAI_NEUTRAL
from handlers.protocols.openai import REQUIRED as OPENAI_REQUIRED
from handlers.protocols.openai import WHY as OPENAI_WHY
from handlers.tasks import TASKS
from transerve.build.spec import RawSpec, Runtime, Source, VersionOverrides

DOCS = Path(__file__).resolve().parents[1] / "docs"
REGION = re.compile(r"(<!-- BEGIN generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated:(?P=name) -->)", re.DOTALL)
WORDS = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "mapping", list: "list"}


def accepts(tp: Any) -> str:
    """A field's type in words: `mean`, `cls`; integer or unset."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(tp))
    if origin in UNIONS:
        return " or ".join("unset" if arg is type(None) else accepts(arg) for arg in typing.get_args(tp))
    return WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def default(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        return "empty"
    if field.default is dataclasses.MISSING:
        return "required"
    if field.default is None:
        return "unset"
    if isinstance(field.default, str) and field.default:
        return f"`{field.default}`"  # as a spec writes it
    return f"`{json.dumps(field.default)}`"


def rows(cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(`key`, accepts, default) for each field of a dataclass."""
    hints = typing.get_type_hints(cls)
    return [(f"`{prefix}{f.name}`", accepts(hints[f.name]), default(f)) for f in dataclasses.fields(cls) if f.name not in skip]


def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def spec_keys() -> str:
    """A model.yaml's own keys, its source's and a version's (transerve/build/spec.py)."""
    body = rows(RawSpec)
    body[2:2] = rows(Source, "source.")  # after `source`
    body += rows(VersionOverrides, "versions.<V>.")
    return table(("key", "accepts", "default"), body)


def handler_keys() -> str:
    """The handler: section (handlers/config.py: HandlerConfig), with the tasks each key is for (TASK_KEYS)."""
    body = [(key, ", ".join(TASK_KEYS.get(f.name, ("every task",))), kind, value)
            for f, (key, kind, value) in zip(dataclasses.fields(HandlerConfig), rows(HandlerConfig)) if f.name != "task"]
    return table(("key", "tasks", "accepts", "default"), body)


def runtime_keys() -> str:
    """The runtime: section, TorchServe's own per-model settings (transerve/build/spec.py: Runtime)."""
    return table(("key", "accepts", "default"), rows(Runtime))


def tasks() -> str:
    """The task registry (handlers/tasks/__init__.py: TASKS)."""
    def names(values) -> str:
        return ", ".join(f"`{v}`" for v in values) or "none"

    body = [(f"`{name}`", f"`{t.cls}`", f"`{t.auto_class}`", names(f"…{s}" for s in (*t.architectures, *t.bare_architectures)),
             "token by token" if t.decodes else "one forward pass", names(t.engines), names(f"/{r}" for r in t.openai_routes))
            for name, t in TASKS.items()]
    return table(("task", "class", "loads", "architectures", "answers in", "engines", "OpenAI routes"), body)


def metrics() -> str:
    """The handler's metrics (handlers/metrics.py: METRICS)."""
    body = [(f"`{name}`", kind.name.lower(), ", ".join(extra), description)
            for name, (kind, _, extra, description) in METRICS.items()]
    return (f"Every one also has the labels {', '.join(f'`{label}`' for label in LABELS)} (and `Hostname`).\n\n"
            + table(("metric", "type", "more labels", "what it counts"), body))


def openai_fields() -> str:
    """What each OpenAI route reads (handlers/protocols/openai.py: KEYS, REQUIRED); required in bold."""
    body = [(f"`/{route}`", ", ".join(f"**`{key}`**" if key in OPENAI_REQUIRED[route] else f"`{key}`" for key in keys))
            for route, keys in OPENAI_KEYS.items()]
    return table(("route", "fields (required in bold)"), body)


def openai_refused() -> str:
    """OpenAI's fields transerve does not implement (NEUTRAL, WHY): 400 unless off."""
    body = []
    for key, values in OPENAI_NEUTRAL.items():
        distinct = [v for i, v in enumerate(values) if v not in values[:i]]
        off = ", ".join(["left out", "`null`", *(f"`{json.dumps(v)}`" for v in distinct)])
        body.append((f"`{key}`", off, OPENAI_WHY.get(key, "not implemented")))
    return table(("field", "accepted only as", "otherwise 400, saying"), body)


TABLES: dict[str, Callable[[], str]] = {
    "spec-keys": spec_keys,
    "handler-keys": handler_keys,
    "runtime-keys": runtime_keys,
    "tasks": tasks,
    "metrics": metrics,
    "openai-fields": openai_fields,
    "openai-refused": openai_refused,
}


def region(name: str) -> str:
    """What stands between a table's markers: the table, a blank line either side."""
    return "\n" + TABLES[name]() + "\n"


def pages(docs: Path = DOCS) -> list[Path]:
    return sorted(docs.rglob("*.md"))


def stale(docs: Path = DOCS) -> list[str]:
    """What is wrong, in words: each generated table that differs from its render, is unknown, or is in no page."""
    problems, seen = [], set()
    for page in pages(docs):
        for match in REGION.finditer(page.read_text()):
            name, where = match["name"], page.relative_to(docs.parent)
            seen.add(name)
            if name not in TABLES:
                problems.append(f"{where}: generated:{name} is no table of scripts/docs_tables.py; known: {', '.join(TABLES)}")
            elif match["body"] != region(name):
                problems.append(f"{where}: generated:{name} is stale; run: python scripts/docs_tables.py")
    problems += [f"docs/: no page holds generated:{name}" for name in TABLES if name not in seen]
    return problems


def rewrite(docs: Path = DOCS) -> list[Path]:
    """Render every known table in place; the pages that changed."""
    changed = []
    for page in pages(docs):
        text = page.read_text()
        new = REGION.sub(lambda m: m[1] + (region(m["name"]) if m["name"] in TABLES else m["body"]) + m[4], text)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        problems = stale()
        print("\n".join(problems) or "docs: every generated table is up to date", file=sys.stderr if problems else sys.stdout)
        return 1 if problems else 0
    if argv:
        print("usage: python scripts/docs_tables.py [--check]", file=sys.stderr)
        return 2
    for page in rewrite():
        print(f"rewrote {page.relative_to(DOCS.parent)}")
    problems = stale()
    if problems:
        print("\n".join(problems), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

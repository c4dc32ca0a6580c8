"""SECURITY.md names the test behind each of its claims: every test and test file it names exists,
so a renamed or deleted test cannot leave a claim standing on nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def defined_tests() -> set[str]:
    names = set()
    for path in (ROOT / "tests").rglob("*.py"):
        names.update(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), flags=re.M))
    return names


def test_every_test_security_md_names_exists():
    text = (ROOT / "SECURITY.md").read_text()
    named = set(re.findall(r"(?:::|`)(test_\w+)", text))
    assert len(named) >= 10, named  # the table is read at all
    assert not named - defined_tests(), f"SECURITY.md names tests that do not exist: {sorted(named - defined_tests())}"
    files = set(re.findall(r"`(tests/[\w/.]+?)(?:::\w+)?`", text))
    assert files and all((ROOT / f).exists() for f in files), [f for f in files if not (ROOT / f).exists()]

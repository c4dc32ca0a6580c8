"""The docs say what the code does: each reference table generated from the code equals its
render (so a new metric, spec key or OpenAI field fails here until its page says it), every
page is in the site's nav, and the README stays a short front door whose links resolve."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify

from handlers.config import HandlerConfig
from handlers.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def load_docs_tables():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "scripts" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs_tables = load_docs_tables()


def pages() -> list[str]:
    return sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))


def nav_pages() -> list[str]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # mkdocs' !relative and the like
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    found: list[str] = []

    def walk(entry) -> None:
        if isinstance(entry, str):
            found.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                walk(value)
        elif isinstance(entry, list):
            for value in entry:
                walk(value)

    walk(config["nav"])
    return found


def anchors(page: Path) -> set[str]:
    """The ids mkdocs' toc gives a page's headings."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slugify(re.sub(r"[`*]", "", m[1]).strip(), "-") for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("name", sorted(docs_tables.TABLES))
def test_each_generated_table_equals_its_render(name):
    held = [(page, m["body"]) for page in docs_tables.pages() for m in docs_tables.REGION.finditer(page.read_text())
            if m["name"] == name]
    assert held, f"no page in docs/ holds generated:{name}"
    for page, body in held:
        assert body == docs_tables.region(name), (
            f"{page.relative_to(ROOT)}: generated:{name} is stale; run: python scripts/docs_tables.py")


def test_every_generated_region_names_a_table():
    assert not docs_tables.stale(), docs_tables.stale()


def test_a_new_metric_is_a_stale_table_until_the_docs_are_rewritten(tmp_path, monkeypatch):
    page = tmp_path / "docs" / "metrics.md"
    page.parent.mkdir()
    page.write_text("# Metrics\n\n<!-- BEGIN generated:metrics -->\n<!-- END generated:metrics -->\n")

    def metrics_problems() -> list[str]:
        return [p for p in docs_tables.stale(page.parent) if "generated:metrics" in p]

    assert metrics_problems() == ["docs/metrics.md: generated:metrics is stale; run: python scripts/docs_tables.py"]
    assert docs_tables.rewrite(page.parent) == [page] and metrics_problems() == []
    kind = next(iter(METRICS.values()))[0]
    monkeypatch.setitem(METRICS, "transerve_new_total", (kind, "count", [], "A metric nobody documented"))
    assert metrics_problems() == ["docs/metrics.md: generated:metrics is stale; run: python scripts/docs_tables.py"]
    assert docs_tables.main(["--check"]) == 1  # the real docs lack it too


def test_the_check_names_a_table_no_page_holds_and_an_unknown_one(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("<!-- BEGIN generated:nothing -->\n<!-- END generated:nothing -->\n")
    problems = docs_tables.stale(tmp_path / "docs")
    assert problems[0].startswith("docs/x.md: generated:nothing is no table of scripts/docs_tables.py")
    assert "docs/: no page holds generated:metrics" in problems


def test_every_handler_key_is_explained_beside_its_table():
    text = docs_tables.REGION.sub("", (DOCS / "models-and-specs.md").read_text())
    keys = [f.name for f in dataclasses.fields(HandlerConfig) if f.name != "task"]
    assert [key for key in keys if f"`{key}`" not in text] == []


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    assert sorted(nav_pages()) == pages()


def test_the_readme_is_at_most_10_kb():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 10_000, f"README.md is {size} bytes; move the detail to docs/"


def test_every_relative_link_in_the_readme_resolves():
    links = [link for link in LINK.findall((ROOT / "README.md").read_text()) if "://" not in link and not link.startswith("#")]
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), f"README.md links {link}: no such file"
        if anchor:
            assert anchor in anchors(ROOT / path), f"README.md links {link}: {path} has no heading {anchor!r}"


def test_the_readme_maps_every_page():
    linked = {link.partition("#")[0] for link in LINK.findall((ROOT / "README.md").read_text())}
    assert [page for page in pages() if f"docs/{page}" not in linked] == []

#!/usr/bin/env bash
# The static checks `make test` runs before pytest: ruff (lint and format) and mypy over the
# code that ships (handlers/, transerve/; settings in pyproject.toml), and the docs built
# strictly (a broken link, a page missing from the nav or a stale generated table fails).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
$bin/ruff check handlers transerve
$bin/ruff format --check handlers transerve
$bin/mypy
$bin/python scripts/docs_tables.py --check
export NO_MKDOCS_2_WARNING=1  # material 9.8 prints an end-of-life banner on every build
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
$bin/mkdocs build --strict --quiet -d "$site"
echo "check: ruff, mypy, docs tables and mkdocs --strict passed"

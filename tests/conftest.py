"""Shared fixtures: the default spec, and its archives built once per test session."""

from __future__ import annotations

import pytest

from transerve import archive
from transerve.spec import find_spec


@pytest.fixture(scope="session")
def minilm():
    return find_spec("minilm-embed")


@pytest.fixture(scope="session")
def store(tmp_path_factory, minilm):
    """A model store holding minilm-embed 1.0 and 1.1, built once for every test."""
    path = tmp_path_factory.mktemp("model_store")
    for version in ("1.0", "1.1"):
        archive.build(minilm.version(version), path, log=lambda _: None)
    return path

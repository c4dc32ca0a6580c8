"""Which registration URLs the management guard lets through to TorchServe."""

from __future__ import annotations

from pathlib import Path

import pytest

from transerve.edge.guard import allowed

STORE = Path("/srv/model_store")


@pytest.mark.parametrize("url", ["minilm-embed-1.0.mar", "a_b.c-1.mar", "file:///srv/model_store/minilm-embed-1.0.mar"])
def test_archives_in_the_store_pass(url):
    assert allowed(url, STORE)


@pytest.mark.parametrize("url", [
    "/tmp/evil", "/srv/model_store", "/srv/model_store/x.mar", "../x.mar", "x/../y.mar", "sub/x.mar", "x.tar.gz",
    "file:///etc/x.mar", "file:///srv/model_store/../x.mar", "file:///srv/model_store/sub/x.mar",
    "https://example.com/x.mar", "s3://bucket/x.mar", "", "x.mar\n",
])
def test_anything_else_is_refused(url):
    assert not allowed(url, STORE)

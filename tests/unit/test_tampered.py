"""A tampered archive (its bytes no longer the sha256 recorded when transerve built it) is refused
by every path that would serve it: `serve`, `validate` and `rollout` (and `register`, in
tests/e2e/test_security.py), each before anything runs it, saying what changed and how to rebuild."""

from __future__ import annotations

import shutil

import pytest

from transerve.build import archive

from transerve import cli
from transerve.operate.rollout import RolloutError, Rollouts
from transerve.build.spec import MODELS_DIR, find_spec


@pytest.fixture
def tampered(store, tmp_path):
    """A copy of the session's store where minilm-embed 1.0's archive has gained bytes."""
    copy = tmp_path / "store"
    copy.mkdir()
    for name in ("minilm-embed-1.0.mar", archive.INDEX):
        shutil.copy(store / name, copy / name)
    with open(copy / "minilm-embed-1.0.mar", "ab") as f:
        f.write(b"\0tampered")
    return copy


def test_serve_refuses_it_before_starting_torchserve(tampered, tmp_path, capsys, monkeypatch):
    from transerve.torchserve.server import Server

    def started(*_):
        raise AssertionError("serve started TorchServe with a tampered archive")

    monkeypatch.setattr(Server, "start", started)
    code = cli.main(["--model-store", str(tampered), "--run-dir", str(tmp_path / "run"), "--models-dir", str(MODELS_DIR),
                     "serve", "--models", "minilm-embed"])
    err = capsys.readouterr().err
    assert code == cli.FAILED and "changed since" in err and "--force" in err, err


def test_validate_refuses_it_before_loading_it(tampered, capsys, monkeypatch):
    import transerve.operate.inprocess

    monkeypatch.setattr(transerve.operate.inprocess, "LocalWorker", lambda *a, **k: pytest.fail("validate loaded a tampered archive"))
    code = cli.main(["--model-store", str(tampered), "validate", "minilm-embed", "1.0"])
    err = capsys.readouterr().err
    assert code == cli.FAILED and "changed since" in err, err


class Unreachable:
    """A management client that must not be asked to register anything."""

    def describe(self, name, version=None):
        return []

    def register(self, *args, **kwargs):
        raise AssertionError("the rollout registered a tampered archive")

    def unregister(self, name, version):  # the rollout's undo: nothing was registered
        from transerve.torchserve.management import ApiError

        raise ApiError(404, f"Model not found: {name}")


def test_rollout_refuses_it_before_registering(tampered, tmp_path):
    rollouts = Rollouts(Unreachable(), None, tampered, tmp_path / "run", log=lambda _: None)
    with pytest.raises(RolloutError, match="step 'archive' failed: .*changed since.*1.0 is not registered"):
        rollouts.rollout(find_spec("minilm-embed"), "1.0")

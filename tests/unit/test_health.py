"""The container probe without a server: it says unhealthy, and why."""

from __future__ import annotations

import json

from transerve.torchserve import health
from transerve.torchserve.server import free_ports


def test_no_config_is_unhealthy(tmp_path, capsys):
    assert health.main(["--run-dir", str(tmp_path)]) == 1
    assert "no TorchServe config in" in capsys.readouterr().out


def test_no_keys_yet_is_unhealthy(tmp_path):
    (tmp_path / "config.properties").write_text("inference_address=http://127.0.0.1:1\n")
    healthy, seen = health.check(tmp_path)
    assert not healthy and "still starting" in seen


def test_nothing_listening_is_unhealthy(tmp_path):
    [port] = free_ports(1)
    (tmp_path / "config.properties").write_text(
        f"inference_address=http://0.0.0.0:{port}\nmanagement_address=http://127.0.0.1:{port}\n")
    (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "k"}, "management": {"key": "m"}}))
    for model in (None, "minilm-embed"):
        healthy, seen = health.check(tmp_path, model, timeout=1)
        assert not healthy and "did not answer" in seen

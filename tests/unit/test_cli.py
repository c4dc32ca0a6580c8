"""The CLI's archive verb and its exit codes (no server needed)."""

from __future__ import annotations

import json

from transerve.cli import main


def test_archive_prints_path_size_and_sha256_and_reuses(store, capsys):
    assert main(["--model-store", str(store), "archive", "minilm-embed", "1.0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(store / "minilm-embed-1.0.mar")) and "sha256 " in line and line.endswith("(reused)")
    assert main(["--model-store", str(store), "archive", "minilm-embed", "all", "--json"]) == 0
    records = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [(r["version"], r["reused"]) for r in records] == [("1.0", True), ("1.1", True)]


def test_unknown_model_or_version_exits_2_with_a_message(store, capsys):
    assert main(["--model-store", str(store), "archive", "no-such-model"]) == 2
    assert "known models: minilm-embed" in capsys.readouterr().err
    assert main(["--model-store", str(store), "archive", "minilm-embed", "7.0"]) == 2
    assert "no version '7.0'; known: 1.0, 1.1" in capsys.readouterr().err


def test_status_without_a_server_in_this_run_dir_exits_1(tmp_path, capsys):
    # The e2e session's TorchServe may be up, but none was started from this run dir.
    assert main(["--run-dir", str(tmp_path), "status"]) == 1
    said = capsys.readouterr()
    assert "TorchServe is not running" in said.out or "no TorchServe was started from" in said.err

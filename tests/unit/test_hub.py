"""Hub sources from a Hugging Face cache laid out as huggingface_hub lays it out, offline.

Nothing here reaches the Hub (no machine of this project can): the download itself is
huggingface_hub's, and is not exercised; what is tested is everything around it.
"""

from __future__ import annotations

import json

import pytest

from transerve.build.hub import HubError, snapshot
from transerve.build.spec import SpecError, load_spec

REPO = "transerve-tests/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cache(tmp_path, monkeypatch, hub_layout):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_layout(tmp_path / "hub", REPO, folder, COMMIT, refs=("main", "v1"))
    return tmp_path / "hub"


def test_a_branch_or_tag_resolves_to_its_commit_offline(cache):
    for revision in (None, "main", "v1", COMMIT):
        snap = snapshot(REPO, revision)
        assert snap.commit == COMMIT and snap.path == cache / "models--transerve-tests--tiny-model" / "snapshots" / COMMIT
        assert snap.revision == (revision or "main")
        assert (snap.path / "model.safetensors").read_bytes() == b"weights"


def test_a_revision_the_cache_lacks_names_repo_revision_and_what_the_cache_has(cache):
    with pytest.raises(HubError) as caught:
        snapshot(REPO, "v2")
    message = str(caught.value)
    assert message.startswith(f"{REPO} at revision 'v2' is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    assert "refs main -> 0123456789ab, v1 -> 0123456789ab; snapshots 0123456789ab" in message
    with pytest.raises(HubError, match=r"transerve-tests/other at revision 'main' is not in the Hugging Face cache .* "
                                       r"has no revision of transerve-tests/other"):
        snapshot("transerve-tests/other")


def test_a_snapshot_without_config_or_weights_names_the_file(tmp_path, cache, hub_layout):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    other = "1" * 40
    hub_layout(cache, "transerve-tests/pickled", folder, other)
    with pytest.raises(HubError, match=rf"transerve-tests/pickled at revision 'main' \(commit {other}\): "
                                       r"no \*\.safetensors weights in .*snapshots/1{40}"):
        snapshot("transerve-tests/pickled")
    hub_layout(cache, "transerve-tests/bare", folder, other, skip=("config.json",))
    with pytest.raises(HubError, match=r"transerve-tests/bare at revision 'main' \(commit 1{40}\): no config\.json in"):
        snapshot("transerve-tests/bare")


def test_not_a_hub_id(cache):
    with pytest.raises(HubError, match="'not a repo' is not a Hub id: expected ORG/NAME"):
        snapshot("not a repo")


def spec(tmp_path, source: str, task: str = "") -> object:
    (tmp_path / "tiny").mkdir(exist_ok=True)
    path = tmp_path / "tiny" / "model.yaml"
    path.write_text(f"name: tiny\n{task}source: {source}\nversions: {{'1.0': {{}}}}\n")
    return path


def test_a_spec_with_a_hub_source_reads_the_snapshot_and_records_the_commit(tmp_path, cache):
    mv = load_spec(spec(tmp_path, f"{{hub: {REPO}, revision: main}}")).version()
    assert mv.task == "classification"  # from the snapshot's config.json
    assert mv.source_dir() == cache / "models--transerve-tests--tiny-model" / "snapshots" / COMMIT
    assert mv.provenance() == {"hub": REPO, "revision": "main", "commit": COMMIT}


def test_a_spec_pinned_to_a_missing_revision_fails_naming_file_repo_and_revision(tmp_path, cache):
    path = spec(tmp_path, f"{{hub: {REPO}, revision: {'f' * 40}}}")
    with pytest.raises(SpecError, match=rf"^{path}: source\.hub: {REPO} at revision 'f{{40}}' is not in the Hugging Face cache"):
        load_spec(path)  # without a task, loading reads the model's files
    # with one, loading does not need them; the build does
    pinned = load_spec(spec(tmp_path, f"{{hub: {REPO}, revision: {'f' * 40}}}", task="task: classification\n")).version()
    with pytest.raises(SpecError, match=rf"^{path}: source\.hub: {REPO} at revision 'f{{40}}' is not in the Hugging Face cache"):
        pinned.source_dir()


@pytest.mark.parametrize("source, expected", [
    ("{hub: a/b, dir: x}", r"source\.package: give exactly one of source\.package, source\.dir or source\.hub"),
    ("{dir: x, revision: main}", r"source\.revision: a revision pins a Hub source: use it with source\.hub"),
    ("{hub: a/b, revision: 123456789}", r"source\.revision: 123456789 is a number to YAML, not a commit: quote it"),
])
def test_source_mistakes(tmp_path, source, expected):
    with pytest.raises(SpecError, match=expected):
        load_spec(spec(tmp_path, source, task="task: classification\n"))


def test_a_gguf_source_needs_its_file_and_no_config(tmp_path, cache, hub_layout):
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    hub_layout(cache, "transerve-tests/gguf", folder, "2" * 40)
    assert snapshot("transerve-tests/gguf", gguf="model.Q4_K_M.gguf").commit == "2" * 40
    with pytest.raises(HubError, match=r"transerve-tests/gguf at revision 'main' \(commit 2{40}\): no model\.Q8_0\.gguf in"):
        snapshot("transerve-tests/gguf", gguf="model.Q8_0.gguf")
    with pytest.raises(HubError, match="no config.json"):
        snapshot("transerve-tests/gguf")


def test_an_archive_from_a_branch_records_its_commit_and_says_how_to_pin_it(tmp_path, cache, hub_layout, minilm):
    from transerve.build import archive

    hub_layout(cache, "transerve-tests/minilm", minilm.version().source_dir(), "3" * 40)
    path = spec(tmp_path, "{hub: transerve-tests/minilm, revision: main}")
    said = []
    record = archive.build(load_spec(path).version(), tmp_path / "store", log=said.append)
    assert record.source == {"hub": "transerve-tests/minilm", "revision": "main", "commit": "3" * 40}
    assert archive.read_index(tmp_path / "store")["tiny-1.0.mar"]["source"] == record.source
    assert f"note: {path}: source.hub transerve-tests/minilm at 'main' is commit {'3' * 40}; pin it " \
           f"(revision: \"{'3' * 40}\") to build from the same files every time" in said
    # the archive holds the files, not links into the cache
    import zipfile
    with zipfile.ZipFile(record.path) as z:
        assert z.read("model.safetensors") == (minilm.version().source_dir() / "model.safetensors").read_bytes()

"""Bring your own model: a folder (or a Hub id) -> `transerve init` -> `archive` -> served.

Four small models saved the way their users save them (tests/conftest.py: byo) go through
init, archive and registration on the session's TorchServe (what `transerve serve` does
after starting one; a machine runs one TorchServe, so the tests share it) with no edit to
the written spec, and answer the spec's own sample as transformers' pipeline,
sentence-transformers and generate do on the same files. Then the same from a Hugging Face
cache laid out as huggingface_hub lays it out, offline and pinned by revision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from transerve.build import archive
from transerve.cli import main
from transerve.torchserve.management import ApiError

COMMIT = "5f3b9c1d2e4a6b8c0d1e2f3a4b5c6d7e8f9a0b1c"
REPO = "transerve-tests/tiny-classifier"


def cli(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, f"transerve {' '.join(map(str, argv))}: exit {code}\n{out}\n{err}"
    return out


@pytest.fixture
def served(torchserve, store, inference, management, tmp_path, capsys):
    """init -> archive -> register, as a user types them; -> (name, spec, answer to the spec's sample)."""
    names = []

    def serve(kind: str, source, *init_options):
        name = f"byo-{kind.replace('_', '-')}"
        common = ["--models-dir", tmp_path / "models", "--model-store", store, "--run-dir", torchserve.run_dir]
        said = cli(capsys, *common, "init", name, "--source", source, *init_options)
        assert said.startswith(f"wrote {tmp_path / 'models' / name / 'model.yaml'}")
        cli(capsys, *common, "archive", name)
        names.append(name)
        cli(capsys, *common, "register", name, "1.0", "--workers", "1")
        spec = yaml.safe_load((tmp_path / "models" / name / "model.yaml").read_text())
        return name, spec, inference.predict(name, spec["samples"][0], timeout=120)

    yield serve
    for name in names:
        try:
            management.unregister(name, "1.0")
        except ApiError as e:  # only "not registered" is fine: a model left behind changes the next test
            assert e.status == 404, f"unregistering {name} 1.0: {e}"


def assert_labels_equal(got, expected, tolerance=1e-5):
    assert [d["label"] for d in got] == [d["label"] for d in expected]
    assert all(abs(g["score"] - e["score"]) < tolerance for g, e in zip(got, expected))


def test_a_classifier_folder(byo, served):
    from transformers import pipeline

    name, spec, answer = served("classifier", byo["classifier"])
    assert spec["task"] == "classification" and "handler" in spec and "task" not in spec["handler"]
    reference = pipeline("text-classification", model=str(byo["classifier"]), device="cpu")
    assert_labels_equal(answer, reference(spec["samples"][0]["inputs"]))


def test_a_token_classifier_folder(byo, served):
    from transformers import pipeline

    name, spec, answer = served("token_classifier", byo["token_classifier"])
    assert spec["task"] == "token_classification"
    reference = pipeline("token-classification", model=str(byo["token_classifier"]), aggregation_strategy="simple",
                         device="cpu")(spec["samples"][0]["inputs"])
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in answer] == \
        [(e["entity_group"], e["word"], e["start"], e["end"]) for e in reference]
    assert all(abs(g["score"] - float(e["score"])) < 1e-5 for g, e in zip(answer, reference))


def test_a_sentence_transformers_folder_keeps_its_cls_pooling(byo, served):
    from sentence_transformers import SentenceTransformer

    name, spec, answer = served("embedder", byo["embedder"])
    assert spec["task"] == "embedding" and spec["handler"]["pooling"] == "cls" and spec["handler"]["normalize"] is True
    texts = spec["samples"][0]["inputs"]
    reference = SentenceTransformer(str(byo["embedder"]), device="cpu").encode(texts)
    got = np.array(answer["embeddings"])
    assert got.shape == reference.shape and np.abs(got - reference).max() < 1e-5


def test_a_causal_lm_folder_answers_its_chat_sample_as_generate(byo, served):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, spec, answer = served("causal_lm", byo["causal_lm"])
    assert spec["task"] == "generation" and spec["runtime"]["continuousBatching"] is True
    sample = spec["samples"][0]
    tokenizer = AutoTokenizer.from_pretrained(byo["causal_lm"])
    model = AutoModelForCausalLM.from_pretrained(byo["causal_lm"], dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(sample["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=sample["parameters"]["max_new_tokens"], do_sample=False)
    tokens = out[0, len(ids):].tolist()
    assert answer["generated_text"] == tokenizer.decode(tokens, skip_special_tokens=True)
    assert (answer["details"]["prompt_tokens"], answer["details"]["generated_tokens"]) == (len(ids), len(tokens))


@pytest.fixture
def hub_cache(byo, hub_layout, tmp_path, monkeypatch):
    """The classifier as a Hub download left it in the cache: offline, only the cache answers."""
    cache = tmp_path / "hf-cache"
    hub_layout(cache, REPO, byo["classifier"], COMMIT, refs=("main",))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_hub_id_from_the_cache_offline_pinned_by_revision(byo, hub_cache, served, store):
    from transformers import pipeline

    name, spec, answer = served("hub", REPO, "--revision", "main")
    assert spec["source"] == {"hub": REPO, "revision": COMMIT}  # the branch, resolved once and pinned
    assert archive.read_index(store)[f"{name}-1.0.mar"]["source"] == {"hub": REPO, "revision": COMMIT, "commit": COMMIT}
    reference = pipeline("text-classification", model=str(byo["classifier"]), device="cpu")
    assert_labels_equal(answer, reference(spec["samples"][0]["inputs"]))


def test_a_wrong_revision_fails_naming_the_repo_the_revision_and_what_the_cache_has(hub_cache, tmp_path, store, capsys):
    models = tmp_path / "models"
    assert main(["--models-dir", str(models), "init", "wrong", "--source", REPO, "--revision", "v9"]) == 2
    err = capsys.readouterr().err
    assert f"--source: {REPO} at revision 'v9' is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in err
    assert f"the cache has refs main -> {COMMIT[:12]}; snapshots {COMMIT[:12]}" in err
    assert not (models / "wrong").exists()
    # a spec pinned to a commit the cache lacks: the build says which
    (models / "pinned").mkdir(parents=True)
    (models / "pinned" / "model.yaml").write_text(
        f"name: pinned\ntask: classification\nsource: {{hub: {REPO}, revision: '{'0' * 40}'}}\nversions: {{'1.0': {{}}}}\n")
    assert main(["--models-dir", str(models), "--model-store", str(store), "archive", "pinned"]) == 2
    err = capsys.readouterr().err
    assert f"pinned/model.yaml: source.hub: {REPO} at revision '{'0' * 40}' is not in the Hugging Face cache" in err

"""Shared fixtures: the default spec, and its archives built once per test session."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from transerve.build import archive
from transerve.build.spec import find_spec, load_spec


@pytest.fixture(autouse=True, scope="module")
def torch_threads():
    """A worker sets torch's threads for its whole process (a spec's `threads`); tests that
    load one in-process share this process, so each module gets the count back after it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm():
    return find_spec("minilm-embed")


@pytest.fixture(scope="session")
def chat_static():
    """smollm2-chat 1.0 (static batching) loaded in-process once, for every module that
    generates with it or checks answers against it."""
    from transerve.operate.inprocess import LocalWorker

    worker = LocalWorker(find_spec("smollm2-chat").version("1.0"))
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def embed_static(minilm):
    """minilm-embed 1.0 loaded in-process once, for the modules that only call it."""
    from transerve.operate.inprocess import LocalWorker

    worker = LocalWorker(minilm.version("1.0"))
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def store(tmp_path_factory, minilm):
    """A model store holding minilm-embed 1.0 and 1.1, built once for every test."""
    path = tmp_path_factory.mktemp("model_store")
    for version in ("1.0", "1.1"):
        archive.build(minilm.version(version), path, log=lambda _: None)
    return path


@pytest.fixture(scope="session")
def tiny_bert(minilm):
    """Builds small classifiers for the tasks no default model covers (see _tiny_bert)."""
    return lambda root, model_class, task, labels, **config: _tiny_bert(root, minilm, model_class, task, labels, **config)


def _tiny_bert(root, minilm, model_class, task: str, labels: list[str], seed: int = 0, **config):
    """A 2-layer BERT head of `model_class` with all-MiniLM-L6-v2's tokenizer and its own
    labels, saved as safetensors under root/weights, with a spec for it; -> (version, weights)."""
    from transformers import AutoTokenizer, BertConfig

    torch.manual_seed(seed)
    bert = BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        initializer_range=0.5, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}, **config,
    )
    weights = root / "weights"
    model_class(bert).save_pretrained(weights)
    AutoTokenizer.from_pretrained(minilm.version().source_dir()).save_pretrained(weights)
    name = f"tiny-{task.replace('_', '-')}"
    spec = root / name / "model.yaml"
    spec.parent.mkdir()
    spec.write_text(f"name: {name}\ntask: {task}\nsource: {{dir: ../weights}}\nruntime: {{batchSize: 8}}\nversions: {{'1.0': {{}}}}\n")
    return load_spec(spec).version("1.0"), weights


# Hypothesis (tests/unit/test_fuzz_bodies.py): in CI a fixed seed and no example database,
# so a run is reproducible from the commit alone; elsewhere new examples each run.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def byo(tmp_path_factory, minilm):
    """Four small models saved the way their users save them, for `transerve init` to read:
    {kind: folder}. A classifier and a token classifier (transformers' save_pretrained), an
    embedding model in sentence-transformers' layout (CLS pooling and Normalize, so a reader
    that assumed mean pooling would answer differently), and a causal LM with SmolLM2's
    tokenizer and chat template. Random weights: the tests compare against the same files
    loaded by transformers and sentence-transformers, not against good answers."""
    return _byo(tmp_path_factory.mktemp("byo"), minilm)


def _byo(root, minilm):
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification,
                              BertModel, LlamaConfig, LlamaForCausalLM)

    from transerve.build.prepare import model_dir

    bert_tokenizer = AutoTokenizer.from_pretrained(minilm.version().source_dir())

    def bert(labels=(), **extra):
        return BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, initializer_range=0.5, id2label=dict(enumerate(labels)),
                          label2id={l: i for i, l in enumerate(labels)}, **extra)

    folders = {}
    for kind, make in (("classifier", lambda: BertForSequenceClassification(bert(["NEGATIVE", "POSITIVE"]))),
                       ("token_classifier", lambda: BertForTokenClassification(bert(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])))):
        torch.manual_seed(1)
        folders[kind] = root / kind
        make().save_pretrained(folders[kind])
        bert_tokenizer.save_pretrained(folders[kind])

    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers 6 moved its modules
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    torch.manual_seed(2)
    encoder = root / "encoder"
    BertModel(bert()).save_pretrained(encoder)
    bert_tokenizer.save_pretrained(encoder)
    transformer = models.Transformer(str(encoder), max_seq_length=128)
    st = SentenceTransformer(modules=[transformer, models.Pooling(64, pooling_mode="cls"), models.Normalize()], device="cpu")
    folders["embedder"] = root / "embedder"
    st.save(str(folders["embedder"]))

    chat_tokenizer = AutoTokenizer.from_pretrained(model_dir(find_spec("smollm2-chat").version(), log=lambda _: None))
    torch.manual_seed(3)
    llama = LlamaConfig(vocab_size=len(chat_tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                        bos_token_id=chat_tokenizer.bos_token_id, eos_token_id=chat_tokenizer.eos_token_id,
                        tie_word_embeddings=True)
    folders["causal_lm"] = root / "causal_lm"
    LlamaForCausalLM(llama).save_pretrained(folders["causal_lm"])
    chat_tokenizer.save_pretrained(folders["causal_lm"])
    return folders


def lay_out_hub_cache(cache, repo: str, folder, commit: str, refs=("main",), skip=()):
    """`folder`'s files put in a Hugging Face cache as huggingface_hub lays out a download:
    models--ORG--NAME/blobs/<sha256> holds each file once, snapshots/<commit>/<path> links to
    it, refs/<branch> names the commit. `skip`: paths left out of the snapshot."""
    import hashlib
    from pathlib import Path

    repo_dir = Path(cache) / f"models--{repo.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or relative in skip:
            continue
        data = path.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo_dir / "snapshots" / commit / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return repo_dir


@pytest.fixture(scope="session")
def hub_layout():
    """lay_out_hub_cache, for the test modules."""
    return lay_out_hub_cache

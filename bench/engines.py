"""The engines side by side, in one run: minilm-embed on torch (1.0), on torch in bfloat16
(1.2) and on ONNX Runtime (2.0).

    make bench-engines             # or: .venv/bin/python bench/engines.py [--quick]

- raw, in-process, no server, 2 intra-op threads: torch (transformers' model, float32 and
  bfloat16) and ONNX Runtime (the graph `transerve.build.prepare` exported and proved for 2.0), the same tokenizer, dynamic
  padding and mean pooling, at batch sizes 8 to 64, the best of each (before and after the
  served points: the higher counts, so a slow minute cannot flatter transerve);
- served, on one real TorchServe: the three versions as the spec runs them (2 workers x 1 thread,
  batchSize 32), one input per request, 1, 16 and 64 closed-loop clients, the versions
  alternated point by point; short (~20 tokens) and long (~200 tokens) inputs;
- accuracy beside speed: cosine to sentence-transformers of every path's vectors (raw torch,
  raw ONNX Runtime, and what each served version answers) over 128 short and 64 long inputs.
Results: bench/results/engines.json and bench/results/ENGINES.md. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402

from bench import CONCURRENCY, LONG, SHORT, Bench, by_batch_size, raw_embedder  # noqa: E402
from transerve.build import archive  # noqa: E402
from transerve.build.prepare import model_dir  # noqa: E402
from transerve.build.spec import find_spec  # noqa: E402

RESULTS = REPO / "bench" / "results"
BATCHES = (8, 16, 32, 64)
TARGET = 1.3  # transerve on ONNX Runtime / raw torch, 64 clients, short inputs
COSINE_TARGET = 0.9999


def ort_embedder(onnx_dir: Path, tokenizer, max_length: int, threads: int):
    import onnxruntime

    from handlers.engines.ort import GRAPH

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(onnx_dir / GRAPH), options, providers=["CPUExecutionProvider"])

    def embed(batch: list[str]) -> torch.Tensor:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        [hidden] = session.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        hidden, mask = torch.from_numpy(hidden), torch.from_numpy(enc["attention_mask"]).unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    return embed


def raw(embedders: dict, seconds: float) -> dict:
    return {label: {name: by_batch_size(embed, corpus, BATCHES, seconds) for name, embed in embedders.items()}
            for label, corpus in (("short", SHORT), ("long", LONG))}


def cosines(vectors, reference) -> dict:
    vectors = np.asarray(vectors, dtype=np.float64)
    c = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    return {"min": round(float(c.min()), 7), "mean": round(float(c.mean()), 7)}


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    top.add_argument("--quick", action="store_true", help="short points, to try the benchmark")
    top.add_argument("--out", default=str(RESULTS))
    args = top.parse_args(argv)
    point, raw_seconds = (2.0, 1.0) if args.quick else (6.0, 3.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    threads = torch.get_num_threads()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "threads": threads,
            "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    import onnxruntime

    meta["onnxruntime"] = onnxruntime.__version__

    spec = find_spec("minilm-embed")
    versions = {"torch": spec.version("1.0"), "torch bfloat16": spec.version("1.2"), "onnxruntime": spec.version("2.0")}
    store = REPO / ".transerve" / "bench" / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    print("archives ...", flush=True)
    for mv in versions.values():
        record = archive.build(mv, store, log=print)
        print(f"  {record.path}: {record.size / 1e6:.1f} MB", flush=True)

    max_length = versions["torch"].handler.max_length
    tokenizer, model, torch_embed = raw_embedder(model_dir(versions["torch"]), max_length)
    bfloat16 = copy.deepcopy(model).to(torch.bfloat16)
    ort_embed = ort_embedder(model_dir(versions["onnxruntime"]), tokenizer, max_length, threads)
    embedders = {"torch": lambda batch: torch_embed(batch), "torch bfloat16": lambda batch: torch_embed(batch, bfloat16).float(),
                 "onnxruntime": ort_embed}

    print("accuracy: cosine to sentence-transformers ...", flush=True)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(versions["torch"].source_dir()), device="cpu")
    corpus = {"short": SHORT[:128], "long": LONG[:64]}
    reference = {label: st.encode(texts, normalize_embeddings=True) for label, texts in corpus.items()}
    accuracy = {f"raw {name}": {label: cosines(torch.cat([embed(texts[i:i + 32]) for i in range(0, len(texts), 32)]).numpy(),
                                               reference[label]) for label, texts in corpus.items()}
                for name, embed in embedders.items()}
    torch.set_num_threads(threads)

    print("raw, in-process (before the served points) ...", flush=True)
    before = raw(embedders, raw_seconds)
    print(f"  {json.dumps(before)}", flush=True)

    served: dict = {"short": [], "long": []}
    with Bench(store, REPO / ".transerve" / "bench" / "run") as bench:
        for mv in versions.values():
            bench.register(mv.archive_name, mv.runtime.minWorkers)
        headers = bench.headers()
        for name, mv in versions.items():
            def served_vectors(texts: list[str]) -> list:  # 32 a request: within max_inputs_per_request
                answers = [requests.post(f"{bench.url(mv.name)}/{mv.version}", json={"inputs": texts[i:i + 32]},
                                         headers=headers, timeout=300) for i in range(0, len(texts), 32)]
                return [v for a in answers for v in a.json()["embeddings"]]

            vectors = {label: served_vectors(texts) for label, texts in corpus.items()}
            accuracy[f"transerve {name}"] = {label: cosines(vectors[label], reference[label]) for label in corpus}
        for label, texts in (("short", SHORT), ("long", LONG)):
            for clients in CONCURRENCY:
                for name, mv in versions.items():
                    summary = bench.load(f"{mv.name}/{mv.version}", texts, clients, point)
                    served[label].append({"system": f"transerve {name}", **summary})
                    print(f"  {label:5} transerve {name:11} {clients:2} clients: {summary['inputs_per_s']:7.1f} inputs/s, "
                          f"p50 {summary['latency_ms']['p50']} p99 {summary['latency_ms']['p99']} ms, errors {summary['errors']}",
                          flush=True)

    print("raw, in-process (after the served points) ...", flush=True)
    torch.set_num_threads(threads)
    after = raw(embedders, raw_seconds)
    print(f"  {json.dumps(after)}", flush=True)
    best = {label: {name: max(*before[label][name].values(), *after[label][name].values()) for name in embedders}
            for label in before}

    meta["seconds"] = round(time.perf_counter() - began, 1)
    results = {"meta": meta, "runtime": {"workers": versions["torch"].runtime.minWorkers,
                                         "threads": versions["torch"].handler.threads,
                                         "batchSize": versions["torch"].runtime.batchSize},
               "raw_before": before, "raw_after": after, "raw_best": best, "served": served, "accuracy": accuracy}
    (out / "engines.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "ENGINES.md").write_text(report(results))
    print(f"done in {meta['seconds']:.0f}s: {out / 'ENGINES.md'}")
    return 0


def report(r: dict) -> str:
    meta, best = r["meta"], r["raw_best"]

    def at(label: str, system: str, clients: int) -> float:
        [p] = [p for p in r["served"][label] if p["system"] == system and p["clients"] == clients]
        return p["inputs_per_s"]

    ort64 = at("short", "transerve onnxruntime", 64)
    ratio = ort64 / best["short"]["torch"]
    worst = min(v["min"] for path, a in r["accuracy"].items() if "onnxruntime" in path for v in a.values())
    bf64 = at("short", "transerve torch bfloat16", 64)
    bf_worst = min(v["min"] for path, a in r["accuracy"].items() if "bfloat16" in path for v in a.values())
    lines = [
        "# Engines: torch float32, torch bfloat16 and ONNX Runtime (minilm-embed 1.0, 1.2 and 2.0)", "",
        f"`bench/engines.py` on {meta['date']}: {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}, "
        f"onnxruntime {meta['onnxruntime']}, {meta['seconds']:.0f} s in all. Every figure comes from this one run.", "",
        "## Targets", "",
        "| target | goal | reached | met |", "| --- | --- | --- | --- |",
        f"| transerve on ONNX Runtime / raw torch, 64 clients, short inputs | >= {TARGET} | {ratio:.2f} "
        f"({ort64:.0f} / {best['short']['torch']:.0f} inputs/s) | {'yes' if ratio >= TARGET else '**no**'} |",
        f"| cosine to sentence-transformers, ONNX Runtime (raw and served) | >= {COSINE_TARGET} | {worst:.7f} (worst) | "
        f"{'yes' if worst >= COSINE_TARGET else '**no**'} |",
        f"| (opt-in, 1.2) transerve on torch bfloat16 / raw torch float32, 64 clients, short inputs | reported | "
        f"{bf64 / best['short']['torch']:.2f} ({bf64:.0f} / {best['short']['torch']:.0f} inputs/s), worst cosine {bf_worst:.7f} | — |", "",
        "## Throughput, inputs/s", "",
        f"Raw: in-process, {meta['threads']} threads, the best batch size of {', '.join(map(str, BATCHES))}, best of before and after "
        f"the served points. Served: {r['runtime']['workers']} workers x {r['runtime']['threads']} thread, batchSize "
        f"{r['runtime']['batchSize']}, one input per request.", "",
        "| inputs | system | 1 client | 16 clients | 64 clients | x raw torch at 64 |", "| --- | --- | --- | --- | --- | --- |",
    ]
    names = list(best["short"])
    for label in ("short", "long"):
        for name in names:
            b = best[label][name]
            lines.append(f"| {label} | raw {name} (best batch) | {b:.0f} | {b:.0f} | {b:.0f} | {b / best[label]['torch']:.2f} |")
        for name in names:
            system = f"transerve {name}"
            cells = [f"{at(label, system, c):.1f}" for c in CONCURRENCY]
            lines.append(f"| {label} | {system} | {' | '.join(cells)} | {at(label, system, 64) / best[label]['torch']:.2f} |")
    lines += ["", "Raw inputs/s by batch size (before / after the served points):", ""]
    for label in ("short", "long"):
        for name in names:
            pairs = ", ".join(f"{k}: {r['raw_before'][label][name][k]:.0f} / {r['raw_after'][label][name][k]:.0f}"
                              for k in r["raw_before"][label][name])
            lines.append(f"- {label}, {name}: {pairs}")
    lines += ["", "## Latency, ms (p50 / p99)", "", "| inputs | system | 1 client | 16 clients | 64 clients |", "| --- | --- | --- | --- | --- |"]
    for label in ("short", "long"):
        for name in names:
            cells = []
            for c in CONCURRENCY:
                [p] = [p for p in r["served"][label] if p["system"] == f"transerve {name}" and p["clients"] == c]
                cells.append(f"{p['latency_ms']['p50']} / {p['latency_ms']['p99']}")
            lines.append(f"| {label} | transerve {name} | {' | '.join(cells)} |")
    lines += ["", "## Accuracy: cosine to sentence-transformers (min / mean)", "",
              "| path | 128 short inputs | 64 long inputs |", "| --- | --- | --- |"]
    for path, a in r["accuracy"].items():
        lines.append(f"| {path} | {a['short']['min']:.7f} / {a['short']['mean']:.7f} | {a['long']['min']:.7f} / {a['long']['mean']:.7f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

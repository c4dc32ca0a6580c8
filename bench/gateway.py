"""The OpenAI gateway's own cost: the same OpenAI request through the gateway
(`POST /v1/embeddings`, the model's default version looked up) and straight to TorchServe's
route (`POST /predictions/minilm-embed/1.0/v1/embeddings`), on one TorchServe.

    make bench-gateway             # or: .venv/bin/python bench/gateway.py [--seconds S]

- 1 client: p50 latency of each path, the two alternated in rounds (the machine's speed
  drifts between minutes); the gateway's added latency is the difference of the p50s.
- 64 clients: requests per second of each path, alternated the same way, and the CPU the
  gateway process used meanwhile (on 2 cores it competes with the workers and the client).
Results: bench/results/gateway.json and bench/results/GATEWAY.md. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import psutil  # noqa: E402

import loadgen  # noqa: E402
from bench import Bench, write  # noqa: E402
from transerve.build import archive  # noqa: E402
from transerve.build.spec import find_spec  # noqa: E402

RESULTS = REPO / "bench" / "results"
NAME, VERSION = "minilm-embed", "1.0"
SENTENCES = ["TorchServe serves transformers models.", "A short sentence to embed.", "How far is the moon?",
             "The gateway forwards every request to the default version."]


def body(client: int, n: int) -> dict:
    return {"model": NAME, "input": SENTENCES[(client + n) % len(SENTENCES)], "encoding_format": "float"}


def pooled(runs: list[loadgen.Run]) -> loadgen.Run:
    return loadgen.Run(clients=runs[0].clients, seconds=sum(r.seconds for r in runs), samples=[s for r in runs for s in r.samples])


def measure(urls: dict[str, str], headers: dict, clients: int, seconds: float, rounds: int, gateway: psutil.Process) -> dict:
    runs: dict[str, list[loadgen.Run]] = {path: [] for path in urls}
    cpu: dict[str, float] = {path: 0.0 for path in urls}
    for _ in range(rounds):
        for path, url in urls.items():
            before = sum(gateway.cpu_times()[:2])
            runs[path].append(loadgen.run(url, body, clients, seconds, headers))
            cpu[path] += sum(gateway.cpu_times()[:2]) - before
    out = {}
    for path in urls:
        run = pooled(runs[path])
        out[path] = {**run.summary(), "requests_per_s": round(len(run.ok) / run.seconds, 1),
                     "gateway_cpu_cores": round(cpu[path] / run.seconds, 2),
                     "gateway_cpu_ms_per_request": round(cpu[path] / max(len(run.ok), 1) * 1000, 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="seconds per round and path (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point, paths alternated (default 3)")
    args = parser.parse_args(argv)
    store = REPO / "model_store"
    mv = find_spec(NAME).version(VERSION)
    archive.build(mv, store, log=lambda _: None)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with Bench(store, REPO / ".transerve" / "bench-gateway") as bench:
        bench.register(mv.archive_name, workers=mv.runtime.minWorkers)
        urls = {"torchserve": f"{bench.url(NAME)}/{VERSION}/v1/embeddings",
                "gateway": f"{bench.server.url('openai')}/embeddings"}
        gateway = psutil.Process(json.loads((bench.server.run_dir / "gateway.json").read_text())["pid"])
        for url in urls.values():  # warm both paths and check they answer
            warm = loadgen.run(url, body, 4, 3, bench.headers())
            if warm.errors or not warm.ok:
                sys.exit(f"{url}: {warm.errors} errors while warming: {[s.error or s.status for s in warm.samples][:3]}")
        one = measure(urls, bench.headers(), 1, args.seconds, args.rounds, gateway)
        many = measure(urls, bench.headers(), 64, args.seconds, args.rounds, gateway)
    result = {
        "started": started, "machine": f"{platform.machine()}, {psutil.cpu_count()} cores",
        "request": body(0, 0), "workers": mv.runtime.minWorkers, "seconds_per_round": args.seconds, "rounds": args.rounds,
        "one_client": one, "clients_64": many,
        "added_p50_ms": round(one["gateway"]["latency_ms"]["p50"] - one["torchserve"]["latency_ms"]["p50"], 2),
        "throughput_ratio_64": round(many["gateway"]["requests_per_s"] / many["torchserve"]["requests_per_s"], 3),
    }
    RESULTS.mkdir(exist_ok=True)
    write(RESULTS / "gateway.json", result)
    (RESULTS / "GATEWAY.md").write_text(report(result))
    print(report(result))
    return 0


def report(r: dict) -> str:
    rows = []
    for label, point in (("1 client", r["one_client"]), ("64 clients", r["clients_64"])):
        for path in ("torchserve", "gateway"):
            p = point[path]
            rows.append(f"| {label} | {path} | {p['requests']} | {p['errors']} | {p['requests_per_s']} | "
                        f"{p['latency_ms']['p50']} | {p['latency_ms']['p99']} | {p['gateway_cpu_cores']} | "
                        f"{p['gateway_cpu_ms_per_request'] if path == 'gateway' else ''} |")
    return "\n".join([
        "# The OpenAI gateway's overhead (bench/gateway.py)", "",
        f"Run {r['started']} on {r['machine']}; {json.dumps(r['request'])} to minilm-embed {VERSION} "
        f"({r['workers']} workers), {r['rounds']} rounds of {r['seconds_per_round']} s per path and point, paths alternated.",
        "`torchserve` is the handler's OpenAI route called directly (POST /predictions/minilm-embed/1.0/v1/embeddings);",
        "`gateway` the same request to POST /v1/embeddings on the gateway, which finds the default version and forwards it.", "",
        "| clients | path | requests | errors | requests/s | p50 ms | p99 ms | gateway CPU (cores) | gateway CPU per request (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        f"- added p50 latency at 1 client: **{r['added_p50_ms']} ms**",
        f"- throughput at 64 clients, gateway / TorchServe route: **{r['throughput_ratio_64']}**", "",
    ])


if __name__ == "__main__":
    sys.exit(main())

"""Generation under load: static batching (smollm2-chat 1.0) against continuous batching (2.0).

    make bench-generation          # or: .venv/bin/python bench/continuous.py [--quick]

One run, on one real TorchServe (loopback, token auth on), in this order:
  1. the raw reference, in-process: `model.generate` on a static batch of 16 prompts and on
     one prompt, 64 new tokens each (the batch of 16 again beside each 16-stream point and
     at the end);
  2. for each version, registered alone (1.0 static batching, then 2.0 continuous batching):
     - closed loop: 1 stream, then 16 concurrent streams of 64 tokens (the prompts of 1.);
     - a late short request: 6 streams of 200 tokens running, then an 8-token request;
     - open loop: Poisson arrivals at each rate for a fixed time, mixed prompts (a question
       or a ~300-token text) and outputs (16, 64 or 160 tokens, end-of-text ignored), every
       request streamed and some closed by their client after the first chunk; then the
       requests still in flight are waited for (at most `DRAIN` s).
Results: bench/results/continuous.json and bench/results/CONTINUOUS.md. The targets are
ratios within this one run; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

import loadgen  # noqa: E402
from bench import GEN_PROMPTS, WORDS, Bench, write  # noqa: E402
from transerve import archive  # noqa: E402
from transerve.prepare import model_dir  # noqa: E402
from transerve.spec import find_spec  # noqa: E402

RESULTS = REPO / "bench" / "results"
NAME = "smollm2-chat"
SYSTEMS = (("static batching", "1.0"), ("continuous batching", "2.0"))
RATES = (0.5, 1.0, 1.5, 2.0)  # requests per second
OUTPUTS = ((16, 0.4), (64, 0.4), (160, 0.2))  # (new tokens, share): 64 tokens on average
LONG_PROMPT_SHARE = 0.3
ABANDON_SHARE = 0.15  # closed by the client after the first chunk
DRAIN = 180  # seconds to wait for the requests in flight once arrivals stop
QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for writing clear code.",
    "Why is the sky blue? Answer briefly.",
    "Name four planets of the solar system.",
    "How do I boil an egg?",
]


def long_text(seed: int, words: int = 220) -> str:
    rng = random.Random(seed)
    return "Summarize this text: " + " ".join(rng.choice(WORDS) for _ in range(words))


# --- raw ---------------------------------------------------------------------------------

class Raw:
    """The model in-process, no server: `model.generate` with 64 new tokens, and prefills."""

    def __init__(self, model_path: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()

    def tokens_per_s(self, batch: int, repeats: int) -> float:
        """A static batch of `batch` prompts (those of the closed loop), the best of `repeats`."""
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": GEN_PROMPTS[i % len(GEN_PROMPTS)]}],
                                                    add_generation_prompt=True, tokenize=False) for i in range(batch)]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        best = 0.0
        with torch.inference_mode():
            for _ in range(repeats):
                started = time.perf_counter()
                out = self.model.generate(**inputs, max_new_tokens=64, min_new_tokens=64, do_sample=False)
                generated = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
                best = max(best, generated / (time.perf_counter() - started))
        return round(best, 2)

    def prefill_ms(self, tokens: int) -> float:
        ids = torch.randint(100, 10_000, (1, tokens), generator=torch.Generator().manual_seed(tokens))
        times = []
        with torch.inference_mode():
            for _ in range(4):
                started = time.perf_counter()
                self.model(input_ids=ids, logits_to_keep=1)
                times.append(time.perf_counter() - started)
        return round(min(times) * 1000, 1)

    def reference(self, repeats: int) -> dict:
        return {"batch_16_tokens_per_s": self.tokens_per_s(16, repeats), "one_tokens_per_s": self.tokens_per_s(1, repeats),
                "repeats": repeats, "prefill_ms": {str(n): self.prefill_ms(n) for n in (40, 300, 512)}}


# --- one request, streamed ----------------------------------------------------------------

@dataclass
class Answer:
    status: int = 0
    sent: float = 0.0  # perf_counter() when the request was sent
    first: float | None = None  # seconds to the first chunk
    latency: float = 0.0  # seconds to the end (or to the close, when abandoned)
    tokens: int = 0  # generated tokens the last chunk reports
    asked: int = 0  # max_new_tokens asked for
    abandoned: bool = False
    error: str = ""
    gaps: list[float] = field(default_factory=list)  # seconds between chunks

    @property
    def completed(self) -> bool:
        return self.status == 200 and not self.abandoned and self.tokens == self.asked

    @property
    def per_token(self) -> float | None:
        if self.completed and self.first is not None and self.tokens > 1:
            return (self.latency - self.first) / (self.tokens - 1)
        return None


def stream(url: str, headers: dict, body: dict, abandon: bool = False, timeout: float = 600) -> Answer:
    """POST a streamed request and read it to its end, or close it after the first chunk."""
    parts = urlsplit(url)
    answer = Answer(sent=time.perf_counter(), asked=body["parameters"]["max_new_tokens"], abandoned=abandon)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", parts.path, body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        answer.status = response.status
        details, last = None, None
        while line := response.readline():
            if not line.strip():
                continue
            now = time.perf_counter()
            if last is not None:
                answer.gaps.append(now - last)
            last = now
            if answer.first is None:
                answer.first = now - answer.sent
                if abandon and response.status == 200:
                    break
            try:
                chunk = json.loads(line)
            except ValueError:
                answer.error = "not ndjson"
                continue
            details = chunk.get("details", details) if isinstance(chunk, dict) else details
        if details:
            answer.tokens = details.get("generated_tokens", 0)
    except (OSError, http.client.HTTPException) as e:
        answer.error = repr(e)
    finally:
        answer.latency = time.perf_counter() - answer.sent
        connection.close()  # an abandoned stream: the client goes away here
    return answer


def stream_body(prompt: str, new_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": prompt}], "stream": True,
            "parameters": {"max_new_tokens": new_tokens, "ignore_eos": True}}


# --- the scenarios ------------------------------------------------------------------------

def closed_loop(bench: Bench, url: str, streams: int, seconds: float) -> dict:
    def body(client: int, n: int) -> dict:
        return stream_body(GEN_PROMPTS[(client + n) % len(GEN_PROMPTS)], 64)

    loadgen.run(url, body, 1, 0.1, bench.headers(), stream=True)  # warm-up: one request
    return loadgen.run(url, body, streams, seconds, bench.headers(), stream=True).summary()


def late_short(bench: Bench, url: str) -> dict:
    """6 streams of 200 tokens; once each has its first chunk, one 8-token request."""
    started = threading.Barrier(7)
    longs: list[Answer] = [Answer() for _ in range(6)]

    def run_long(i: int) -> None:
        body = stream_body(GEN_PROMPTS[i % len(GEN_PROMPTS)], 200)
        parts = urlsplit(url)
        answer = longs[i]
        answer.sent, answer.asked = time.perf_counter(), 200
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        connection.request("POST", parts.path, body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json", **bench.headers()})
        response = connection.getresponse()
        answer.status = response.status
        response.readline()
        started.wait(timeout=600)
        while response.readline():
            pass
        answer.latency = time.perf_counter() - answer.sent
        connection.close()

    threads = [threading.Thread(target=run_long, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    started.wait(timeout=600)
    sent = time.perf_counter()
    short = stream(url, bench.headers(), stream_body(QUESTIONS[0], 8))
    answered = time.perf_counter()
    for thread in threads:
        thread.join()
    ends = [a.sent + a.latency for a in longs]
    return {"short_ms": round((answered - sent) * 1000, 1), "short_status": short.status,
            "long_running_when_short_answered": sum(end > answered for end in ends),
            "longs_end_after_short_s": round(max(ends) - answered, 2),
            "long_statuses": sorted({a.status for a in longs})}


def open_loop(bench: Bench, url: str, rate: float, seconds: float, seed: int) -> dict:
    """Poisson arrivals at `rate` per second for `seconds`; every request in its own thread."""
    rng = random.Random(seed)
    plan, at = [], 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= seconds:
            break
        tokens = rng.choices([n for n, _ in OUTPUTS], weights=[w for _, w in OUTPUTS])[0]
        prompt = long_text(rng.randrange(10**6)) if rng.random() < LONG_PROMPT_SHARE else rng.choice(QUESTIONS)
        plan.append((at, stream_body(prompt, tokens), rng.random() < ABANDON_SHARE))
    answers: list[Answer] = []
    lock = threading.Lock()

    def send(body: dict, abandon: bool) -> None:
        answer = stream(url, bench.headers(), body, abandon)
        with lock:
            answers.append(answer)

    threads, began = [], time.perf_counter()
    for at, body, abandon in plan:
        time.sleep(max(0.0, began + at - time.perf_counter()))
        thread = threading.Thread(target=send, args=(body, abandon), daemon=True)
        thread.start()
        threads.append(thread)
    stopped = time.perf_counter()
    for thread in threads:
        thread.join(timeout=max(0.0, stopped + DRAIN - time.perf_counter()))
    with lock:
        done = list(answers)
    return summarize(rate, seconds, len(plan), done, began)


def summarize(rate: float, seconds: float, sent: int, answers: list[Answer], began: float) -> dict:
    accepted = [a for a in answers if a.status == 200]
    completed = [a for a in accepted if a.completed]
    refused = [a for a in answers if a.status in (429, 503)]
    end = max((a.sent + a.latency for a in completed), default=began + seconds)
    ttft = [a.first for a in accepted if a.first is not None]
    order = sorted((a for a in accepted if a.first is not None), key=lambda a: a.sent)
    third = max(1, len(order) // 3)
    return {
        "rate": rate, "seconds": seconds, "sent": sent,
        "accepted": len(accepted), "completed": len(completed),
        "abandoned": sum(a.abandoned for a in accepted), "refused": len(refused),
        "errors": len(answers) - len(accepted) - len(refused), "unanswered": sent - len(answers),
        "first_token_ms": loadgen.percentiles(ttft),
        # the first and the last third of the arrivals: a queue that grows shows here
        "first_token_ms_first_third_p50": loadgen.percentiles([a.first for a in order[:third]])["p50"],
        "first_token_ms_last_third_p50": loadgen.percentiles([a.first for a in order[-third:]])["p50"],
        "per_token_ms": loadgen.percentiles([a.per_token for a in completed if a.per_token is not None]),
        # a running stream's longest wait for its next token: what admitting others costs it
        "between_chunks_ms": loadgen.percentiles([g for a in completed for g in a.gaps]),
        "longest_gap_ms": round(max((g for a in completed for g in a.gaps), default=0) * 1000, 1),
        "completed_tokens_per_s": round(sum(a.tokens for a in completed) / (end - began), 2),
        "wall_s": round(end - began, 1),
    }


# --- the run ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    top.add_argument("--quick", action="store_true", help="short points, to try the benchmark")
    top.add_argument("--out", default=str(RESULTS))
    args = top.parse_args(argv)
    # closed loop: 1 stream, then 16 for longer (a request of 64 tokens takes ~7 s at 16 rows)
    seconds, closed = (15.0, (8.0, 8.0)) if args.quick else (45.0, (15.0, 30.0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "command": " ".join(["continuous.py", *(argv or sys.argv[1:])]),
            "load": {"rates": RATES, "seconds": seconds, "outputs": OUTPUTS, "long_prompt_share": LONG_PROMPT_SHARE,
                     "abandon_share": ABANDON_SHARE, "drain_s": DRAIN}}
    spec = find_spec(NAME)
    versions = {label: spec.version(version) for label, version in SYSTEMS}
    store = REPO / ".transerve" / "bench" / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    for mv in versions.values():
        archive.build(mv, store, log=print)

    print("raw model.generate (in-process) ...", flush=True)
    repeats = 1 if args.quick else 2
    raw = Raw(model_dir(versions["static batching"]))
    results = {"meta": meta, "raw": raw.reference(repeats)}
    print(f"  {json.dumps(results['raw'])}", flush=True)
    results["systems"] = {}
    with Bench(store, REPO / ".transerve" / "bench" / "run") as bench:
        for label, mv in versions.items():
            served = bench.register(mv.archive_name, mv.runtime.minWorkers)
            url = f"{bench.url(NAME)}/{mv.version}"
            system = {"version": mv.version, "runtime": {**served, "continuousBatching": bool(mv.runtime.continuousBatching)},
                      "handler": {"max_running": mv.handler.max_running, "max_waiting": mv.handler.max_waiting,
                                  "prefill_tokens": mv.handler.prefill_tokens}}
            system["closed"] = {"1": closed_loop(bench, url, 1, closed[0])}
            # The machine's speed drifts by 10-20 % over minutes: the raw batch of 16 is measured
            # right before and right after the 16 streams, and their ratio divides by the mean.
            before = raw.tokens_per_s(16, repeats)
            system["closed"]["16"] = closed_loop(bench, url, 16, closed[1])
            system["raw_batch_16_beside"] = [before, raw.tokens_per_s(16, repeats)]
            for n, point in system["closed"].items():
                print(f"  {label}: {n:>2} streams {point['tokens_per_s']:7.1f} tokens/s, between chunks p50 "
                      f"{point['between_chunks_ms']['p50']} ms, errors {point['errors']}", flush=True)
            system["late_short"] = late_short(bench, url)
            print(f"  {label}: late short request {json.dumps(system['late_short'])}", flush=True)
            system["open"] = []
            for i, rate in enumerate(RATES):
                point = open_loop(bench, url, rate, seconds, seed=100 + i)
                system["open"].append(point)
                print(f"  {label}: {rate} req/s: first token p50 {point['first_token_ms']['p50']} p99 "
                      f"{point['first_token_ms']['p99']} ms, {point['completed_tokens_per_s']} tokens/s, "
                      f"{point['completed']}/{point['sent']} completed, {point['refused']} refused, "
                      f"{point['errors']} errors, {point['unanswered']} unanswered", flush=True)
            bench.management.unregister(NAME, mv.version)
            results["systems"][label] = system
            write(out / "continuous.json", results)
    # The machine's speed drifts over a run: raw again now, and the ratios divide by the
    # higher of the two, so that a slow minute during the first cannot flatter the server.
    print("raw model.generate again (in-process, after the served points) ...", flush=True)
    again = raw.tokens_per_s(16, repeats)
    first = results["raw"]
    first["batch_16_tokens_per_s_before"], first["batch_16_tokens_per_s_after"] = first["batch_16_tokens_per_s"], again
    first["batch_16_tokens_per_s"] = max(first["batch_16_tokens_per_s"], again)
    print(f"  batch of 16: {again} tokens/s", flush=True)
    meta["seconds"] = round(time.perf_counter() - began, 1)
    write(out / "continuous.json", results)
    (out / "CONTINUOUS.md").write_text(markdown(results))
    print(f"done in {meta['seconds']:.0f}s: {out / 'CONTINUOUS.md'}")
    return 0


# --- the report ---------------------------------------------------------------------------

def targets(results: dict) -> list[tuple[str, str, str, bool]]:
    old, new = results["systems"]["static batching"], results["systems"]["continuous batching"]
    rows = []
    served, beside = new["closed"]["16"]["tokens_per_s"], new["raw_batch_16_beside"]
    raw = sum(beside) / 2
    highest = results["raw"]["batch_16_tokens_per_s"]
    rows.append(("16 concurrent streams: continuous batching tokens/s / raw static batch of 16 (measured just before "
                 "and after)", ">= 0.8",
                 f"{served / raw:.2f} ({served:.0f} / {raw:.0f} tokens/s, raw {beside[0]:.0f} before and {beside[1]:.0f} "
                 f"after; against the run's highest raw, {highest:.0f}: {served / highest:.2f})", served / raw >= 0.8))
    # the rates the old design could not sustain: its queue grew (first token of the last
    # third of arrivals over 2 x the first third's) or requests were left unanswered
    def grew(point: dict) -> bool:
        return (point["first_token_ms_last_third_p50"] or 0) > 2 * (point["first_token_ms_first_third_p50"] or 1) \
            or point["unanswered"] > 0

    for o, n in zip(old["open"], new["open"]):
        if not grew(o):
            continue
        ratio = o["first_token_ms"]["p99"] / n["first_token_ms"]["p99"]
        also = f"; continuous batching's queue grew too, {n['refused']} refused" if grew(n) else ""
        rows.append((f"{o['rate']} req/s (static batching's queue grew): first token p99, static / continuous", ">= 5",
                     f"{ratio:.1f} ({o['first_token_ms']['p99']:.0f} / {n['first_token_ms']['p99']:.0f} ms{also})",
                     ratio >= 5))
    late = new["late_short"]
    rows.append(("a late short request finishes while long streams run (continuous batching)",
                 "long streams still running", f"{late['long_running_when_short_answered']} of 6 still running, short in "
                 f"{late['short_ms']:.0f} ms (static batching: {old['late_short']['short_ms']:.0f} ms)",
                 late["long_running_when_short_answered"] > 0))
    return rows


def markdown(results: dict) -> str:
    meta, raw, systems = results["meta"], results["raw"], results["systems"]
    load = meta["load"]
    lines = [
        "# Generation under load: static against continuous batching",
        "",
        f"`{meta['command']}` on {meta['date']}: {meta['cpus']} CPUs ({meta['machine']}), torch {meta['torch']}, "
        f"{meta.get('seconds', 0):.0f} s in all. Every figure below comes from this one run, on one TorchServe, "
        f"smollm2-chat {' and '.join(s['version'] for s in systems.values())} registered one after the other.",
        "",
        "## Targets", "", "| target | goal | reached | met |", "| --- | --- | --- | --- |",
    ]
    for name, goal, reached, met in targets(results):
        lines.append(f"| {name} | {goal} | {reached} | {'yes' if met else '**no**'} |")
    lines += [
        "", "## Raw reference (in-process `model.generate`, 64 new tokens)", "",
        f"Static batch of 16: {raw['batch_16_tokens_per_s']} tokens/s, the higher of {raw['batch_16_tokens_per_s_before']} "
        f"before the served points and {raw['batch_16_tokens_per_s_after']} after them (each the best of {raw['repeats']}); "
        f"one prompt: {raw['one_tokens_per_s']} tokens/s. One prompt's prefill (a forward pass, best of 4): "
        + ", ".join(f"{n} tokens {ms} ms" for n, ms in raw["prefill_ms"].items()) + ".",
        "", "## Closed loop: streams of 64 tokens, each client sending its next request when answered", "",
        "x raw: against the raw batch of 16 measured just before and after the 16 streams (mean).",
        "",
        "| system | streams | tokens/s | x raw batch of 16 | first chunk p50 ms | p99 ms | between chunks p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, s in systems.items():
        beside = sum(s["raw_batch_16_beside"]) / 2
        for n, p in s["closed"].items():
            lines.append(f"| {label} | {n} | {p['tokens_per_s']} | {p['tokens_per_s'] / beside:.2f} | "
                         f"{p['first_chunk_ms']['p50']} | {p['first_chunk_ms']['p99']} | {p['between_chunks_ms']['p50']} | "
                         f"{p['between_chunks_ms']['p99']} | {p['errors']} |")
    lines += [
        "", "## A late short request", "",
        "6 streams of 200 tokens run; once each has its first chunk, an 8-token request is sent.", "",
        "| system | short request ms | long streams still running when it was answered | they ended after it, s |",
        "| --- | --- | --- | --- |",
    ]
    for label, s in systems.items():
        late = s["late_short"]
        lines.append(f"| {label} | {late['short_ms']} | {late['long_running_when_short_answered']} of 6 | "
                     f"{late['longs_end_after_short_s']} |")
    lines += [
        "", "## Open loop: Poisson arrivals", "",
        f"Each rate for {load['seconds']:.0f} s; new tokens " + ", ".join(f"{n} ({w:.0%})" for n, w in load["outputs"])
        + f", end-of-text ignored; {load['long_prompt_share']:.0%} of prompts a ~300-token text, the rest a question; "
        f"{load['abandon_share']:.0%} of streams closed by their client after the first chunk; then up to "
        f"{load['drain_s']} s for the requests in flight. First token: over the accepted requests. Per token: "
        "(end - first chunk) / (tokens - 1) over the completed ones. Tokens/s: tokens of completed requests over "
        "the time from the first arrival to the last completion.",
        "",
        "| system | req/s | sent | completed | abandoned | refused | errors | unanswered | first token p50 ms | p99 ms "
        "| first third p50 | last third p50 | per token p50 ms | p99 ms | between chunks p99 ms | longest gap ms "
        "| completed tokens/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i in range(len(load["rates"])):
        for label, s in systems.items():
            p = s["open"][i]
            lines.append(f"| {label} | {p['rate']} | {p['sent']} | {p['completed']} | {p['abandoned']} | {p['refused']} | "
                         f"{p['errors']} | {p['unanswered']} | {p['first_token_ms']['p50']} | {p['first_token_ms']['p99']} | "
                         f"{p['first_token_ms_first_third_p50']} | {p['first_token_ms_last_third_p50']} | "
                         f"{p['per_token_ms']['p50']} | {p['per_token_ms']['p99']} | {p['between_chunks_ms']['p99']} | "
                         f"{p['longest_gap_ms']} | {p['completed_tokens_per_s']} |")
    budget = systems["continuous batching"]["handler"]["prefill_tokens"]
    gaps = {label: max(p["longest_gap_ms"] for p in s["open"]) for label, s in systems.items()}
    lines += [
        "", "## What a prefill costs the running streams", "",
        f"Continuous batching prefills at most {budget} prompt tokens a step (a longer prompt a chunk of {budget} "
        f"a step), so a running stream waits about one decode step plus at most that prefill for its next token "
        f"(the raw prefill times above). The longest gap a "
        f"completed stream saw between two chunks in the open loop: {gaps['continuous batching']} ms continuous, "
        f"{gaps['static batching']} ms static.",
    ]
    gap = {n: {label: s["closed"][n]["between_chunks_ms"]["p50"] for label, s in systems.items()} for n in ("1", "16")}
    lines += [
        "", "## The cost of a round trip per step", "",
        "Under continuous batching every decode step is a call from TorchServe's frontend to the worker and back; "
        "under static batching (and in TorchServe's async worker) the worker loops by itself. Between chunks p50, "
        "continuous against static: " + "; ".join(
            f"{n} stream{'s' if n != '1' else ''} {g['continuous batching']} against {g['static batching']} ms "
            f"({g['continuous batching'] - g['static batching']:+.1f} ms)" for n, g in gap.items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Generation under load: smollm2-chat 3.0 (llama.cpp on the shipped GGUF) against 2.0 (torch),
both under continuous batching, each beside its own engine run in-process without a server.

    make bench-generation          # or: .venv/bin/python bench/continuous.py [--quick] [--static]

One run, on one real TorchServe (loopback, token auth on), in this order:
  1. the raw references, in-process: `model.generate` (torch, the float32 weights 2.0 serves)
     and llama.cpp itself (llama-cpp-python's low-level API on the same GGUF file and threads as
     3.0: one llama_batch a step, greedy by argmax), each on one prompt and on a batch of 16
     prompts (16 sequences), 64 new tokens each, prefill included (llama.cpp's decode-only rate
     beside it); measured again right before and after each served point, since this machine's
     speed drifts by 10-20 % over minutes;
  2. for each version, registered alone (2.0, then 3.0; with --static 1.0 first):
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
from transerve.build import archive  # noqa: E402
from transerve.build.prepare import model_dir  # noqa: E402
from transerve.build.spec import find_spec  # noqa: E402

RESULTS = REPO / "bench" / "results"
NAME = "smollm2-chat"
STATIC = ("static batching", "1.0")
SYSTEMS = (("torch", "2.0"), ("llama.cpp", "3.0"))  # continuous batching both
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


class LlamaRaw:
    """llama.cpp itself on the GGUF file 3.0 serves, in-process, no server: llama-cpp-python's
    low-level API, one context of `rows` sequences (not unified, as 3.0 runs it), one llama_batch
    a step holding every sequence's token, greedy by numpy's argmax of the logits."""

    def __init__(self, gguf: Path, tokenizer_dir: Path, threads: int, rows: int = 16):
        import ctypes

        import llama_cpp as L
        import numpy as np
        from transformers import AutoTokenizer

        from handlers.engines.llamacpp import load_model

        self.L, self.np, self.threads = L, np, threads
        self._quiet = L.llama_log_callback(lambda level, text, user: None)
        L.llama_log_set(self._quiet, ctypes.c_void_p(0))
        L.llama_backend_init()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.model = load_model(L, gguf)  # as the engine loads it
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        params = L.llama_context_default_params()
        params.n_seq_max, params.n_ctx = rows, rows * 512
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified, params.no_perf = False, True
        self.ctx = L.llama_init_from_model(self.model, params)
        self.batch = L.llama_batch_init(512, 0, 1)

    def prompts(self, n: int) -> list[list[int]]:
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": GEN_PROMPTS[i % len(GEN_PROMPTS)]}],
                                                    add_generation_prompt=True, tokenize=False) for i in range(n)]
        return [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self.batch
        for i, (token, position, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(entries)
        if self.L.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def run(self, n: int, new: int = 64) -> dict:
        """n sequences, prefilled then decoded `new` tokens each: tokens/s with the prefill, and
        the decode steps' alone."""
        L, np = self.L, self.np
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        prompts = self.prompts(n)
        started = time.perf_counter()
        entries = [(token, p, seq, p == len(ids) - 1) for seq, ids in enumerate(prompts) for p, token in enumerate(ids)]
        logits = []
        for begin in range(0, len(entries), 512):  # a prompt's last token may fall in any of the batches
            part = entries[begin:begin + 512]
            self.decode(part)
            wanted = sum(e[3] for e in part)
            if wanted:
                logits.append(np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(wanted, self.vocab)).argmax(-1))
        tokens = np.concatenate(logits)
        decoding = time.perf_counter()
        for step in range(new - 1):
            self.decode([(int(tokens[seq]), len(prompts[seq]) + step, seq, True) for seq in range(n)])
            tokens = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(n, self.vocab)).argmax(-1)
        ended = time.perf_counter()
        return {"tokens_per_s": round(n * new / (ended - started), 2),
                "decode_tokens_per_s": round(n * (new - 1) / (ended - decoding), 2)}

    def best(self, n: int, repeats: int) -> dict:
        runs = [self.run(n) for _ in range(repeats)]
        return max(runs, key=lambda r: r["tokens_per_s"])


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
    top.add_argument("--static", action="store_true", help="also 1.0 (static batching), against 2.0")
    top.add_argument("--out", default=str(RESULTS))
    args = top.parse_args(argv)
    # closed loop: 1 stream, then 16 for longer (a request of 64 tokens takes seconds at 16 rows)
    seconds, closed = (15.0, (8.0, 10.0)) if args.quick else (45.0, (20.0, 30.0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu_flags": cpu_flags(), "torch": torch.__version__, "llama_cpp_python": llama_version(),
            "command": " ".join(["continuous.py", *(argv if argv is not None else sys.argv[1:])]),
            "load": {"rates": RATES, "seconds": seconds, "outputs": OUTPUTS, "long_prompt_share": LONG_PROMPT_SHARE,
                     "abandon_share": ABANDON_SHARE, "drain_s": DRAIN}}
    spec = find_spec(NAME)
    systems = ((STATIC,) if args.static else ()) + SYSTEMS
    versions = {label: spec.version(version) for label, version in systems}
    store = REPO / ".transerve" / "bench" / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    for mv in versions.values():
        archive.build(mv, store, log=print)

    repeats = 1 if args.quick else 2
    print("raw references (in-process) ...", flush=True)
    torch_raw = Raw(model_dir(versions["torch"]))
    llama_mv = versions["llama.cpp"]
    llama_dir = model_dir(llama_mv)
    llama_threads = llama_mv.handler.threads or os.cpu_count() or 1
    llama_raw = LlamaRaw(next(llama_dir.glob("*.gguf")), llama_dir, llama_threads)
    raw = {"torch": lambda n: {"tokens_per_s": torch_raw.tokens_per_s(n, repeats)},
           "llama.cpp": lambda n: llama_raw.best(n, repeats)}
    results = {"meta": meta, "raw": {"torch": torch_raw.reference(repeats),
                                     "llama.cpp": {"threads": llama_threads, "one": llama_raw.best(1, repeats),
                                                   "batch_16": llama_raw.best(16, repeats)}}}
    print(f"  {json.dumps(results['raw'])}", flush=True)
    results["systems"] = {}
    with Bench(store, REPO / ".transerve" / "bench" / "run") as bench:
        for label, mv in versions.items():
            served = bench.register(mv.archive_name, mv.runtime.minWorkers)
            url = f"{bench.url(NAME)}/{mv.version}"
            system = {"version": mv.version, "engine": mv.handler.engine,
                      "runtime": {**served, "continuousBatching": bool(mv.runtime.continuousBatching)},
                      "handler": {"max_running": mv.handler.max_running, "max_waiting": mv.handler.max_waiting,
                                  "prefill_tokens": mv.handler.prefill_tokens, "step_budget_ms": mv.handler.step_budget_ms,
                                  "threads": mv.handler.threads},
                      "closed": {}, "raw_beside": {}}
            engine = "llama.cpp" if mv.handler.engine == "llamacpp" else "torch"
            for n, duration in zip((1, 16), closed):
                before = raw[engine](n)
                system["closed"][str(n)] = closed_loop(bench, url, n, duration)
                system["raw_beside"][str(n)] = [before, raw[engine](n)]
                point = system["closed"][str(n)]
                print(f"  {label}: {n:>2} streams {point['tokens_per_s']:7.1f} tokens/s (raw {engine} "
                      f"{before['tokens_per_s']} before, {system['raw_beside'][str(n)][1]['tokens_per_s']} after), "
                      f"between chunks p50 {point['between_chunks_ms']['p50']} ms, errors {point['errors']}", flush=True)
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
    meta["seconds"] = round(time.perf_counter() - began, 1)
    write(out / "continuous.json", results)
    (out / "CONTINUOUS.md").write_text(markdown(results))
    print(f"done in {meta['seconds']:.0f}s: {out / 'CONTINUOUS.md'}")
    return 0


def cpu_flags() -> str:
    """The vector extensions this CPU has (a speed-up measured here holds for this kind of CPU only)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return ""
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags)


def llama_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return ""


# --- the report ---------------------------------------------------------------------------

def raw_mean(system: dict, n: str, key: str = "tokens_per_s") -> float:
    before, after = system["raw_beside"][n]
    return (before[key] + after[key]) / 2


def targets(results: dict) -> list[tuple[str, str, str, bool]]:
    systems = results["systems"]
    new, old = systems["llama.cpp"], systems["torch"]
    rows = []
    for n, name in (("1", "one served stream"), ("16", "16 concurrent streams")):
        served, raw = new["closed"][n]["tokens_per_s"], raw_mean(new, n)
        decode = raw_mean(new, n, "decode_tokens_per_s")
        beside = new["raw_beside"][n]
        rows.append((f"{name} on 3.0: tokens/s / llama.cpp in-process ({'one sequence' if n == '1' else 'a 16-sequence batch'}, "
                     "64 tokens, prefill included; measured just before and after)", ">= 0.8",
                     f"{served / raw:.2f} ({served:.0f} / {raw:.0f} tokens/s: {beside[0]['tokens_per_s']:.0f} before, "
                     f"{beside[1]['tokens_per_s']:.0f} after); against llama.cpp's decode steps alone ({decode:.0f}): "
                     f"{served / decode:.2f}", served / raw >= 0.8))
    lowest_new, lowest_old = new["open"][0], old["open"][0]
    ratio = lowest_new["first_token_ms"]["p50"] / lowest_old["first_token_ms"]["p50"]
    rows.append((f"first token p50 at {lowest_new['rate']} req/s (open loop), 3.0 / 2.0", "<= 0.5",
                 f"{ratio:.2f} ({lowest_new['first_token_ms']['p50']:.0f} / {lowest_old['first_token_ms']['p50']:.0f} ms)",
                 ratio <= 0.5))
    served, raw = old["closed"]["1"]["tokens_per_s"], raw_mean(old, "1")
    rows.append(("one served stream on 2.0 (torch): tokens/s / in-process model.generate (informative)", "",
                 f"{served / raw:.2f} ({served:.1f} / {raw:.1f} tokens/s)", True))
    for label in systems:
        late = systems[label]["late_short"]
        rows.append((f"a late short request finishes while long streams run ({label})", "long streams still running",
                     f"{late['long_running_when_short_answered']} of 6 still running, short in {late['short_ms']:.0f} ms",
                     late["long_running_when_short_answered"] > 0))
    return rows


def markdown(results: dict) -> str:
    meta, raw, systems = results["meta"], results["raw"], results["systems"]
    load = meta["load"]
    lines = [
        "# Generation under load: llama.cpp (3.0) and torch (2.0), served and in-process",
        "",
        f"`{meta['command']}` on {meta['date']}: {meta['cpus']} CPUs ({meta['machine']}; {meta['cpu_flags']}), torch "
        f"{meta['torch']}, llama-cpp-python {meta['llama_cpp_python']}, {meta.get('seconds', 0):.0f} s in all. Every "
        f"figure below comes from this one run, on one TorchServe, smollm2-chat "
        f"{', '.join(s['version'] for s in systems.values())} registered one after the other. Ratios hold for this "
        "machine in this run only.",
        "",
        "## Targets", "", "| target | goal | reached | met |", "| --- | --- | --- | --- |",
    ]
    for name, goal, reached, met in targets(results):
        lines.append(f"| {name} | {goal} | {reached} | {'yes' if met else '**no**'}{'' if goal else ' (no target)'} |")
    t, l = raw["torch"], raw["llama.cpp"]
    lines += [
        "", "## In-process references (no server), 64 new tokens", "",
        "| engine | one prompt, tokens/s | 16 prompts, tokens/s | decode steps alone: one / 16 |",
        "| --- | --- | --- | --- |",
        f"| torch `model.generate` (float32 weights, 2.0's) | {t['one_tokens_per_s']} | {t['batch_16_tokens_per_s']} | |",
        f"| llama.cpp, {l['threads']} threads (the GGUF, 3.0's) | {l['one']['tokens_per_s']} | {l['batch_16']['tokens_per_s']} "
        f"| {l['one']['decode_tokens_per_s']} / {l['batch_16']['decode_tokens_per_s']} |",
        "",
        "Each served point below has its engine's reference measured again just before and after it (best of "
        f"{t['repeats']}); the ratios use their mean. torch prefill, one prompt (a forward pass, best of 4): "
        + ", ".join(f"{n} tokens {ms} ms" for n, ms in t["prefill_ms"].items()) + ".",
        "", "## Closed loop: streams of 64 tokens, each client sending its next request when answered", "",
        "| system | streams | tokens/s | x in-process (before, after) | first chunk p50 ms | p99 ms | between chunks p50 ms "
        "| p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, s in systems.items():
        for n, p in s["closed"].items():
            beside = s["raw_beside"][n]
            lines.append(f"| {label} {s['version']} | {n} | {p['tokens_per_s']} | {p['tokens_per_s'] / raw_mean(s, n):.2f} "
                         f"({beside[0]['tokens_per_s']}, {beside[1]['tokens_per_s']}) | {p['first_chunk_ms']['p50']} | "
                         f"{p['first_chunk_ms']['p99']} | {p['between_chunks_ms']['p50']} | {p['between_chunks_ms']['p99']} "
                         f"| {p['errors']} |")
    lines += [
        "", "## A late short request", "",
        "6 streams of 200 tokens run; once each has its first chunk, an 8-token request is sent.", "",
        "| system | short request ms | long streams still running when it was answered | they ended after it, s |",
        "| --- | --- | --- | --- |",
    ]
    for label, s in systems.items():
        late = s["late_short"]
        lines.append(f"| {label} {s['version']} | {late['short_ms']} | {late['long_running_when_short_answered']} of 6 | "
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
            lines.append(f"| {label} {s['version']} | {p['rate']} | {p['sent']} | {p['completed']} | {p['abandoned']} | "
                         f"{p['refused']} | {p['errors']} | {p['unanswered']} | {p['first_token_ms']['p50']} | "
                         f"{p['first_token_ms']['p99']} | {p['first_token_ms_first_third_p50']} | "
                         f"{p['first_token_ms_last_third_p50']} | {p['per_token_ms']['p50']} | {p['per_token_ms']['p99']} | "
                         f"{p['between_chunks_ms']['p99']} | {p['longest_gap_ms']} | {p['completed_tokens_per_s']} |")
    budgets = {label: s["handler"]["step_budget_ms"] for label, s in systems.items()}
    lines += [
        "", "## How the calls are spent", "",
        "Under continuous batching every call from TorchServe's frontend to the worker is a round trip; a call runs "
        "decode steps until `step_budget_ms` has passed, or a row got its first token, or an answer ended "
        f"({', '.join(f'{label}: {b} ms' for label, b in budgets.items())}). So a chunk carries the tokens of one call, "
        "and between chunks is a call, not a token.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

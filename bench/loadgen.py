"""A closed-loop HTTP load generator for a real TorchServe on loopback.

`clients` threads each keep one keep-alive connection and send the next request as soon as
the last one is answered, until `duration` seconds have passed (requests still in flight
then are waited for and counted). Per request it records the status and latency, and for
streamed answers the time to the first chunk, the gaps between chunks and the generated
token count the last chunk reports. Loopback only, bounded in time: it stops by itself.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit


@dataclass
class Sample:
    status: int
    latency: float
    inputs: int = 1
    first_chunk: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str = ""


@dataclass
class Run:
    clients: int
    seconds: float  # wall time from the first request sent to the last answer
    samples: list[Sample]

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    @property
    def errors(self) -> int:
        return len(self.samples) - len(self.ok)

    def summary(self) -> dict:
        ok = self.ok
        latencies = [s.latency for s in ok]
        out = {
            "clients": self.clients,
            "seconds": round(self.seconds, 3),
            "requests": len(self.samples),
            "errors": self.errors,
            "inputs_per_s": round(sum(s.inputs for s in ok) / self.seconds, 2),
            "latency_ms": percentiles(latencies),
        }
        if any(s.first_chunk is not None for s in ok):
            tokens = sum(s.tokens for s in ok)
            out["generated_tokens"] = tokens
            out["tokens_per_request"] = round(tokens / max(len(ok), 1), 1)
            out["tokens_per_s"] = round(tokens / self.seconds, 2)
            out["first_chunk_ms"] = percentiles([s.first_chunk for s in ok if s.first_chunk is not None])
            out["between_chunks_ms"] = percentiles([g for s in ok for g in s.gaps])
        return out


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "mean": round(sum(ordered) / len(ordered) * 1000, 2)}


def run(url: str, body_for: Callable[[int, int], dict], clients: int, duration: float,
        headers: dict[str, str] | None = None, stream: bool = False, inputs_per_request: int = 1,
        timeout: float = 300) -> Run:
    """Drive POST `url` with `clients` closed-loop clients for `duration` seconds.

    body_for(client, n) gives the JSON body of client's n-th request.
    """
    parts = urlsplit(url)
    path = parts.path
    headers = {"Content-Type": "application/json", **(headers or {})}
    samples: list[Sample] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        mine, n = [], 0
        start_gate.wait()
        while time.perf_counter() < deadline[0]:
            payload = json.dumps(body_for(index, n)).encode()
            n += 1
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=payload, headers=headers)
                answer = connection.getresponse()
                sample = _read_stream(answer, started) if stream else _read(answer, started)
            except (OSError, http.client.HTTPException) as e:
                sample = Sample(status=0, latency=time.perf_counter() - started, error=repr(e))
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            sample.inputs = inputs_per_request
            mine.append(sample)
        connection.close()
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + duration
    start_gate.wait()
    for thread in threads:
        thread.join()
    return Run(clients=clients, seconds=time.perf_counter() - began, samples=samples)


def _read(answer: http.client.HTTPResponse, started: float) -> Sample:
    answer.read()
    return Sample(status=answer.status, latency=time.perf_counter() - started)


def _read_stream(answer: http.client.HTTPResponse, started: float) -> Sample:
    """An ndjson stream: one JSON object per line, the last one with `details`."""
    sample = Sample(status=answer.status, latency=0.0)
    last, details = None, None
    while True:
        line = answer.readline()
        if not line:
            break
        now = time.perf_counter()
        if not line.strip():
            continue
        if last is None:
            sample.first_chunk = now - started
        else:
            sample.gaps.append(now - last)
        last = now
        try:
            details = json.loads(line).get("details") or details
        except ValueError:
            sample.error = "not ndjson"
    sample.latency = time.perf_counter() - started
    if answer.status == 200 and details:
        sample.tokens = details.get("generated_tokens", 0)
    return sample

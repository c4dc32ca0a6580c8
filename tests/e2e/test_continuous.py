"""smollm2-chat under TorchServe's continuous batching on the real server, on both engines: a
9.x variant of 2.0 (torch) and of 3.0 (llama.cpp) with max_running 3, max_waiting 2 and
batchSize 8, so that its limits are reached with a few requests."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from transerve.build import archive
from transerve.torchserve.management import ApiError
from transerve.build.spec import find_spec

NAME = "smollm2-chat"
VARIANTS = {"2.0": "9.0", "3.0": "9.3"}  # the spec's version: the variant registered here
LONG = {"inputs": "Write a long story about a lighthouse keeper.", "parameters": {"max_new_tokens": 200, "ignore_eos": True}}
SHORT = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}}


@pytest.fixture(scope="module", params=list(VARIANTS))
def served(store, management, request):
    """The variant's version, registered with one worker for the tests of one engine."""
    mv = find_spec(NAME).version(request.param)
    assert mv.runtime.continuousBatching
    mv = dataclasses.replace(mv, version=VARIANTS[request.param], runtime=dataclasses.replace(mv.runtime, batchSize=8))
    mv = mv.with_handler(max_running=3, max_waiting=2)
    archive.build(mv, store, log=print)
    management.register(mv.archive_name, initial_workers=1)
    yield mv.version
    try:
        management.unregister(NAME, mv.version)
    except ApiError as e:  # only "not registered" is fine: a version left behind changes the next module
        assert e.status == 404, f"unregistering {NAME} {mv.version}: {e}"


def url(torchserve, version: str) -> str:
    return f"{torchserve.url('inference')}/predictions/{NAME}/{version}"


def key(torchserve) -> dict:
    return {"Authorization": f"Bearer {torchserve.keys()['inference']}"}


def worker_pid(management, version: str) -> int:
    [status] = management.describe(NAME, version)
    [worker] = status.workers
    return worker.pid


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # clock ticks; 100 per second on Linux


def test_a_late_short_request_finishes_while_long_streams_run(torchserve, served):
    idle = requests.post(url(torchserve, served), json=SHORT, headers=key(torchserve), timeout=120).json()
    finished: dict[int, float] = {}
    started = threading.Barrier(3)

    def stream(n):
        with requests.post(url(torchserve, served), json={**LONG, "stream": True}, headers=key(torchserve), timeout=300, stream=True) as r:
            lines = r.iter_lines()
            next(lines)
            started.wait(timeout=120)
            for _ in lines:
                pass
        finished[n] = time.monotonic()

    threads = [threading.Thread(target=stream, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    started.wait(timeout=120)
    sent = time.monotonic()
    late = requests.post(url(torchserve, served), json=SHORT, headers=key(torchserve), timeout=120)
    answered = time.monotonic()
    for t in threads:
        t.join(timeout=300)
    print(f"\nlate short request answered in {answered - sent:.2f}s; the long streams ended "
          f"{min(finished.values()) - answered:.1f}s later")
    assert late.status_code == 200 and late.json() == idle
    assert len(finished) == 2 and answered < min(finished.values())


def evicted(metric, version: str) -> float:
    return metric("transerve_generation_rows_evicted_total", model_version=version)


def test_closed_streams_stop_costing_compute(torchserve, served, management, metric):
    pid, before_evicted = worker_pid(management, served), evicted(metric, served)
    for _ in range(2):  # two clients read their first chunk and hang up
        with requests.post(url(torchserve, served), json={**LONG, "parameters": {**LONG["parameters"], "max_new_tokens": 400},
                                                   "stream": True}, headers=key(torchserve), timeout=120, stream=True) as r:
            next(r.iter_lines())
    time.sleep(2)  # the frontend drops them after their next chunk; the rows leave at the next step
    before = cpu_seconds(pid)
    time.sleep(3)
    spent = cpu_seconds(pid) - before
    print(f"\nworker CPU over 3 s after the clients left: {spent:.2f} s")
    assert spent < 0.5, f"the worker kept computing for streams nobody reads ({spent:.2f} s of CPU in 3 s)"
    # Their rows left the decoder, not just the frontend. The last one leaves at the next call
    # (with no request running, TorchServe does not call the handler, and nothing is computed).
    assert requests.post(url(torchserve, served), json=SHORT, headers=key(torchserve), timeout=120).status_code == 200
    assert evicted(metric, served) == before_evicted + 2
    assert worker_pid(management, served) == pid


def test_a_closed_stream_leaves_while_another_decodes(torchserve, served, management, metric):
    """The rows of a client that hangs up leave the running batch; the stream still read goes on."""
    before_evicted = evicted(metric, served)
    with requests.post(url(torchserve, served), json={**LONG, "stream": True}, headers=key(torchserve), timeout=300,
                       stream=True) as kept:
        lines = kept.iter_lines()
        next(lines)
        with requests.post(url(torchserve, served), json={**LONG, "stream": True}, headers=key(torchserve), timeout=120,
                           stream=True) as dropped:
            next(dropped.iter_lines())
        chunks = [json.loads(line) for line in lines if line]
    assert chunks[-1]["details"]["generated_tokens"] == 200
    assert evicted(metric, served) == before_evicted + 1


def test_three_times_the_room_gets_200_or_429_and_nothing_hangs(torchserve, served, management):
    pid = worker_pid(management, served)

    def send(_):
        r = requests.post(url(torchserve, served), json=SHORT, headers=key(torchserve), timeout=120)
        return r.status_code, r.headers.get("Retry-After"), r.text

    with ThreadPoolExecutor(15) as pool:  # 3 x (max_running 3 + max_waiting 2)
        answers = list(pool.map(send, range(15)))
    statuses = sorted(status for status, _, _ in answers)
    print(f"\n15 at once: {statuses}")
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    for status, retry_after, text in answers:
        if status == 429:
            assert retry_after == "1" and "max_waiting 2" in json.loads(text)["message"]
        else:
            assert json.loads(text)["details"]["generated_tokens"] == 8
    assert worker_pid(management, served) == pid


def test_cancel_by_request_id_and_a_deadline_end_running_streams(torchserve, served):
    with requests.post(url(torchserve, served), json={**LONG, "stream": True}, headers=key(torchserve), timeout=300,
                       stream=True) as target:
        rid = target.headers["x-request-id"]
        lines = target.iter_lines()
        next(lines)
        cancel = requests.post(f"{url(torchserve, served)}/cancel", json={"id": rid}, headers=key(torchserve), timeout=60)
        assert (cancel.status_code, cancel.json()) == (200, {"cancelled": rid})
        last = json.loads([line for line in lines if line][-1])
    assert last["details"]["finish_reason"] == "cancelled" and last["details"]["generated_tokens"] < 200
    unknown = requests.post(f"{url(torchserve, served)}/cancel", json={"id": rid}, headers=key(torchserve), timeout=60)
    assert unknown.status_code == 404 and "no running request" in unknown.json()["message"]

    started = time.monotonic()
    timed = requests.post(url(torchserve, served), json={**LONG, "parameters": {**LONG["parameters"], "timeout": 1}},
                          headers=key(torchserve), timeout=120)
    assert time.monotonic() - started < 5
    assert timed.status_code == 200 and timed.json()["details"]["finish_reason"] == "timeout"


def test_grpc_clients_get_whole_answers(torchserve, served):
    import grpc

    from transerve.torchserve import protos

    inference = protos.load("inference")
    plain = requests.post(url(torchserve, served), json=SHORT, headers=key(torchserve), timeout=120).json()
    request = inference.pb2.PredictionsRequest(model_name=NAME, model_version=served,
                                               input={"body": json.dumps(SHORT).encode()})
    metadata = [("authorization", f"Bearer {torchserve.keys()['inference']}")]
    with grpc.insecure_channel(f"127.0.0.1:{torchserve.properties['grpc_inference_port']}") as channel:
        stub = inference.grpc.InferenceAPIsServiceStub(channel)
        assert json.loads(stub.Predictions(request, metadata=metadata, timeout=120).prediction) == plain
        parts = list(stub.StreamPredictions(request, metadata=metadata, timeout=120))
    assert len(parts) == 1 and json.loads(parts[0].prediction) == plain

"""Hostile input and a killed worker, against the real server.

The fuzz sends 2,400 malformed requests (transerve/hostile.py, seeded) concurrently with
good ones: no answer may be a 5xx, no connection may drop, every good request must get
its own correct answer, and the worker must be the same process at the end. Then the
worker is killed with SIGKILL while clients keep sending: TorchServe starts a new one, and
once answers resume none may fail.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from transerve import hostile
from transerve.waiting import wait_until

NAME = "minilm-embed"
SEED = 20261124
HOSTILE = 2400
GOOD = 240


def worker_pids(management) -> list[int]:
    [status] = management.describe(NAME, "1.0")
    return [w.pid for w in status.workers if w.status == "READY"]


def test_fuzz_gets_4xx_only_and_good_requests_their_answers(torchserve, minilm_registered, management):
    url = f"{torchserve.url('inference')}/predictions/{NAME}"
    key = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    good = [{"inputs": [f"good request number {i}", "a second sentence " * (1 + i % 5)]} for i in range(GOOD)]
    session = requests.Session()
    reference = [session.post(url, json=body, headers=key, timeout=60).json()["embeddings"] for body in good]
    pids = worker_pids(management)

    jobs = [("hostile", what, content_type, body) for content_type, body, what in hostile.requests(SEED, HOSTILE)]
    jobs += [("good", i, "application/json", None) for i in range(GOOD)]
    random.Random(SEED).shuffle(jobs)
    local = threading.local()

    def send(job):
        kind, what, content_type, body = job
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            if kind == "good":
                answer = local.session.post(url, json=good[what], headers=key, timeout=120)
            else:
                answer = local.session.post(url, data=body, headers={**key, "Content-Type": content_type}, timeout=120)
            return job, answer.status_code, answer.text
        except requests.RequestException as e:
            return job, 0, repr(e)

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, jobs))
    seconds = time.monotonic() - started

    statuses = collections.Counter(status for _, status, _ in results)
    shapes = collections.Counter((job[1], status) for job, status, _ in results if job[0] == "hostile")
    print(f"\nfuzz: {HOSTILE} hostile + {GOOD} good requests, 16 clients, {seconds:.1f}s; statuses {dict(statuses)}")
    for (what, status), n in sorted(shapes.items()):
        print(f"  {status}  x{n:<4} {what}")
    dropped = [(job[1], text) for job, status, text in results if status == 0]
    assert not dropped, dropped[:5]
    server_errors = [(job[1], job[3][:80] if job[3] else None, text[:200]) for job, status, text in results if status >= 500]
    assert not server_errors, server_errors[:5]
    for job, status, text in results:
        if job[0] == "hostile" and 400 <= status < 500 and text.startswith("{"):
            assert "message" in text, text[:200]
        if job[0] == "good":
            assert status == 200, text[:200]
            got = np.array(__import__("json").loads(text)["embeddings"])
            assert np.allclose(got, np.array(reference[job[1]]), atol=1e-5), job[1]
    assert statuses[400] + statuses[413] + statuses[415] >= HOSTILE * 0.9
    assert worker_pids(management) == pids, "the worker restarted during the fuzz"


def test_non_ascii_in_a_refused_field_gets_its_4xx_and_the_worker_lives(minilm_registered, refuses_non_ascii):
    refuses_non_ascii(NAME)


def test_a_killed_worker_is_replaced_and_answers_resume(torchserve, minilm_registered, management):
    url = f"{torchserve.url('inference')}/predictions/{NAME}"
    key = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    [pid] = worker_pids(management)
    answers: list[tuple[float, float, int]] = []  # (time sent, time answered, status)
    stopping = threading.Event()

    def client(i):
        session = requests.Session()
        while not stopping.is_set():
            sent = time.monotonic()
            try:
                status = session.post(url, json={"inputs": f"still there? {i}"}, headers=key, timeout=60).status_code
            except requests.RequestException:
                status = 0
            answers.append((sent, time.monotonic(), status))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def back() -> bool:
        new = worker_pids(management)
        return bool(new) and new != [pid] and any(sent > killed and status == 200 for sent, _, status in answers[-20:])

    with contextlib.suppress(TimeoutError):  # the asserts below say what did not come back
        wait_until(back, 90, TimeoutError, interval=0.2)
    time.sleep(5)  # keep sending once it is back
    stopping.set()
    for t in threads:
        t.join(timeout=60)

    # Back = the first success of a request sent after the kill (the new worker answered it).
    first_ok = min((done for sent, done, status in answers if sent > killed and status == 200), default=None)
    assert first_ok is not None, "answers never resumed"
    gap = collections.Counter(status for _, done, status in answers if killed < done < first_ok)
    print(f"\nworker {pid} killed: answers resumed after {first_ok - killed:.1f}s; "
          f"during the gap the clients saw {dict(gap) or 'no answer (requests waited)'}; new worker {worker_pids(management)}")
    assert worker_pids(management) not in ([], [pid])
    once_back = [status for sent, _, status in answers if sent > first_ok]
    assert once_back and all(status == 200 for status in once_back), collections.Counter(once_back)

"""Hostile input and a killed worker, against the real server.

The fuzz sends 2,400 malformed requests (tests/e2e/hostile.py, seeded) concurrently with
good ones to minilm-embed, and 800 of the generation corpus to smollm2-chat's default: every
answer must have the status its shape must get (a 4xx naming the rule it broke, or a 200 for
the shapes that are odd but valid), no connection may drop, every good request must get its
own correct answer, and the worker must be the same process at the end. Then the
worker is killed with SIGKILL while clients keep sending: TorchServe starts a new one, and
once answers resume none may fail.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from transerve.build import archive

import hostile
from transerve.torchserve.management import ApiError
from transerve.build.spec import find_spec
from transerve.torchserve.waiting import wait_until

NAME = "minilm-embed"
SEED = 20261124
HOSTILE = 2400
GOOD = 240


def worker_pids(management, name: str = NAME, version: str = "1.0") -> list[int]:
    [status] = management.describe(name, version)
    return [w.pid for w in status.workers if w.status == "READY"]


@pytest.fixture(scope="module")
def chat_registered(store, management):
    """smollm2-chat's default (3.0, llama.cpp, continuous batching) for the generation corpus."""
    mv = find_spec("smollm2-chat").version()
    archive.build(mv, store, log=lambda _: None)
    management.register(mv.archive_name, initial_workers=1)
    yield mv
    with contextlib.suppress(ApiError):
        management.unregister(mv.name, mv.version)


@pytest.fixture(params=["embedding", "generation"])
def target(request):
    """(model, version, whether the generation corpus applies, the good requests and how to read their answers)."""
    if request.param == "embedding":
        request.getfixturevalue("minilm_registered")
        good = [{"inputs": [f"good request number {i}", "a second sentence " * (1 + i % 5)]} for i in range(GOOD)]
        return NAME, "1.0", False, good, lambda body: body["embeddings"]
    mv = request.getfixturevalue("chat_registered")
    good = [{"inputs": f"good request number {i}", "parameters": {"max_new_tokens": 2}} for i in range(GOOD // 4)]
    return mv.name, mv.version, True, good, lambda body: body


def test_fuzz_gets_each_shape_its_own_status_and_good_requests_their_answers(torchserve, management, target):
    name, version, generation, good, answer_of = target
    count = HOSTILE if not generation else HOSTILE // 3
    url = f"{torchserve.url('inference')}/predictions/{name}/{version}"
    key = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    session = requests.Session()
    reference = [answer_of(session.post(url, json=body, headers=key, timeout=60).json()) for body in good]
    pids = worker_pids(management, name, version)

    jobs = [("hostile", (what, expected), content_type, body)
            for content_type, body, what, expected in hostile.requests(SEED, count, generation=generation)]
    jobs += [("good", i, "application/json", None) for i in range(len(good))]
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

    shapes = collections.Counter((job[1], status) for job, status, _ in results if job[0] == "hostile")
    print(f"\nfuzz ({name} {version}): {count} hostile + {len(good)} good requests, 16 clients, {seconds:.1f}s")
    for ((what, expected), status), n in sorted(shapes.items()):
        print(f"  {status} (expected {expected})  x{n:<4} {what}")
    dropped = [(job[1], text) for job, status, text in results if status == 0]
    assert not dropped, dropped[:5]
    wrong = [(job[1], job[3][:80], status, text[:200]) for job, status, text in results
             if job[0] == "hostile" and status != job[1][1]]
    assert not wrong, f"{len(wrong)} answers with another status than their shape's: {wrong[:5]}"
    for job, status, text in results:
        if job[0] == "hostile" and status >= 400:
            assert json.loads(text)["message"], text[:200]
        if job[0] == "good":
            assert status == 200, text[:200]
            got = answer_of(json.loads(text))
            if generation:
                assert got == reference[job[1]], job[1]
            else:
                assert np.allclose(np.array(got), np.array(reference[job[1]]), atol=1e-5), job[1]
    assert worker_pids(management, name, version) == pids, "the worker restarted during the fuzz"


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

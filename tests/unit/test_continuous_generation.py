"""smollm2-chat under TorchServe's continuous batching, in-process: the frontend's call
pattern (transerve.operate.inprocess.ContinuousDriver) around the real handler, one decode step per
call, replies read from TorchServe's own frames. Answers are checked against the same
model on the same engine under static batching. Every test runs on both engines: 2.0 (torch,
checked against 1.0) and 3.0 (llama.cpp on the GGUF, checked against 3.0 itself with static
batching)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from transerve.operate.inprocess import LocalWorker
from transerve.build.spec import find_spec

LONG = {"inputs": "Once upon a time, in a small village by the sea, there lived", "parameters": {"max_new_tokens": 40}}
SHORT = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 4}}
CHAT = {"messages": [{"role": "user", "content": "Name a colour."}], "parameters": {"max_new_tokens": 12}}


def continuous(mv, **handler):
    runtime = dataclasses.replace(mv.runtime, continuousBatching=True, batchSize=8)
    return dataclasses.replace(mv, runtime=runtime).with_handler(**{"max_running": 3, "max_waiting": 2, "step_budget_ms": 0,
                                                                   **handler})


@pytest.fixture(scope="module", params=["2.0", "3.0"])
def version(request):
    """The continuous-batching version under test: 2.0 on torch, 3.0 on llama.cpp."""
    return find_spec("smollm2-chat").version(request.param)


@pytest.fixture(scope="module")
def static(version, chat_static):
    """The same engine under static batching: 1.0 for torch, 3.0 with continuous batching off."""
    if version.handler.engine == "torch":
        yield chat_static
        return
    worker = LocalWorker(dataclasses.replace(version, runtime=dataclasses.replace(version.runtime, continuousBatching=False)))
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def worker(version):
    worker = LocalWorker(continuous(version))
    yield worker
    worker.close()


def alone(static, body):
    [answer] = static.predict([body])
    assert answer.status == 200
    return answer.body


def test_a_late_short_request_finishes_while_long_ones_run(worker, static):
    driver = worker.continuous()
    long = [driver.submit(LONG), driver.submit(CHAT)]
    for _ in range(3):
        driver.call()
    short = driver.submit(SHORT)
    driver.run(until=lambda: short.done)
    assert not any(job.done for job in long)  # still decoding when the short one is answered
    driver.run()
    for job, body in zip([*long, short], [LONG, CHAT, SHORT]):
        assert job.status == 200 and json.loads(job.text) == alone(static, body), body
    assert len(short.parts) == 4  # admitted in the call it arrived in: 4 tokens, one reply per step


def test_streamed_parts_concatenate_to_the_answer(worker, static):
    driver = worker.continuous()
    stream = driver.submit({**LONG, "stream": True})
    plain = driver.submit(SHORT)
    driver.run()
    lines = [json.loads(line) for line in stream.text.splitlines() if line]
    expected = alone(static, LONG)
    assert len(lines) > 5 and stream.parts[0].headers["ts_stream_next"] == "true"
    assert "".join(line["text"] for line in lines) == expected["generated_text"]
    assert lines[-1]["details"] == expected["details"]
    assert stream.parts[-1].headers["ts_stream_next"] == "false"
    assert json.loads(plain.text) == alone(static, SHORT)


def test_a_client_that_goes_away_is_evicted_at_the_next_call(worker):
    driver = worker.continuous()
    scheduler = worker.handler.scheduler
    evicted = scheduler.evicted
    gone, stays = driver.submit(LONG), driver.submit(LONG)
    driver.call()
    driver.call()
    assert len(scheduler.decoder.rows) == 2
    gone.gone = True
    driver.call()
    assert len(scheduler.decoder.rows) == 1 and scheduler.evicted == evicted + 1
    driver.run()
    assert stays.done and stays.status == 200 and not scheduler.requests and not scheduler.owner


def test_beyond_max_waiting_requests_get_429_with_retry_after(worker):
    driver = worker.continuous()
    jobs = [driver.submit(SHORT) for _ in range(8)]  # max_running 3 + max_waiting 2 are accepted
    driver.call()
    refused = [job for job in jobs if job.status == 429]
    assert len(refused) == 3
    for job in refused:
        assert len(job.parts) == 1 and "ts_stream_next" not in job.parts[0].headers
        assert job.parts[0].headers["Retry-After"] == "1"
        assert "max_waiting 2" in json.loads(job.text)["message"]
    driver.run()
    assert all(job.status == 200 and job.done for job in jobs if job not in refused)


def test_refusals_grpc_and_one_step_answers_come_in_one_piece(worker, static):
    driver = worker.continuous()
    bad = driver.submit({"inputs": "x", "parameters": {"temperature": "é"}})
    grpc = driver.submit(LONG, grpc=True)
    one = driver.submit({**SHORT, "parameters": {"max_new_tokens": 1}, "stream": True})
    driver.call()
    assert (bad.status, len(bad.parts)) == (400, 1) and "got 'é'" in json.loads(bad.text)["message"]
    # gRPC: decoded to its end in its first call (TorchServe would pass on only a first chunk)
    assert len(grpc.parts) == 1 and grpc.parts[0].headers["ts_stream_next"] == "false"
    assert json.loads(grpc.text) == alone(static, LONG)
    # done in its first step: one piece (a first reply that ends a stream leaves the client hanging)
    assert len(one.parts) == 1 and "ts_stream_next" not in one.parts[0].headers
    assert json.loads(one.text.splitlines()[-1])["details"]["generated_tokens"] == 1


def test_kserve_v1_instances_are_answered_as_under_static_batching(worker, static):
    body = {"instances": ["Red, green,", "One, two,"], "parameters": {"max_new_tokens": 6}}
    driver = worker.continuous()
    v1 = driver.submit(body)
    driver.run()
    assert v1.status == 200 and json.loads(v1.text) == alone(static, body)
    assert list(json.loads(v1.text)) == ["predictions"]


def test_a_step_admits_prompts_within_the_prefill_budget(static, version):
    worker = LocalWorker(continuous(version, prefill_tokens=8), model_dir=None)
    try:
        driver = worker.continuous()
        jobs = [driver.submit(SHORT) for _ in range(3)]  # 5 prompt tokens each
        driver.call()
        assert len(worker.handler.scheduler.decoder.rows) == 1  # the first always; 5 + 5 > 8
        driver.call()
        assert len(worker.handler.scheduler.decoder.rows) == 2
        driver.run()
        assert all(json.loads(job.text) == alone(static, SHORT) for job in jobs)
    finally:
        worker.close()


def prefills(engine) -> list[int]:
    """Watch an engine's forward passes: the list fills with the prompt tokens each pass of a
    lone joining row prefills (torch: a group's chunk of columns; llama.cpp: a row's tokens in a batch)."""
    widths: list[int] = []
    if engine.name == "torch":
        forward = engine.forward_model

        def spy(ids, *args):
            if ids.shape[0] == 1 and ids.shape[1] > 1:
                widths.append(ids.shape[1])
            return forward(ids, *args)

        engine.forward_model = spy
    else:
        decode = engine.decode

        def spy(entries, outputs):
            prompt = [e for e in entries if e[0] in engine.fed and e[0] in engine.prefilling]
            if prompt:
                widths.append(len(prompt))
            return decode(entries, outputs)

        engine.decode = spy
    return widths


def test_a_prompt_past_the_budget_is_prefilled_a_chunk_a_step_while_the_others_decode(static, version):
    """prefill_tokens 8: LONG's 15-token prompt takes 2 steps of at most 8 tokens; the
    running request gets a token in each of them; both answers are static batching's."""
    worker = LocalWorker(continuous(version, prefill_tokens=8), model_dir=None)
    try:
        driver = worker.continuous()
        decoder = worker.handler.scheduler.decoder
        running = driver.submit({**SHORT, "parameters": {"max_new_tokens": 12}, "stream": True})
        driver.call()
        widths = prefills(decoder.engine)
        long = driver.submit(LONG)
        steps = 0
        while decoder.prefilling is not None or not any(long.parts):
            before = len(running.parts)
            driver.call()
            steps += 1
            assert len(running.parts) == before + 1  # a token for the running row every call
            if steps == 1:
                assert decoder.prefilling is not None and decoder.busy == 2
        prompt = len(worker.handler.task.tokenizer(LONG["inputs"]).input_ids)
        assert prompt > 8 and widths == [8] * (prompt // 8) + ([prompt % 8] if prompt % 8 else [])
        driver.run()
        assert json.loads(long.text) == alone(static, LONG)
        lines = [json.loads(line) for line in running.text.splitlines() if line]
        assert "".join(line["text"] for line in lines) == alone(static, {**SHORT, "parameters": {"max_new_tokens": 12}})["generated_text"]
    finally:
        worker.close()


@pytest.mark.parametrize("how", ["disconnected", "cancelled"])
def test_a_request_that_ends_while_prefilled_leaves_no_trace(static, version, how):
    worker = LocalWorker(continuous(version, prefill_tokens=4), model_dir=None)
    try:
        driver = worker.continuous()
        scheduler = worker.handler.scheduler
        target = driver.submit(LONG)
        driver.call()
        assert scheduler.decoder.prefilling is not None
        if how == "disconnected":
            target.gone = True
        else:
            cancel = driver.submit({"id": target.id}, path="cancel")
        driver.call()
        assert scheduler.decoder.prefilling is None and scheduler.decoder.busy == 0 and not scheduler.requests
        if how == "cancelled":
            assert cancel.status == 200 and json.loads(target.text)["details"]["finish_reason"] == "cancelled"
        after = driver.submit(SHORT)
        driver.run()
        assert json.loads(after.text) == alone(static, SHORT)
    finally:
        worker.close()


def test_a_deadline_ends_a_row_with_finish_reason_timeout(worker, static):
    long = {**LONG, "parameters": {"max_new_tokens": 400, "ignore_eos": True}}  # seconds of work on either engine
    driver = worker.continuous()
    timed = driver.submit({**long, "parameters": {**long["parameters"], "timeout": 0.5}, "stream": True})
    other = driver.submit(SHORT)
    driver.run()
    lines = [json.loads(line) for line in timed.text.splitlines() if line]
    details = lines[-1]["details"]
    # ended before its 400 tokens (how many came first depends on the machine's speed: none, when it is busy)
    assert details["finish_reason"] == "timeout" and 0 <= details["generated_tokens"] < 400
    so_far, full = "".join(line["text"] for line in lines), alone(static, LONG)["generated_text"]
    assert so_far.startswith(full) or full.startswith(so_far)  # the text so far (LONG's ends at 40 tokens or eos)
    assert json.loads(other.text) == alone(static, SHORT)
    # static batching keeps the deadline too
    [answer] = static.predict([{**long, "parameters": {**long["parameters"], "timeout": 0.3}}])
    assert answer.body["details"]["finish_reason"] == "timeout"
    [over] = static.predict([{**SHORT, "parameters": {**SHORT["parameters"], "timeout": 10_000}}])
    assert over.status == 400 and "max_timeout" in over.body["message"]


def test_cancel_by_id_ends_a_running_request_and_an_unknown_id_is_404(worker):
    driver = worker.continuous()
    scheduler = worker.handler.scheduler
    target = driver.submit({**LONG, "stream": True})
    for _ in range(3):
        driver.call()
    cancel = driver.submit({"id": target.id}, path="cancel")
    unknown = driver.submit({"id": "no-such-request"}, path="cancel")
    malformed = driver.submit({"request": target.id}, path="cancel")
    driver.call()
    assert (cancel.status, json.loads(cancel.text)) == (200, {"cancelled": target.id})
    assert unknown.status == 404 and "no running request" in json.loads(unknown.text)["message"]
    assert malformed.status == 400 and '{"id":' in json.loads(malformed.text)["message"]
    assert target.done and not scheduler.decoder.rows and not scheduler.requests
    details = json.loads(target.text.splitlines()[-1])["details"]
    assert details["finish_reason"] == "cancelled" and details["generated_tokens"] == 3


def test_a_path_after_the_version_is_404_under_static_batching(static):
    driver = static.continuous()  # the same frames; the static handler answers each in one call
    cancel = driver.submit({"id": "x"}, path="cancel")
    other = driver.submit(SHORT, path="v2/completions")
    plain = driver.submit(SHORT)
    driver.call()
    assert cancel.status == 404 and "needs runtime continuousBatching" in json.loads(cancel.text)["message"]
    assert other.status == 404 and "no such path: 'v2/completions'" in json.loads(other.text)["message"]
    assert plain.status == 200 and json.loads(plain.text) == alone(static, SHORT)


def test_step_metrics_count_rows_tokens_and_time_them(worker, caplog):
    """Every metric continuous batching emits, from the handler's metric lines of one run:
    two requests, the second joining one step after the first."""
    import logging
    import re

    caplog.set_level(logging.INFO)
    driver = worker.continuous()
    first = driver.submit({"inputs": ["Red, green,", "One, two,"], "parameters": {"max_new_tokens": 5, "ignore_eos": True}})
    driver.call()
    second = driver.submit({**LONG, "parameters": {"max_new_tokens": 6, "ignore_eos": True}})
    driver.run()
    lines = [r.getMessage() for r in caplog.records if "[METRICS]transerve_" in r.getMessage()]

    def values(name):
        return [float(m.group(1)) for line in lines if (m := re.search(rf"\[METRICS\]{name}\.\w+:([-0-9.e]+)\|", line))]

    answers = [json.loads(first.text), json.loads(second.text)]
    details = [d["details"] for d in answers[0]] + [answers[1]["details"]]
    assert sum(values("transerve_generated_tokens_total")) == sum(d["generated_tokens"] for d in details) == 16
    assert sum(values("transerve_input_tokens_total")) == sum(d["prompt_tokens"] for d in details)
    assert sum(values("transerve_generation_rows_admitted_total")) == sum(values("transerve_inputs_total")) == 3
    assert len(values("transerve_generation_queue_seconds")) == 2  # one per request
    first_token, per_token = values("transerve_time_to_first_token_seconds"), values("transerve_time_per_output_token_seconds")
    assert len(first_token) == len(per_token) == 3 and all(0 < v < 30 for v in first_token + per_token)
    assert values("transerve_generation_running_rows")[-1] == 0 and values("transerve_generation_waiting_requests")[-1] == 0


def test_openai_chat_streams_sse_under_continuous_batching_as_under_static(worker, static):
    body = {"model": "smollm2-chat", "messages": CHAT["messages"], "max_tokens": 12, "temperature": 0}
    [whole] = static.predict([body], path="v1/chat/completions")
    driver = worker.continuous()
    streamed, plain = driver.submit({**body, "stream": True}, path="v1/chat/completions"), driver.submit(
        body, path="v1/chat/completions")
    models = driver.submit(b"", path="v1/models")
    driver.run()
    assert plain.status == 200 and json.loads(plain.text)["choices"] == whole.body["choices"]
    assert len(streamed.parts) > 2 and streamed.parts[0].content_type == "text/event-stream"
    events = [e[6:] for e in streamed.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole.body["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole.body["choices"][0]["finish_reason"]
    assert json.loads(models.text)["data"][0]["id"] == "smollm2-chat"


def test_a_drain_ends_every_request_for_the_operator_alone(worker, monkeypatch):
    """POST .../drain (a rollout's, past its bound): with the run directory's key, every running and
    waiting request ends now (finish_reason "cancelled", its next reply its last) and new ones get
    503 with Retry-After; without it, or with another key, a 403 and nothing ends."""
    from handlers.handler import DRAIN_KEY_ENV

    driver = worker.continuous()
    scheduler = worker.handler.scheduler
    long = {**LONG, "parameters": {"max_new_tokens": 400, "ignore_eos": True}}
    running = [driver.submit({**long, "stream": True}) for _ in range(3)]  # max_running 3
    waiting = driver.submit(long)
    for _ in range(3):
        driver.call()
    monkeypatch.delenv(DRAIN_KEY_ENV, raising=False)
    anyone = driver.submit({}, path="drain")
    monkeypatch.setenv(DRAIN_KEY_ENV, "the-operators-key")
    guessed = driver.submit({}, path="drain", headers={"X-Transerve-Drain-Key": "a-guess"})
    driver.call()
    assert anyone.status == guessed.status == 403 and "drain key" in json.loads(guessed.text)["message"]
    assert not any(job.done for job in [*running, waiting]) and not scheduler.draining
    drain = driver.submit({}, path="drain", headers={"X-Transerve-Drain-Key": "the-operators-key"})
    driver.call()
    assert (drain.status, json.loads(drain.text)) == (200, {"drained": {"running": 3, "waiting": 1}})
    assert all(job.done for job in [*running, waiting]) and not scheduler.requests and scheduler.decoder.busy == 0
    for job in running:
        details = json.loads(job.text.splitlines()[-1])["details"]
        assert details["finish_reason"] == "cancelled" and 0 < details["generated_tokens"] < 400
    details = json.loads(waiting.text)["details"]
    assert (details["finish_reason"], details["generated_tokens"]) == ("cancelled", 0)  # it never got a row
    late = driver.submit(SHORT)
    driver.call()
    assert late.status == 503 and late.parts[0].headers["Retry-After"] == "1"
    assert "being retired" in json.loads(late.text)["message"]
    scheduler.draining = False  # the module's worker goes on for the other tests

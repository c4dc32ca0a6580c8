"""smollm2-chat on a real TorchServe: dynamic batches where each request stands alone, and streaming."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from transerve.build import archive
from transerve.torchserve.management import ApiError
from transerve.torchserve.waiting import wait_until

NAME = "smollm2-chat"
BATCH_DELAY_MS = 500


@pytest.fixture(scope="module")
def chat(store, management):
    """smollm2-chat 1.0 registered with batchSize 8 and a batch delay long enough to batch a burst."""
    from transerve.build.spec import find_spec

    archive.build(find_spec(NAME).version("1.0"), store, log=print)
    management.register(f"{NAME}-1.0.mar", initial_workers=1, batch_size=8, max_batch_delay=BATCH_DELAY_MS)
    [status] = management.describe(NAME)
    yield status
    try:
        management.unregister(NAME, "1.0")
    except ApiError:
        pass


def post(server, body, stream=False):
    headers = {"Authorization": f"Bearer {server.keys()['inference']}"}
    return requests.post(f"{server.url('inference')}/predictions/{NAME}", json=body, headers=headers, timeout=300, stream=stream)


def test_registered_with_the_batch_settings(chat):
    assert (chat.batch_size, chat.max_batch_delay, chat.ready_workers) == (8, BATCH_DELAY_MS, 1)


BURST = [
    {"inputs": "The capital of Italy is", "parameters": {"max_new_tokens": 8}},
    {"inputs": "Write a haiku about servers:", "parameters": {"max_new_tokens": 20}},
    {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "parameters": {"max_new_tokens": 16}},
    {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 16, "temperature": 0.7, "top_k": 40, "seed": 11}},
    {"inputs": ["Red, green,", "One, two,"], "parameters": {"max_new_tokens": 12, "stop": ["."]}},
    {"inputs": "List three fruits:", "parameters": {"max_new_tokens": 24, "repetition_penalty": 1.3}},
    {"inputs": "bad", "parameters": {"temperature": -1}},  # refused alone
]
BAD = 6


def test_a_burst_is_batched_and_each_request_gets_its_single_request_answer(torchserve, chat):
    alone = {i: post(torchserve, body).json() for i, body in enumerate(BURST) if i != BAD}
    log = torchserve.log_dir / "model_log.log"
    seen = log.read_text(errors="replace") if log.exists() else ""
    barrier = threading.Barrier(len(BURST))

    def send(body):
        barrier.wait()
        return post(torchserve, body)

    with ThreadPoolExecutor(len(BURST)) as pool:
        answers = list(pool.map(send, BURST))
    assert answers[BAD].status_code == 400
    assert "temperature: must be >= 0.01" in answers[BAD].json()["message"]
    for i, expected in alone.items():
        assert answers[i].status_code == 200, answers[i].text
        assert answers[i].json() == expected, BURST[i]
    new_lines = (log.read_text(errors="replace") if log.exists() else "")[len(seen):]
    sizes = [int(n) for n in re.findall(r"transerve: batch of (\d+) requests", new_lines)]
    print(f"batch sizes the worker saw for the burst of {len(BURST)}: {sizes}")
    assert sizes and max(sizes) >= 4, f"the burst was not batched: {sizes}"


def test_streaming_sends_chunks_as_they_are_generated(torchserve, chat):
    body = {"messages": [{"role": "user", "content": "Tell me a short story about a robot."}],
            "parameters": {"max_new_tokens": 96, "ignore_eos": True}}
    started = time.perf_counter()
    plain = post(torchserve, body).json()
    whole = time.perf_counter() - started  # the generation's own time, answered in one piece
    started = time.perf_counter()
    answer = post(torchserve, {**body, "stream": True}, stream=True)
    assert answer.status_code == 200
    chunks, times = [], []
    for line in answer.iter_lines():
        if line:
            chunks.append(json.loads(line))
            times.append(time.perf_counter() - started)
    print(f"stream: {len(chunks)} chunks, first after {times[0] * 1000:.0f} ms, last after {times[-1] * 1000:.0f} ms; "
          f"the same answer in one piece took {whole * 1000:.0f} ms")
    assert len(chunks) > 10
    # incremental: the chunks are spread over the generation (a buffered answer would come all at
    # once at its end), the first long before the last
    assert times[-1] - times[0] > 0.5 * whole and times[0] < 0.3 * times[-1], (times[0], times[-1], whole)
    assert "".join(c["text"] for c in chunks) == plain["generated_text"]
    assert chunks[-1]["details"] == plain["details"]


def grpc_stream(torchserve, body, timeout=120):
    """StreamPredictions with TorchServe's own protos: the parts, decoded."""
    import grpc

    from transerve.torchserve import protos

    inference = protos.load("inference")
    with grpc.insecure_channel(f"127.0.0.1:{torchserve.properties['grpc_inference_port']}") as channel:
        stub = inference.grpc.InferenceAPIsServiceStub(channel)
        request = inference.pb2.PredictionsRequest(model_name=NAME, input={"body": json.dumps(body).encode()})
        key = [("authorization", f"Bearer {torchserve.keys()['inference']}")]
        return [part.prediction.decode() for part in stub.StreamPredictions(request, metadata=key, timeout=timeout)]


def test_grpc_stream_predictions_stream_the_same_text(torchserve, chat):
    body = {"inputs": "The three primary colours are", "parameters": {"max_new_tokens": 24}}
    plain = post(torchserve, body).json()
    parts = grpc_stream(torchserve, {**body, "stream": True})
    chunks = [json.loads(line) for part in parts for line in part.splitlines() if line]
    assert len(parts) > 3
    assert "".join(c["text"] for c in chunks) == plain["generated_text"]
    assert chunks[-1]["details"] == plain["details"]


@pytest.mark.parametrize("body, key", [
    ({"inputs": "Hi", "parameters": {"max_new_tokens": 4}}, "generated_text"),  # not streamed
    ({"inputs": "Hi", "parameters": {"max_new_tokens": 1}, "stream": True}, "details"),  # done before a chunk
    ({"inputs": "Hi", "parameters": {"temperature": "é"}, "stream": True}, "message"),  # refused
], ids=["plain", "one-token-stream", "refused"])
def test_grpc_stream_predictions_of_a_one_reply_answer_end_the_stream(torchserve, chat, body, key):
    """Each of these killed the worker before transerve ended every gRPC reply's stream."""
    [part] = grpc_stream(torchserve, body)
    assert key in json.loads(part)


def test_a_stream_and_plain_requests_share_a_batch(torchserve, chat, metric):
    stream_body = {"inputs": "The history of the internet began", "parameters": {"max_new_tokens": 40}, "stream": True}
    plain_body = {"inputs": "The history of the internet began", "parameters": {"max_new_tokens": 40}}
    expected = post(torchserve, plain_body).json()
    labels = {"model_name": NAME, "model_version": "1.0"}
    batches, inputs = metric("transerve_forward_batches_total", **labels), metric("transerve_forward_inputs_total", **labels)
    barrier = threading.Barrier(3)

    def streamed():
        barrier.wait()
        lines = [json.loads(line) for line in post(torchserve, stream_body, stream=True).iter_lines() if line]
        return "".join(c["text"] for c in lines)

    def plain():
        barrier.wait()
        return post(torchserve, plain_body).json()

    with ThreadPoolExecutor(3) as pool:
        text, first, second = pool.submit(streamed), pool.submit(plain), pool.submit(plain)
        assert text.result() == expected["generated_text"]
        assert first.result() == second.result() == expected
    # one model batch of the three (the batch metric, not their timing, says they shared it); the
    # frontend reads the worker's metric lines as they come, so they may trail the answers
    wait_until(lambda: metric("transerve_forward_inputs_total", **labels) - inputs >= 3, 10, lambda: AssertionError("no metric"))
    assert metric("transerve_forward_inputs_total", **labels) - inputs == 3
    assert metric("transerve_forward_batches_total", **labels) - batches == 1


@pytest.mark.parametrize(
    "data, status, message",
    [
        (b"\xff\xfe", 400, "not valid UTF-8"),
        ('{"inputs": "x", "parameters": {"max_new_tokens": 100000}}', 400, "above this model's limit"),
        ('{"inputs": "x", "parameters": {"nucleus": 0.9}}', 400, "unknown key 'nucleus'"),
        ('{"inputs": ["a", "b"], "stream": true}', 400, "'stream' needs a single prompt"),
        ('{"messages": [{"role": "user"}]}', 400, "exactly 'role' and 'content'"),
        ('{"inputs": "' + "word " * 2100 + '"}', 413, "the prompt limit is 2048 tokens"),
    ],
)
def test_bad_generation_requests_get_their_4xx(torchserve, chat, data, status, message):
    headers = {"Authorization": f"Bearer {torchserve.keys()['inference']}", "Content-Type": "application/json"}
    answer = requests.post(f"{torchserve.url('inference')}/predictions/{NAME}", data=data, headers=headers, timeout=60)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["message"]


def test_prometheus_counts_the_generated_tokens(torchserve, chat, prometheus):
    query = f'sum(transerve_generated_tokens_total{{model_name="{NAME}", model_version="1.0"}})'
    before = prometheus.value(query)
    answer = post(torchserve, {"inputs": "Tell me about the moon.", "parameters": {"max_new_tokens": 20}}).json()
    generated = answer["details"]["generated_tokens"]
    got = prometheus.wait_for(query, before + generated)
    print(f"{query} = {got:g} (was {before:g}, this request generated {generated})")
    assert generated > 0 and got == before + generated
    ttft = prometheus.value(f'sum(transerve_time_to_first_token_seconds_count{{model_name="{NAME}"}})')
    assert ttft >= 1


def test_non_ascii_in_a_refused_field_gets_its_4xx_and_the_worker_lives(chat, refuses_non_ascii):
    refuses_non_ascii(NAME)


def test_the_worker_never_restarted(management, chat):
    """Last in this module: the worker that answered everything above is the one registered."""
    [now] = management.describe(NAME)
    assert [(w.id, w.pid, w.start_time) for w in now.workers] == [(w.id, w.pid, w.start_time) for w in chat.workers]
    assert now.ready_workers == 1

"""Generation under TorchServe's continuous batching: decode steps in each call.

With `continuousBatching: true` TorchServe calls the handler again and again with the
requests still running (same request id, no body) and the new ones, up to batchSize, and
sends each call's reply per request as the next chunk of its response. Read and checked on
a live TorchServe 0.12 (the closing note of issue 15 has the details):

- a request whose id is missing from a call was dropped by the frontend: its client went
  away. Its rows leave the decoder at once, so it stops costing compute within one step.
- the reply's stopping criterion says whether the request goes on (False), ends (True), or
  is answered in one piece (None). A request that ends on its very first reply with True
  gets no response at all, so a first reply that ends a request is always one piece.
- an empty reply is sent as nothing the client sees: a request that is not streamed
  answers "" until its answer is ready.
- gRPC clients get only a first chunk in this mode: a request that came over gRPC (no HTTP
  headers) joins the running batch like any other, and its first call goes on stepping until
  it is decoded to its end; it is answered in one piece.

A call runs one step, or steps until `step_budget_ms` has passed: every call is a round trip
through the frontend, which a fast engine (llama.cpp: ~8 ms a token here) would otherwise pay for
each token. Requests that arrive meanwhile wait for the call's end (the frontend hands them over
only then); those in the handler's own waiting room join as soon as rows leave.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from handlers.config import short
from handlers.generation.decoder import Row, Stepped, end
from handlers.payload import InputError
from handlers.protocols import Ready, render
from handlers.tasks.base import Item
from handlers.tasks.generation import GenerationTask

RETRY_AFTER_SECONDS = 1  # what a 429 (max_waiting reached) asks the client to wait


@dataclass
class Running:
    """One accepted request: its rows, what is ready to send, and how many replies it got."""

    item: Item
    rows: list[Row]
    chunks: list[str] = field(default_factory=list)  # streamed text not sent yet (the protocol frames it)
    replies: int = 0
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return all(r.finish is not None for r in self.rows)


@dataclass
class Step:
    """What one call did, for the metrics."""

    generated: int = 0  # tokens, one per running row
    admitted: int = 0  # rows that joined the decoder
    prompt_tokens: int = 0  # their prompts' tokens
    ended: Counter = field(default_factory=Counter)  # rows ended before their end, by reason
    queue_seconds: list[float] = field(default_factory=list)  # arrival to admission, per request admitted
    first_token_seconds: list[float] = field(default_factory=list)  # from arrival, per row started
    per_token_seconds: list[float] = field(default_factory=list)  # after the first, per row finished


@dataclass
class Reply:
    body: str
    ends: bool | None  # the stopping criterion: False goes on, True ends, None answers in one piece
    error: InputError | None = None  # a refusal: the handler writes its body in the request's protocol
    content_type: str | None = None  # a streamed response's (NDJSON, SSE)
    inputs: int = 0  # prompts answered, on a request's last reply


class ContinuousScheduler:
    """Requests in, decode steps, one reply per request out; state kept between calls."""

    retry_after = RETRY_AFTER_SECONDS

    def __init__(self, task: GenerationTask):
        self.task, self.cfg = task, task.cfg
        self.decoder = task.decoder()
        self.requests: dict[str, Running] = {}  # by TorchServe's request id
        self.waiting: deque[str] = deque()
        self.owner: dict[Row, Running] = {}  # row -> its request, for streamed parts
        self.evicted = 0  # rows dropped because their client went away, in all
        self.last = Step()
        self.draining = False  # drained: new requests get 503 until the worker goes

    def iterate(
        self,
        ids: list[str],
        new: dict[int, Item | InputError],
        grpc: set[int],
        cancels: dict[int, str] | None = None,
        drains: set[int] | None = None,
        requeued: set[int] | None = None,
    ) -> list[Reply]:
        """One call: `ids` this call's request ids by position; `new` the parsed requests seen
        for the first time (or why they are refused), `grpc` the positions that came over gRPC,
        `cancels` the positions that ask to cancel a request, with its id, `drains` those that ask
        to end every request (the operator's, before this version's workers go), `requeued` the new
        streams another worker began (handlers/generation/requeued.py): ended at once, cancelled."""
        started = time.perf_counter()
        self.last = Step()
        self.forget(set(self.requests) - set(ids))
        replies: dict[int, Reply] = {}
        for idx, rid in (cancels or {}).items():
            if self.cancel(rid):
                replies[idx] = Reply(json.dumps({"cancelled": rid}), None)
            else:
                refused = InputError(
                    f"no running request with id {short(rid)}: it ended, or never ran on this worker",
                    status=404,
                    reason="unknown_request",
                )
                replies[idx] = Reply("", None, refused)
        for idx in drains or ():
            replies[idx] = Reply(json.dumps({"drained": self.drain()}), None)
        whole = []  # gRPC requests: answered in one piece, in this call
        for idx, item in new.items():
            if isinstance(item, InputError):
                replies[idx] = Reply("", None, item)
            elif isinstance(item, Ready):
                replies[idx] = Reply(item.body, None)
            elif (refused := self.accept(ids[idx], item)) is not None:
                replies[idx] = refused
            elif idx in (requeued or ()):
                self.cancel(ids[idx])
            elif idx in grpc:
                whole.append(self.requests[ids[idx]])
        budget = self.cfg.step_budget_ms / 1000
        while True:
            self.admit()
            ended = False
            if self.decoder.busy:
                stepped = self.decoder.step()
                self.collect(stepped)
                ended = bool(stepped.finished)
            if any(not running.done for running in whole):
                continue  # a gRPC answer is decoded to its end in its first call
            # The call ends when a client waits for what it has: a first token, or an answer's end
            # (its client sends its next request only then); else when the budget is spent.
            if (
                not self.decoder.busy
                or ended
                or self.last.first_token_seconds
                or time.perf_counter() - started >= budget
            ):
                break
        for idx, rid in enumerate(ids):
            if idx not in replies:
                replies[idx] = self.reply(rid)
        return [replies[idx] for idx in range(len(ids))]

    def collect(self, stepped: Stepped) -> None:
        """A step's streamed text to its requests, and its counts to the metrics."""
        for delta in stepped.deltas:
            self.owner[delta.row].chunks.append(delta.text)
        self.last.ended["timeout"] += sum(r.finish == "timeout" for r in stepped.finished)
        self.last.generated += len(stepped.decoded)
        self.last.first_token_seconds += [
            row.first_token_at - self.owner[row].arrived for row in stepped.decoded if len(row.tokens) == 1
        ]
        self.last.per_token_seconds += [
            r.per_token_seconds for r in stepped.finished if r.per_token_seconds is not None
        ]

    def forget(self, gone: set[str]) -> None:
        """Requests the frontend dropped (their clients disconnected) leave the decoder."""
        for rid in gone:
            running = self.requests.pop(rid)
            if rid in self.waiting:
                self.waiting.remove(rid)
            else:
                live = [r for r in running.rows if r.finish is None]
                self.decoder.evict(live)
                self.evicted += len(live)
                self.last.ended["disconnected"] += len(live)
            for row in running.rows:
                self.owner.pop(row, None)

    def accept(self, rid: str, item: Item) -> Reply | None:
        if self.draining:
            refused = InputError(
                "this version is being retired (drained for a rollout): send the request without a "
                "version, to the model's default, or retry",
                status=503,
                reason="draining",
            )
            return Reply("", None, refused)
        prompts = self.task.collate([item])
        if item.error is not None:
            return Reply("", None, item.error)
        if len(prompts.rows) > self.cfg.max_running:
            refused = InputError(
                f"{len(prompts.rows)} prompts in one request; at most {self.cfg.max_running} decode at "
                "once here (max_running): send fewer",
                status=413,
                reason="too_many_inputs",
            )
            return Reply("", None, refused)
        free = max(0, self.cfg.max_running - self.decoder.busy)  # rows this call can still admit
        if len(self.waiting) >= self.cfg.max_waiting + free:
            refused = InputError(
                f"this model is busy: {self.decoder.busy} rows are decoding and {len(self.waiting)} requests "
                f"are waiting (max_running {self.cfg.max_running}, max_waiting {self.cfg.max_waiting}); "
                f"retry in {RETRY_AFTER_SECONDS} s",
                status=429,
                reason="busy",
            )
            return Reply("", None, refused)
        running = Running(item, prompts.rows)
        for row in running.rows:
            self.owner[row] = running
        self.requests[rid] = running
        self.waiting.append(rid)
        return None

    def drain(self) -> dict:
        """End every request now, running or waiting (finish_reason "cancelled": each one's next
        reply is its last), and refuse new ones with 503 from now on: this version's workers are
        about to go. How many of each were ended."""
        self.draining = True
        waiting = set(self.waiting)
        ended = {"running": 0, "waiting": 0}
        for rid in list(self.requests):
            if self.cancel(rid):
                ended["waiting" if rid in waiting else "running"] += 1
        return ended

    def cancel(self, rid: str) -> bool:
        """End a request now (finish_reason "cancelled"); its next reply is its last. False
        when no request with that id is running or waiting."""
        running = self.requests.get(rid)
        if running is None or running.done:
            return False
        live = [r for r in running.rows if r.finish is None]
        for row in live:
            end(row, "cancelled")
        if rid in self.waiting:
            self.waiting.remove(rid)
        else:
            self.decoder.evict(live)
        self.last.ended["cancelled"] += len(live)
        return True

    def admit(self) -> None:
        """Waiting requests join the decoder while rows are free, up to the prefill budget
        (prompts past it alone are prefilled `prefill_tokens` a step); those whose deadline
        passed while they waited end without a token."""
        for rid in list(self.waiting):
            running = self.requests[rid]
            if self.decoder.expire(running.rows) and running.done:
                self.waiting.remove(rid)
                self.last.ended["timeout"] += len(running.rows)
        joining, tokens = [], 0
        while self.waiting and self.decoder.prefilling is None:  # one chunked prefill at a time
            running = self.requests[self.waiting[0]]
            size = sum(len(r.prompt) for r in running.rows)
            if self.decoder.busy + sum(len(r.rows) for r in joining) + len(running.rows) > self.cfg.max_running:
                break
            if joining and tokens + size > self.cfg.prefill_tokens:
                break
            self.waiting.popleft()
            joining.append(running)
            tokens += size
        if joining:
            rows = [row for request in joining for row in request.rows]
            # a request whose prompts alone exceed the budget is prefilled a chunk a step
            chunk = self.cfg.prefill_tokens // len(rows) if tokens > self.cfg.prefill_tokens else None
            self.decoder.admit(rows, chunk)
            now = time.perf_counter()
            self.last.admitted += len(rows)
            self.last.prompt_tokens += tokens
            self.last.queue_seconds += [now - request.arrived for request in joining]

    def reply(self, rid: str) -> Reply:
        running = self.requests[rid]
        first, stream = running.replies == 0, streamed(running.item)
        running.replies += 1
        if not running.done:
            body = self.deltas(running) if stream else ""
            return Reply(body, False, content_type=stream)
        del self.requests[rid]
        for row in running.rows:
            self.owner.pop(row, None)
        body = self.deltas(running) + render(self.task, running.item, running.rows)
        return Reply(body, None if first else True, content_type=stream, inputs=running.item.size)

    @staticmethod
    def deltas(running: Running) -> str:
        """The text streamed since the last reply, framed by the request's protocol ("" if none)."""
        if not running.chunks:
            return ""
        text = "".join(running.chunks)
        running.chunks.clear()
        return running.item.payload.wire.delta(running.item, text)


def streamed(item: Item) -> str | None:
    """The content type of a streamed request's response; None when it is not streamed."""
    return item.payload.wire.stream_content_type if item.payload.stream else None


CANCEL_EXAMPLE = '{"id": "<the x-request-id header of the request to cancel>"}'


def cancel_id(row) -> str:
    """The request id a cancel body names: {"id": "..."}; anything else is a 400."""
    body = row.get("body", row.get("data")) if isinstance(row, dict) else row
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            body = None
    if not (isinstance(body, dict) and set(body) == {"id"} and isinstance(body["id"], str) and body["id"]):
        raise InputError(f"a cancel takes {CANCEL_EXAMPLE}, got {short(body)}", reason="invalid_body")
    return body["id"]

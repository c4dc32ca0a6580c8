"""The decoder: rows decoding together over an engine's KV state, admitted and evicted between
steps; each step returns what it produced, per row.

    decoder = Decoder(engine, tokenizer, eos)
    decoder.admit(rows)           # their prompts are prefilled at the next step
    while decoder.busy:
        out = decoder.step()      # a token for every running row: out.deltas (streamed text), out.finished

With `admit(rows, chunk)` prompts longer than `chunk` tokens are prefilled that many tokens a
step while the running rows go on decoding, so a long prompt stalls them by one chunk a step,
not by its whole prefill.

One way through a step: the engine feeds every running row's last token (and the next prefill
chunk) and gives back each row's next-token logits; token choice (sampling.py) picks the
tokens; the rows' text grows (text.py), stop strings and budgets end rows, and finished rows
leave the engine. The decoder knows no wire format: it hands back text, and the handler's
protocol frames it.

Each row keeps its own parameters (budget, temperature, top-k, top-p, repetition penalty), its
own random generator and its own stop strings, so a row decodes the same tokens whatever joins
or leaves around it, on any engine whose logits for a row do not depend on the other rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from handlers.generation.sampling import choose
from handlers.generation.text import Text, first_stop, safe_prefix

if TYPE_CHECKING:
    from handlers.tasks.base import Item
    from handlers.tasks.generation import GenerationParams


@dataclass(eq=False)
class Row:
    """One prompt being generated, with everything that decides its tokens and its end."""

    item: Item[GenerationParams] | None  # the request this row answers (None: a row decoded outside
    # any request, as preparation proves a GGUF file)
    prompt: list[int]
    max_new: int
    sample: bool
    temperature: float
    top_k: int  # 0: no top-k filter
    top_p: float
    repetition_penalty: float
    stops: list[str]
    seed: int | None
    generator: torch.Generator | None
    stream: bool
    ignore_eos: bool = False
    deadline: float | None = None  # perf_counter() time at which the row ends ("timeout")
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already streamed
    finish: str | None = None
    first_token_at: float = 0.0  # perf_counter() times, for the metrics
    finished_at: float = 0.0
    seen: set[int] = field(default_factory=set)  # prompt and answer tokens, for the repetition penalty
    detokenizer: Text | None = None

    @property
    def per_token_seconds(self) -> float | None:
        """Mean time per token after the first, once finished (None with fewer than 2 tokens)."""
        return (self.finished_at - self.first_token_at) / (len(self.tokens) - 1) if len(self.tokens) > 1 else None


@dataclass
class Delta:
    """Text a streamed row may send now."""

    row: Row
    text: str


@dataclass
class Stepped:
    """What one step did: the streamed rows' new text, and the rows that ended (any reason)."""

    deltas: list[Delta] = field(default_factory=list)
    finished: list[Row] = field(default_factory=list)
    decoded: list[Row] = field(default_factory=list)  # the rows that got a token this step


class Engine(Protocol):
    """What a decoder needs of the network and its KV state (handlers/engines: torch, llamacpp).

    Every running row's last token is not in the KV state yet: `forward` feeds it."""

    @property
    def rows(self) -> list[Row]:
        """Running: in the KV state, in the order forward's logits come."""

    @property
    def prefilling(self) -> list[Row]:
        """Admitted, their prompts not all in the KV state yet."""

    @property
    def capacity(self) -> int | None:
        """The most rows it holds at once (running and prefilling); None: no limit."""

    def admit(self, rows: list[Row], chunk: int | None) -> None:
        """Queue the rows' prompts, prefilled at the next forwards (`chunk` tokens a step each)."""

    def forward(self) -> torch.Tensor | None:
        """Feed each running row's last token and the next prefill chunk; rows whose prompt is then
        complete join `rows` at its end. The next-token logits of `rows`, [rows, vocab] float32
        (None when no row is running)."""

    def evict(self, rows: list[Row]) -> None:
        """Drop rows, running or prefilling, and their KV state."""


class Decoder:
    def __init__(self, engine: Engine, tokenizer, eos: set[int]):
        self.engine, self.tokenizer, self.eos = engine, tokenizer, eos

    @property
    def rows(self) -> list[Row]:
        """The rows decoding."""
        return self.engine.rows

    @property
    def prefilling(self) -> list[Row] | None:
        """The rows whose prompts are being prefilled a chunk a step; None when none are."""
        return self.engine.prefilling or None

    @property
    def active(self) -> list[Row]:
        """Rows decoding, then rows being prefilled."""
        return self.engine.rows + self.engine.prefilling

    @property
    def busy(self) -> int:
        return len(self.engine.rows) + len(self.engine.prefilling)

    def admit(self, rows: list[Row], chunk: int | None = None) -> None:
        """Queue the rows' prompts: prefilled at the next step, in one go, or with `chunk`, when
        they are longer than that, `chunk` tokens in each of the next steps (one chunked prefill
        at a time)."""
        if not rows:
            return
        if self.engine.prefilling:
            raise RuntimeError("a prefill is under way; admit again once it has joined")
        for row in rows:
            row.detokenizer = Text(self.tokenizer)
            if row.repetition_penalty != 1.0:
                row.seen = set(row.prompt)
        self.engine.admit(list(rows), chunk)

    def steps(self, rows: list[Row]) -> Iterator[Stepped]:
        """Static batching: admit the rows (as many at a time as the engine holds), then step
        until every one is finished."""
        waiting = list(rows)
        while waiting or self.busy:
            room = len(waiting) if self.engine.capacity is None else self.engine.capacity - self.busy
            if waiting and room > 0 and not self.engine.prefilling:
                self.admit(waiting[:room])
                waiting = waiting[room:]
            yield self.step()

    def run(self, rows: list[Row]) -> list[Row]:
        for _ in self.steps(rows):
            pass
        return rows

    def step(self) -> Stepped:
        """The next prefill chunk, if any, and one token for every running row; the rows that
        finished (or ran out of time) leave."""
        out = Stepped(finished=self.expire(self.active))
        if not self.busy:
            return out
        logits = self.engine.forward()
        if logits is None:
            return out
        rows = list(self.engine.rows)
        for row, token in zip(rows, choose(logits, rows)):
            if self.advance(row, token, out.deltas):
                out.finished.append(row)
        out.decoded = rows
        self.engine.evict([r for r in rows if r.finish is not None])
        return out

    def expire(self, rows: list[Row], now: float | None = None) -> list[Row]:
        """End the rows whose deadline has passed (finish_reason "timeout"); they leave."""
        now = time.perf_counter() if now is None else now
        late = [r for r in rows if r.finish is None and r.deadline is not None and now >= r.deadline]
        for row in late:
            end(row, "timeout")
        self.evict(late)
        return late

    def evict(self, rows: list[Row]) -> None:
        if rows:
            self.engine.evict(rows)

    def advance(self, row: Row, token: int, deltas: list[Delta]) -> bool:
        """Add one token to a row (and what is ready of its text to `deltas`); True when the row is finished."""
        row.tokens.append(token)
        if len(row.tokens) == 1:
            row.first_token_at = time.perf_counter()
        if row.repetition_penalty != 1.0:
            row.seen.add(token)
        if token in self.eos and not row.ignore_eos:
            row.finish = "eos"
        else:
            checked = len(row.text)
            assert row.detokenizer is not None, "admitted rows have one"
            row.detokenizer.add(row.tokens)
            row.text = row.detokenizer.value
            cut = first_stop(row.text, row.stops, since=checked) if row.stops else None
            if cut is not None:
                row.text, row.finish = row.text[:cut], "stop"
            elif len(row.tokens) >= row.max_new:
                row.finish = "length"
        if row.finish is not None:
            end(row, row.finish)
        elif row.stream:
            ready = safe_prefix(row.text, row.stops)
            if ready > row.sent:
                deltas.append(Delta(row, row.text[row.sent : ready]))
                row.sent = ready
        return row.finish is not None


def end(row: Row, reason: str) -> None:
    """Finish a row: eos, stop, length, timeout, cancelled."""
    row.finish, row.finished_at = reason, time.perf_counter()
    if reason != "stop" and row.detokenizer is not None:
        row.text = row.detokenizer.final(row.tokens)

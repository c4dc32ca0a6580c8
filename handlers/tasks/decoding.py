"""The generation decoder: rows decoding together over one KV cache, admitted and evicted
between steps.

    decoder = Decoder(model, tokenizer, eos, pad_id, emit)   # emit(row, chunk): a streamed part
    decoder.admit(rows)          # prefill their prompts, merge them into the running batch
    while decoder.busy:
        finished = decoder.step()  # one token for every running row; finished rows leave

With `admit(rows, chunk)` prompts wider than `chunk` columns are prefilled that many
columns a step, in a cache of their own, and join the running batch when done: a long
prompt then stalls the running rows by one chunk's forward a step, not by its whole prefill.

Each row keeps its own parameters (budget, temperature, top_k, top_p, repetition penalty),
its own random generator (a seed gives the same text whatever else is in the batch) and
its own stop strings. The token choice is the one `model.generate` makes: repetition
penalty, then temperature, top_k and top_p, then argmax (greedy) or one draw (sampling).

Rows are left-padded: every row's next token is at the end, and its positions count only
its own tokens, so a row decodes the same tokens whatever joins or leaves around it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class Row:
    """One prompt being generated, with everything that decides its tokens and its end."""

    item: Any  # the request (handlers.tasks.base.Item) this row answers
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

    @property
    def per_token_seconds(self) -> float | None:
        """Mean time per token after the first, once finished (None with fewer than 2 tokens)."""
        return (self.finished_at - self.first_token_at) / (len(self.tokens) - 1) if len(self.tokens) > 1 else None


@dataclass
class Prefill:
    """Rows joining: their left-padded prompts, prefilled `chunk` columns at a time into a
    cache of their own."""

    rows: list[Row]
    ids: torch.Tensor
    mask: torch.Tensor
    seen: torch.Tensor
    chunk: int
    cache: DynamicCache = field(default_factory=DynamicCache)
    done: int = 0  # columns prefilled

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.ids.device)
        self.rows = [self.rows[i] for i in keep]
        self.ids, self.mask, self.seen = self.ids[index], self.mask[index], self.seen[index]
        self.cache.batch_select_indices(index)


class Decoder:
    """The running rows and their state: KV cache, attention mask, tokens seen (for the
    repetition penalty) and the logits of each row's next token; and the rows being
    prefilled a chunk a step, if any."""

    def __init__(self, model, tokenizer, eos: set[int], pad_id: int, emit: Callable[[Row, str], None] | None = None):
        self.model, self.tokenizer, self.eos, self.pad_id, self.emit = model, tokenizer, eos, pad_id, emit
        self.device = model.device
        self.vocab = model.config.vocab_size
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask = self.seen = self.logits = None
        self.prefilling: Prefill | None = None

    @property
    def active(self) -> list[Row]:
        """Rows decoding, then rows being prefilled."""
        return self.rows + (self.prefilling.rows if self.prefilling else [])

    @property
    def busy(self) -> int:
        return len(self.active)

    def admit(self, rows: list[Row], chunk: int | None = None) -> None:
        """Prefill the rows' prompts and join them to the running batch: now, in one forward,
        or with `chunk`, when their prompts are wider than that, `chunk` columns in each of the
        next steps (one chunked prefill at a time)."""
        if not rows:
            return
        if self.prefilling is not None:
            raise RuntimeError("a chunked prefill is under way; admit again once it has joined")
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        seen = torch.zeros((len(rows), self.vocab), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
            seen[i, r.prompt] = True
        group = Prefill(list(rows), ids.to(self.device), mask.to(self.device), seen.to(self.device),
                        chunk=width if chunk is None else max(1, chunk))
        if group.chunk >= width:
            self.prefill(group)
        else:
            self.prefilling = group

    def prefill(self, group: Prefill) -> None:
        """Prefill the group's next chunk; the whole prompt done, its rows join the running batch."""
        end = min(group.done + group.chunk, group.ids.shape[1])
        positions = (group.mask.cumsum(-1) - 1).clamp(min=0)[:, group.done:end]
        logits = self.forward(group.ids[:, group.done:end], group.mask[:, :end], positions, group.cache)
        group.done = end
        if end < group.ids.shape[1]:
            return
        self.prefilling = None
        if not self.rows:
            self.rows, self.cache, self.mask, self.seen, self.logits = group.rows, group.cache, group.mask, group.seen, logits
            return
        # Both batches left-padded to the longer one, then stacked: padding is masked out,
        # and positions come from each row's own mask.
        width = max(self.mask.shape[1], group.mask.shape[1])
        merge_caches(self.cache, group.cache, width)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(group.mask, width)])
        self.seen = torch.cat([self.seen, group.seen])
        self.logits = torch.cat([self.logits, logits])
        self.rows += group.rows

    def run(self, rows: list[Row]) -> list[Row]:
        """Static batching: admit the rows, then step until every one is finished."""
        self.admit(rows)
        while self.busy:
            self.step()
        return rows

    def step(self) -> list[Row]:
        """The next chunk of a chunked prefill, if any, then one token for every running row;
        the rows that finished (or ran out of time) leave and are returned."""
        late = self.expire(self.active)
        if self.prefilling is not None:
            self.prefill(self.prefilling)
        if not self.rows:
            return late
        chosen = self.choose(self.logits, self.rows, self.seen)
        self.seen[torch.arange(len(self.rows), device=self.device), chosen] = True
        finished = [r for r, token in zip(self.rows, chosen.tolist()) if self.advance(r, token)]
        keep = self.evict(finished)
        if self.rows:
            chosen = chosen[keep] if keep is not None else chosen
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
            self.logits = self.forward(chosen[:, None], self.mask, self.mask.sum(-1, keepdim=True) - 1, self.cache)
        return late + finished

    def expire(self, rows: list[Row], now: float | None = None) -> list[Row]:
        """End the rows whose deadline has passed (finish_reason "timeout"); running ones leave."""
        now = time.perf_counter() if now is None else now
        late = [r for r in rows if r.finish is None and r.deadline is not None and now >= r.deadline]
        for row in late:
            end(row, "timeout")
        self.evict(late)
        return late

    def evict(self, rows: list[Row]) -> torch.Tensor | None:
        """Drop rows from the batch (or the prefill) and the cache; the kept running rows'
        indices (None: all kept)."""
        gone = {id(r) for r in rows}
        if self.prefilling is not None and any(id(r) in gone for r in self.prefilling.rows):
            keep = [i for i, r in enumerate(self.prefilling.rows) if id(r) not in gone]
            if keep:
                self.prefilling.select(keep)
            else:
                self.prefilling = None
        if not any(id(r) in gone for r in self.rows):
            return None
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.seen = self.logits = None
            return torch.tensor([], dtype=torch.long, device=self.device)
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.seen, self.logits = self.mask[index], self.seen[index], self.logits[index]
        self.trim()
        return index

    def trim(self) -> None:
        """Drop the left columns that no running row attends to: padding left behind by longer
        rows that went. Without this a batch that never empties (continuous batching under
        steady load) would keep every position it ever held, in memory and in every step's
        attention. Positions come from each row's own mask, so dropping them changes nothing."""
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        if start == 0:
            return
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]

    def forward(self, ids, mask, positions, cache) -> torch.Tensor:
        """The next-token logits of every row (float32)."""
        return self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :].float()

    def choose(self, logits: torch.Tensor, rows: list[Row], seen: torch.Tensor) -> torch.Tensor:
        """The next token of every row, as generate's logits processors would pick it."""
        penalties = torch.tensor([r.repetition_penalty for r in rows], device=logits.device)[:, None]
        if (penalties != 1.0).any():
            penalized = torch.where(logits < 0, logits * penalties, logits / penalties)
            logits = torch.where(seen, penalized, logits)
        chosen = logits.argmax(-1)
        sampled = [i for i, r in enumerate(rows) if r.sample]
        if not sampled:
            return chosen
        part = [rows[i] for i in sampled]
        scaled = logits[sampled] / torch.tensor([r.temperature for r in part], device=logits.device)[:, None]
        ordered, order = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(scaled.shape[-1], device=logits.device)[None, :]
        top_k = torch.tensor([r.top_k or scaled.shape[-1] for r in part], device=logits.device)[:, None]
        ordered = ordered.masked_fill(rank >= top_k, float("-inf"))
        top_p = torch.tensor([r.top_p for r in part], device=logits.device)[:, None]
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass ranked above each token
        ordered = ordered.masked_fill((top_p < 1.0) & (before > top_p) & (rank > 0), float("-inf"))
        probs = ordered.softmax(-1)
        for j, (i, r) in enumerate(zip(sampled, part)):
            pick = torch.multinomial(probs[j], 1, generator=r.generator)
            chosen[i] = order[j, pick[0]]
        return chosen

    def advance(self, row: Row, token: int) -> bool:
        """Add one token to a row (and stream what is ready of it); True when the row is finished."""
        row.tokens.append(token)
        if len(row.tokens) == 1:
            row.first_token_at = time.perf_counter()
        if token in self.eos and not row.ignore_eos:
            row.finish = "eos"
        else:
            row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cut = first_stop(row.text, row.stops, since=row.sent)
            if cut is not None:
                row.text, row.finish = row.text[:cut], "stop"
            elif len(row.tokens) >= row.max_new:
                row.finish = "length"
        if row.finish is not None:
            end(row, row.finish)
        if row.stream and row.finish is None:
            ready = safe_prefix(row.text, row.stops)
            if ready > row.sent and self.emit is not None:
                self.emit(row, row.text[row.sent:ready])
                row.sent = ready
        return row.finish is not None


def end(row: Row, reason: str) -> None:
    """Finish a row: eos, stop, length, timeout, cancelled."""
    row.finish, row.finished_at = reason, time.perf_counter()
    if row.text.endswith("\ufffd"):
        row.text = row.text[:-1]  # a character cut short


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def merge_caches(running: DynamicCache, new: DynamicCache, width: int) -> None:
    """Stack `new`'s rows under `running`'s, both left-padded to `width` positions (in place).

    transformers 5 has its own continuous batching (generation/continuous_batching: a paged
    cache driven by a background thread with one seed for every request, switching the
    model to paged attention); it would lose the per-row seeds and the parity above, so the
    rows are merged here, in the plain DynamicCache the prefill made.
    """
    for mine, theirs in zip(running.layers, new.layers):
        if type(mine) is not DynamicLayer or type(theirs) is not DynamicLayer:
            raise NotImplementedError(f"merging {type(mine).__name__} cache layers (a sliding window, say)")
        mine.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)])
        mine.values = torch.cat([_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)])


def first_stop(text: str, stops: list[str], since: int = 0) -> int | None:
    """Where the earliest stop string starts in text, looking from `since` on."""
    found = [i for i in (text.find(s, max(0, since - len(s))) for s in stops) if i >= 0]
    return min(found) if found else None


def safe_prefix(text: str, stops: list[str]) -> int:
    """How much of text can be streamed: not a half-decoded character, not a stop string's start."""
    end = len(text.rstrip("\ufffd"))
    for stop in stops:
        for n in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:n]):
                end -= n
                break
    return max(end, 0)

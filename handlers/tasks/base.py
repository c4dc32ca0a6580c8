"""The small contract every task implements, and the tokenizing both text encoders share."""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
import transformers
from transformers import AutoTokenizer

from handlers.config import ConfigError, HandlerConfig, parse_dataclass
from handlers.engines import load_engine
from handlers.payload import InputError, Payload
from handlers.results import Result
from handlers.tasks import TASKS, TaskEntry, TaskName

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

logger = logging.getLogger(__name__)

P = TypeVar("P", bound="DataclassInstance")  # a task's parameters dataclass


@dataclass
class Item(Generic[P]):
    """One request as a task sees it: its payload, validated parameters, and its fate."""

    payload: Payload
    params: P
    error: InputError | None = None
    index: int = 0  # the request's position in its TorchServe batch

    @property
    def size(self) -> int:
        return len(self.payload.inputs)


class Task(abc.ABC, Generic[P]):
    """load once; then per TorchServe batch: parse each request, collate, forward, results.

    `forward` gets the inputs of every item `collate` accepted, flattened in order, and
    returns one output per input; the handler gives each item back its own slice.
    """

    Params: type[P]  # dataclass of the per-request `parameters` this task accepts
    name: TaskName  # its entry in the registry (handlers.tasks.TASKS)
    chat = False  # accepts `messages`
    streams = False  # accepts `"stream": true`

    @property
    def entry(self) -> TaskEntry:
        return TASKS[self.name]

    @property
    def auto_class(self) -> Any:
        """The transformers AutoModel… class that loads the task's weights (its registry entry)."""
        return getattr(transformers, self.entry.auto_class)

    @abc.abstractmethod
    def load(self, model_dir: str, cfg: HandlerConfig, device: torch.device) -> None: ...

    def parse(self, payload: Payload) -> Item[P]:
        if payload.messages is not None and not self.chat:
            raise InputError(
                f"'messages' is for chat models; this model's task is {self.name}: send 'inputs'",
                reason="unsupported_for_task",
            )
        if payload.stream and not self.streams:
            raise InputError(
                f"'stream' is for text generation; this model's task is {self.name}, answered in one response",
                reason="unsupported_for_task",
            )
        try:
            params = parse_dataclass(self.Params, payload.parameters, "parameters")
        except ConfigError as e:
            raise InputError(str(e), reason="invalid_parameter") from None
        return Item(payload, params)

    @abc.abstractmethod
    def collate(self, items: Sequence[Item[P]]) -> Any:
        """One model batch from the items' inputs, None when none is left to run.

        May reject an item by setting its error.
        """

    @abc.abstractmethod
    def forward(self, batch: Any) -> list:
        """One output per input of the batch; never called with None."""

    @abc.abstractmethod
    def results(self, item: Item[P], outputs: list) -> Sequence[Result]:
        """One typed result per input of `item`, from its own outputs (a protocol writes them)."""

    @abc.abstractmethod
    def usage(self, batch: Any) -> Usage:
        """Tokens (and for generation, timings) of a batch `forward` has run."""


@dataclass
class Usage:
    """What one model batch consumed and produced, for the metrics."""

    input_tokens: int
    generated_tokens: int = 0
    first_token_seconds: list[float] = field(default_factory=list)  # generation, per prompt
    per_token_seconds: list[float] = field(default_factory=list)


@dataclass
class Tokens:
    """A padded batch: ids and mask on the device, and each row's true length."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    rows: list[dict]  # what the tokenizer gave for each row (offsets, say)


def load_tokenizer(model_dir: str, cfg: HandlerConfig):
    """The model's fast tokenizer; offsets and overflow mapping need the Rust one."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json); transerve needs one")
    return tokenizer


def tokenize(tokenizer, items: Sequence[Item], max_length: int, truncate: bool, **fields: bool) -> list[dict]:
    """Every input of every item in one tokenizer call, cut at max_length: one dict per row.

    A row holds `input_ids` and any extra tokenizer output asked for in `fields`
    (`return_offsets_mapping=True` gives it `offset_mapping`, say). An item whose
    parameters (or else `truncate`) forbid truncation and that has an input longer than
    max_length is rejected with 413 and contributes no rows.
    """
    texts = [text for item in items for text in item.payload.inputs]
    if not texts:
        return []
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        return_overflowing_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        **fields,
    )
    keys = [k for k in enc.keys() if k != "overflow_to_sample_mapping"]
    # With overflow on, an input longer than max_length yields several rows; the first
    # is the truncated input, and any further row tells that it was cut.
    first: dict[int, dict] = {}
    overflowed: set[int] = set()
    for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
        if sample in first:
            overflowed.add(sample)
        else:
            first[sample] = {k: enc[k][row] for k in keys}
    rows: list[dict] = []
    position = 0
    for item in items:
        span = range(position, position + item.size)
        position += item.size
        allowed = getattr(item.params, "truncate", None)
        allowed = truncate if allowed is None else allowed
        too_long = [i - span.start for i in span if i in overflowed]
        if too_long and not allowed:
            item.error = InputError(
                f"inputs[{too_long[0]}] is longer than {max_length} tokens (max_length) and truncation is off; "
                "shorten it or send parameters.truncate=true",
                status=413,
                reason="input_too_long",
            )
            continue
        rows.extend(first[i] for i in span)
    return rows


def pad(rows: Sequence[dict], pad_id: int, device: torch.device) -> Tokens:
    """Pad on the right to the longest row of this batch (never to max_length)."""
    lengths = [len(r["input_ids"]) for r in rows]
    ids = torch.full((len(rows), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : lengths[i]] = torch.tensor(row["input_ids"], dtype=torch.long)
        mask[i, : lengths[i]] = 1
    return Tokens(ids.to(device), mask.to(device), lengths, list(rows))


def micro_batches(lengths: Sequence[int], budget: int | None) -> list[list[int]]:
    """Row positions grouped for one model call each: all rows in order when there is no
    budget, else sorted by length and cut so rows x longest stays within it (a row longer
    than the budget goes alone)."""
    if not budget:
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and (len(groups[-1]) + 1) * lengths[row] <= budget:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def model_max_length(tokenizer, model_config, configured: int | None) -> int:
    """The configured limit, else the smaller of the tokenizer's and the model's own."""
    limits = [configured] if configured else []
    limits.append(getattr(model_config, "max_position_embeddings", None) or 512)
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


class EncoderTask(Task[P]):
    """A task answered by one encoder forward: fast tokenizer, safetensors model, token limit."""

    def load(self, model_dir: str, cfg: HandlerConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.tokenizer = load_tokenizer(model_dir, cfg)
        self.engine = load_engine(self.auto_class, self.entry.output, model_dir, cfg, device)
        config = self.engine.config
        self.max_length = model_max_length(self.tokenizer, config, cfg.max_length)
        # The label of each output column, from the model config (classifiers use it).
        self.labels = [config.id2label.get(i, f"LABEL_{i}") for i in range(getattr(config, "num_labels", 0))]

    @property
    def model(self):
        """The torch module behind a torch engine."""
        return self.engine.model

    def per_row(self, tokens: Tokens, run) -> list[torch.Tensor]:
        """run(input_ids, attention_mask) -> a tensor with one entry per row, called once per
        micro-batch (max_batch_tokens); its entries given back in the batch's row order."""
        out: list[Any] = [None] * len(tokens.lengths)
        for rows in micro_batches(tokens.lengths, self.cfg.max_batch_tokens):
            width = max(tokens.lengths[r] for r in rows)
            if rows == list(range(len(out))):  # the whole batch in its own order: no copy
                ids, mask = tokens.input_ids[:, :width], tokens.attention_mask[:, :width]
            else:
                index = torch.tensor(rows, device=tokens.input_ids.device)
                ids, mask = tokens.input_ids[index, :width], tokens.attention_mask[index, :width]
            for row, value in zip(rows, run(ids, mask)):
                out[row] = value
        return out

    def usage(self, batch: Any) -> Usage:
        tokens = batch if isinstance(batch, Tokens) else batch.tokens
        return Usage(input_tokens=sum(tokens.lengths))

    def tokens(self, items: Sequence[Item[P]], **fields: bool) -> Tokens | None:
        """The accepted items' inputs tokenized in one call and padded to the longest."""
        truncate = True if self.cfg.truncate is None else self.cfg.truncate
        rows = tokenize(self.tokenizer, items, self.max_length, truncate, **fields)
        return pad(rows, self.tokenizer.pad_token_id or 0, self.device) if rows else None

"""What tasks answer, before any wire format: one typed result per input.

A task turns its model's outputs into these (handlers/tasks/*.py); a protocol turns them
into its own body (handlers/protocols/*.py). Neither knows the other's shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Embedding:
    vector: Sequence[float]  # a float32 numpy row
    tokens: int  # the input's tokens, after truncation


@dataclass(frozen=True)
class Label:
    label: str
    score: float


@dataclass(frozen=True)
class Labels:
    """A classification: labels best first, as many as the request's top_k asked for."""

    ranked: list[Label]


@dataclass(frozen=True)
class Entities:
    """Token classification: entities in transformers' pipeline shape ({entity or
    entity_group, score, word, start, end}, with index when not aggregated)."""

    entities: list[dict[str, Any]]


@dataclass(frozen=True)
class Generation:
    """One prompt's generated text and why it ended."""

    text: str
    finish_reason: str  # eos, stop, length, timeout, cancelled
    prompt_tokens: int
    generated_tokens: int
    seed: int | None  # the sampling seed, None when decoded greedily
    tail: str = ""  # the end of text not yet streamed (streamed requests only)


Result = Embedding | Labels | Entities | Generation

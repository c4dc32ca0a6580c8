"""What every protocol shares: the base class, compact JSON, a body answered without the model,
the last part of an answer rendered from a task's outputs, and the plain value of a result that
both transerve's shape (hf) and KServe's V1 predictions write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from handlers.payload import InputError, Payload
from handlers.results import Entities, Generation, Labels, Result

if TYPE_CHECKING:
    from handlers.tasks.base import Item, Task


def dumps(body: Any) -> str:
    """A body as compact JSON text, by orjson (32 embeddings in 0.4 ms where json.dumps takes
    10 ms); numpy arrays (embeddings) as lists of their float32 values, each written as the
    shortest text that reads back as the same float32."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class Protocol:
    """One request's wire format."""

    name: str  # its module's name
    stream_content_type = "application/x-ndjson"

    def decode(self, row: Any, task: Task) -> Payload:
        """The request's Payload, or InputError saying what is wrong with it."""
        raise NotImplementedError

    def answer(self, item: Item, results: Sequence[Result]) -> str:
        """The whole body answering a request that was not streamed."""
        raise NotImplementedError

    def delta(self, item: Item, text: str) -> str:
        """One streamed part of generated text (only protocols that stream implement it)."""
        raise NotImplementedError

    def end(self, item: Item, results: Sequence[Result]) -> str:
        """The last part of a streamed response (after every delta)."""
        raise NotImplementedError

    def error(self, error: InputError) -> str:
        """The body of a refusal (its status goes on the status line)."""
        return error.body()

    def ready(self) -> str | None:
        """A body this request is answered with at once, without the model; None for most."""
        return None


class Ready:
    """A request answered without the model (the OpenAI model list): its body."""

    error = None

    def __init__(self, body: str):
        self.body = body


def render(task: Task, item: Item, outputs: list) -> str:
    """The body (or a streamed request's last part) answering `item` from its own outputs."""
    results = task.results(item, outputs)
    wire = item.payload.wire
    return wire.end(item, results) if item.payload.stream else wire.answer(item, results)


def value(result: Result) -> Any:
    """One input's answer: ranked labels, entities, generated text with its details."""
    if isinstance(result, Labels):
        return [{"label": label.label, "score": label.score} for label in result.ranked]
    if isinstance(result, Entities):
        return result.entities
    if isinstance(result, Generation):
        return {"generated_text": result.text, "details": details(result)}
    raise TypeError(f"no HF shape for {type(result).__name__}")


def details(result: Generation) -> dict:
    answer = {
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": result.generated_tokens,
    }
    if result.seed is not None:
        answer["seed"] = result.seed
    return answer

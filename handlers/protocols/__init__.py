"""Wire formats: a protocol reads a request body into the task's typed input (a Payload)
and writes the task's typed results (handlers/results.py) as its own body, its own stream
framing and its own error body. Tasks know none of them.

- hf: transerve's own shape, {"inputs", "parameters", "stream"} or {"messages", ...};
  streams NDJSON. Also the default for a bare /predictions/<model>[/<version>].
- kserve_v1: {"instances": [...]} in, {"predictions": [...]} out (KServe's V1 protocol);
  recognised by its key on the same route.
- openai: the OpenAI API on /predictions/<model>/<version>/v1/..., streams Server-Sent Events.

A protocol object is made per request (`for_route`), so it can keep that request's state:
an OpenAI stream's id and whether its first chunk went out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import orjson

from handlers.config import short
from handlers.payload import InputError, Payload
from handlers.results import Result

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


def for_route(route: str | None, model: str = "", request_id: str = "") -> Protocol:
    """The protocol serving `route`, the path after /predictions/<model>/<version>/ (TorchServe's
    url_path header); an unknown path is refused with 404 in the HF shape."""
    from handlers.protocols import hf, openai

    if not route:
        return hf.HF()
    if route.startswith("v1/"):  # an unknown one is refused in OpenAI's error body
        return openai.OpenAI(route, model, request_id)
    served = f" (POST .../<version>/{route} needs runtime continuousBatching)" if route in ("cancel", "drain") else ""
    raise InputError(f"no such path: {short(route)} after the model version{served}", status=404, reason="unknown_path")


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

"""KServe's V1 protocol as its TorchServe runtime forwards it: {"instances": [text, ...],
"parameters": {...}} in, {"predictions": [one value per instance]} out. No streaming.
Errors keep the HF shape's body (KServe passes the worker's body through)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from handlers.payload import InputError, Payload, check_texts
from handlers.protocols.base import Protocol, dumps, value
from handlers.results import Embedding, Result


class KServeV1(Protocol):
    name = "kserve_v1"

    def answer(self, item, results: Sequence[Result]) -> str:
        return dumps({"predictions": [prediction(r) for r in results]})


def prediction(result: Result) -> Any:
    return result.vector if isinstance(result, Embedding) else value(result)


def instances(body: dict, parameters: dict, stream: bool, max_inputs: int, max_chars: int) -> Payload:
    """One text per instance."""
    if "inputs" in body:
        raise InputError("send either 'inputs' or 'instances' (KServe V1), not both", reason="invalid_body")
    if stream:
        raise InputError("'stream' is not part of KServe's V1 protocol; send 'inputs' to stream", reason="invalid_body")
    raw = body["instances"]
    if not isinstance(raw, list):
        raise InputError(f"'instances' must be a list of strings, got {type(raw).__name__}", reason="invalid_body")
    inputs = check_texts(raw, "instances", max_inputs, max_chars)
    return Payload(inputs=inputs, single=False, parameters=parameters, wire=KServeV1())

"""transerve's own shape, what Hugging Face's inference servers take:
{"inputs": str | [str], "parameters": {...}, "stream": bool} or, for chat models,
{"messages": [{role, content}], ...}; plain text is one input. Streams NDJSON: one
{"text"} line per part, then {"text", "details"}. Errors: {"code", "type", "message"}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from handlers.config import short
from handlers.payload import InputError, Payload, check_messages, check_text, check_texts, read_body
from handlers.protocols.base import Protocol, details, dumps, value
from handlers.protocols.kserve_v1 import instances
from handlers.results import Embedding, Result

EXAMPLE = '{"inputs": ["first text", "second text"], "parameters": {}}'
TOP_LEVEL_KEYS = ("inputs", "messages", "parameters", "stream", "instances")


class HF(Protocol):
    name = "hf"

    def decode(self, row: Any, task) -> Payload:
        return decode(row, task.cfg.max_inputs_per_request, task.cfg.max_chars_per_input)

    def answer(self, item, results: Sequence[Result]) -> str:
        if results and isinstance(results[0], Embedding):
            answer: Any = {
                "embeddings": [r.vector for r in results],
                "dimensions": len(results[0].vector),
                "input_tokens": sum(r.tokens for r in results),
            }
        else:
            values = [value(r) for r in results]
            answer = values[0] if item.payload.single else values
        return dumps(answer)

    def delta(self, item, text: str) -> str:
        return dumps({"text": text}) + "\n"

    def end(self, item, results: Sequence[Result]) -> str:
        [result] = results
        return dumps({"text": result.tail, "details": details(result)}) + "\n"


def decode(row: Any, max_inputs: int, max_chars: int) -> Payload:
    """Turn one TorchServe request row into a Payload, or raise InputError saying why not.
    A body with "instances" is KServe's V1 protocol, answered in its shape."""
    body = read_body(row, EXAMPLE)
    if isinstance(body, str):
        return Payload(inputs=[check_text(body, 0, max_chars)], single=True, wire=HF())
    if not isinstance(body, dict):
        raise InputError(
            f"body must be a JSON object or plain text, got a JSON {type(body).__name__}; expected e.g. {EXAMPLE}",
            reason="invalid_body",
        )
    unknown = sorted(set(body) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise InputError(
            f"unknown key {short(unknown[0])} in body; allowed keys: {', '.join(TOP_LEVEL_KEYS)}", reason="unknown_key"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InputError(f"'stream' must be true or false, got {short(stream)}", reason="invalid_body")
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise InputError(f"'parameters' must be an object, got {type(parameters).__name__}", reason="invalid_body")
    if "messages" in body:
        if "inputs" in body:
            raise InputError("send either 'inputs' or 'messages', not both", reason="invalid_body")
        messages = check_messages(body["messages"], max_inputs, max_chars)
        return Payload(inputs=[], single=True, parameters=parameters, messages=messages, stream=stream, wire=HF())
    if "instances" in body:
        return instances(body, parameters, stream, max_inputs, max_chars)
    if "inputs" not in body:
        raise InputError(f"body has no 'inputs'; expected e.g. {EXAMPLE}", reason="missing_inputs")
    raw = body["inputs"]
    if isinstance(raw, str):
        return Payload(
            inputs=[check_text(raw, 0, max_chars)], single=True, parameters=parameters, stream=stream, wire=HF()
        )
    if not isinstance(raw, list):
        raise InputError(
            f"'inputs' must be a string or a list of strings, got {type(raw).__name__}", reason="invalid_body"
        )
    inputs = check_texts(raw, "inputs", max_inputs, max_chars)
    return Payload(inputs=inputs, single=False, parameters=parameters, stream=stream, wire=HF())

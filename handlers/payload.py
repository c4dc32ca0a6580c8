"""Request body -> Payload (inputs + parameters); anything malformed -> InputError (4xx)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from handlers.config import short


class InputError(Exception):
    """A request the caller must fix; `status` is the HTTP status it is answered with and
    `reason` a short name of what was wrong, for the request metrics."""

    def __init__(self, message: str, status: int = 400, reason: str = "invalid_request"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason

    def body(self) -> str:
        return json.dumps({"code": self.status, "type": "InputError", "message": self.message})

    @property
    def phrase(self) -> str:
        """The HTTP reason phrase: the message, made safe for TorchServe's frame and HTTP."""
        return status_phrase(self.message)


MAX_PHRASE = 200


def status_phrase(message: str) -> str:
    """`message` as printable ASCII (JSON escapes), at most MAX_PHRASE characters.

    TorchServe 0.12's worker frames a reason phrase with its length in characters but its
    bytes in UTF-8 (`create_predict_response` in ts/protocol/otf_message_handler.py), so one
    non-ASCII character shifts every field after it and the frontend drops the worker; and
    Netty refuses CR or LF in a status line. The JSON body keeps the message as it was.
    """
    return json.dumps(message, ensure_ascii=True)[1:-1].replace("\x7f", "\\u007f")[:MAX_PHRASE]


EXAMPLE = '{"inputs": ["first text", "second text"], "parameters": {}}'
TOP_LEVEL_KEYS = ("inputs", "messages", "parameters", "stream", "instances")
ROLES = ("system", "user", "assistant")


@dataclass
class Payload:
    """One request's inputs, always a list, and whether the caller sent a single string."""

    inputs: list[str]
    single: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    # A chat, [{role, content}, ...], sent instead of inputs; only chat tasks accept it.
    messages: list[dict[str, str]] | None = None
    stream: bool = False
    # KServe's V1 protocol: {"instances": [...]} in, {"predictions": [one per instance]} out.
    kserve_v1: bool = False


def _body_of(row: Any) -> Any:
    # TorchServe hands each request as {"body": ...}: JSON bodies arrive parsed, text
    # bodies as str, anything it could not decode as bytes. A form-encoded body (what
    # `curl -d` sends unless told otherwise) arrives as its form fields instead.
    if not isinstance(row, dict):
        return row
    for key in ("body", "data"):
        if key in row:
            return row[key]
    fields = ", ".join(short(k) for k in list(row)[:3])
    raise InputError(
        f"the body arrived as HTML form fields ({fields}): `curl -d` sends Content-Type "
        "application/x-www-form-urlencoded unless told otherwise. Send JSON with "
        "'Content-Type: application/json', or plain text with 'Content-Type: text/plain'",
        status=415,
        reason="form_encoded",
    )


def decode(row: Any, max_inputs: int, max_chars: int) -> Payload:
    """Turn one TorchServe request row into a Payload, or raise InputError saying why not."""
    body = _body_of(row)
    if isinstance(body, (bytes, bytearray)):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"body is not valid UTF-8 (byte {e.start}); send UTF-8 text or JSON", reason="invalid_utf8") from None
        body = text
        if text.lstrip().startswith(("{", "[")):
            try:
                body = json.loads(text)
            except RecursionError:
                raise InputError("body is JSON nested too deeply; send {\"inputs\": ..., \"parameters\": {...}}",
                                 reason="invalid_json") from None
            except json.JSONDecodeError as e:
                raise InputError(f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; expected e.g. {EXAMPLE}", reason="invalid_json") from None
    if isinstance(body, str):
        return Payload(inputs=[_check_text(body, 0, max_chars)], single=True)
    if not isinstance(body, dict):
        raise InputError(f"body must be a JSON object or plain text, got a JSON {type(body).__name__}; expected e.g. {EXAMPLE}", reason="invalid_body")
    unknown = sorted(set(body) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise InputError(f"unknown key {short(unknown[0])} in body; allowed keys: {', '.join(TOP_LEVEL_KEYS)}", reason="unknown_key")
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
        messages = _check_messages(body["messages"], max_inputs, max_chars)
        return Payload(inputs=[], single=True, parameters=parameters, messages=messages, stream=stream)
    if "instances" in body:
        return _instances(body, parameters, stream, max_inputs, max_chars)
    if "inputs" not in body:
        raise InputError(f"body has no 'inputs'; expected e.g. {EXAMPLE}", reason="missing_inputs")
    raw = body["inputs"]
    if isinstance(raw, str):
        return Payload(inputs=[_check_text(raw, 0, max_chars)], single=True, parameters=parameters, stream=stream)
    if not isinstance(raw, list):
        raise InputError(f"'inputs' must be a string or a list of strings, got {type(raw).__name__}", reason="invalid_body")
    if not raw:
        raise InputError("'inputs' is an empty list; send at least one string", reason="empty_input")
    if len(raw) > max_inputs:
        raise InputError(f"{len(raw)} inputs in one request; the limit is {max_inputs} (max_inputs_per_request)", status=413, reason="too_many_inputs")
    inputs = [_check_text(t, i, max_chars) for i, t in enumerate(raw)]
    return Payload(inputs=inputs, single=False, parameters=parameters, stream=stream)


def _instances(body: dict, parameters: dict, stream: bool, max_inputs: int, max_chars: int) -> Payload:
    """KServe's V1 protocol, as its TorchServe runtime forwards it: one text per instance."""
    if "inputs" in body:
        raise InputError("send either 'inputs' or 'instances' (KServe V1), not both", reason="invalid_body")
    if stream:
        raise InputError("'stream' is not part of KServe's V1 protocol; send 'inputs' to stream", reason="invalid_body")
    raw = body["instances"]
    if not isinstance(raw, list):
        raise InputError(f"'instances' must be a list of strings, got {type(raw).__name__}", reason="invalid_body")
    if not raw:
        raise InputError("'instances' is an empty list; send at least one string", reason="empty_input")
    if len(raw) > max_inputs:
        raise InputError(f"{len(raw)} instances in one request; the limit is {max_inputs} (max_inputs_per_request)", status=413, reason="too_many_inputs")
    inputs = [_check_text(t, i, max_chars, "instances") for i, t in enumerate(raw)]
    return Payload(inputs=inputs, single=False, parameters=parameters, kserve_v1=True)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_messages(messages: Any, max_messages: int, max_chars: int) -> list[dict[str, str]]:
    example = '[{"role": "user", "content": "Hello"}]'
    if not isinstance(messages, list) or not messages:
        raise InputError(f"'messages' must be a non-empty list of {{role, content}} objects, e.g. {example}", reason="invalid_messages")
    if len(messages) > max_messages:
        raise InputError(f"{len(messages)} messages in one request; the limit is {max_messages} (max_inputs_per_request)", status=413, reason="too_many_inputs")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InputError(f"messages[{i}] must be an object with exactly 'role' and 'content', e.g. {example}", reason="invalid_messages")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise InputError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {short(role)}", reason="invalid_messages")
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content must be a string, got {type(content).__name__}", reason="invalid_messages")
        if not _encodable(content):
            raise InputError(f"messages[{i}].content holds a lone UTF-16 surrogate; send valid Unicode", reason="invalid_utf8")
        total += len(content)
    if total > max_chars:
        raise InputError(f"the messages have {total} characters in all; the limit is {max_chars} (max_chars_per_input)", status=413, reason="input_too_long")
    if messages[-1]["role"] == "assistant":
        raise InputError("the last message is the assistant's; end with a user (or system) message to get a reply", reason="invalid_messages")
    return [dict(m) for m in messages]


def _check_text(text: Any, index: int, max_chars: int, key: str = "inputs") -> str:
    if isinstance(text, str) and not _encodable(text):
        raise InputError(f"{key}[{index}] holds a lone UTF-16 surrogate (an escape like \\ud800); send valid Unicode",
                         reason="invalid_utf8")
    if not isinstance(text, str):
        raise InputError(f"{key}[{index}] must be a string, got {type(text).__name__}", reason="invalid_body")
    if not text.strip():
        raise InputError(f"{key}[{index}] is empty; send some text", reason="empty_input")
    if len(text) > max_chars:
        raise InputError(f"{key}[{index}] has {len(text)} characters; the limit is {max_chars} (max_chars_per_input)", status=413, reason="input_too_long")
    return text

"""A request as tasks take it (Payload), refusals (InputError, a 4xx), and the body reading and
checks every protocol shares (handlers/protocols/ reads each wire format)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handlers.config import short

if TYPE_CHECKING:
    from handlers.protocols.base import Protocol


class InputError(Exception):
    """A request the caller must fix; `status` is the HTTP status it is answered with and
    `reason` a short name of what was wrong, for the request metrics (and OpenAI's `code`)."""

    def __init__(self, message: str, status: int = 400, reason: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.param = param  # the request field it is about, where the protocol names one (OpenAI's)

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


ROLES = ("system", "user", "assistant")


@dataclass
class Payload:
    """One request as its protocol read it: inputs (always a list), whether the caller sent a
    single string, parameters in the task's own names, and the protocol that answers it."""

    inputs: list[str]
    single: bool
    wire: Protocol  # the protocol (handlers/protocols) that read it and writes its answer
    parameters: dict[str, Any] = field(default_factory=dict)
    # A chat, [{role, content}, ...], sent instead of inputs; only chat tasks accept it.
    messages: list[dict[str, str]] | None = None
    stream: bool = False


def read_body(row: Any, example: str) -> Any:
    """One TorchServe request row's body: parsed JSON (a dict, a list, ...) or text; bytes that
    are not UTF-8, JSON that does not parse and HTML form fields are refused, the JSON ones
    with `example`, a body of the caller's protocol."""
    body = _body_of(row)
    if isinstance(body, (bytes, bytearray)):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"body is not valid UTF-8 (byte {e.start}); send UTF-8 text or JSON", reason="invalid_utf8"
            ) from None
        body = text
        if text.lstrip().startswith(("{", "[")):
            try:
                body = json.loads(text)
            except RecursionError:
                raise InputError(
                    f"body is JSON nested too deeply; send e.g. {example}", reason="invalid_json"
                ) from None
            except json.JSONDecodeError as e:
                raise InputError(
                    f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; expected e.g. {example}",
                    reason="invalid_json",
                ) from None
    return body


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


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_messages(messages: Any, max_messages: int, max_chars: int) -> list[dict[str, str]]:
    example = '[{"role": "user", "content": "Hello"}]'
    if not isinstance(messages, list) or not messages:
        raise InputError(
            f"'messages' must be a non-empty list of {{role, content}} objects, e.g. {example}",
            reason="invalid_messages",
        )
    if len(messages) > max_messages:
        raise InputError(
            f"{len(messages)} messages in one request; the limit is {max_messages} (max_inputs_per_request)",
            status=413,
            reason="too_many_inputs",
        )
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InputError(
                f"messages[{i}] must be an object with exactly 'role' and 'content', e.g. {example}",
                reason="invalid_messages",
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise InputError(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {short(role)}", reason="invalid_messages"
            )
        if not isinstance(content, str):
            raise InputError(
                f"messages[{i}].content must be a string, got {type(content).__name__}", reason="invalid_messages"
            )
        if not encodable(content):
            raise InputError(
                f"messages[{i}].content holds a lone UTF-16 surrogate; send valid Unicode", reason="invalid_utf8"
            )
        total += len(content)
    if total > max_chars:
        raise InputError(
            f"the messages have {total} characters in all; the limit is {max_chars} (max_chars_per_input)",
            status=413,
            reason="input_too_long",
        )
    if messages[-1]["role"] == "assistant":
        raise InputError(
            "the last message is the assistant's; end with a user (or system) message to get a reply",
            reason="invalid_messages",
        )
    return [dict(m) for m in messages]


def check_texts(
    raw: list, key: str, max_inputs: int, max_chars: int, noun: str = "", param: str | None = None
) -> list[str]:
    """A list of texts sent under `key`: not empty, at most max_inputs, each checked (check_text)."""
    if not raw:
        raise InputError(f"'{key}' is an empty list; send at least one string", reason="empty_input", param=param)
    if len(raw) > max_inputs:
        raise InputError(
            f"{len(raw)} {noun or key} in one request; the limit is {max_inputs} (max_inputs_per_request)",
            status=413,
            reason="too_many_inputs",
            param=param,
        )
    return [check_text(t, i, max_chars, key) for i, t in enumerate(raw)]


def check_text(text: Any, index: int, max_chars: int, key: str = "inputs") -> str:
    if isinstance(text, str) and not encodable(text):
        raise InputError(
            f"{key}[{index}] holds a lone UTF-16 surrogate (an escape like \\ud800); send valid Unicode",
            reason="invalid_utf8",
        )
    if not isinstance(text, str):
        raise InputError(f"{key}[{index}] must be a string, got {type(text).__name__}", reason="invalid_body")
    if not text.strip():
        raise InputError(f"{key}[{index}] is empty; send some text", reason="empty_input")
    if len(text) > max_chars:
        raise InputError(
            f"{key}[{index}] has {len(text)} characters; the limit is {max_chars} (max_chars_per_input)",
            status=413,
            reason="input_too_long",
        )
    return text

"""The OpenAI API on /predictions/<model>/<version>/v1/...: chat completions, completions,
embeddings and the model list, with bodies, Server-Sent Events and error bodies as OpenAI
documents them (https://platform.openai.com/docs/api-reference).

Generation parameters become the HF shape's (same decoder, same text for the same request):
max_tokens or max_completion_tokens -> max_new_tokens; temperature 0 -> greedy, else
sampling at that temperature; top_p, seed and stop as they are. Parameters left out take
the model's generation_config, as on the HF route. top_k, repetition_penalty and ignore_eos
are accepted as extensions (vLLM takes them the same way). A parameter OpenAI defines that
transerve does not implement is refused with 400 unless it has its neutral value (n=1,
presence_penalty=0, logprobs=false, ...): never silently ignored.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from handlers.config import short
from handlers.payload import ROLES, InputError, Payload, check_messages, check_text, check_texts, read_body
from handlers.protocols.base import Protocol, dumps
from handlers.results import Embedding, Generation, Result
from handlers.tasks import TASKS

CHAT, COMPLETIONS, EMBEDDINGS, MODELS = "v1/chat/completions", "v1/completions", "v1/embeddings", "v1/models"
ROUTES = (CHAT, COMPLETIONS, EMBEDDINGS, MODELS)
# Which task answers each route, and where each task is served: the registry's openai_routes.
TASK_OF = {route: task.name for task in TASKS.values() for route in task.openai_routes}
ROUTE_OF = {
    task.name: " or ".join(f"/{r}" for r in task.openai_routes) for task in TASKS.values() if task.openai_routes
}

# OpenAI parameters transerve does not implement: accepted only with the value that means
# "off" (what OpenAI does when they are left out).
NEUTRAL = {
    "n": (1,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "parallel_tool_calls": (False, True),
    "response_format": ({"type": "text"},),
    "store": (False,),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "service_tier": ("auto", "default"),
    "web_search_options": (),
    "metadata": ({},),
    "verbosity": (),
    "prompt_cache_key": (),
    "safety_identifier": (),
}
WHY = {
    "n": "one choice per prompt (n=1); send the request n times, with different seeds",
    "presence_penalty": "repetition_penalty (an extension) instead",
    "frequency_penalty": "repetition_penalty (an extension) instead",
    "logprobs": "no log probabilities",
    "top_logprobs": "no log probabilities",
    "echo": "no echo of the prompt",
    "best_of": "one completion per prompt",
    "tools": "no tool calling",
    "tool_choice": "no tool calling",
    "functions": "no function calling",
    "function_call": "no function calling",
    "response_format": "plain text answers only",
}
GENERATION = (
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "user",
    "top_k",
    "repetition_penalty",
    "ignore_eos",
)
KEYS = {
    CHAT: ("messages", "max_completion_tokens", *GENERATION),
    COMPLETIONS: ("prompt", *GENERATION),
    EMBEDDINGS: ("model", "input", "encoding_format", "dimensions", "user"),
}
EXAMPLES = {
    CHAT: '{"model": "<name>", "messages": [{"role": "user", "content": "Hello"}]}',
    COMPLETIONS: '{"model": "<name>", "prompt": "Once upon a time"}',
    EMBEDDINGS: '{"model": "<name>", "input": ["first text", "second text"]}',
}
REQUIRED = {CHAT: ("model", "messages"), COMPLETIONS: ("model", "prompt"), EMBEDDINGS: ("model", "input")}
# The HF shape's parameter names, as OpenAI calls them, for the task's own messages.
WIRE_NAMES = {"max_new_tokens": "max_tokens"}
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # timeout and cancelled pass as they are


class OpenAI(Protocol):
    name = "openai"
    stream_content_type = "text/event-stream"

    def __init__(self, route: str, model: str, request_id: str = ""):
        self.route, self.model = route, model
        prefix = {CHAT: "chatcmpl", COMPLETIONS: "cmpl"}.get(route, "req")
        self.id = f"{prefix}-{request_id.replace('-', '') or 'local'}"
        self.created = int(time.time())
        self.started = False  # a chat stream's first chunk (with the role) went out
        self.usage_chunk = False  # stream_options.include_usage
        self.base64 = False  # embeddings: encoding_format base64

    # requests

    def decode(self, row: Any, task) -> Payload:
        if self.route not in ROUTES:
            raise InputError(
                f"no such path: /{short(self.route)[1:-1]}; the OpenAI routes are {', '.join('/' + r for r in ROUTES)}",
                status=404,
                reason="unknown_path",
            )
        if self.route == MODELS:
            return Payload(inputs=[], single=True, wire=self)
        body = read_body(row, EXAMPLES[self.route])
        if not isinstance(body, dict):
            raise InputError(
                f"the body must be a JSON object, as the OpenAI API takes it; got {kind(body)}", reason="invalid_body"
            )
        if task.name != TASK_OF[self.route]:
            raise InputError(
                f"/{self.route} is not served by this model: its task is {task.name}, served on "
                f"{ROUTE_OF.get(task.name, 'the HF route only')}",
                status=404,
                reason="unknown_path",
            )
        for key in sorted(body):
            if key in NEUTRAL and key not in KEYS[self.route]:
                if body[key] is None or body[key] in NEUTRAL[key]:
                    continue
                raise refuse(key, f"'{key}' is not supported by transerve: {WHY.get(key, 'not implemented')}")
            if key not in KEYS[self.route]:
                raise refuse(
                    key,
                    f"unknown parameter {short(key)} for /{self.route}; known: {', '.join(KEYS[self.route])}",
                    "unknown_key",
                )
        for key in REQUIRED[self.route]:
            if body.get(key) is None:
                raise refuse(key, f"'{key}' is required", "missing_inputs")
        if body["model"] != self.model:
            raise InputError(
                f"The model {short(body['model'])} does not exist: this route serves {self.model!r}",
                status=404,
                reason="model_not_found",
            )
        cfg = task.cfg
        if self.route == EMBEDDINGS:
            return self.embeddings(body, task)
        parameters, stream = self.generation(body)
        if self.route == CHAT:
            messages = chat_messages(body["messages"])
            return Payload(
                inputs=[],
                single=True,
                parameters=parameters,
                messages=check_messages(messages, cfg.max_inputs_per_request, cfg.max_chars_per_input),
                stream=stream,
                wire=self,
            )
        prompts = texts(body["prompt"], "prompt", cfg.max_inputs_per_request, cfg.max_chars_per_input)
        if stream and len(prompts) > 1:
            raise refuse("prompt", "stream a single prompt; send a list of prompts without 'stream'")
        return Payload(inputs=prompts, single=False, parameters=parameters, stream=stream, wire=self)

    def generation(self, body: dict) -> tuple[dict, bool]:
        """The HF shape's generation parameters, and whether to stream."""
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise refuse("stream", f"'stream' must be true or false, got {short(stream)}")
        options = body.get("stream_options")
        if options is not None:
            if not stream:
                raise refuse("stream_options", "'stream_options' is only allowed when 'stream' is true")
            if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
                raise refuse(
                    "stream_options", f"'stream_options' takes {{\"include_usage\": true}}, got {short(options)}"
                )
            self.usage_chunk = bool(options.get("include_usage"))
        params: dict[str, Any] = {}
        limits = [body.get(k) for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
        if len(set(map(repr, limits))) > 1:
            raise refuse("max_tokens", "'max_tokens' and 'max_completion_tokens' differ; send one of them")
        if limits:
            params["max_new_tokens"] = limits[0]
        temperature = body.get("temperature")
        if temperature is not None:
            if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
                raise refuse("temperature", f"'temperature' must be a number from 0 to 2, got {short(temperature)}")
            if temperature == 0:
                params["do_sample"] = False
            else:
                params["temperature"] = float(temperature)
        for key in ("top_p", "seed", "stop", "top_k", "repetition_penalty", "ignore_eos"):
            if body.get(key) is not None:
                params[key] = float(body[key]) if key == "top_p" and type(body[key]) is int else body[key]
        if body.get("user") is not None and not isinstance(body["user"], str):
            raise refuse("user", f"'user' must be a string, got {short(body['user'])}")
        return params, stream

    def embeddings(self, body: dict, task) -> Payload:
        cfg = task.cfg
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise refuse("encoding_format", f"'encoding_format' must be 'float' or 'base64', got {short(encoding)}")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != task.dimensions:
            raise refuse(
                "dimensions",
                f"this model's embeddings have {task.dimensions} dimensions and cannot be "
                f"shortened; leave 'dimensions' out or send {task.dimensions}, got {short(dimensions)}",
            )
        self.base64 = encoding == "base64"
        return Payload(
            inputs=texts(body["input"], "input", cfg.max_inputs_per_request, cfg.max_chars_per_input),
            single=False,
            wire=self,
        )

    def ready(self) -> str | None:
        if self.route != MODELS:
            return None
        return dumps({"object": "list", "data": [model_card(self.model, self.created)]})

    # answers

    def answer(self, item, results: Sequence[Result]) -> str:
        if self.route == EMBEDDINGS:
            data = [{"object": "embedding", "index": i, "embedding": self.vector(r)} for i, r in enumerate(results)]
            tokens = sum(r.tokens for r in results)
            return dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": self.model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
        if self.route == CHAT:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": r.text},
                    "logprobs": None,
                    "finish_reason": finish(r),
                }
                for i, r in enumerate(results)
            ]
        else:
            choices = [
                {"index": i, "text": r.text, "logprobs": None, "finish_reason": finish(r)}
                for i, r in enumerate(results)
            ]
        return dumps(
            {
                "id": self.id,
                "object": self.object,
                "created": self.created,
                "model": self.model,
                "choices": choices,
                "usage": usage(results),
            }
        )

    def vector(self, result: Embedding) -> list[float] | str:
        if not self.base64:
            return result.vector
        return base64.b64encode(np.asarray(result.vector, dtype="<f4").tobytes()).decode("ascii")

    @property
    def object(self) -> str:
        return "chat.completion" if self.route == CHAT else "text_completion"

    def delta(self, item, text: str) -> str:
        return self.event({"content": text} if self.route == CHAT else text)

    def end(self, item, results: Sequence[Result]) -> str:
        [result] = results
        parts = [self.event({"content": result.tail} if self.route == CHAT else result.tail)] if result.tail else []
        parts.append(self.event({} if self.route == CHAT else "", finish(result)))
        if self.usage_chunk:
            parts.append(sse(self.chunk([], usage(results))))
        return "".join(parts) + "data: [DONE]\n\n"

    def event(self, delta: dict | str, finish_reason: str | None = None) -> str:
        """One chunk of a choice: a chat delta ({content}) or a completion's text."""
        if self.route == CHAT:
            if not self.started:
                delta = {"role": "assistant", **delta}
                self.started = True
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse(self.chunk([choice]))

    def chunk(self, choices: list, usage_: dict | None = None) -> dict:
        chunk = {
            "id": self.id,
            "object": f"{self.object}.chunk" if self.route == CHAT else self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.usage_chunk:
            chunk["usage"] = usage_
        return chunk

    def error(self, error: InputError) -> str:
        return error_body(error.status, wire_message(error.message), param(error), error.reason)


def sse(data: dict) -> str:
    return f"data: {dumps(data)}\n\n"


def finish(result: Generation) -> str:
    return FINISH.get(result.finish_reason, result.finish_reason)


def usage(results: Sequence[Generation]) -> dict:
    prompt, completion = sum(r.prompt_tokens for r in results), sum(r.generated_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "transerve"}


ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def error_body(status: int, message: str, param_: str | None = None, code: str | None = None) -> str:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")
    return dumps({"error": {"message": message, "type": kind, "param": param_, "code": code}})


def refuse(key: str, message: str, reason: str = "invalid_parameter") -> InputError:
    return InputError(message, reason=reason, param=key)


def param(error: InputError) -> str | None:
    """The request field a refusal is about: named by the protocol, or found in the task's message
    (`parameters.top_p: ...`, `messages[2].role ...`, `prompt[0] ...`)."""
    if error.param:
        return error.param
    found = re.match(r"parameters\.(\w+)|(\w+)\[\d+\]", error.message)
    if not found:
        return None
    name = found.group(1) or found.group(2)
    return None if name == "inputs" else WIRE_NAMES.get(name, name)  # inputs: the rendered prompt


def wire_message(message: str) -> str:
    """The task's message in OpenAI's names: `parameters.max_new_tokens` is `max_tokens` here."""
    message = message.replace("Shorten it, or send parameters.truncate=true to keep its last tokens", "Shorten it")
    message = re.sub(r"^inputs\[\d+\] is", "the prompt is", message)
    return re.sub(r"parameters\.(\w+)", lambda m: WIRE_NAMES.get(m.group(1), m.group(1)), message)


def kind(value: Any) -> str:
    return "text" if isinstance(value, str) else f"a JSON {type(value).__name__}"


def texts(raw: Any, key: str, max_inputs: int, max_chars: int) -> list[str]:
    """`input` or `prompt`: a string or a list of strings (token arrays are refused)."""
    if isinstance(raw, str):
        return [check_text(raw, 0, max_chars, key)]
    if not isinstance(raw, list) or not raw:
        raise refuse(key, f"'{key}' must be a string or a non-empty list of strings, got {short(raw)}")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw) or any(isinstance(x, list) for x in raw):
        raise refuse(key, f"'{key}' as token ids is not supported: send text (this route tokenizes it itself)")
    return check_texts(raw, key, max_inputs, max_chars, f"strings in '{key}'", param=key)


def chat_messages(messages: Any) -> list[dict]:
    """OpenAI's messages as {role, content} strings: content as a string or a list of text parts
    (joined by newlines), the `developer` role as `system`. Tool calls, images and names are refused."""
    if not isinstance(messages, list):
        raise refuse(
            "messages",
            f"'messages' must be a list of {{role, content}} objects, got {short(messages)}",
            "invalid_messages",
        )
    plain = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise refuse("messages", f"messages[{i}] must be an object with 'role' and 'content'", "invalid_messages")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise refuse(
                "messages",
                f"messages[{i}].{extra[0]} is not supported: transerve passes role and text "
                "content to the chat template, nothing else",
                "invalid_messages",
            )
        role, content = message.get("role"), message.get("content")
        role = "system" if role == "developer" else role
        if role not in ROLES:
            raise refuse(
                "messages",
                f"messages[{i}].role must be one of system, developer, user, assistant; got {short(role)}",
                "invalid_messages",
            )
        if isinstance(content, list):
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise refuse(
                    "messages",
                    f'messages[{i}].content: only text parts ({{"type": "text", "text": ...}}) '
                    "are supported: this model reads text",
                    "invalid_messages",
                )
            content = "\n".join(p["text"] for p in content)
        plain.append({"role": role, "content": content})
    return plain

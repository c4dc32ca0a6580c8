"""The `handler:` section of a model's model-config.yaml, validated, with defaults.

Standard library only: `transerve.build.spec` validates specs with the same code at build
time, so a wrong value fails on the operator's machine, not inside a worker.
"""

from __future__ import annotations

import dataclasses
import functools
import reprlib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from handlers.tasks import TaskEntry, entry, key_owners, served_by


class ConfigError(ValueError):
    """A configuration value is unknown or has the wrong type; the message names where."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3


def short(value: Any) -> str:
    """repr() cut short: a message may quote a request's value, never all of a huge one."""
    return _REPR.repr(value)


# `Optional[int]` and `int | None` alike (get_type_hints gives typing.Union for one, types.UnionType
# for the other).
UNIONS = (typing.Union, types.UnionType)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(c) for c in typing.get_args(tp))
    if origin in UNIONS:
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in UNIONS:
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, tp)


if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = typing.TypeVar("T", bound="DataclassInstance")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # get_type_hints compiles every string annotation on each call; requests parse
    # their parameters through here, so it is done once per class.
    return typing.get_type_hints(cls)


def parse_dataclass(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build `cls` from a mapping, refusing unknown keys and values of the wrong type.

    `where` prefixes every message (a file and section, say), so an error reads
    `models/x/model.yaml: handler.pooling: expected 'mean' | 'cls', got 'max'`.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {short(data)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {short(unknown[0])}; known keys: {', '.join(sorted(fields))}")
    for key, value in data.items():
        if not _matches(value, hints[key]):
            raise ConfigError(f"{where}.{key}: expected {_describe(hints[key])}, got {short(value)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")
    obj = cls(**data)
    check = getattr(obj, "check", None)
    if check is not None:
        for key, problem in check():
            raise ConfigError(f"{where}.{key}: {problem}")
    return obj


# The handler keys that mean something to some tasks only, and those tasks (each task's entry in
# the registry lists its own); every other key applies to all. A spec that sets one for another
# task is refused (transerve.build.spec).
TASK_KEYS = key_owners()


def _tasks(engine: str) -> str:
    return ", ".join(served_by(engine))


# An engine set for a task it does not run (the registry's `engines`) -> why, in words.
REFUSED_ENGINE = {
    "onnxruntime": lambda task: (
        f"onnxruntime runs the encoder tasks ({_tasks('onnxruntime')}); {task} decodes with torch: "
        "remove engine or set engine: torch"
    ),
    "llamacpp": lambda task: (
        f"llamacpp runs {_tasks('llamacpp')} from a GGUF file; this model's task is {task}: remove engine"
    ),
}


@dataclass(frozen=True)
class HandlerConfig:
    """What the handler needs to know beyond the model files; every key has a default."""

    task: str  # a task of the registry (handlers.tasks.TASKS)
    # Tokens per input; None = the smaller of the tokenizer's and the model's limit.
    max_length: int | None = None
    # Over max_length: cut (True) or refuse the input with 413 (False). None: the task's
    # default, which cuts for the encoder tasks and refuses for generation (a prompt cut
    # silently would be answered as another question).
    truncate: bool | None = None
    # embedding only
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    # token_classification only: how tokens become entities, as in transformers' pipeline
    aggregation: Literal["none", "simple", "first", "max", "average"] = "simple"
    # generation only: the most new tokens a request may ask for, and what it gets unasked
    max_new_tokens: int = 256
    default_max_new_tokens: int = 64
    # generation under TorchServe's continuous batching (runtime continuousBatching: true):
    # at most max_running rows decode at once, at most max_waiting requests wait for a row
    # (more get 429 with Retry-After), and a decode step prefills at most prefill_tokens
    # prompt tokens (a request whose prompts are longer is prefilled that many a step before
    # it joins), so a prefill stalls the running rows for a bounded time.
    max_running: int = 16
    max_waiting: int = 16
    prefill_tokens: int = 256
    # generation: the longest parameters.timeout a request may ask for, in seconds
    max_timeout: int = 600
    # generation under continuous batching: a call from TorchServe runs decode steps until this many
    # milliseconds have passed (at least one step), so a fast engine pays the frontend's round trip
    # once for several tokens; a request arriving meanwhile waits that long at most to join. 0: one
    # step a call.
    step_budget_ms: int = 0
    # Input limits, checked before anything reaches the model.
    max_inputs_per_request: int = 64
    max_chars_per_input: int = 20_000
    # Encoders: the most padded tokens (rows x longest row) in one model call. A larger
    # batch runs as micro-batches of rows sorted by length, so long inputs go in small
    # calls and short ones in big calls, each padded only to its own longest. None: one call.
    max_batch_tokens: int | None = None
    # torch intra-op threads for this worker (engine llamacpp: llama.cpp's threads, torch gets one);
    # None leaves torch's default (llama.cpp: every core).
    threads: int | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # What runs the network: transformers' model in torch; for the encoders, ONNX Runtime on a
    # graph exported at preparation time and proved against torch; for generation, llama.cpp on
    # the source's GGUF file as it ships (transerve.build.prepare proves it against transformers).
    engine: Literal["torch", "onnxruntime", "llamacpp"] = "torch"
    # CPU only, opt-in: int8 dynamic quantization of the Linear layers (weights int8,
    # activations quantized on the fly). Faster on CPU and close, not equal, to float32:
    # bench/results reports the agreement. Ignored on a GPU.
    quantize: Literal["int8"] | None = None
    # Unsafe opt-ins, off unless a spec says so: pickle weights (.bin/.pt: unpickling runs
    # code) and the model repository's own Python code (transformers' trust_remote_code).
    allow_pickle: bool = False
    trust_remote_code: bool = False

    @property
    def entry(self) -> TaskEntry:
        """What this task is (handlers.tasks); the task is known once parse_dataclass has checked it."""
        return entry(self.task)

    def check(self) -> Iterator[tuple[str, str]]:
        try:
            task = entry(self.task)
        except ValueError as e:
            yield "task", str(e)
            return
        for key in (
            "max_length",
            "max_inputs_per_request",
            "max_chars_per_input",
            "threads",
            "max_batch_tokens",
            "max_new_tokens",
            "default_max_new_tokens",
            "max_running",
            "max_waiting",
            "prefill_tokens",
            "max_timeout",
        ):
            value = getattr(self, key)
            if value is not None and value < 1:
                yield key, f"expected a positive integer, got {value!r}"
        if not 0 <= self.step_budget_ms <= 1000:
            yield "step_budget_ms", f"expected 0 to 1000 milliseconds, got {self.step_budget_ms!r}"
        if self.engine not in task.engines:
            yield "engine", REFUSED_ENGINE[self.engine](self.task)
        elif self.engine == "onnxruntime":
            if self.quantize:
                yield (
                    "quantize",
                    "int8 dynamic quantization is a torch engine option: remove quantize, or set engine: torch",
                )
            elif self.dtype != "float32":
                yield (
                    "dtype",
                    f"the ONNX graph is exported in float32; dtype is {self.dtype}: remove dtype, or set engine: torch",
                )
        elif self.engine == "llamacpp":
            if self.quantize:
                yield "quantize", "a GGUF file carries its own quantization: remove quantize, or set engine: torch"
            elif self.dtype != "float32":
                yield "dtype", f"llama.cpp computes in the GGUF file's own types; dtype is {self.dtype}: remove dtype"
        if self.quantize and self.dtype != "float32":
            yield "quantize", f"int8 quantization starts from float32 weights; dtype is {self.dtype}"
        if self.default_max_new_tokens > self.max_new_tokens:
            yield (
                "default_max_new_tokens",
                f"{self.default_max_new_tokens} is above max_new_tokens {self.max_new_tokens}",
            )

    @classmethod
    def from_model_config(cls, model_yaml_config: Mapping[str, Any] | None) -> HandlerConfig:
        section = (model_yaml_config or {}).get("handler")
        return parse_dataclass(cls, section, "model-config.yaml: handler")

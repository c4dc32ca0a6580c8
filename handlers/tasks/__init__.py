"""The task registry: what each task is, in one table.

A task is one entry here plus one module beside this file (its Task class). An entry says
everything the rest of transerve asks about a task: the class that runs it, the transformers
class that loads its weights and the output it reads, the `config.json` architectures that
mean it, its own handler keys, whether it decodes token by token, the engines and OpenAI
routes that serve it, the shape its answers must have, and what `transerve init` writes for
it. Nothing outside this file compares a task's name to decide what a task can do; they read
its entry. Standard library only: the spec checks and the CLI read it without torch.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handlers.tasks import answers


class TaskName(enum.StrEnum):
    """A task's name as a spec says it (`task: embedding`); equal to that string."""

    EMBEDDING = "embedding"
    CLASSIFICATION = "classification"
    TOKEN_CLASSIFICATION = "token_classification"
    GENERATION = "generation"


Settings = tuple[dict[str, Any], dict[str, Any]]  # (handler, runtime) sections of a spec


def encoder_settings(n_cores: int) -> Settings:
    """What the benchmarks found for an encoder on n cores (bench/results): several
    single-threaded workers with large, short-delay batches cut into token-bounded micro-batches."""
    workers = min(n_cores, 4)
    threads = max(1, n_cores // workers)
    handler = {"threads": threads, "max_batch_tokens": 1024}
    runtime = {"minWorkers": workers, "maxWorkers": workers, "batchSize": 32, "maxBatchDelay": 1, "responseTimeout": 60}
    return handler, runtime


def decoder_settings(n_cores: int) -> Settings:
    """A causal LM: one worker with all the cores, under TorchServe's continuous batching."""
    handler = {
        "max_new_tokens": 512,
        "default_max_new_tokens": 128,
        "threads": n_cores,
        "max_running": 16,
        "max_waiting": 16,
        "prefill_tokens": 256,
    }
    # batchSize above max_running + max_waiting: TorchServe hands over at most that many
    runtime = {
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 40,
        "maxBatchDelay": 5,
        "responseTimeout": 300,
        "continuousBatching": True,
    }
    return handler, runtime


@dataclass(frozen=True)
class TaskEntry:
    name: TaskName
    cls: str  # "module:Class", imported only by the worker that runs the task
    auto_class: str  # the transformers AutoModel… class that loads its weights
    output: str  # the field of that model's output the task reads
    # config.json architectures ending so mean this task: the head's class (BertForTokenClassification)
    architectures: tuple[str, ...]
    keys: tuple[str, ...]  # handler keys that mean something to this task (and the others naming them) only
    decodes: bool  # generates token by token: chat, streaming, continuous batching, a per-request timeout
    engines: tuple[str, ...]  # handler.engine values that run it
    openai_routes: tuple[str, ...]  # the OpenAI API's routes it answers (handlers.protocols.openai)
    answer: Callable[[Any, int, bool], list[str]]  # what is wrong with an answer (handlers.tasks.answers)
    settings: Callable[[int], Settings]  # `transerve init`'s handler and runtime for n cores
    sample: dict[str, Any]  # `transerve init`'s sample request
    chat_sample: dict[str, Any] | None = None  # ... for a model with a chat template
    # ... or a model with no head (BertModel), tried only when no name matches a head, what serving it
    # as this task implies for the handler, and how to say so
    bare_architectures: tuple[str, ...] = ()
    bare_handler: dict[str, Any] | None = None
    bare_why: str = ""


ENCODER_KEYS = ("max_batch_tokens",)
DECODER_KEYS = (
    "max_new_tokens",
    "default_max_new_tokens",
    "max_running",
    "max_waiting",
    "prefill_tokens",
    "max_timeout",
    "step_budget_ms",
)

TASKS: dict[TaskName, TaskEntry] = {
    entry.name: entry
    for entry in (
        TaskEntry(
            TaskName.EMBEDDING,
            cls="handlers.tasks.embedding:EmbeddingTask",
            auto_class="AutoModel",
            output="last_hidden_state",
            architectures=(),
            bare_architectures=("Model",),  # hidden states, mean pooled: sentence-transformers' default
            bare_handler={"pooling": "mean"},
            bare_why="a bare encoder (mean pooled)",
            keys=("pooling", "normalize", *ENCODER_KEYS),
            decodes=False,
            engines=("torch", "onnxruntime"),
            openai_routes=("v1/embeddings",),
            answer=answers.embeddings,
            settings=encoder_settings,
            sample={"inputs": ["TorchServe serves transformers models.", "A second sentence to embed."]},
        ),
        TaskEntry(
            TaskName.CLASSIFICATION,
            cls="handlers.tasks.classification:ClassificationTask",
            auto_class="AutoModelForSequenceClassification",
            output="logits",
            architectures=("ForSequenceClassification",),
            keys=ENCODER_KEYS,
            decodes=False,
            engines=("torch", "onnxruntime"),
            openai_routes=(),
            answer=answers.labels,
            settings=encoder_settings,
            sample={"inputs": "I loved this film, every minute of it."},
        ),
        TaskEntry(
            TaskName.TOKEN_CLASSIFICATION,
            cls="handlers.tasks.token_classification:TokenClassificationTask",
            auto_class="AutoModelForTokenClassification",
            output="logits",
            architectures=("ForTokenClassification",),
            keys=("aggregation", *ENCODER_KEYS),
            decodes=False,
            engines=("torch", "onnxruntime"),
            openai_routes=(),
            answer=answers.entities,
            settings=encoder_settings,
            sample={"inputs": "My name is Sarah and I live in London."},
        ),
        TaskEntry(
            TaskName.GENERATION,
            cls="handlers.tasks.generation:GenerationTask",
            auto_class="AutoModelForCausalLM",
            output="logits",
            architectures=("ForCausalLM", "LMHeadModel"),
            keys=DECODER_KEYS,
            decodes=True,
            engines=("torch", "llamacpp"),
            openai_routes=("v1/chat/completions", "v1/completions"),
            answer=answers.generated,
            settings=decoder_settings,
            sample={"inputs": "The capital of France is", "parameters": {"max_new_tokens": 32}},
            chat_sample={
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "parameters": {"max_new_tokens": 32},
            },
        ),
    )
}


def known() -> str:
    return ", ".join(TASKS)


def entry(name: str) -> TaskEntry:
    """The registry's entry for `name`; an unknown name fails listing the known ones."""
    try:
        return TASKS[TaskName(name)]
    except ValueError:
        raise ValueError(f"unknown task {name!r}; known tasks: {known()}") from None


def task_class(name: str) -> Any:
    """The Task class for `name`, imported now."""
    module, cls = entry(name).cls.split(":")
    return getattr(importlib.import_module(module), cls)


def key_owners() -> dict[str, tuple[TaskName, ...]]:
    """Each task-only handler key -> the tasks it means something to, in the registry's order."""
    owners: dict[str, tuple[TaskName, ...]] = {}
    for e in TASKS.values():
        for key in e.keys:
            owners[key] = (*owners.get(key, ()), e.name)
    return owners


def served_by(engine: str) -> tuple[TaskName, ...]:
    """The tasks an engine runs."""
    return tuple(name for name, e in TASKS.items() if engine in e.engines)

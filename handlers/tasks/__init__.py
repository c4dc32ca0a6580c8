"""Task name -> task class: the one table the handler consults."""

from __future__ import annotations

import importlib

# Module paths rather than classes, so a worker imports only its own task's module.
TASKS = {
    "embedding": "handlers.tasks.embedding:EmbeddingTask",
    "classification": "handlers.tasks.classification:ClassificationTask",
    "token_classification": "handlers.tasks.token_classification:TokenClassificationTask",
    "generation": "handlers.tasks.generation:GenerationTask",
}


def task_class(name: str):
    """The Task class for `name`; an unknown name fails listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)

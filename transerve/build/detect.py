"""A model folder -> the task it does and the handler settings its own files imply.

Read from the files transformers and sentence-transformers save, without loading weights:
`config.json`'s `architectures` names the head (as KServe's Hugging Face server reads it),
and a sentence-transformers folder (`modules.json`) says how it pools and whether it
normalizes. Used when a spec leaves `task` out, and by `transerve init`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handlers.config import ConfigError
from handlers.tasks import TASKS, TaskEntry, TaskName, known

# The head class's name ends with -> the task (each task's `architectures` in the registry).
# transformers names heads this way for every architecture (BertForTokenClassification,
# Qwen2ForCausalLM, GPT2LMHeadModel, ...). Only when no name has a head is a bare model
# (BertModel: hidden states) served as its task says (`bare_architectures`).
HEADS: list[tuple[str, TaskEntry, dict[str, Any], str]] = [
    (suffix, task, {}, "") for task in TASKS.values() for suffix in task.architectures
]
BARE: list[tuple[str, TaskEntry, dict[str, Any], str]] = [
    (suffix, task, task.bare_handler or {}, task.bare_why)
    for task in TASKS.values()
    for suffix in task.bare_architectures
]
# sentence-transformers' pooling settings -> transerve's pooling: booleans per mode in the
# layout most published models have, one `pooling_mode` string in what version 6 saves.
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "mean": "mean", "cls": "cls"}


class DetectError(ConfigError):
    """The folder does not say its task, or says something transerve cannot serve."""


@dataclass(frozen=True)
class Detected:
    task: str
    why: str  # in words: what in the folder said so
    handler: dict[str, Any] = field(default_factory=dict)  # settings the folder implies for that task


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError:
        return None
    except ValueError as e:
        raise DetectError(f"{path}: not valid JSON: {e}") from None


def _sentence_transformers(folder: Path, modules: list[Any]) -> Detected:
    """An embedding model saved by sentence-transformers: modules.json lists its stages."""
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unsupported:
        raise DetectError(
            f"{folder}/modules.json: the stages {', '.join(unsupported)} are not run by transerve's "
            "embedding task (it runs Transformer, Pooling, Normalize)"
        )
    if kinds.get("Transformer", {}).get("path", "") not in ("", "."):
        raise DetectError(
            f"{folder}/modules.json: the transformer is in the subfolder "
            f"{kinds['Transformer']['path']!r}; point source at that folder"
        )
    handler: dict[str, Any] = {"normalize": "Normalize" in kinds}
    if "Pooling" in kinds:
        pooling_file = folder / kinds["Pooling"].get("path", "1_Pooling") / "config.json"
        settings = _json(pooling_file) or {}
        mode = settings.get("pooling_mode")
        modes = (
            [mode]
            if isinstance(mode, str)
            else [name for name, on in settings.items() if name.startswith("pooling_mode") and on is True]
        )
        if len(modes) != 1 or modes[0] not in POOLING_MODES:
            raise DetectError(
                f"{pooling_file}: pooling {', '.join(modes) or 'none'}; transerve pools with mean or cls (one of them)"
            )
        handler["pooling"] = POOLING_MODES[modes[0]]
    bert = _json(folder / "sentence_bert_config.json") or {}
    if isinstance(bert.get("max_seq_length"), int):
        handler["max_length"] = bert["max_seq_length"]
    return Detected(TaskName.EMBEDDING, "a sentence-transformers folder (modules.json)", handler)


def detect(folder: Path, gguf: str | None = None) -> Detected:
    """The task of the model in `folder` (a GGUF file in it, when `gguf` names one)."""
    how = f"set the task yourself: `task:` in the spec, or --task for transerve init (one of: {known()})"
    if gguf is not None:
        # transformers loads GGUF files as causal language models only.
        return Detected(TaskName.GENERATION, f"a GGUF file ({gguf}), which transformers loads as a causal LM")
    modules = _json(folder / "modules.json")
    if isinstance(modules, list):
        return _sentence_transformers(folder, modules)
    config = _json(folder / "config.json")
    if not isinstance(config, dict):
        raise DetectError(f"cannot tell the task of {folder}: it has no config.json; {how}")
    architectures = config.get("architectures") or []
    for table in (HEADS, BARE):
        for name in architectures:
            for suffix, task, handler, why in table:
                if str(name).endswith(suffix):
                    return Detected(
                        task.name, f"config.json's architectures: {name}{why and ', ' + why}", dict(handler)
                    )
    said = f"architectures {architectures}" if architectures else "no architectures"
    raise DetectError(f"cannot tell the task of {folder}: config.json has {said}; {how}")

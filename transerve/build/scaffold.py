"""`transerve init`: a model folder or a Hub id -> models/NAME/model.yaml, ready to archive.

The task comes from the model's own files (transerve.build.detect) unless given; the handler and
runtime settings are the ones the benchmarks found for that task on this machine's cores
(bench/results): encoders run as several single-threaded workers with large, short-delay
batches cut into token-bounded micro-batches; a causal LM runs as one worker with all the
cores and TorchServe's continuous batching. Every key is written with a comment saying
what it does, and the spec is loaded back before it is kept, so `transerve archive NAME`
and `transerve serve --models NAME` need no editing.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.config import ConfigError
from handlers.tasks import entry
from transerve.build.detect import Detected, DetectError, detect
from transerve.build.spec import SpecError, load_spec

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

COMMENTS = {
    "max_length": "tokens per input; longer inputs are cut (encoders) or refused with 413 (generation)",
    "pooling": "how token vectors become one: mean, or the first token's (cls)",
    "normalize": "L2-normalise the vectors (cosine similarity = dot product)",
    "threads": "torch threads per worker: workers x threads = this machine's cores",
    "max_batch_tokens": "padded tokens per forward pass: a batch runs as length-sorted micro-batches",
    "max_new_tokens": "the most new tokens a request may ask for",
    "default_max_new_tokens": "what a request gets when it does not ask",
    "max_running": "rows decoding at once (continuous batching)",
    "max_waiting": "requests waiting for a row; more get 429 with Retry-After",
    "prefill_tokens": "prompt tokens prefilled per decode step, so a long prompt stalls the others briefly",
    "minWorkers": "workers TorchServe starts for this version",
    "maxWorkers": "the most it may scale to",
    "batchSize": "requests TorchServe hands a worker at once",
    "maxBatchDelay": "ms TorchServe waits to fill a batch",
    "responseTimeout": "s a batch may take before TorchServe gives up on the worker",
    "continuousBatching": "the handler is called once per decode step; requests join and leave between steps",
}


@dataclass(frozen=True)
class Written:
    path: Path
    task: str
    why: str
    source: dict
    workers: int
    threads: int
    notes: tuple[str, ...] = ()  # what the user should know before archiving


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def settings(task: str, implied: dict, n_cores: int, chat: bool) -> tuple[dict, dict, Any]:
    """(handler, runtime, sample) for a new spec of `task` on a machine of `n_cores`: the task's
    entry in the registry (handlers.tasks) says them."""
    task_entry = entry(task)
    handler, runtime = task_entry.settings(n_cores)
    sample = task_entry.chat_sample if chat and task_entry.chat_sample is not None else task_entry.sample
    return {**implied, **handler}, runtime, sample


def _chat(folder: Path) -> bool:
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    return bool(config.get("chat_template")) or (folder / "chat_template.jinja").exists()


def _yaml(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML's flow style


def _section(name: str, values: dict) -> list[str]:
    lines = [f"{name}:"]
    for key, value in values.items():
        entry = f"  {key}: {_yaml(value)}"
        lines.append(f"{entry:<36}# {COMMENTS[key]}" if key in COMMENTS else entry)
    return lines


def init(
    name: str,
    source: str,
    models_dir: Path,
    revision: str | None = None,
    task: str | None = None,
    n_cores: int | None = None,
) -> Written:
    """Write models_dir/NAME/model.yaml for the model at `source` (a folder, or ORG/NAME on the Hub)."""
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a model name: letters, digits, '-' and '_', starting with a letter or digit"
        )
    path = models_dir / name / "model.yaml"
    if path.exists():
        raise ConfigError(f"{path} exists; transerve init does not overwrite a spec (edit it, or remove it first)")
    if task is not None:
        try:
            entry(task)
        except ValueError as e:
            raise ConfigError(f"--task: {e}") from None

    folder = Path(source).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise ConfigError(f"--revision pins a Hub source; {source} is a folder")
        folder = folder.resolve()
        repo_root = models_dir.resolve().parent
        shown = os.path.relpath(folder, path.parent.resolve()) if folder.is_relative_to(repo_root) else str(folder)
        spec_source: dict = {"dir": shown}
        said = str(folder)
    else:
        from transerve.build.hub import REPO_ID, HubError, snapshot

        if not REPO_ID.fullmatch(source):
            raise ConfigError(f"--source: {source} is neither a folder nor a Hub id (ORG/NAME)")
        try:
            snap = snapshot(source, revision)
        except HubError as e:
            raise ConfigError(f"--source: {e}") from None
        folder = snap.path
        spec_source = {"hub": snap.repo, "revision": snap.commit}
        said = f"{snap.repo} at {snap.revision}" + (f" (commit {snap.commit})" if snap.revision != snap.commit else "")

    gguf = sorted(p.name for p in folder.glob("*.gguf"))
    if gguf and not (folder / "config.json").exists():
        spec_source["gguf"] = gguf[0]
    try:
        found = detect(folder, spec_source.get("gguf"))
        why = f"read from {found.why}"
    except DetectError:
        if task is None:
            raise
        found, why = Detected(task, ""), "given with --task (the model's files do not say)"
    if task is not None and found.why:
        why = (
            f"given with --task, as {found.why} says"
            if task == found.task
            else f"given with --task; {found.why} suggests {found.task}"
        )
        found = Detected(task, why, found.handler if task == found.task else {})

    n_cores = n_cores or cores()
    handler, runtime, sample = settings(found.task, found.handler, n_cores, _chat(folder))
    today = datetime.date.today().isoformat()
    lines = [
        f"# {name}: written by `transerve init` on {today} from {said}.",
        f"# Task: {why}.",
        "# Settings are the benchmarks' findings for this task on this machine "
        f"({n_cores} cores); edit freely: `transerve archive {name}` checks every key.",
        f"name: {name}",
        f"task: {found.task}",
        f"description: {_yaml(f'{found.task} with {said}')}",
        f"source: {_yaml(spec_source)}"
        + ("   # a commit: the same files at every build" if "hub" in spec_source else ""),
        *_section("handler", handler),
        *_section("runtime", runtime),
        "samples:                          # sent by `serve --sample`, `validate` and a rollout's smoke test",
        f"  - {_yaml(sample)}",
        "versions:",
        '  "1.0": {}',
        'default_version: "1.0"',
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    try:
        load_spec(path).version()
    except SpecError:  # a bug here, not the user's: keep nothing half right
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()
        raise
    notes = []
    if "gguf" not in spec_source and not any(folder.rglob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        notes.append(
            f"no *.safetensors weights in {folder}"
            + (
                f" (it has {', '.join(pickles)}: pickles, which the archive refuses unless handler.allow_pickle: true; "
                "converting them to safetensors is safer)"
                if pickles
                else "; the archive will need them"
            )
        )
    return Written(path, found.task, why, spec_source, runtime["minWorkers"], handler.get("threads", 1), tuple(notes))

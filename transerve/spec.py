"""models/<name>/model.yaml -> ModelSpec, validated once; errors name the file and key."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from handlers.config import ConfigError, HandlerConfig, parse_dataclass

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"


class SpecError(ConfigError):
    """A model spec is wrong; the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class Source:
    """Where the model files come from: an installed package's data, or a local folder.

    With `gguf` set, that file (inside the folder) is converted once, at preparation
    time, into a safetensors model directory (transerve.prepare); archives hold that.
    """

    package: Optional[str] = None  # import name of a package that carries the files
    path: str = "."  # inside the package, or relative to the spec file when dir is set
    dir: Optional[str] = None
    gguf: Optional[str] = None  # a GGUF file name in that folder

    def check(self):
        if (self.package is None) == (self.dir is None):
            yield "package", "give exactly one of source.package or source.dir"
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
    deviceType: Optional[Literal["cpu", "gpu"]] = None
    # TorchServe calls the handler once per decode step with the running requests and the new
    # ones (generation only; handler keys max_running, max_waiting, prefill_tokens)
    continuousBatching: Optional[bool] = None

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
    samples: Optional[list] = None  # replaces the model's samples for this version
    source: Optional[dict] = None  # other weights for this version (a fine-tune, say)


@dataclass(frozen=True)
class RawSpec:
    name: str
    task: str
    source: dict
    versions: dict
    description: str = ""
    handler: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)
    samples: list = field(default_factory=list)
    default_version: Optional[str] = None


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

    def with_handler(self, **changes: Any) -> "ModelVersion":
        """This version with some handler settings changed (a benchmark's or a test's variant)."""
        return dataclasses.replace(self, handler=dataclasses.replace(self.handler, **changes))

    def model_config(self) -> dict:
        """The model-config.yaml TorchServe reads from the archive: runtime keys + handler."""
        runtime = {k: v for k, v in dataclasses.asdict(self.runtime).items() if v is not None}
        return {**runtime, "handler": dataclasses.asdict(self.handler)}

    def source_dir(self) -> Path:
        if self.source.dir is not None:
            return (self.spec_file.parent / self.source.dir / self.source.path).resolve()
        found = importlib.util.find_spec(self.source.package)
        if found is None or not found.submodule_search_locations:
            raise SpecError(
                f"{self.spec_file}: source.package: package {self.source.package!r} is not installed; "
                "run the setup (make setup) or pip install it"
            )
        return Path(list(found.submodule_search_locations)[0]) / self.source.path


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
        handler = {"task": self.raw.task, **self.raw.handler, **overrides.handler}
        runtime = {**self.raw.runtime, **overrides.runtime}
        mv = ModelVersion(
            name=self.name,
            version=version,
            source=_parse(Source, overrides.source, f"{where}: source") if overrides.source is not None
            else _parse(Source, self.raw.source, f"{self.file}: source"),
            handler=_parse(HandlerConfig, handler, f"{where}: handler" if overrides.handler else f"{self.file}: handler"),
            runtime=_parse(Runtime, runtime, f"{where}: runtime" if overrides.runtime else f"{self.file}: runtime"),
            spec_file=self.file,
            samples=tuple(
                _sample(entry, f"{where}: samples[{i}]" if overrides.samples is not None else f"{self.file}: samples[{i}]")
                for i, entry in enumerate(self.raw.samples if overrides.samples is None else overrides.samples)
            ),
            task=self.raw.task,
        )
        _check_continuous(mv, where)
        return mv


def _check_continuous(mv: ModelVersion, where: str) -> None:
    if not mv.runtime.continuousBatching:
        return
    if mv.handler.task != "generation":
        raise SpecError(f"{where}: runtime.continuousBatching: only generation decodes step by step; "
                        f"this version's task is {mv.handler.task}")
    room = mv.handler.max_running + mv.handler.max_waiting
    if mv.runtime.batchSize <= room:
        raise SpecError(
            f"{where}: runtime.batchSize: {mv.runtime.batchSize} must be above handler.max_running + max_waiting "
            f"({room}): TorchServe hands the handler at most batchSize requests, and the handler answers 429 "
            "to those beyond its waiting room")


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
        raise SpecError(f"{path}: versions: version {bad[0]!r} must be a quoted string, e.g. \"1.0\"")
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

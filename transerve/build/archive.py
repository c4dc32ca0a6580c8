"""One model version -> model_store/<name>-<version>.mar, built by torch-model-archiver.

The archive holds the model files, the `handlers/` package and a generated
model-config.yaml (TorchServe's runtime keys plus the `handler:` section). Its path, size
and sha256 are recorded in model_store/index.json with a digest of everything that went
in, so building again with unchanged inputs reuses the archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from handlers.config import ConfigError
from transerve.build.prepare import model_dir
from transerve.build.spec import PICKLED, REPO, ModelVersion, SpecError, find_spec

HANDLERS_DIR = REPO / "handlers"
STORE = REPO / "model_store"
INDEX = "index.json"
SKIPPED = (".gitattributes", "README.md")
# Bump when the archive layout changes, so old archives are not reused.
# 2: entries stored, not deflated (float weights do not compress; deflating them cost ~5 MB/s).
LAYOUT = "2"


class ArchiveError(RuntimeError):
    """The archiver failed; the message carries its output."""


@dataclass(frozen=True)
class ArchiveRecord:
    path: str
    model: str
    version: str
    size: int
    sha256: str
    inputs: str
    built_at: float
    reused: bool = False
    seconds: float = 0.0  # the build's wall time (0 when reused)
    # where the model files came from: {hub, revision, commit} for a Hub source, else its package or folder
    source: dict = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(source: Path, mv: ModelVersion) -> list[Path]:
    if not source.is_dir():
        raise SpecError(f"{mv.spec_file}: source: {source} is not a directory")
    pickles_allowed = mv.handler.allow_pickle
    files = [
        p
        for p in sorted(source.rglob("*"))
        if p.is_file()
        and p.name not in SKIPPED
        and "__pycache__" not in p.parts
        and (p.suffix not in PICKLED or pickles_allowed)
    ]
    _refuse_remote_code(source, mv)
    if mv.handler.engine == "llamacpp":  # a prepared directory: the GGUF file as it ships, no torch weights
        files = [p for p in files if p.suffix != ".safetensors"]
        if sum(p.suffix == ".gguf" for p in files) != 1:
            raise SpecError(f"{mv.spec_file}: source: engine llamacpp needs one GGUF file in {source}")
        return files
    if mv.handler.engine == "onnxruntime":  # a prepared directory: the graph, no torch weights
        if not any(p.suffix == ".onnx" for p in files):
            raise SpecError(f"{mv.spec_file}: source: no ONNX graph in {source}")
        return files
    if not any(p.suffix == ".safetensors" or (pickles_allowed and p.suffix in PICKLED) for p in files):
        found = sorted(p.name for p in source.iterdir() if p.suffix in PICKLED)
        hint = (
            (
                f"; it has pickle weights ({', '.join(found)}), refused because unpickling runs code: convert them "
                "to safetensors, or set handler.allow_pickle: true in the spec if you trust them"
            )
            if found
            else ""
        )
        raise SpecError(f"{mv.spec_file}: source: no *.safetensors weights in {source}{hint}")
    return files


def _refuse_remote_code(source: Path, mv: ModelVersion) -> None:
    """A model folder whose config (or tokenizer config) names classes of its own code (`auto_map`)
    needs that code run to load: refused unless the spec trusts it, here rather than in a worker."""
    if mv.handler.trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((source / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            classes = ", ".join(sorted(map(str, data["auto_map"])))
            raise SpecError(
                f"{mv.spec_file}: source: {source / name} asks for the model repository's own code "
                f"(auto_map: {classes}); transerve does not run it unless the spec sets "
                "handler.trust_remote_code: true, for code you have read"
            )


def _handler_files() -> list[Path]:
    return [p for p in sorted(HANDLERS_DIR.rglob("*.py")) if "__pycache__" not in p.parts]


def model_config_text(mv: ModelVersion) -> str:
    return yaml.safe_dump(mv.model_config(), sort_keys=True)


def inputs_digest(mv: ModelVersion, log=print) -> str:
    """A digest of everything that goes into the archive: same digest, same archive."""
    digest = hashlib.sha256(f"layout {LAYOUT}\n{mv.name} {mv.version}\n{model_config_text(mv)}".encode())
    source = model_dir(mv, log)
    for path in _model_files(source, mv):
        digest.update(f"model/{path.relative_to(source)} {file_sha256(path)}\n".encode())
    for path in _handler_files():
        digest.update(f"handlers/{path.relative_to(HANDLERS_DIR)} {file_sha256(path)}\n".encode())
    return digest.hexdigest()


def stage(mv: ModelVersion, dest: Path, log=print) -> Path:
    """Lay out the archive's contents in `dest`: what a worker's model directory will hold.

    Model files are linked, not copied; the archiver copies them into the archive.
    """
    dest.mkdir(parents=True, exist_ok=True)
    source = model_dir(mv, log)
    for path in _model_files(source, mv):
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    for path in _handler_files():
        target = dest / "handlers" / path.relative_to(HANDLERS_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    # TorchServe imports the handler from the archive root, as the module `handler`.
    shutil.copy2(HANDLERS_DIR / "handler.py", dest / "handler.py")
    (dest / "model-config.yaml").write_text(model_config_text(mv))
    return dest


def read_index(store: Path) -> dict:
    path = store / INDEX
    return json.loads(path.read_text()) if path.exists() else {}


def _write_index(store: Path, index: dict) -> None:
    tmp = store / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, store / INDEX)


class TamperedArchive(ArchiveError):
    """An archive's bytes differ from the sha256 recorded when transerve built it."""


def build(
    mv: ModelVersion,
    store: Path = STORE,
    force: bool = False,
    log=print,
    refuse_tampered: bool = False,
) -> ArchiveRecord:
    """Build (or reuse) the archive of one model version; returns its record.

    An archive whose sha256 differs from the one recorded at build time was changed
    since: an explicit build replaces it; with `refuse_tampered` (every path that goes on
    to register it) it is refused instead, so a changed archive is never served.
    """
    store.mkdir(parents=True, exist_ok=True)
    target = store / mv.archive_name
    digest = inputs_digest(mv, log)
    known = read_index(store).get(mv.archive_name)
    actual = file_sha256(target) if target.exists() else None
    if known and actual and actual != known["sha256"] and refuse_tampered and not force:
        raise TamperedArchive(
            f"refusing {target}: its sha256 {actual[:16]}… differs from {known['sha256'][:16]}… recorded when it was "
            f"built, so it was changed since. Inspect it, then rebuild it: "
            f"transerve archive {mv.name} {mv.version} --force"
        )
    if not force and known and known["inputs"] == digest and actual == known["sha256"]:
        return ArchiveRecord(**{**known, "path": str(target), "reused": True})

    log(f"building {mv.archive_name} ...")
    provenance = mv.provenance()
    if "commit" in provenance and provenance["revision"] != provenance["commit"]:
        log(
            f"note: {mv.spec_file}: source.hub {provenance['hub']} at {provenance['revision']!r} is commit "
            f'{provenance["commit"]}; pin it (revision: "{provenance["commit"]}") '
            "to build from the same files every time"
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transerve-archive-") as tmp_name:
        tmp = Path(tmp_name)
        staged = stage(mv, tmp / "stage", log)
        out = tmp / "out"
        out.mkdir()
        (tmp / "work").mkdir()
        command = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name",
            mv.name,
            "--version",
            mv.version,
            "--handler",
            str(staged / "handler.py"),
            "--config-file",
            str(staged / "model-config.yaml"),
            "--extra-files",
            str(staged),
            "--export-path",
            str(out),
            # A zip whose entries are stored: weights (safetensors, ONNX) are near-incompressible
            # floats, and deflating them made a build CPU-bound at a few MB/s (smollm2-chat's
            # 267 MB took ~50 s). Stored, a build runs at the speed of the disk; TorchServe,
            # KServe's runtime and the index read it as any .mar.
            "--archive-format",
            "zip-store",
        ]
        # The archiver stages in $TMPDIR/<model name>; a private TMPDIR keeps two builds apart.
        env = {**os.environ, "TMPDIR": str(tmp / "work")}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ArchiveError(f"torch-model-archiver failed for {mv.archive_name}:\n{done.stdout}{done.stderr}")
        os.replace(out / f"{mv.name}.mar", target)

    record = ArchiveRecord(
        path=str(target),
        model=mv.name,
        version=mv.version,
        size=target.stat().st_size,
        sha256=file_sha256(target),
        inputs=digest,
        built_at=time.time(),
        seconds=round(time.perf_counter() - started, 2),
        source=provenance,
    )
    index = read_index(store)
    index[mv.archive_name] = {k: v for k, v in asdict(record).items() if k not in ("path", "reused", "seconds")}
    _write_index(store, index)
    return record


def startup_archives(models: str, store: Path, models_dir: Path, log=print) -> dict[str, str]:
    """ "NAME[:VERSION],..." (commas or spaces) -> {name: archive file in the store}, each
    checked: present, and not changed since transerve built it (when index.json knows it).
    A bare NAME means its spec's default version, or the one NAME-*.mar in the store.
    """
    names = models.replace(",", " ").split()
    if not names:
        raise ConfigError("no models named: set TRANSERVE_MODELS (or --models) to NAME[:VERSION],...")
    index = read_index(store)
    archives = {}
    for entry in names:
        name, _, version = entry.partition(":")
        if not version:
            try:
                version = find_spec(name, models_dir).default_version
            except ConfigError:
                found = sorted(store.glob(f"{name}-*.mar"))
                if len(found) != 1:
                    raise ConfigError(
                        f"{entry}: no spec for {name} in {models_dir} and {len(found)} archives "
                        f"{name}-*.mar in {store}; name the version as {name}:VERSION"
                    ) from None
                version = found[0].name[len(name) + 1 : -len(".mar")]
        file = f"{name}-{version}.mar"
        path = store / file
        if not path.is_file():
            raise ConfigError(f"{entry}: {path} not found; build it with `transerve archive {name} {version}`")
        known = index.get(file)
        if known is None:
            log(f"transerve: {file} is not in {store / INDEX}: its sha256 cannot be checked")
        elif file_sha256(path) != known["sha256"]:
            raise TamperedArchive(f"refusing {path}: its sha256 differs from the one recorded when it was built")
        archives[name] = file
    return archives

"""Models named by Hugging Face Hub id, fetched at build time into the Hugging Face cache.

`source: {hub: ORG/NAME, revision: COMMIT}` in a spec is resolved here, when an archive is
built (or `transerve init` reads the model): `huggingface_hub.snapshot_download` fills the
cache with the weights (safetensors only), config and tokenizer files of that revision and
gives back the snapshot folder, `.../models--ORG--NAME/snapshots/<commit>`. A branch or tag
is resolved to its commit once; the archive index records the commit. Workers never see
the Hub: they read the archive.

With `HF_HUB_OFFLINE=1` nothing is asked of the network: the revision must already be in
the cache (`refs/<branch>` names its commit, `snapshots/<commit>/` holds its files). The
cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub, read at each
call (huggingface_hub reads its environment once, at import).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

# What an archive can use: safetensors weights (never pickles), the config, the tokenizer in
# any of its formats, generation defaults, a chat template, and a sentence-transformers
# folder's own settings (modules, pooling, its max length).
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "chat_template.jinja",
    "chat_template.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "2_Normalize/config.json",
]  # and a GGUF file only when a spec names it: a GGUF repository holds many quantizations of one model
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class HubError(ValueError):
    """A Hub source cannot be had: the message names the repo, the revision and what is missing."""


@dataclass(frozen=True)
class Snapshot:
    repo: str
    revision: str  # as asked: a branch, a tag or a commit
    commit: str
    path: Path


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(
        os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return home / "hub"


def _cached_revisions(repo: str) -> str:
    """What the cache knows of `repo`, for a message: its refs and snapshots."""
    folder = cache_dir() / f"models--{repo.replace('/', '--')}"
    refs = (
        sorted(
            f"{p.relative_to(folder / 'refs')} -> {p.read_text().strip()[:12]}"
            for p in (folder / "refs").rglob("*")
            if p.is_file()
        )
        if (folder / "refs").is_dir()
        else []
    )
    snapshots = sorted(p.name[:12] for p in (folder / "snapshots").iterdir()) if (folder / "snapshots").is_dir() else []
    if not refs and not snapshots:
        return f"the cache ({cache_dir()}) has no revision of {repo}"
    return f"the cache has refs {', '.join(refs) or 'none'}; snapshots {', '.join(snapshots) or 'none'}"


@functools.lru_cache(maxsize=64)
def _snapshot(repo: str, revision: str, offline_: bool, cache: Path, extra: tuple[str, ...]) -> Snapshot:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = Path(
            snapshot_download(
                repo,
                revision=revision,
                allow_patterns=ALLOW_PATTERNS + list(extra),
                cache_dir=cache,
                local_files_only=offline_,
            )
        )
    except RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision!r} on the Hub") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo}: no such repository on the Hub (or it is private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline_ else "the Hub could not be reached"
        raise HubError(
            f"{repo} at revision {revision!r} is not in the Hugging Face cache and {why}; {_cached_revisions(repo)}"
        ) from None
    except (HfHubHTTPError, OSError) as e:  # a snapshot the cache holds only in part, a network error
        raise HubError(f"{repo} at revision {revision!r}: {e}") from None
    return Snapshot(repo, revision, path.name, path)


def snapshot(repo: str, revision: str | None = None, gguf: str | None = None) -> Snapshot:
    """The files of `repo` at `revision` (default: main) on this machine, fetched when needed
    (with the GGUF file `gguf`, when given); checked to hold a config and weights."""
    if not REPO_ID.fullmatch(repo):
        raise HubError(f"{repo!r} is not a Hub id: expected ORG/NAME, e.g. sentence-transformers/all-MiniLM-L6-v2")
    snap = _snapshot(repo, revision or "main", offline(), cache_dir(), (gguf,) if gguf else ())
    files = {p.relative_to(snap.path).as_posix() for p in snap.path.rglob("*") if p.is_file()}
    where = f"{repo} at revision {snap.revision!r} (commit {snap.commit})"
    if gguf is not None:
        if gguf not in files:
            raise HubError(f"{where}: no {gguf} in {snap.path}")
        return snap
    if "config.json" not in files:
        raise HubError(f"{where}: no config.json in {snap.path}")
    if not any(f.endswith(".safetensors") for f in files):
        raise HubError(
            f"{where}: no *.safetensors weights in {snap.path} (pickle weights are not fetched: unpickling runs code)"
        )
    return snap

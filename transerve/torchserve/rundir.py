"""A TorchServe's run directory, read in one place.

`transerve serve` and `run` start TorchServe from a directory of its own, and everything a
client needs afterwards is there: `config.properties` (the effective config, with this run's
addresses), `key_file.json` (the keys TorchServe writes into its working directory),
`guard.json` and `gateway.json` (the helpers' pids and addresses) and `logs/`.

Standard library only: the container's health probe reads it every few seconds.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file of `key=value` lines (what TorchServe reads) as a dict."""
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def read_keys(key_file: Path) -> dict[str, str]:
    """TorchServe's keys, {"management": …, "inference": …, "API": …}; {} while there are none.

    {} also while the file is half written: TorchServe creates it before filling it.
    """
    try:
        return {kind: entry["key"] for kind, entry in json.loads(Path(key_file).read_text()).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_file(self) -> Path:
        return self.path / "config.properties"

    @property
    def key_file(self) -> Path:
        return self.path / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.path / "logs"

    @property
    def drain_key_file(self) -> Path:
        """The key of the handler's drain route (mode 600), which TorchServe's workers get in their
        environment (TRANSERVE_DRAIN_KEY) from `transerve serve`."""
        return self.path / "drain_key"

    def drain_key(self) -> str | None:
        try:
            return self.drain_key_file.read_text().strip() or None
        except OSError:
            return None

    def started(self) -> bool:
        return self.config_file.exists()

    def properties(self) -> dict[str, str]:
        """The effective config.properties; OSError when no TorchServe was started from here."""
        return read_properties(self.config_file)

    def auth(self) -> bool:
        """Whether TorchServe checks keys (token authorization is on unless disabled)."""
        return self.properties().get("disable_token_authorization") != "true"

    def keys(self) -> dict[str, str]:
        """The current keys (read at each call: TorchServe may renew them); {} with none yet."""
        return read_keys(self.key_file)

    def key(self, kind: str) -> str | None:
        return self.keys().get(kind)

    def helper(self, name: str) -> dict | None:
        """What `guard` or `gateway` recorded when it was started from here: pid and addresses."""
        try:
            record = json.loads((self.path / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @typing.overload
    def address(self, api: typing.Literal["inference", "management", "metrics"]) -> str: ...
    @typing.overload
    def address(self, api: typing.Literal["openai"]) -> str | None: ...

    def address(self, api: str) -> str | None:
        """Where a client calls `api`: inference, metrics, management (the guard's, when one
        runs in front of TorchServe's) or openai (the gateway's base URL, None without one)."""
        if api == "openai":
            return (self.helper("gateway") or {}).get("base_url")
        if api == "management":
            guard = (self.helper("guard") or {}).get("listen")
            if guard:
                return guard
        return self.properties()[f"{api}_address"]

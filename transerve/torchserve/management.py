"""Typed clients of TorchServe's management and inference APIs (token aware).

TorchServe's error bodies ({"code", "type", "message"}) become ApiError with the
server's own message, so a user sees "Model not found: x", not a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from handlers.config import ConfigError


class ApiError(RuntimeError):
    """TorchServe refused a call; `status` and `message` are the server's."""

    def __init__(self, status: int, message: str, kind: str = ""):
        super().__init__(f"{status} {kind + ': ' if kind else ''}{message}")
        self.status, self.message, self.kind = status, message, kind


class _Api:
    def __init__(self, base_url: str, key: str | Callable[[], str | None] | None = None, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self._key = key
        self.timeout = timeout
        self.session = requests.Session()

    def _headers(self) -> dict[str, str]:
        key = self._key() if callable(self._key) else self._key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _call(self, method: str, path: str, timeout: float | None = None, **kwargs) -> requests.Response:
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        try:
            answer = self.session.request(
                method, f"{self.base_url}{path}", headers=headers, timeout=timeout or self.timeout, **kwargs
            )
        except requests.RequestException as e:
            raise ApiError(0, f"cannot reach TorchServe at {self.base_url}: {e}") from None
        if answer.status_code >= 400:
            raise _error(answer)
        return answer


def _error(answer: requests.Response) -> ApiError:
    try:
        body = answer.json()
        return ApiError(answer.status_code, body.get("message", answer.text), body.get("type", ""))
    except ValueError:
        return ApiError(answer.status_code, answer.text.strip() or answer.reason)


@dataclass(frozen=True)
class Worker:
    id: str
    status: str
    pid: int | None
    start_time: str
    gpu: bool
    memory: int

    @classmethod
    def parse(cls, data: dict) -> Worker:
        return cls(
            id=str(data.get("id")),
            status=data.get("status", ""),
            pid=data.get("pid"),
            start_time=data.get("startTime", ""),
            gpu=bool(data.get("gpu")),
            memory=data.get("memoryUsage", 0),
        )


@dataclass(frozen=True)
class ModelVersionStatus:
    """One registered version as `describe` reports it."""

    name: str
    version: str
    url: str
    is_default: bool
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay: int
    workers: tuple[Worker, ...]
    pending_requests: int = 0  # queued, not yet handed to a worker
    response_timeout: int = 0

    @property
    def ready_workers(self) -> int:
        return sum(w.status == "READY" for w in self.workers)

    @classmethod
    def parse(cls, data: dict, default_version: str | None) -> ModelVersionStatus:
        return cls(
            name=data["modelName"],
            version=data["modelVersion"],
            url=data.get("modelUrl", ""),
            is_default=data["modelVersion"] == default_version,
            min_workers=data.get("minWorkers", 0),
            max_workers=data.get("maxWorkers", 0),
            batch_size=data.get("batchSize", 1),
            max_batch_delay=data.get("maxBatchDelay", 0),
            workers=tuple(Worker.parse(w) for w in data.get("workers", [])),
            pending_requests=(data.get("jobQueueStatus") or {}).get("pendingRequests", 0),
            response_timeout=data.get("responseTimeout", 0),
        )


# TorchServe's answer to a registration, which says how many workers it started.
REGISTERED = re.compile(
    r'Model "(?P<name>[^"]+)" Version: (?P<version>\S+) registered with (?P<workers>\d+) initial workers'
)


class ManagementClient(_Api):
    """list, describe, register, scale, set-default and unregister, per version."""

    def list_models(self) -> list[str]:
        names, token = [], None
        while True:
            params = {"limit": 100, **({"next_page_token": token} if token else {})}
            body = self._call("GET", "/models", params=params).json()
            names += [m["modelName"] for m in body.get("models", [])]
            token = body.get("nextPageToken")
            if not token:
                return names

    def describe(self, name: str, version: str | None = None) -> list[ModelVersionStatus]:
        """Every registered version of `name` (or just `version`), default marked."""
        default = self.default_version(name)
        path = f"/models/{name}/{version}" if version else f"/models/{name}/all"
        return [ModelVersionStatus.parse(d, default) for d in self._call("GET", path).json()]

    def default_version(self, name: str) -> str:
        return self._call("GET", f"/models/{name}").json()[0]["modelVersion"]

    def register(
        self,
        url: str,
        initial_workers: int | None = None,
        synchronous: bool = True,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        response_timeout: int | None = None,
        timeout: float = 300,
    ) -> str:
        """Register an archive (its file name in the model store); returns the server's message.

        Only a bare file name is sent: TorchServe 0.12 would also load a URL or any
        directory path it is given (allowed_urls covers URLs only), and transerve never
        needs either. `initial_workers` is honoured: TorchServe 0.12 starts the archive's
        own minWorkers instead when its model-config.yaml sets one, so a synchronous
        registration that started another count is scaled to it.
        """
        if not re.fullmatch(r"[\w.-]+\.mar", url):
            raise ConfigError(
                f"register takes an archive's file name in the model store (NAME-VERSION.mar), got {url!r}"
            )
        params: dict[str, Any] = {"url": url, "synchronous": str(synchronous).lower()}
        optional = {
            "initial_workers": initial_workers,
            "batch_size": batch_size,
            "max_batch_delay": max_batch_delay,
            "response_timeout": response_timeout,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        message = self._call("POST", "/models", params=params, timeout=timeout).json().get("status", "")
        started = REGISTERED.fullmatch(message)
        if synchronous and initial_workers is not None and started and int(started["workers"]) != initial_workers:
            name, version = started["name"], started["version"]
            # TorchServe stops workers only above max_worker: fewer than it started needs max = min.
            if initial_workers < int(started["workers"]):
                maximum = initial_workers
            else:
                [status] = self.describe(name, version)
                maximum = max(initial_workers, status.max_workers)
            self.scale(name, initial_workers, maximum, version=version, timeout=timeout)
            message = f'Model "{name}" Version: {version} registered with {initial_workers} initial workers'
        return message

    def scale(
        self,
        name: str,
        min_workers: int,
        max_workers: int | None = None,
        version: str | None = None,
        synchronous: bool = True,
        timeout: float = 300,
    ) -> str:
        counts = (min_workers, min_workers if max_workers is None else max_workers)
        if (
            not all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
            or counts[0] < 0
            or counts[1] < counts[0]
        ):
            raise ConfigError(f"bad worker counts: min {min_workers}, max {max_workers}; need integers 0 <= min <= max")
        path = f"/models/{name}/{version}" if version else f"/models/{name}"
        params = {
            "min_worker": min_workers,
            "max_worker": max_workers if max_workers is not None else min_workers,
            "synchronous": str(synchronous).lower(),
        }
        return self._call("PUT", path, params=params, timeout=timeout).json().get("status", "")

    def set_default(self, name: str, version: str) -> str:
        return self._call("PUT", f"/models/{name}/{version}/set-default").json().get("status", "")

    def unregister(self, name: str, version: str | None = None, timeout: float = 120) -> str:
        path = f"/models/{name}/{version}" if version else f"/models/{name}"
        return self._call("DELETE", path, timeout=timeout).json().get("status", "")


class InferenceClient(_Api):
    def drain(self, name: str, version: str, drain_key: str, timeout: float | None = None) -> dict:
        """End every request a continuous-batching version holds (finish_reason "cancelled"), and have it
        refuse new ones with 503 (the handler's drain route; `drain_key` from the run directory)."""
        return self._call(
            "POST",
            f"/predictions/{name}/{version}/drain",
            json={},
            headers={"X-Transerve-Drain-Key": drain_key},
            timeout=timeout,
        ).json()

    def predict(self, name: str, body: Any, version: str | None = None, timeout: float | None = None) -> Any:
        """POST a JSON body (or text) to /predictions/NAME[/VERSION]; returns the parsed answer."""
        path = f"/predictions/{name}/{version}" if version else f"/predictions/{name}"
        if isinstance(body, str):
            answer = self._call(
                "POST", path, data=body.encode(), headers={"Content-Type": "text/plain"}, timeout=timeout
            )
        else:
            answer = self._call("POST", path, json=body, timeout=timeout)
        return answer.json()

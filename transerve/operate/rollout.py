"""Blue-green version changes on one TorchServe, losing no request.

rollout:  archive -> register (not default) -> ready -> smoke -> set-default -> drain the
          old version -> scale it to zero workers -> unregister versions beyond the last N.
          Any failure before set-default unregisters the new version; the default never
          changed. `canary` stops after smoke: the new version answers only at
          /predictions/NAME/VERSION until `promote`.
rollback: the previous default (kept registered, at zero workers) is scaled up, made
          ready, smoke-tested, made default; the current one is drained and scaled down.

TorchServe routes each request to a version when it arrives, so after set-default the old
version only holds what it had already accepted: its queue (the management API's
pendingRequests) and what its workers hold: the batch they run, and under continuous batching
every request decoding or waiting for a row, which TorchServe's queue no longer counts.
Scaling a worker down cuts those: TorchServe 0.12 either fails them (a stream is closed short)
or puts their jobs back in the version's queue, where at 0 workers none will take them and their
clients wait until their own timeout (both seen, a race in its scale-down). So the drain
waits until the queue is empty and the version's live workers hold nothing (the handler's
transerve_requests_in_flight gauge, per worker pid, on the metrics API), bounded by the old
version's max_timeout (generation) or responseTimeout. If the bound passes, the handler's drain
route ends what is left (a last chunk with finish_reason "cancelled"; new requests to that
version get 503), and only then is the version scaled down.

The order of defaults is kept in <run dir>/rollouts.json: TorchServe does not remember
which version was default before, and rollback needs to know.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from transerve.build import archive
from transerve.build.spec import ModelSpec, ModelVersion, SpecError
from transerve.operate.validate import run_samples, served
from transerve.torchserve.management import ApiError, InferenceClient, ManagementClient, ModelVersionStatus
from transerve.torchserve.metrics_api import scrape
from transerve.torchserve.rundir import RunDir
from transerve.torchserve.waiting import wait_until

HISTORY = "rollouts.json"


class RolloutError(RuntimeError):
    """A step failed; `step` names it and the message says why and what was undone."""

    def __init__(self, step: str, reason: str, undone: str = ""):
        super().__init__(f"step '{step}' failed: {reason}" + (f"; {undone}" if undone else ""))
        self.step, self.reason, self.undone = step, reason, undone


@dataclass
class History:
    """Which versions of each model were default, oldest first, last = current."""

    path: Path
    defaults: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> History:
        path = Path(run_dir) / HISTORY
        try:
            return cls(path, json.loads(path.read_text()))
        except (OSError, ValueError):
            return cls(path)

    def of(self, name: str) -> list[str]:
        return self.defaults.setdefault(name, [])

    def became_default(self, name: str, version: str) -> None:
        versions = [v for v in self.of(name) if v != version]
        self.defaults[name] = versions + [version]
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.defaults, indent=2) + "\n")
        os.replace(tmp, self.path)


@dataclass
class Rollouts:
    management: ManagementClient
    inference: InferenceClient
    store: Path
    run_dir: Path
    log: object = print
    drain_timeout: float | None = None  # None: the old version's max_timeout (generation) or responseTimeout
    keep: int = 2  # versions kept registered (current + previous) for rollback
    _count: int = 0

    # -- the three operations -------------------------------------------------------------

    def rollout(self, spec: ModelSpec, version: str, canary: bool = False) -> None:
        mv = spec.version(version)
        registered = self._registered(spec.name)
        if version in registered:
            if registered[version].is_default:
                raise RolloutError("check", f"{spec.name} {version} is already the default; nothing to do")
            raise RolloutError(
                "check",
                f"{spec.name} {version} is already registered; make it the default with "
                f"`transerve promote {spec.name} {version}`, or unregister it to roll it out afresh",
            )
        old = next((v for v, s in registered.items() if s.is_default), None)
        self.log(f"rollout {spec.name}: {old or '(none)'} -> {version}{' (canary)' if canary else ''}")
        try:
            with self._step("archive"):
                record = archive.build(mv, self.store, log=lambda line: self.log(f"    {line}"), refuse_tampered=True)
                self.log(
                    f"    {Path(record.path).name} {'reused' if record.reused else 'built'}, {record.size / 1e6:.1f} MB"
                )
            with self._step("register"):
                self.management.register(
                    mv.archive_name,
                    initial_workers=max(1, mv.runtime.minWorkers),
                    synchronous=True,
                    timeout=mv.runtime.startupTimeout + 60,
                )
            self._warm(mv, scale_up=False)
        except RolloutError as e:
            reason = e.reason
            if e.step in ("register", "ready"):
                said = self._worker_error(spec.name, version)
                reason += f"; the worker said: {said}" if said else ""
            raise RolloutError(e.step, reason, self._undo_register(spec.name, version, old)) from None
        if canary:
            self.log(
                f"canary {spec.name} {version} is ready at /predictions/{spec.name}/{version}; "
                f"the default is still {old}. Finish with: transerve promote {spec.name} {version}"
            )
            return
        self._switch(spec, old, version)

    def promote(self, spec: ModelSpec, version: str) -> None:
        registered = self._registered(spec.name)
        if version not in registered:
            raise RolloutError("check", f"{spec.name} {version} is not registered; roll it out with --canary first")
        if registered[version].is_default:
            raise RolloutError("check", f"{spec.name} {version} is already the default")
        old = next(v for v, s in registered.items() if s.is_default)
        mv = spec.version(version)
        self.log(f"promote {spec.name}: {old} -> {version}")
        # A version kept at zero workers by an earlier switch starts its workers first.
        self._warm(mv, scale_up=registered[version].ready_workers == 0)
        self._switch(spec, old, version)

    def rollback(self, spec: ModelSpec) -> None:
        registered = self._registered(spec.name)
        current = next((v for v, s in registered.items() if s.is_default), None)
        if current is None:
            raise RolloutError("check", f"{spec.name} is not registered")
        earlier = [v for v in History.load(self.run_dir).of(spec.name) if v != current]
        if not earlier:
            raise RolloutError(
                "check",
                f"no earlier default of {spec.name} is recorded in {self.run_dir / HISTORY}; "
                f"roll out the version you want: transerve rollout {spec.name} VERSION",
            )
        previous = earlier[-1]
        if previous not in registered:
            raise RolloutError("check", f"{spec.name} {previous} is no longer registered; roll it out again instead")
        mv = spec.version(previous)
        self.log(f"rollback {spec.name}: {current} -> {previous}")
        try:
            self._warm(mv, scale_up=True)
        except RolloutError as e:
            with contextlib.suppress(ApiError):
                self.management.scale(spec.name, 0, 0, version=previous)
            raise RolloutError(
                e.step, e.reason, f"{previous} scaled back to 0 workers; the default is still {current}"
            ) from None
        self._switch(spec, current, previous)

    # -- steps -----------------------------------------------------------------------------

    def _switch(self, spec: ModelSpec, old: str | None, new: str) -> None:
        """new becomes default; old drains and goes to zero workers; old versions beyond keep go."""
        history = History.load(self.run_dir)
        if old is not None and not history.of(spec.name):
            history.became_default(spec.name, old)
        with self._step("set-default"):
            self.management.set_default(spec.name, new)
        history.became_default(spec.name, new)
        if old is None:
            return
        with self._step(f"drain {old}"):
            self._drain(spec, old)
        with self._step(f"scale {old} to 0 workers"):
            self.management.scale(spec.name, 0, 0, version=old)
        kept = history.of(spec.name)[-self.keep :]
        for version, status in self._registered(spec.name).items():
            if version in history.of(spec.name) and version not in kept and not status.is_default:
                with self._step(f"unregister {version} (keeping {', '.join(kept)})"):
                    self.management.unregister(spec.name, version)
        self.log(f"{spec.name} {new} is the default; {old} is kept at 0 workers for `transerve rollback {spec.name}`")

    def _warm(self, mv: ModelVersion, scale_up: bool) -> None:
        """[scale up to the spec's workers,] wait for a READY worker, smoke-test: fit for traffic."""
        if scale_up:
            with self._step(f"scale {mv.version} up"):
                workers = max(1, mv.runtime.minWorkers)
                self.management.scale(
                    mv.name,
                    workers,
                    max(workers, mv.runtime.maxWorkers),
                    version=mv.version,
                    timeout=mv.runtime.startupTimeout + 60,
                )
        with self._step("ready"):
            self._wait_ready(mv.name, mv.version, mv.runtime.startupTimeout)
        with self._step("smoke"):
            self._smoke(mv)

    def _wait_ready(self, name: str, version: str, timeout: float) -> None:
        def ready():
            [status] = self.management.describe(name, version)
            return status if status.ready_workers >= 1 else None

        status = wait_until(
            ready,
            timeout,
            lambda: RolloutError(
                "ready",
                f"no worker of {name} {version} became READY within {timeout:.0f}s; "
                f"see {self.run_dir / 'logs' / 'model_log.log'}",
            ),
        )
        self.log(f"    {status.ready_workers}/{len(status.workers)} workers READY")

    def _smoke(self, mv: ModelVersion) -> None:
        if not mv.samples:
            raise RolloutError("smoke", f"{mv.spec_file} has no samples to smoke-test {mv.name} {mv.version} with")
        for result in run_samples(mv, served(self.inference, mv)):
            if result.problems:
                raise RolloutError("smoke", f"sample {result.index}: {'; '.join(result.problems[:3])}")
            self.log(f"    sample {result.index} ok ({result.ms:.0f} ms)")

    def _drain(self, spec: ModelSpec, version: str) -> None:
        drain(self.management, self.inference, self.run_dir, spec, version, self.drain_timeout, self.log)

    def _undo_register(self, name: str, version: str, old: str | None) -> str:
        try:
            self.management.unregister(name, version)
            undone = f"{version} unregistered"
        except ApiError as e:
            undone = f"{version} is not registered" if e.status == 404 else f"unregistering {version} failed too: {e}"
        return undone + (f"; the default is still {old}" if old else "")

    def _worker_error(self, name: str, version: str) -> str:
        """The last error a worker of this version logged, if TorchServe's model log has one."""
        log = self.run_dir / "logs" / "model_log.log"
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        tag = f"-{name}_{version}-"
        errors = [line for line in lines if tag in line and ("Error" in line or "Exception" in line)]
        return errors[-1].split("MODEL_LOG - ", 1)[-1].strip()[:300] if errors else ""

    def _registered(self, name: str) -> dict[str, ModelVersionStatus]:
        try:
            return {s.version: s for s in self.management.describe(name)}
        except ApiError as e:
            if e.status == 404:
                return {}
            raise

    @contextlib.contextmanager
    def _step(self, name: str):
        self._count += 1
        started = time.monotonic()
        self.log(f"[{self._count}] {name} ...")
        try:
            yield
        except (RolloutError, ApiError, archive.ArchiveError, ValueError, OSError) as e:
            self.log(f"[{self._count}] {name} FAILED after {time.monotonic() - started:.1f}s")
            if isinstance(e, RolloutError):
                raise
            raise RolloutError(name, str(e)) from None
        self.log(f"[{self._count}] {name} done in {time.monotonic() - started:.1f}s")


def drain(
    management: ManagementClient,
    inference: InferenceClient,
    run_dir: Path,
    spec: ModelSpec | None,
    version: str,
    bound: float | None = None,
    log=print,
    name: str | None = None,
) -> None:
    """Wait until `version` holds no request (queued, or held by a live worker), at most `bound`
    seconds (None: the spec's max_timeout for generation, responseTimeout otherwise; 600 without a
    spec); past it, end what it still holds through the handler's drain route. RolloutError when it
    cannot: then the version keeps its workers. Before any scale-down or unregistration that would
    stop workers holding requests: TorchServe 0.12 would cut them."""
    name = name or spec.name
    limit, continuous = 600.0, True
    try:
        mv = spec.version(version) if spec is not None else None
    except SpecError:
        mv = None  # a version the spec no longer lists: the longest generation bound, and try the route
    if mv is not None:
        continuous = bool(mv.runtime.continuousBatching)
        limit = float(mv.handler.max_timeout if mv.handler.entry.decodes else mv.runtime.responseTimeout)
    bound = limit if bound is None else bound
    held = {"queued": 0, "running": 0, "workers": 0}

    def idle() -> bool:
        held.update(_held(management, run_dir, name, version))
        return held["queued"] == 0 and held["running"] == 0

    def settled() -> bool:
        if not idle():
            return False
        time.sleep(0.5)  # a request the frontend was handing to a worker shows in its gauge by then
        return idle()

    started = time.monotonic()
    try:
        wait_until(settled, bound, TimeoutError, interval=0.2)
    except TimeoutError:
        if not continuous:
            raise RolloutError(
                "drain",
                f"{name} {version} still holds {held['queued']} queued and {held['running']} "
                f"running requests after {bound:.0f}s; it keeps its workers",
            ) from None
        log(
            f"    {held['running']} requests still running and {held['queued']} queued after {bound:.0f}s: "
            "ending them (finish_reason cancelled)"
        )
        key = RunDir(run_dir).drain_key()
        if key is None:
            raise RolloutError(
                "drain",
                f"no drain key in {run_dir} (TorchServe was not started by transerve serve); "
                f"{name} {version} keeps its workers",
            ) from None
        # TorchServe hands each drain request to one worker: one per worker, until none holds anything
        for _ in range(3 * max(1, held["workers"])):
            try:
                log(f"    drained: {inference.drain(name, version, key)['drained']}")
            except ApiError as e:
                raise RolloutError(
                    "drain", f"the drain route of {name} {version} refused: {e}; it keeps its workers"
                ) from None
            try:
                wait_until(idle, 10, TimeoutError, interval=0.2)
                break
            except TimeoutError:
                continue
        if not idle():
            raise RolloutError(
                "drain",
                f"{name} {version} still holds {held['running']} requests after its drain; it keeps its workers",
            ) from None
    log(f"    nothing queued or running after {time.monotonic() - started:.1f}s")


def _held(management: ManagementClient, run_dir: Path, name: str, version: str) -> dict:
    """What `version` holds now: queued (TorchServe's pendingRequests) and running (the in-flight
    gauge of each of its live workers, read from the metrics API)."""
    [status] = management.describe(name, version)
    pids = {str(w.pid) for w in status.workers}
    try:
        samples = scrape(RunDir(run_dir).address("metrics"))
    except (OSError, ValueError, KeyError) as e:
        raise RolloutError(
            "drain", f"cannot read what {name} {version} still runs from the metrics API ({e}); it keeps its workers"
        ) from None
    running = sum(
        s.value
        for s in samples
        if s.name == "transerve_requests_in_flight"
        and s.labels.get("model_name") == name
        and s.labels.get("model_version") == version
        and s.labels.get("worker") in pids
    )
    return {"queued": status.pending_requests, "running": int(running), "workers": len(pids)}

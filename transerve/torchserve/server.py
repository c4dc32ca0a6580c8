"""Start, wait for and stop TorchServe with the project's config.properties.

Each server gets a run directory: the effective config.properties (the template with
this run's model store, addresses and allowed URLs), `key_file.json` (TorchServe writes
it to its working directory) and `logs/`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from transerve.build.spec import REPO
from transerve.torchserve.management import InferenceClient, ManagementClient
from transerve.torchserve.rundir import RunDir, read_properties
from transerve.torchserve.waiting import wait_until

METRICS_CONFIG = REPO / "metrics.yaml"
CONFIG_TEMPLATE = REPO / "config.properties"
RUN_DIR = REPO / ".transerve"
# TorchServe keeps one pid file per machine (per temp dir): one server at a time.
PID_FILE = Path(tempfile.gettempdir()) / ".model_server.pid"


class ServerError(RuntimeError):
    """TorchServe did not start or stop; the message says where to look."""


def java_version() -> int | None:
    """The major version of the `java` on PATH (or JAVA_HOME), None when there is none."""
    java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java:
        return None
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2)) if major == 1 else major


GRPC_DEFAULTS = (("inference", "7070"), ("management", "7071"))  # TorchServe's, when unset


@dataclass
class Server:
    """One TorchServe: its run directory, its model store and its effective properties."""

    model_store: Path
    run_dir: Path = RUN_DIR
    overrides: dict[str, str] = field(default_factory=dict)
    template: Path = CONFIG_TEMPLATE
    # transerve.edge.guard in front of the management API: registrations from the model store only
    guard: bool = True

    def __post_init__(self):
        self.model_store = Path(self.model_store).resolve()
        self.run_dir = Path(self.run_dir).resolve()
        store = re.escape(self.model_store.as_posix())
        self.properties = {
            **read_properties(self.template),
            "model_store": self.model_store.as_posix(),
            # Only archives inside this model store, named by a file:// URL or by file name.
            "allowed_urls": f"file://{store}/[^/]+\\.mar",
            # TorchServe's metrics plus the handler's (only declared metrics reach /metrics).
            "metrics_config": METRICS_CONFIG.as_posix(),
            **self.overrides,
        }
        # transerve's own key, not TorchServe's: where the OpenAI gateway listens ("" for none)
        self.openai_address = self.properties.pop("openai_address", "")
        self.management_address = self.properties["management_address"]
        self.grpc_management_address = (
            f"{self.properties.get('grpc_management_address', '127.0.0.1')}:"
            f"{self.properties.get('grpc_management_port', '7071')}"
        )
        if self.guard:  # TorchServe's own management APIs move to private loopback ports
            # not onto a port given to another listener: none of them is up yet, so each looks free
            rest, grpc = free_ports(2, avoid=self.named_ports())
            self.properties["management_address"] = f"http://127.0.0.1:{rest}"
            self.properties["grpc_management_address"] = "127.0.0.1"
            self.properties["grpc_management_port"] = str(grpc)

    def named_ports(self) -> set[int]:
        """The ports the properties give TorchServe's listeners and the gateway (TorchServe's
        defaults for the gRPC ports left out)."""
        addresses = [self.properties.get(f"{api}_address", "") for api in ("inference", "management", "metrics")]
        ports = {int(m.group(1)) for a in (*addresses, self.openai_address) if (m := re.search(r":(\d+)/*$", a))}
        return ports | {int(self.properties.get(f"grpc_{api}_port", default)) for api, default in GRPC_DEFAULTS}

    @classmethod
    def on_free_ports(
        cls, model_store: Path, run_dir: Path, openai: bool = True, overrides: dict | None = None, **kwargs
    ) -> Server:
        """A server with every listener on a loopback port free now, the OpenAI gateway's too
        (none with openai=False): tests, benchmarks and soaks, beside whatever else the machine runs."""
        inference, management, metrics, grpc_inference, grpc_management, gateway = free_ports(6)
        return cls(
            model_store=model_store,
            run_dir=run_dir,
            overrides={
                "inference_address": f"http://127.0.0.1:{inference}",
                "management_address": f"http://127.0.0.1:{management}",
                "metrics_address": f"http://127.0.0.1:{metrics}",
                "grpc_inference_port": str(grpc_inference),
                "grpc_management_port": str(grpc_management),
                "openai_address": f"http://127.0.0.1:{gateway}" if openai else "",
                **(overrides or {}),
            },
            **kwargs,
        )

    @property
    def rundir(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def config_file(self) -> Path:
        return self.rundir.config_file

    @property
    def key_file(self) -> Path:
        return self.rundir.key_file

    @property
    def log_dir(self) -> Path:
        return self.rundir.log_dir

    def url(self, api: str) -> str:
        """Base URL of the `inference`, `management` (the guard's, when on), `metrics` or
        `openai` API (the gateway's, http://HOST:PORT/v1)."""
        if api == "openai":
            return f"{self.openai_address.rstrip('/')}/v1"
        return self.management_address if api == "management" else self.properties[f"{api}_address"]

    def keys(self) -> dict[str, str]:
        """The current keys, {"management": …, "inference": …, "API": …}; {} with auth off."""
        return self.rundir.keys()

    def clients(self) -> tuple[ManagementClient, InferenceClient]:
        return clients(self.rundir)

    def write_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        lines = ["# Written by transerve from config.properties; edit that file, not this one."]
        lines += [f"{k}={v}" for k, v in self.properties.items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        return self.config_file

    def command(self, foreground: bool = False) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "ts.model_server",
            "--start",
            "--ncs",
            "--ts-config",
            str(self.config_file),
            "--model-store",
            str(self.model_store),
        ]
        return command + (["--foreground"] if foreground else [])

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir)}
        # Workers are python processes started by the Java frontend: give them this venv, and the
        # operator's key for the handler's drain route (a rollout's: handlers/handler.py).
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        key = self.rundir.drain_key()
        if key:
            env["TRANSERVE_DRAIN_KEY"] = key
        return env

    def prepare(self) -> None:
        """Check that TorchServe can start here; write the run dir's config."""
        if running_pid() is not None:
            raise ServerError(
                f"a TorchServe is already running (pid {running_pid()}, pid file {PID_FILE}); "
                "stop it first with `transerve stop`"
            )
        version = java_version()
        if version is None or version < 17:
            raise ServerError(f"TorchServe 0.12 needs Java 17 or newer, found {version or 'none'}; run `make setup`")
        self.model_store.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.key_file.unlink(missing_ok=True)
        key_file = self.rundir.drain_key_file
        key_file.unlink(missing_ok=True)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")

    def start(self, timeout: float = 120) -> None:
        """Start TorchServe in the background and wait until it answers /ping."""
        self.prepare()
        # The Java frontend outlives this call and keeps its output streams: give it a file.
        with open(self.log_dir / "torchserve.out", "ab") as out:
            started = subprocess.run(
                self.command(),
                cwd=self.run_dir,
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
        if started.returncode != 0:
            raise ServerError(f"torchserve --start failed; see {self.log_dir}/torchserve.out")
        self.wait_healthy(timeout)
        if self.guard:
            self.start_guard()
        if self.openai_address:
            self.start_gateway()

    def start_guard(self) -> None:
        listen = self.management_address.split("://", 1)[1]
        grpc_upstream = f"127.0.0.1:{self.properties['grpc_management_port']}"
        self._spawn(
            "guard",
            [
                "--listen",
                listen,
                "--upstream",
                self.properties["management_address"],
                "--store",
                str(self.model_store),
                "--grpc-listen",
                self.grpc_management_address,
                "--grpc-upstream",
                grpc_upstream,
            ],
            {
                "listen": self.management_address,
                "upstream": self.properties["management_address"],
                "grpc_listen": self.grpc_management_address,
                "grpc_upstream": grpc_upstream,
            },
            [listen, self.grpc_management_address],
        )

    def start_gateway(self) -> None:
        """The OpenAI gateway (transerve/edge/gateway.py) in front of TorchServe's inference API."""
        listen = self.openai_address.split("://", 1)[-1].rstrip("/")
        auth = self.properties.get("disable_token_authorization") != "true"
        self._spawn(
            "gateway",
            [
                "--listen",
                listen,
                "--inference",
                self.properties["inference_address"],
                "--management",
                self.properties["management_address"],
                *(["--key-file", str(self.key_file)] if auth else []),
            ],
            {"listen": listen, "base_url": self.url("openai")},
            [listen],
        )

    def _spawn(self, name: str, args: list[str], record: dict, addresses: list[str], timeout: float = 20) -> None:
        """transerve.edge.<name> as a process of its own, recorded in the run dir (<name>.json), once
        it accepts connections on every address."""
        command = [sys.executable, "-m", f"transerve.edge.{name}", *args]
        with open(self.log_dir / f"{name}.log", "ab") as out:
            process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        (self.run_dir / f"{name}.json").write_text(json.dumps({"pid": process.pid, **record}))

        def not_started() -> ServerError:
            return ServerError(f"transerve.edge.{name} did not start; see {self.log_dir}/{name}.log")

        def listening(address: str) -> bool:
            host, port = address.rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return True
            except OSError:
                if process.poll() is not None:
                    raise not_started() from None
                return False

        deadline = time.monotonic() + timeout
        for address in addresses:
            wait_until(
                functools.partial(listening, address),
                max(deadline - time.monotonic(), 0),
                not_started,
                interval=0.1,
            )

    def wait_healthy(self, timeout: float = 120) -> None:
        def healthy() -> bool:
            if running_pid() is None:
                raise ServerError(f"TorchServe exited while starting; see {self.log_dir}/ts_log.log")
            key = self.keys().get("inference")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            auth_off = self.properties.get("disable_token_authorization") == "true"
            try:
                answer = requests.get(f"{self.url('inference')}/ping", headers=headers, timeout=2)
            except requests.RequestException:
                return False
            return answer.status_code == 200 and bool(key or auth_off)

        wait_until(
            healthy,
            timeout,
            lambda: ServerError(
                f"TorchServe did not answer /ping within {timeout:.0f}s; see {self.log_dir}/ts_log.log"
            ),
        )

    def run(self, archives: dict[str, str], timeout: float = 300, log=print) -> int:
        """TorchServe in the foreground serving `archives` ({name: file in the model store})
        from startup, until it exits or this process gets SIGTERM/SIGINT (then it is
        stopped, workers included). Returns TorchServe's exit status, 0 after a stop.
        """
        self.prepare()
        models = [f"{name}={file}" for name, file in archives.items()]
        # The frontend's and workers' logs go to this process's output: a container's log.
        process = subprocess.Popen(
            self.command(foreground=True) + ["--models", *models], cwd=self.run_dir, env=self.environment()
        )
        stopping = []

        def stop(signum, _frame):
            stopping.append(signum)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            deadline, ready = time.monotonic() + timeout, False
            while process.poll() is None and not stopping:
                if not ready and self._ready(list(archives)):
                    ready = True
                    log(
                        f"transerve: serving {', '.join(models)} at {self.url('inference')}/predictions/<model> "
                        f"(keys: {self.key_file})",
                        flush=True,
                    )
                    if self.openai_address:
                        self.start_gateway()
                        log(f"transerve: OpenAI API at {self.url('openai')} (api_key: the inference key)", flush=True)
                elif not ready and time.monotonic() > deadline:
                    log(f"transerve: models not READY after {timeout:.0f}s; see {self.log_dir}", flush=True)
                    stopping.append("timeout")
                time.sleep(0.5)
            if stopping:
                log(f"transerve: stopping TorchServe ({stopping[0]})", flush=True)
                stop_running()
            code = process.wait()
            self.key_file.unlink(missing_ok=True)
            return 1 if "timeout" in stopping else (0 if stopping else code)
        finally:
            stop_helpers(self.run_dir)  # the gateway
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if process.poll() is None:
                stop_running()
                process.wait()

    def _ready(self, names: list[str]) -> bool:
        from transerve.torchserve.health import check

        return all(check(self.run_dir, name, timeout=2)[0] for name in names)

    def stop(self, timeout: float = 60) -> bool:
        stop_helpers(self.run_dir)
        stopped = stop_running(timeout)
        self.key_file.unlink(missing_ok=True)
        return stopped


def free_ports(count: int, avoid: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """`count` distinct loopback ports free right now and not in `avoid` (ports promised to
    listeners not up yet); all held open while they are picked, so none comes twice."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sockets.append(socket.socket())
            sockets[-1].bind(("127.0.0.1", 0))
            if (port := sockets[-1].getsockname()[1]) not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in sockets:
            s.close()


def clients(
    run: RunDir,
    management_key: str | None = None,
    inference_key: str | None = None,
) -> tuple[ManagementClient, InferenceClient]:
    """Clients of the TorchServe started from `run`, with its keys (read at each call) unless given."""
    if not run.started():
        raise ServerError(f"no TorchServe was started from {run.path}; run `transerve serve` first")
    return (
        ManagementClient(run.address("management"), management_key or (lambda: run.key("management"))),
        InferenceClient(run.address("inference"), inference_key or (lambda: run.key("inference"))),
    )


def stop_helpers(run_dir: Path) -> None:
    """Stop the management guard and the OpenAI gateway started from run_dir, if any."""
    run = RunDir(run_dir)
    for name in ("guard", "gateway"):
        try:
            process = psutil.Process((run.helper(name) or {})["pid"])
            if f"transerve.edge.{name}" in " ".join(process.cmdline()):
                process.terminate()
                process.wait(timeout=10)
        except (KeyError, TypeError, psutil.Error):
            pass
        (run.path / f"{name}.json").unlink(missing_ok=True)


def running_pid() -> int | None:
    """The pid of the running TorchServe frontend, or None (a stale pid file is ignored)."""
    try:
        pid = int(PID_FILE.read_text().strip())
        process = psutil.Process(pid)
        if "org.pytorch.serve.ModelServer" in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE:
            return pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def stop_running(timeout: float = 60) -> bool:
    """Stop the running TorchServe and its workers; False when none was running."""
    pid = running_pid()
    if pid is None:
        PID_FILE.unlink(missing_ok=True)
        return False
    frontend = psutil.Process(pid)
    family = [frontend, *frontend.children(recursive=True)]
    frontend.terminate()
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)
    PID_FILE.unlink(missing_ok=True)
    return True

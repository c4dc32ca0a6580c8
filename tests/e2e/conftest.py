"""One real TorchServe per test session, on free loopback ports, always stopped."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from transerve.torchserve.management import InferenceClient, ManagementClient
from transerve.torchserve.metrics_api import parse
from transerve.torchserve.server import Server, free_ports, running_pid
from transerve.torchserve.waiting import wait_until


@pytest.fixture(scope="session")
def torchserve(store, tmp_path_factory):
    if running_pid() is not None:
        pytest.fail(f"another TorchServe is running (pid {running_pid()}); stop it (transerve stop) before the tests")
    server = Server.on_free_ports(store, tmp_path_factory.mktemp("torchserve"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        assert running_pid() is None


@pytest.fixture(scope="session")
def management(torchserve) -> ManagementClient:
    return torchserve.clients()[0]


@pytest.fixture(scope="module")
def minilm_registered(management):
    """minilm-embed 1.0 registered with one worker for one test module, unregistered after it."""
    from transerve.torchserve.management import ApiError

    management.register("minilm-embed-1.0.mar", initial_workers=1)
    yield "minilm-embed"
    try:
        management.unregister("minilm-embed", "1.0")
    except ApiError as e:  # only "not registered" is fine: a version left behind changes the next module
        assert e.status == 404, f"unregistering minilm-embed 1.0: {e}"


@pytest.fixture(scope="session")
def inference(torchserve) -> InferenceClient:
    return torchserve.clients()[1]


class Prometheus:
    """A real Prometheus server's HTTP query API."""

    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str) -> list[dict]:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str) -> float:
        """The single value of an instant query; 0 when it has no sample."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else 0.0

    def wait_for(self, promql: str, expected: float, timeout: float = 30) -> float:
        """The query's value once it is `expected`, or its last value when `timeout` runs out."""
        seen = []

        def arrived() -> bool:
            seen.append(self.value(promql))
            return seen[-1] == expected

        with contextlib.suppress(TimeoutError):
            wait_until(arrived, timeout, TimeoutError)
        return seen[-1]


@pytest.fixture(scope="session")
def prometheus(torchserve, tmp_path_factory):
    """Debian's Prometheus scraping the test TorchServe every second, with transerve's rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Prometheus is not installed; `make test` installs it (scripts/test-tools.sh)")
    root = tmp_path_factory.mktemp("prometheus")
    [port] = free_ports(1)
    rules = Path(__file__).resolve().parents[2] / "deploy" / "transerve-rules.yml"
    target = torchserve.url("metrics").split("://", 1)[1]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "torchserve", "static_configs": [{"targets": [target]}]}],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(root / "prometheus.log", "wb")
    process = subprocess.Popen(
        [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"Prometheus exited with {process.returncode}; see {root / 'prometheus.log'}")
            try:
                return requests.get(f"{server.url}/-/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, lambda: AssertionError(f"Prometheus did not get ready; see {root / 'prometheus.log'}"),
                   interval=0.3)
        assert server.wait_for('up{job="torchserve"}', 1.0) == 1.0, "Prometheus cannot scrape TorchServe"
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="session")
def refuses_non_ascii(torchserve, management):
    """check(model): each of hostile.NON_ASCII_REFUSALS gets a 400 whose JSON body
    quotes the value and whose status line is ASCII, and the model's workers are the same
    processes afterwards (issue 15: each of these once answered 500 "Worker died.")."""
    from hostile import NON_ASCII_REFUSALS

    def check(model: str) -> None:
        url = f"{torchserve.url('inference')}/predictions/{model}"
        key = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
        pids = sorted(w.pid for v in management.describe(model) for w in v.workers)
        for body, quoted in NON_ASCII_REFUSALS:
            answer = requests.post(url, json=body, headers=key, timeout=60)
            assert answer.status_code == 400, (body, answer.status_code, answer.text)
            assert quoted in answer.json()["message"], (body, answer.json())
            assert answer.reason.isascii() and answer.reason.isprintable(), answer.reason
        assert sorted(w.pid for v in management.describe(model) for w in v.workers) == pids, "a worker restarted"
        assert requests.post(url, json={"inputs": "still answering"}, headers=key, timeout=120).status_code == 200

    return check


@pytest.fixture
def booby_trapped(store, tmp_path):
    """(directory, marker): a model directory outside the model store, minilm-embed 1.1 whose
    handler writes the marker file when a worker imports it; the marker must never appear."""
    import zipfile

    outside, marker = tmp_path / "outside-model", tmp_path / "handler-ran"
    with zipfile.ZipFile(store / "minilm-embed-1.1.mar") as z:
        z.extractall(outside)
    handler = outside / "handler.py"
    handler.write_text(handler.read_text() + f"\nopen({str(marker)!r}, 'w').write('imported')\n")
    return outside, marker


def grpc_register(address: str, url: str, key: str | None, name: str = "trap"):
    """RegisterModel over TorchServe's gRPC management API at address (host:port), synchronous,
    one worker: the ManagementResponse, or the grpc.RpcError it was refused with."""
    import grpc

    from transerve.torchserve import protos

    management = protos.load("management")
    metadata = [("authorization", f"Bearer {key}")] if key else []
    with grpc.insecure_channel(address) as channel:
        stub = management.grpc.ManagementAPIsServiceStub(channel)
        request = management.pb2.RegisterModelRequest(url=url, model_name=name, initial_workers=1, synchronous=True)
        try:
            return stub.RegisterModel(request, metadata=metadata, timeout=120)
        except grpc.RpcError as e:
            return e


@pytest.fixture(scope="session")
def register_over_grpc():
    return grpc_register



@pytest.fixture(scope="session")
def metric(torchserve):
    """metric(name, **labels): the sum of a metric's samples on TorchServe's /metrics whose
    labels include `labels`, read with Prometheus's own parser (transerve.torchserve.metrics_api.parse)."""

    def read(name: str, **labels: str) -> float:
        text = requests.get(f"{torchserve.url('metrics')}/metrics", timeout=10).text
        return sum(s.value for s in parse(text) if s.name == name and labels.items() <= s.labels.items())

    return read

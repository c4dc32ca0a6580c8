"""One real TorchServe per test session, on free loopback ports, always stopped."""

from __future__ import annotations

import socket

import pytest

from transerve.management import InferenceClient, ManagementClient, key_reader
from transerve.server import Server, running_pid


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="session")
def torchserve(store, tmp_path_factory):
    if running_pid() is not None:
        pytest.fail(f"another TorchServe is running (pid {running_pid()}); stop it (transerve stop) before the tests")
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    server = Server(
        model_store=store,
        run_dir=tmp_path_factory.mktemp("torchserve"),
        overrides={
            "inference_address": f"http://127.0.0.1:{inference}",
            "management_address": f"http://127.0.0.1:{management}",
            "metrics_address": f"http://127.0.0.1:{metrics}",
            "grpc_inference_port": str(grpc_inference),
            "grpc_management_port": str(grpc_management),
        },
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        assert running_pid() is None


@pytest.fixture(scope="session")
def management(torchserve) -> ManagementClient:
    return ManagementClient(torchserve.url("management"), key_reader(torchserve.key_file, "management"))


@pytest.fixture(scope="session")
def inference(torchserve) -> InferenceClient:
    return InferenceClient(torchserve.url("inference"), key_reader(torchserve.key_file, "inference"))

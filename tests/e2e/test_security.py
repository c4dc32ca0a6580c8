"""The safe defaults, each tried against the real server."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import requests

from transerve.build import archive

from transerve import cli
from transerve.torchserve.management import ApiError, ManagementClient


def non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def outside_address():
    """A local address that is not loopback: the machine's own, or one put on a dummy interface
    made for this test (root needed, as CI has) and removed after it. Never a skip."""
    address = non_loopback_address()
    if address is not None:
        yield address
        return
    import subprocess

    made = ["ip link add transerve-probe type dummy", "ip addr add 198.51.100.77/32 dev transerve-probe",
            "ip link set transerve-probe up"]
    for command in made:
        done = subprocess.run(command.split(), capture_output=True, text=True)
        assert done.returncode == 0, f"no non-loopback address here, and `{command}` failed: {done.stderr}"
    try:
        yield "198.51.100.77"
    finally:
        subprocess.run("ip link del transerve-probe".split(), capture_output=True)


def listening_sockets(torchserve) -> dict[int, str]:
    """Every TCP port the test server's processes listen on, with the address it is bound to:
    TorchServe's frontend and its workers, the management guard and the OpenAI gateway."""
    import psutil

    from transerve.torchserve.server import running_pid

    frontend = psutil.Process(running_pid())
    processes = [frontend, *frontend.children(recursive=True)]
    for helper in ("guard", "gateway"):
        record = torchserve.rundir.helper(helper)
        assert record and record.get("pid"), f"the {helper} is not running"
        processes.append(psutil.Process(record["pid"]))
    found = {}
    for process in processes:
        for connection in process.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN:
                found[connection.laddr.port] = connection.laddr.ip
    return found


def test_every_listener_is_on_loopback_only(torchserve, outside_address):
    listening = listening_sockets(torchserve)
    ports = {
        "inference": torchserve.properties["inference_address"], "metrics": torchserve.properties["metrics_address"],
        "management, TorchServe's own": torchserve.properties["management_address"],
        "management, the guard's": torchserve.url("management"), "OpenAI gateway": torchserve.url("openai"),
    }
    expected = {name: int(url.split("://", 1)[1].split("/")[0].rsplit(":", 1)[1]) for name, url in ports.items()}
    expected["gRPC inference"] = int(torchserve.properties["grpc_inference_port"])
    expected["gRPC management, TorchServe's own"] = int(torchserve.properties["grpc_management_port"])
    expected["gRPC management, the guard's"] = int(torchserve.grpc_management_address.rsplit(":", 1)[1])
    missing = {name: port for name, port in expected.items() if port not in listening}
    assert not missing, f"not listening where the config says: {missing}; listening: {listening}"
    print(f"\n{len(listening)} listening sockets: {listening}; probed from {outside_address}")
    for port, address in listening.items():
        ip = ipaddress.ip_address(address)  # Java binds 127.0.0.1 as the IPv4-mapped ::ffff:127.0.0.1
        assert (getattr(ip, "ipv4_mapped", None) or ip).is_loopback, f"port {port} listens on {address}"
        with pytest.raises(OSError):
            socket.create_connection((outside_address, port), timeout=2).close()


def behind_the_guard(torchserve, management) -> ManagementClient:
    """TorchServe's own management API, on the private port the guard forwards to."""
    return ManagementClient(torchserve.properties["management_address"], management._key)


def test_a_remote_url_is_refused_by_the_guard_and_by_torchserve(torchserve, management):
    for client, message in ((management, "registration refused by transerve's guard"),
                            (behind_the_guard(torchserve, management), "does not match any allowed URL")):
        with pytest.raises(ApiError) as refused:
            client._call("POST", "/models", params={"url": "http://127.0.0.1:1/evil.mar"})
        assert refused.value.status in (400, 404) and message in refused.value.message


def test_registration_without_the_management_key_is_refused(torchserve):
    keyless = ManagementClient(torchserve.url("management"), key=None)
    with pytest.raises(ApiError) as refused:
        keyless._call("POST", "/models", params={"url": "minilm-embed-1.0.mar"})
    assert refused.value.status == 400 and refused.value.kind == "InvalidKeyException"
    wrong = requests.post(f"{torchserve.url('inference')}/predictions/minilm-embed",
                          headers={"Authorization": f"Bearer {torchserve.keys()['management']}"}, json={"inputs": "x"}, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["type"] == "InvalidKeyException"


def outside_copy(store, tmp_path):
    """A model directory outside the model store (what an attacker would point TorchServe at)."""
    import zipfile

    outside = tmp_path / "outside-model"
    with zipfile.ZipFile(store / "minilm-embed-1.1.mar") as z:
        z.extractall(outside)
    return outside


def forget(management, path) -> None:
    for name in management.list_models():
        for version in management.describe(name):
            if version.url == str(path):
                management.unregister(name, version.version)


@pytest.mark.parametrize("url", ["{outside}", "file://{outside}", "{store}/../x.mar", "file:///etc/passwd.mar"])
def test_a_path_outside_the_model_store_is_refused(torchserve, management, tmp_path, store, url):
    url = url.format(outside=outside_copy(store, tmp_path), store=store)
    with pytest.raises(ApiError) as refused:
        management._call("POST", "/models", params={"url": url, "initial_workers": "0"})
    assert refused.value.status == 400 and refused.value.kind == "RegistrationRefused"
    assert all(v.url != url for name in management.list_models() for v in management.describe(name))


@pytest.mark.xfail(strict=True, reason=(
    "TorchServe 0.12 itself loads a model from any directory path given to POST /models: allowed_urls applies to URLs "
    "only (ModelArchive.downloadModel). This is why transerve puts its guard in front of the management API. "
    "This test fails the day TorchServe refuses it on its own."))
def test_torchserve_alone_refuses_a_directory_outside_the_store(torchserve, management, tmp_path, store):
    outside = outside_copy(store, tmp_path)
    try:
        with pytest.raises(ApiError):
            behind_the_guard(torchserve, management)._call(
                "POST", "/models", params={"url": str(outside), "initial_workers": "0"})
    finally:
        forget(management, outside)


def test_a_tampered_archive_is_refused_before_registration(torchserve, store, management, capsys):
    target = store / "minilm-embed-1.1.mar"
    original = target.read_bytes()
    try:
        with open(target, "ab") as f:
            f.write(b"\0tampered")
        code = cli.main(["--model-store", str(store), "--run-dir", str(torchserve.run_dir), "register", "minilm-embed", "1.1"])
        err = capsys.readouterr().err
        assert code == cli.FAILED and "changed since" in err and "--force" in err
        assert all(v.version != "1.1" for v in _registered(management, "minilm-embed"))
    finally:
        target.write_bytes(original)
    assert archive.file_sha256(target) == archive.read_index(store)["minilm-embed-1.1.mar"]["sha256"]


def _registered(management, name):
    try:
        return management.describe(name)
    except ApiError:
        return []

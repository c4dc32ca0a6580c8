"""The run directory, read in one place: addresses, keys and the helpers' records."""

from __future__ import annotations

import json

import pytest

from transerve.torchserve.rundir import RunDir
from transerve.torchserve.server import ServerError, clients


def write(run, guard=None, gateway=None, keys=None):
    run.mkdir(exist_ok=True)
    (run / "config.properties").write_text(
        "# written by transerve\ninference_address=http://127.0.0.1:8080\n"
        "management_address=http://127.0.0.1:9001\nmetrics_address=http://127.0.0.1:8082\n")
    if guard:
        (run / "guard.json").write_text(json.dumps({"pid": 1, "listen": guard}))
    if gateway:
        (run / "gateway.json").write_text(json.dumps({"pid": 2, "base_url": gateway}))
    if keys is not None:
        (run / "key_file.json").write_text(keys)
    return RunDir(run)


def test_addresses_without_helpers(tmp_path):
    run = write(tmp_path / "run")
    assert run.address("inference") == "http://127.0.0.1:8080"
    assert run.address("management") == "http://127.0.0.1:9001"
    assert run.address("metrics") == "http://127.0.0.1:8082"
    assert run.address("openai") is None


def test_clients_call_the_guard_and_the_gateway_when_they_run(tmp_path):
    run = write(tmp_path / "run", guard="http://127.0.0.1:8081", gateway="http://127.0.0.1:8000/v1")
    assert run.address("management") == "http://127.0.0.1:8081"
    assert run.address("openai") == "http://127.0.0.1:8000/v1"
    management, inference = clients(run)
    assert management.base_url == "http://127.0.0.1:8081" and inference.base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("text", ["", "{", "[]", '{"inference": {}}'])
def test_keys_half_written_or_odd_are_none_yet(tmp_path, text):
    assert write(tmp_path / "run", keys=text).keys() == {}


def test_keys_are_read_at_each_call(tmp_path):
    run = write(tmp_path / "run", keys=json.dumps({"inference": {"key": "a"}, "management": {"key": "m"}}))
    management, inference = clients(run)
    assert inference._headers() == {"Authorization": "Bearer a"}
    run.key_file.write_text(json.dumps({"inference": {"key": "b"}, "management": {"key": "m"}}))
    assert inference._headers() == {"Authorization": "Bearer b"}
    assert clients(run, inference_key="given")[1]._headers() == {"Authorization": "Bearer given"}


def test_no_server_started_from_there(tmp_path):
    with pytest.raises(ServerError, match="no TorchServe was started from"):
        clients(RunDir(tmp_path))

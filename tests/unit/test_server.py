"""Server configuration and key reading, without starting TorchServe."""

from __future__ import annotations

import json
import re

from transerve.torchserve.rundir import read_properties
from transerve.torchserve.server import Server


def test_effective_config_keeps_template_and_narrows_allowed_urls(tmp_path):
    server = Server(model_store=tmp_path / "store", run_dir=tmp_path / "run", overrides={"inference_address": "http://127.0.0.1:1234"})
    props = read_properties(server.write_config())
    assert props["inference_address"] == "http://127.0.0.1:1234"
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["disable_token_authorization"] == "false" and props["metrics_mode"] == "prometheus"
    assert props["model_store"] == str((tmp_path / "store").resolve())
    allowed = re.compile(props["allowed_urls"], re.IGNORECASE)  # TorchServe matches case-insensitively
    store = (tmp_path / "store").resolve()
    assert allowed.fullmatch(f"file://{store}/m-1.0.mar")
    for refused in (f"file://{store}/../x.mar", f"file://{store}/sub/x.mar", "file:///etc/x.mar", "https://host/x.mar", f"file://{store}/x.txt"):
        assert not allowed.fullmatch(refused), refused


def test_keys_are_empty_while_the_key_file_is_missing_or_half_written(tmp_path):
    server = Server(model_store=tmp_path, run_dir=tmp_path)
    assert server.keys() == {}
    server.key_file.write_text("")
    assert server.keys() == {}
    server.key_file.write_text('{"management": {"key": "m"')
    assert server.keys() == {}
    server.key_file.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": "i"}, "API": {"key": "a"}}))
    assert server.keys() == {"management": "m", "inference": "i", "API": "a"}


def test_every_deployment_bounds_the_frontend_heap_alike(tmp_path):
    """transerve serve, the image and the KServe export run the frontend on one bounded heap
    (the soak's measurement sizes it: config.properties)."""
    from transerve.operate.deploy import kserve_properties
    from transerve.torchserve.server import CONFIG_TEMPLATE
    from transerve.build.spec import REPO, find_spec

    vmargs = read_properties(CONFIG_TEMPLATE)["vmargs"]
    assert "-Xmx" in vmargs and "-Xms" in vmargs
    assert read_properties(REPO / "deploy" / "docker" / "config.properties")["vmargs"] == vmargs
    exported = tmp_path / "kserve.properties"
    exported.write_text(kserve_properties(find_spec("minilm-embed").version()))
    assert read_properties(exported)["vmargs"] == vmargs
    assert read_properties(Server(model_store=tmp_path, run_dir=tmp_path).write_config())["vmargs"] == vmargs


def test_on_free_ports_moves_every_listener(tmp_path):
    server = Server.on_free_ports(tmp_path / "store", tmp_path / "run", overrides={"job_queue_size": "7"})
    port = lambda address: int(address.rsplit(":", 1)[1])  # noqa: E731
    ports = [port(server.url(api)) for api in ("inference", "management", "metrics")]
    ports += [int(server.properties["grpc_inference_port"]), port(server.grpc_management_address), port(server.openai_address)]
    # TorchServe's own management APIs sit on private ports behind the guard
    ports += [port(server.properties["management_address"]), int(server.properties["grpc_management_port"])]
    assert len(set(ports)) == 8 and not {8080, 8081, 8082, 7070, 7071} & set(ports)
    assert server.properties["job_queue_size"] == "7"
    assert Server.on_free_ports(tmp_path, tmp_path, openai=False).openai_address == ""


def test_free_ports_skips_the_ports_to_avoid(monkeypatch):
    import transerve.torchserve.server as server_module

    given = iter([5000, 5001, 5000, 5002])  # what the kernel hands out, a port promised elsewhere first

    class FakeSocket:
        def bind(self, address):
            self.port = next(given)

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            pass

    monkeypatch.setattr(server_module.socket, "socket", FakeSocket)
    assert server_module.free_ports(2, avoid={5000}) == [5001, 5002]


def test_the_guards_private_ports_are_none_of_the_ports_named_for_other_listeners(tmp_path):
    overrides = {"inference_address": "http://127.0.0.1:18080", "management_address": "http://127.0.0.1:18081",
                 "metrics_address": "http://127.0.0.1:18082/", "grpc_inference_port": "17070",
                 "openai_address": "http://127.0.0.1:18000"}
    server = Server(tmp_path / "store", tmp_path / "run", overrides=overrides)
    assert server.named_ports() >= {18080, 18082, 17070, 18000}
    private = {int(server.properties["management_address"].rsplit(":", 1)[1]), int(server.properties["grpc_management_port"])}
    assert len(private) == 2 and not private & {18080, 18081, 18082, 17070, 7071, 18000}

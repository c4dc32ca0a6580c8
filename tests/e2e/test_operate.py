"""Operating a live TorchServe: the management client, the CLI, and rollouts under load.

The rollouts run while 8 clients keep sending requests to the default URL; every one of
those requests must succeed. minilm-embed 1.0 keeps 256 tokens of an input and 1.1 keeps
128, so each answer tells which version gave it.

Each test that needs the server in some state sets it up at its start with `state(...)`:
every version of minilm-embed is unregistered first and the rollout history of the model
(<run dir>/rollouts.json) rewritten, so no test depends on what another one left, and each
passes alone or in any order.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import requests
import yaml

from transerve.build import archive

from transerve import cli
from transerve.torchserve.management import ApiError, ManagementClient
from transerve.operate.rollout import History
from transerve.build.spec import find_spec

NAME = "minilm-embed"
LONG = " ".join(["Rolling out a new model version must not drop a single request."] * 30)
TOKENS = {"1.0": 256, "1.1": 128}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """minilm-embed's spec with two broken versions beside 1.0 and 1.1.

    2.0 has a corrupt weights file, so its handler fails at load; 3.0 loads but its sample
    expects 512 dimensions where the model gives 384, so it fails the smoke test.
    """
    root = tmp_path_factory.mktemp("models")
    real = find_spec(NAME)
    broken = root / "broken-weights"
    shutil.copytree(real.version("1.0").source_dir(), broken, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.pt"))
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file" * 100)
    data = yaml.safe_load(real.file.read_text())
    data["versions"]["2.0"] = {"source": {"dir": "../broken-weights"}, "runtime": {"startupTimeout": 20}}
    data["versions"]["1.2"] = {"handler": {"normalize": False}}
    data["versions"]["3.0"] = {"samples": [{"request": {"inputs": "what does the smoke test see?"}, "expect": {"dimensions": 512}}]}
    spec = root / NAME / "model.yaml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    assert set(find_spec(NAME, root).versions) == {"1.0", "1.1", "1.2", "2.0", "3.0"}
    return root


def unregister_all(management) -> None:
    """Every registered version of the model unregistered, the default last (TorchServe refuses
    to remove a default while other versions are registered); only "not registered" is fine."""
    try:
        versions = management.describe(NAME)
    except ApiError as e:
        assert e.status == 404, f"describing {NAME}: {e}"
        return
    for status in sorted(versions, key=lambda s: s.is_default):
        try:
            management.unregister(NAME, status.version)
        except ApiError as e:
            assert e.status == 404, f"unregistering {NAME} {status.version}: {e}"
    assert NAME not in management.list_models()


def write_history(run_dir, defaults: list[str]) -> None:
    """The model's rollout history (<run dir>/rollouts.json): the versions that were default, oldest first."""
    history = History.load(run_dir)
    if defaults:
        history.defaults[NAME] = list(defaults)
    else:
        history.defaults.pop(NAME, None)
    history.save()


@pytest.fixture(scope="module")
def operate(torchserve, store, models_dir, management):
    """Runs the CLI against the test server, returning (exit code, stdout, stderr)."""
    base = ["--model-store", str(store), "--run-dir", str(torchserve.run_dir), "--models-dir", str(models_dir)]

    def run(capsys, *argv):
        code = cli.main(base + list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    unregister_all(management)
    write_history(torchserve.run_dir, [])


@pytest.fixture
def state(operate, torchserve, store, models_dir, management):
    """state(default=None, workers=None, parked=(), history=None): the server as a test needs it.

    Every version of the model is unregistered first (non-default ones first); then `default`
    is registered with `workers` workers (default: its spec's minWorkers) and is the default,
    and each of `parked` is registered beside it at 0 workers, as a switch leaves the version
    it replaced. `history` (default: [default]) becomes the model's rollout history.
    """

    def prepare(default: str | None = None, workers: int | None = None, parked: tuple[str, ...] | list[str] = (),
                history: list[str] | None = None) -> None:
        unregister_all(management)
        write_history(torchserve.run_dir, [default] if history is None and default else history or [])
        if default is None:
            assert not parked
            return
        spec = find_spec(NAME, models_dir)
        for version, count in [(default, workers), *((v, 0) for v in parked)]:
            mv = spec.version(version)
            archive.build(mv, store, log=lambda _: None, refuse_tampered=True)
            count = mv.runtime.minWorkers if count is None else count
            management.register(mv.archive_name, initial_workers=count, timeout=mv.runtime.startupTimeout + 60)
        management.set_default(NAME, default)
        versions = registered(management)
        assert set(versions) == {default, *parked} and versions[default].is_default, versions
        wanted = spec.version(default).runtime.minWorkers if workers is None else workers
        assert versions[default].ready_workers == wanted, versions[default]
        assert all(versions[v].workers == () for v in parked), versions

    return prepare


class Load:
    """8 clients posting to the default URL until stopped; every answer is recorded.

    Inside the `with` block, `operation()` marks when the operation under test ran, so the
    answers can be split into those sent before it began and those sent after it ended.
    """

    def __init__(self, server, clients: int = 8):
        self.url = f"{server.url('inference')}/predictions/{NAME}"
        self.headers = {"Authorization": f"Bearer {server.keys()['inference']}"}
        self.answers: list[tuple[float, int, int | None]] = []  # (time sent, status, input_tokens)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        self.began = self.ended = None

    def client(self):
        session = requests.Session()
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                answer = session.post(self.url, json={"inputs": LONG}, headers=self.headers, timeout=60)
                tokens = answer.json().get("input_tokens") if answer.status_code == 200 else None
                self.answers.append((sent, answer.status_code, tokens))
            except requests.RequestException as e:
                self.answers.append((sent, 0, None))
                print("load client:", e)

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(1.0)
        self.began = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.ended = time.monotonic()
        time.sleep(1.5)
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)

    @property
    def failed(self) -> list:
        return [a for a in self.answers if a[1] != 200]

    def versions(self) -> tuple[set, set]:
        """The versions that answered requests sent before the operation began, and after it ended."""
        by_tokens = {n: v for v, n in TOKENS.items()}
        before = {by_tokens[t] for sent, status, t in self.answers if status == 200 and sent < self.began}
        after = {by_tokens[t] for sent, status, t in self.answers if status == 200 and sent > self.ended}
        return before, after


def default_of(management) -> str:
    return management.default_version(NAME)


def registered(management) -> dict:
    return {s.version: s for s in management.describe(NAME)}


def test_register_and_the_client_against_a_live_server(capsys, operate, management, state):
    state()  # nothing registered: the first version registered is the default
    runtime = find_spec(NAME).version("1.0").runtime
    code, out, _ = operate(capsys, "register", NAME, "1.0")
    assert code == 0 and f"{runtime.minWorkers} workers READY, default" in out
    assert NAME in management.list_models()
    [status] = management.describe(NAME, "1.0")
    assert (status.is_default, status.ready_workers, status.batch_size, status.pending_requests) == (
        True, runtime.minWorkers, runtime.batchSize, 0)


def test_register_workers_option_starts_that_many(capsys, operate, management, models_dir, state):
    state(default="1.0")
    # TorchServe 0.12 alone would start the archive's minWorkers, whatever the call asks.
    wanted = find_spec(NAME, models_dir).version("1.2").runtime.minWorkers + 1
    code, out, _ = operate(capsys, "register", NAME, "1.2", "--workers", str(wanted), "--json")
    assert code == 0 and json.loads(out)["ready_workers"] == wanted
    [status] = management.describe(NAME, "1.2")
    assert (status.min_workers, status.ready_workers, status.is_default) == (wanted, wanted, False)
    code, _, _ = operate(capsys, "unregister", NAME, "1.2")
    assert code == 0 and set(registered(management)) == {"1.0"}
    with pytest.raises(ApiError) as unknown:
        management.describe("no-such-model")
    assert unknown.value.status == 404 and "Model not found: no-such-model" in unknown.value.message
    with pytest.raises(ValueError, match="need integers 0 <= min <= max"):
        management.scale(NAME, 2, 1)
    with pytest.raises(ValueError):
        management.scale(NAME, -1)


def test_a_call_without_the_key_surfaces_torchserves_refusal(torchserve):
    keyless = ManagementClient(torchserve.url("management"), key=None)
    with pytest.raises(ApiError) as refused:
        keyless.list_models()
    # TorchServe 0.12 refuses a missing key with 400 InvalidKeyException (not 401).
    assert refused.value.status == 400 and refused.value.kind == "InvalidKeyException"
    assert "Token Authorization failed" in refused.value.message


def test_cli_key_option_is_used_and_a_wrong_key_is_reported(capsys, operate, torchserve, state):
    state(default="1.0")
    code, _, err = operate(capsys, "--management-key", "not-the-key", "status", NAME)
    assert code == cli.FAILED and "InvalidKeyException" in err and "Token Authorization failed" in err
    code, out, _ = operate(capsys, f"--management-key={torchserve.keys()['management']}", "status", NAME)
    assert code == 0 and NAME in out


def test_cli_status_and_scale(capsys, operate, management, state):
    state(default="1.0")
    code, out, _ = operate(capsys, "status", NAME)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["MODEL", "VERSION", "DEFAULT"]
    assert any(line.split()[:3] == [NAME, "1.0", "*"] for line in out.splitlines())
    code, out, _ = operate(capsys, "scale", NAME, "--workers", "2", "--json")
    assert code == 0 and json.loads(out)["ready_workers"] == 2
    code, out, _ = operate(capsys, "scale", NAME, "--workers", "1")
    assert code == 0 and "1/1 workers READY" in out
    code, _, err = operate(capsys, "scale", NAME, "--workers", "3", "--max-workers", "1")
    assert code == cli.BAD_INPUT and "need integers 0 <= min <= max" in err
    code, _, err = operate(capsys, "scale", "no-such-model", "--workers", "1")
    assert code == cli.FAILED and "Model not found: no-such-model" in err


def test_serves_sample_answers_are_checked_as_the_smoke_step_checks_them(capsys, operate, inference, models_dir, state):
    # what `transerve serve --sample` prints and counts, against versions on the live server
    state(default="1.0")
    spec = find_spec(NAME, models_dir)
    assert operate(capsys, "register", NAME, "3.0", "--workers", "1")[0] == 0
    try:
        wrong = cli.answer_samples([spec.version("1.0"), spec.version("3.0")], inference)
        out = capsys.readouterr().out.splitlines()
    finally:
        assert operate(capsys, "unregister", NAME, "3.0")[0] == 0
    assert wrong == 1 and len(out) == 5, out
    good, bad = spec.version("1.0").samples[0].request, spec.version("3.0").samples[0].request
    assert out[0].startswith(f"sample request to {NAME} (") and out[0].endswith(f"ms): {json.dumps(good)}")
    assert out[1].startswith('answer: {"embeddings": [[') and '"dimensions": 384' in out[1]
    assert out[2].endswith(f"ms): {json.dumps(bad)}") and '"dimensions": 384' in out[3]
    assert out[4] == "FAILED: answer.dimensions: expected 512, got 384"


def test_rollout_under_load_loses_no_request_and_switches_versions(torchserve, capsys, operate, management, state):
    # One worker of 1.0 for 8 clients: requests queue at the old version when the default
    # switches, so the drain has something to wait for.
    state(default="1.0", workers=1)
    with Load(torchserve) as load:
        code, out, err = operate(capsys, "rollout", NAME, "1.1")
    print(out)
    print(f"rollout 1.0 -> 1.1 under load: {len(load.answers)} requests, {len(load.failed)} failed, versions {load.versions()}")
    assert code == 0, err
    assert load.failed == []
    assert load.versions() == ({"1.0"}, {"1.1"})
    assert default_of(management) == "1.1"
    versions = registered(management)
    assert versions["1.0"].workers == () and versions["1.1"].ready_workers == find_spec(NAME).version("1.1").runtime.minWorkers
    for step in ("archive", "register", "ready", "smoke", "set-default", "drain 1.0", "scale 1.0 to 0 workers"):
        assert f"] {step} done" in out, step


@pytest.mark.parametrize("version, step, reason", [
    # TorchServe's synchronous registration itself fails when no worker can load.
    ("2.0", "register", "Failed to start workers for model minilm-embed version: 2.0; the worker said: "
                        "safetensors._safetensors_rust.SafetensorError"),
    ("3.0", "smoke", "answer.dimensions: expected 512, got 384"),
], ids=["2.0-register", "3.0-smoke"])
def test_a_broken_version_is_rolled_back_under_load(torchserve, capsys, operate, management, state, version, step,
                                                   reason):
    state(default="1.1")
    before = default_of(management)
    with Load(torchserve) as load:
        code, out, err = operate(capsys, "rollout", NAME, version)
    print(out, err)
    print(f"rollout of broken {version} under load: {len(load.answers)} requests, {len(load.failed)} failed")
    assert code == cli.FAILED
    assert f"step '{step}' failed" in err and reason in err
    assert f"the default is still {before}" in err
    assert load.failed == [] and load.versions() == ({before}, {before})
    assert default_of(management) == before
    assert version not in registered(management)


def test_rollback_under_load(torchserve, capsys, operate, management, state):
    state(default="1.1", parked=["1.0"], history=["1.0", "1.1"])  # as a rollout 1.0 -> 1.1 leaves them
    assert default_of(management) == "1.1"
    with Load(torchserve) as load:
        code, out, err = operate(capsys, "rollback", NAME)
    print(out)
    print(f"rollback 1.1 -> 1.0 under load: {len(load.answers)} requests, {len(load.failed)} failed, versions {load.versions()}")
    assert code == 0, err
    assert load.failed == [] and load.versions() == ({"1.1"}, {"1.0"})
    assert default_of(management) == "1.0"
    assert registered(management)["1.1"].workers == ()


def test_canary_then_promote(torchserve, capsys, operate, management, inference, state):
    state(default="1.0", parked=["1.1"], history=["1.1", "1.0"])  # as a rollback 1.1 -> 1.0 leaves them
    code, _, err = operate(capsys, "rollout", NAME, "1.1")
    assert code == cli.FAILED and "already registered" in err and "promote" in err
    assert operate(capsys, "unregister", NAME, "1.1")[0] == 0
    code, out, err = operate(capsys, "rollout", NAME, "1.1", "--canary")
    assert code == 0, err
    assert "canary minilm-embed 1.1 is ready at /predictions/minilm-embed/1.1" in out
    assert default_of(management) == "1.0"
    assert inference.predict(NAME, {"inputs": LONG})["input_tokens"] == 256
    assert inference.predict(NAME, {"inputs": LONG}, version="1.1")["input_tokens"] == 128
    with Load(torchserve) as load:
        code, out, err = operate(capsys, "promote", NAME, "1.1")
    print(f"promote 1.1 under load: {len(load.answers)} requests, {len(load.failed)} failed")
    assert code == 0, err
    assert load.failed == [] and load.versions() == ({"1.0"}, {"1.1"})
    assert default_of(management) == "1.1"


def test_versions_beyond_keep_are_unregistered(capsys, operate, management, state):
    state(default="1.1", parked=["1.0"], history=["1.0", "1.1"])  # as a rollout 1.0 -> 1.1 leaves them
    code, out, err = operate(capsys, "rollout", NAME, "1.2", "--keep", "2")
    assert code == 0, err
    assert "unregister 1.0 (keeping 1.1, 1.2) done" in out
    versions = registered(management)
    assert set(versions) == {"1.1", "1.2"} and versions["1.2"].is_default and versions["1.1"].workers == ()
    code, _, _ = operate(capsys, "rollback", NAME)
    assert code == 0 and default_of(management) == "1.1"


def test_rollout_of_an_unknown_version_is_a_usage_error(capsys, operate):
    code, _, err = operate(capsys, "rollout", NAME, "7.7")
    assert code == cli.BAD_INPUT and "no version '7.7'" in err

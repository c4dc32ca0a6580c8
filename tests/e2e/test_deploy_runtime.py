"""Deployment paths on a real TorchServe, beside the session's one.

- scripts/entrypoint.sh (the image's entrypoint) run directly with a temp model store and
  the image's config, ports moved to free loopback ones;
- the KServe export started the way KServe's TorchServe runtime starts it, with the
  exported config.properties unchanged.

TorchServe keeps one pid file per temp dir, so each of these servers gets its own TMPDIR.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from transerve.torchserve import waiting
from transerve.torchserve.server import free_ports
from transerve.build.spec import REPO, find_spec

VENV_BIN = Path(sys.executable).parent


def isolated_env(root: Path, **extra: str) -> dict[str, str]:
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSERVE_", "TS_"))}
    return {**env, "TMPDIR": str(tmp), "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


def frontend_pid(root: Path) -> int | None:
    try:
        return int((root / "tmp" / ".model_server.pid").read_text())
    except (OSError, ValueError):
        return None


def loopback_config(source: Path, dest: Path) -> dict[str, int]:
    """The image's config with its listeners moved to free loopback ports (nothing else changed)."""
    inference, management, metrics, grpc_i, grpc_m, openai = free_ports(6)
    ports = {"inference": inference, "management": management, "metrics": metrics, "openai": openai}
    text = source.read_text()
    for api, port in ports.items():
        text, n = re.subn(rf"^{api}_address=.*$", f"{api}_address=http://127.0.0.1:{port}", text, flags=re.M)
        assert n == 1, api
    text = re.sub(r"^grpc_inference_port=.*$", f"grpc_inference_port={grpc_i}", text, flags=re.M)
    text = re.sub(r"^grpc_management_port=.*$", f"grpc_management_port={grpc_m}", text, flags=re.M)
    dest.write_text(text)
    return {**ports, "grpc_management": grpc_m}


def wait_until(predicate, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    def tail() -> str:
        return log.read_text()[-3000:] if log else ""

    def check() -> bool:
        if predicate():
            return True
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited with {process.returncode}:\n{tail()}")
        return False

    waiting.wait_until(check, timeout, lambda: AssertionError(f"{what}: not within {timeout:.0f}s\n{tail()}"))


@pytest.fixture
def image_store(store, tmp_path) -> Path:
    """A model store as the image has it: one archive and the index that vouches for it."""
    path = tmp_path / "model_store"
    path.mkdir()
    shutil.copy2(store / "minilm-embed-1.0.mar", path)
    shutil.copy2(store / "index.json", path)
    return path


def assert_model_api_off_over_grpc(address: str, key: str | None, booby_trapped, register_over_grpc) -> None:
    """gRPC registration of a directory outside the store: TorchServe refuses it (the model API is
    off in the image's and the KServe export's config), and its handler never runs."""
    import grpc

    outside, marker = booby_trapped
    refused = register_over_grpc(address, str(outside), key)
    assert isinstance(refused, grpc.RpcError), refused
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "Model API disabled" in refused.details()
    time.sleep(2)
    assert not marker.exists()


def test_the_entrypoint_serves_the_named_model_and_stops_on_sigterm(image_store, tmp_path, booby_trapped, register_over_grpc):
    config = tmp_path / "config.properties"
    ports = loopback_config(REPO / "deploy" / "docker" / "config.properties", config)
    home = tmp_path / "home"
    home.mkdir()
    env = isolated_env(tmp_path, HOME=str(home), TRANSERVE_MODEL_STORE=str(image_store),
                       TRANSERVE_CONFIG=str(config), TRANSERVE_MODELS="minilm-embed")
    log = tmp_path / "entrypoint.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["bash", str(REPO / "scripts" / "entrypoint.sh")], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    run_dir = home / "run"  # the entrypoint's default run dir: $HOME/run
    try:
        # The image's HEALTHCHECK and the readiness probe, as they run in the container.
        probe = [sys.executable, "-m", "transerve.torchserve.health", "--run-dir", str(run_dir)]
        wait_until(lambda: subprocess.run([*probe, "--model", "minilm-embed"], capture_output=True).returncode == 0,
                   120, "readiness probe", process, log)
        assert subprocess.run(probe, capture_output=True).returncode == 0
        wait_until(lambda: "transerve: serving minilm-embed=minilm-embed-1.0.mar" in log.read_text(), 10,
                   "the serving line", process, log)

        keys = json.loads((run_dir / "key_file.json").read_text())
        inference = f"http://127.0.0.1:{ports['inference']}"
        answer = requests.post(f"{inference}/predictions/minilm-embed", json={"inputs": ["a", "b"]},
                               headers={"Authorization": f"Bearer {keys['inference']['key']}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["dimensions"] == 384 and len(answer.json()["embeddings"]) == 2
        refused = requests.post(f"{inference}/predictions/minilm-embed", json={"inputs": "a"}, timeout=30)
        assert refused.status_code == 400 and "InvalidKeyException" in refused.text  # token auth stays on

        management = f"http://127.0.0.1:{ports['management']}"
        mkey = {"Authorization": f"Bearer {keys['management']['key']}"}
        [described] = requests.get(f"{management}/models/minilm-embed", headers=mkey, timeout=10).json()
        runtime = find_spec("minilm-embed").version("1.0").runtime
        assert (described["modelVersion"], described["batchSize"], described["maxBatchDelay"]) == (
            "1.0", runtime.batchSize, runtime.maxBatchDelay)
        # The image's config turns the model API off: nothing else can be registered into it.
        registered = requests.post(f"{management}/models", params={"url": "minilm-embed-1.0.mar"}, headers=mkey, timeout=10)
        assert registered.status_code == 405, registered.text
        assert registered.json()["type"] == "MethodNotAllowedException"
        assert_model_api_off_over_grpc(f"127.0.0.1:{ports['grpc_management']}", keys["management"]["key"],
                                       booby_trapped, register_over_grpc)

        metrics = requests.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
        assert 'transerve_requests_total{' in metrics

        # The OpenAI gateway runs beside TorchServe in the image too, with the inference key as API key.
        assert f"OpenAI API at http://127.0.0.1:{ports['openai']}/v1" in log.read_text()
        openai_url, key = f"http://127.0.0.1:{ports['openai']}/v1", {"Authorization": f"Bearer {keys['inference']['key']}"}
        embedded = requests.post(f"{openai_url}/embeddings", json={"model": "minilm-embed", "input": "a"}, headers=key, timeout=30)
        assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384, embedded.text
        assert requests.get(f"{openai_url}/models", timeout=10).status_code == 401
        gateway = json.loads((run_dir / "gateway.json").read_text())["pid"]

        java = frontend_pid(tmp_path)
        assert java is not None and psutil.pid_exists(java)
        workers = [p.pid for p in psutil.Process(java).children(recursive=True)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert not psutil.pid_exists(java) and not any(psutil.pid_exists(p) for p in workers)
        assert not psutil.pid_exists(gateway)
        assert "stopping TorchServe" in log.read_text()
        assert not (run_dir / "key_file.json").exists()
    finally:
        if process.poll() is None:
            process.kill()
        pid = frontend_pid(tmp_path)
        if pid and psutil.pid_exists(pid):
            for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                p.kill()


@pytest.mark.parametrize("models, status, message", [
    ("", 2, "set TRANSERVE_MODELS"),
    ("minilm-embed:9.9", 2, "minilm-embed-9.9.mar not found"),
    ("no-such-model", 2, "no spec for no-such-model"),
    ("minilm-embed", 1, "refusing"),  # the archive below is changed after it was built
])
def test_the_entrypoint_refuses_what_it_cannot_serve(image_store, tmp_path, models, status, message):
    if status == 1:
        with open(image_store / "minilm-embed-1.0.mar", "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
    env = isolated_env(tmp_path, HOME=str(tmp_path), TRANSERVE_MODEL_STORE=str(image_store), TRANSERVE_MODELS=models)
    if not models:
        env.pop("TRANSERVE_MODELS")
    done = subprocess.run(["bash", str(REPO / "scripts" / "entrypoint.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and message in done.stderr, done.stdout + done.stderr
    if models:
        assert done.returncode == status
    assert frontend_pid(tmp_path) is None  # nothing was started


def test_the_kserve_export_is_served_as_kserves_torchserve_runtime_starts_it(store, tmp_path, booby_trapped,
                                                                              register_over_grpc):
    out = tmp_path / "export"
    done = subprocess.run(
        [str(VENV_BIN / "transerve"), "--model-store", str(store), "export", "kserve", "minilm-embed", "1.1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    # What KServe's runtime reads at /mnt/models: config/config.properties and model-store/<archive>.
    assert files == ["config/config.properties", "config/metrics.yaml", "inferenceservice.yaml",
                     "model-store/minilm-embed-1.1.mar"]
    assert (out / "model-store" / "minilm-embed-1.1.mar").read_bytes() == (store / "minilm-embed-1.1.mar").read_bytes()

    # KServe mounts the export at /mnt/models; here it stays where it is, and TorchServe's own
    # environment overrides (enable_envvars_config=true in the export) say where, and which ports.
    inference, metrics, grpc_i, grpc_m = free_ports(4)
    env = isolated_env(
        tmp_path,
        TS_INFERENCE_ADDRESS=f"http://127.0.0.1:{inference}",
        TS_MANAGEMENT_ADDRESS=f"http://127.0.0.1:{inference}",
        TS_METRICS_ADDRESS=f"http://127.0.0.1:{metrics}",
        TS_METRICS_CONFIG=str(out / "config" / "metrics.yaml"),
        TS_MODEL_STORE=str(out / "model-store"),
        LOG_LOCATION=str(tmp_path / "logs"), METRICS_LOCATION=str(tmp_path / "logs"),
    )
    config = out / "config" / "config.properties"
    text = config.read_text().replace("grpc_inference_port=7070", f"grpc_inference_port={grpc_i}")
    config.write_text(text.replace("grpc_management_port=7071", f"grpc_management_port={grpc_m}"))
    start = [sys.executable, "-m", "ts.model_server", "--start", "--ts-config", str(config),
             "--model-store", str(out / "model-store")]
    log = tmp_path / "torchserve.out"
    with open(log, "wb") as output:
        started = subprocess.run(start, env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, timeout=60)
    assert started.returncode == 0, log.read_text()
    base = f"http://127.0.0.1:{inference}"
    try:
        def ready() -> bool:  # what KServe's wrapper asks before it marks the model ready: no key
            try:
                versions = requests.get(f"{base}/models/minilm-embed", timeout=5).json()
            except (requests.RequestException, ValueError):
                return False
            return isinstance(versions, list) and any(w["status"] == "READY" for w in versions[0]["workers"])

        wait_until(ready, 120, "the model from model_snapshot to be READY", log=tmp_path / "logs" / "ts_log.log")
        [described] = requests.get(f"{base}/models/minilm-embed", timeout=5).json()
        runtime = find_spec("minilm-embed").version("1.1").runtime
        assert (described["modelVersion"], described["batchSize"], described["maxWorkers"]) == (
            "1.1", runtime.batchSize, runtime.maxWorkers)

        # KServe V1, as the wrapper forwards it.
        answer = requests.post(f"{base}/predictions/minilm-embed", json={"instances": ["one", "two", "three"]}, timeout=30)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert len(predictions) == 3 and all(len(v) == 384 for v in predictions)
        bad = requests.post(f"{base}/predictions/minilm-embed", json={"instances": []}, timeout=30)
        assert bad.status_code == 400 and "'instances' is an empty list" in bad.json()["message"]
        scraped = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
        assert 'transerve_requests_total{' in scraped and 'model_version="1.1"' in scraped
        # No key in the pod (token authorization off): the model API being off is what refuses.
        assert_model_api_off_over_grpc(f"127.0.0.1:{grpc_m}", None, booby_trapped, register_over_grpc)
    finally:
        pid = frontend_pid(tmp_path)
        family = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))] if pid else []
        subprocess.run([sys.executable, "-m", "ts.model_server", "--stop"], env=env, cwd=tmp_path,
                       capture_output=True, timeout=120)
        wait_until(lambda: not any(psutil.pid_exists(p) for p in family), 60, "TorchServe and its workers to stop")

"""The project's Dockerfile, built and run for real with podman (scripts/test-image.sh builds it
and runs these with TRANSERVE_IMAGE set; skipped otherwise).

The container runs the way a careful cluster runs it: as the image's non-root user, a read-only
root filesystem with tmpfs where TorchServe writes, every capability dropped, no new
privileges, and only inference, metrics and the OpenAI gateway published (on loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
import requests

from transerve.torchserve import waiting

IMAGE = os.environ.get("TRANSERVE_IMAGE")
pytestmark = pytest.mark.skipif(not IMAGE, reason="no image under test: `make test-image` builds the Dockerfile and runs these")
PODMAN = os.environ.get("PODMAN", "podman").split()  # "sudo podman" when not root
NAME = "transerve-under-test"
RUN_DIR = "/tmp/transerve/run"  # the image writes under /tmp only (Dockerfile)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, seconds: float, what: str):
    def check():
        try:
            return condition()
        except (requests.RequestException, subprocess.SubprocessError):
            return None

    return waiting.wait_until(check, seconds, lambda: AssertionError(
        f"not within {seconds:.0f}s: {what}\n{podman('logs', '--tail', '40', NAME, check=False).stdout[-4000:]}"), interval=1)


@pytest.fixture(scope="module")
def container():
    """The image running hardened; (ports, seconds from `podman run` to the first answer)."""
    podman("rm", "-f", NAME, check=False)
    ports = {"inference": free_port(), "metrics": free_port(), "openai": free_port()}
    started = time.monotonic()
    podman(
        "run", "-d", "--name", NAME,
        "--user", "10001:10001", "--read-only",
        "--tmpfs", "/tmp:rw,size=2g",  # the only writable path: TorchServe unpacks the archives there
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-p", f"127.0.0.1:{ports['inference']}:8080", "-p", f"127.0.0.1:{ports['metrics']}:8082",
        "-p", f"127.0.0.1:{ports['openai']}:8000",
        IMAGE,
    )
    base = f"http://127.0.0.1:{ports['inference']}"
    key = wait_until(lambda: json.loads(podman("exec", NAME, "cat", f"{RUN_DIR}/key_file.json").stdout)["inference"]["key"],
                     120, "the key file")
    headers = {"Authorization": f"Bearer {key}"}
    wait_until(lambda: requests.post(f"{base}/predictions/minilm-embed", json={"inputs": "first"}, headers=headers,
                                     timeout=10).status_code == 200, 600, "a first prediction")
    first_answer = time.monotonic() - started
    print(f"\nimage {IMAGE}: first prediction {first_answer:.1f}s after podman run")
    yield {"ports": ports, "base": base, "headers": headers, "first_answer_s": first_answer}
    podman("rm", "-f", NAME, check=False)


def test_the_health_check_passes(container):
    wait_until(lambda: podman("healthcheck", "run", NAME, check=False).returncode == 0, 300, "the health check")


def test_both_default_models_answer_with_the_key_and_refuse_without(container):
    base, headers = container["base"], container["headers"]
    embedded = requests.post(f"{base}/predictions/minilm-embed", json={"inputs": ["a", "b"]}, headers=headers, timeout=60)
    assert embedded.status_code == 200 and len(embedded.json()["embeddings"]) == 2
    chat = wait_until(lambda: requests.post(
        f"{base}/predictions/smollm2-chat", headers=headers, timeout=120,
        json={"messages": [{"role": "user", "content": "Say hello."}], "parameters": {"max_new_tokens": 8}}), 300, "chat")
    assert chat.status_code == 200 and chat.json()["generated_text"]
    refused = requests.post(f"{base}/predictions/minilm-embed", json={"inputs": "a"}, timeout=30)
    assert refused.status_code == 400 and "InvalidKeyException" in refused.text  # TorchServe's refusal: 400, not 401


def test_the_metrics_port_serves_the_handlers_metrics(container):
    scraped = requests.get(f"http://127.0.0.1:{container['ports']['metrics']}/metrics", timeout=30).text
    assert 'transerve_requests_total{' in scraped and 'model_name="minilm-embed"' in scraped


def test_the_openai_gateway_answers_on_its_published_port(container):
    url = f"http://127.0.0.1:{container['ports']['openai']}/v1/embeddings"
    # `transerve run` starts the gateway once every model has a READY worker: until then its port is closed
    answer = wait_until(lambda: requests.post(url, json={"model": "minilm-embed", "input": ["a"], "encoding_format": "float"},
                                              headers=container["headers"], timeout=60), 120, "the OpenAI gateway")
    assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 384
    assert requests.post(url, json={"model": "minilm-embed", "input": "a"}, timeout=30).status_code == 401


def test_no_registration_gets_in(container):
    published = podman("port", NAME).stdout
    assert ":8081" not in published and ":7071" not in published and ":7070" not in published
    address = podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", NAME).stdout.strip()
    for port in (8081, 7071):  # management listens on the container's loopback only
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=5).close()
    # From inside, with the management key: the model API is off in the image's config.
    script = ("import json, urllib.request, urllib.error\n"
              f"key = json.load(open('{RUN_DIR}/key_file.json'))['management']['key']\n"
              "request = urllib.request.Request('http://127.0.0.1:8081/models?url=/etc', method='POST',\n"
              "                                 headers={'Authorization': 'Bearer ' + key})\n"
              "try:\n    urllib.request.urlopen(request, timeout=30); print('200')\n"
              "except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode()[:200])\n")
    said = podman("exec", NAME, "/opt/transerve/.venv/bin/python", "-c", script).stdout
    # TorchServe 0.12 with enable_model_api=false: POST /models is not a method it serves
    # (ManagementRequestHandler throws MethodNotAllowedException): 405, nothing else
    assert said.split()[0] == "405" and "MethodNotAllowedException" in said, said


def test_a_killed_worker_is_replaced(container):
    find = ("import os\n"
            "for pid in os.listdir('/proc'):\n"
            "    if pid.isdigit():\n"
            "        try: cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
            "        except OSError: continue\n"
            "        if b'model_service_worker' in cmd: print(pid)\n")
    before = podman("exec", NAME, "/opt/transerve/.venv/bin/python", "-c", find).stdout.split()
    assert before
    podman("exec", NAME, "/opt/transerve/.venv/bin/python", "-c", f"import os; os.kill({before[0]}, 9)")
    base, headers = container["base"], container["headers"]
    wait_until(lambda: set(podman("exec", NAME, "/opt/transerve/.venv/bin/python", "-c", find).stdout.split()) - set(before),
               180, "a new worker process")
    wait_until(lambda: all(requests.post(f"{base}/predictions/minilm-embed", json={"inputs": "again"}, headers=headers,
                                         timeout=30).status_code == 200 for _ in range(4)), 180, "answers after the kill")


def test_podman_stop_ends_it_cleanly_within_its_timeout(container):
    started = time.monotonic()
    podman("stop", "-t", "60", NAME, timeout=120)
    took = time.monotonic() - started
    state = json.loads(podman("inspect", NAME).stdout)[0]["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0, state
    assert took < 30, f"podman stop took {took:.1f}s"
    assert podman("top", NAME, check=False).returncode != 0  # no process left
    print(f"\npodman stop: {took:.1f}s, exit code 0; first prediction was {container['first_answer_s']:.1f}s after podman run")

"""The handler's metrics on TorchServe's metrics API, scraped by a real Prometheus."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests


NAME = "minilm-embed"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def requests_counted(prometheus, outcome: str, reason: str) -> str:
    return (f'sum(transerve_requests_total{{model_name="{NAME}", model_version="1.0", '
            f'outcome="{outcome}", reason="{reason}"}})')


def test_prometheus_counts_exactly_the_requests_sent(torchserve, prometheus, minilm_registered):
    queries = {
        "ok": requests_counted(prometheus, "ok", "ok"),
        "empty": requests_counted(prometheus, "400", "empty_input"),
        "too_long": requests_counted(prometheus, "413", "input_too_long"),
        "inputs": f'sum(transerve_inputs_total{{model_name="{NAME}", model_version="1.0"}})',
    }
    before = {k: prometheus.value(q) for k, q in queries.items()}
    url = f"{torchserve.url('inference')}/predictions/{NAME}"
    headers = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    sent = {"ok": 0, "empty": 0, "too_long": 0, "inputs": 0}
    bodies = (
        [("ok", {"inputs": ["first", "second", "third"]})] * 4 + [("ok", {"inputs": "one"})] * 3
        + [("empty", {"inputs": []})] * 3
        + [("too_long", {"inputs": "word " * 400, "parameters": {"truncate": False}})] * 2
    )
    for kind, body in bodies:
        answer = requests.post(url, json=body, headers=headers, timeout=60)
        assert answer.status_code == {"ok": 200, "empty": 400, "too_long": 413}[kind]
        sent[kind] += 1
        if kind == "ok":
            sent["inputs"] += 1 if isinstance(body["inputs"], str) else len(body["inputs"])
    assert sent == {"ok": 7, "empty": 3, "too_long": 2, "inputs": 15}
    for kind, query in queries.items():
        got = prometheus.wait_for(query, before[kind] + sent[kind])
        print(f"{query} = {got:g} (was {before[kind]:g}, sent {sent[kind]})")
        assert got == before[kind] + sent[kind], kind


def test_prometheus_loaded_the_shipped_rules_and_evaluates_them(prometheus, minilm_registered):
    groups = requests.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"transerve:requests_refused:ratio_rate5m", "TranserveWorkerRestarts", "TranserveServerErrors",
            "transerve:generation_queue_seconds:p99_rate5m", "TranserveGenerationBusy"} <= names
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"]), groups
    loads = prometheus.value(f'sum(transerve_worker_loads_total{{model_name="{NAME}", model_version="1.0"}})')
    assert loads >= 1


def test_promtool_accepts_the_shipped_configuration_and_rules():
    for command in (
        ["promtool", "check", "config", "prometheus.yml"],
        ["promtool", "check", "rules", "transerve-rules.yml"],
        ["promtool", "test", "rules", "transerve-rules.test.yml"],
    ):
        done = subprocess.run(command, cwd=DEPLOY, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"
        assert "SUCCESS" in done.stdout + done.stderr


def test_status_metrics_shows_the_live_figures(capsys, torchserve, store, minilm_registered, prometheus):
    from transerve import cli

    base = ["--model-store", str(store), "--run-dir", str(torchserve.run_dir)]
    assert cli.main(base + ["status", NAME, "--metrics"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["MODEL", "VERSION", "TASK", "OK", "REFUSED"]
    [row] = [r.split() for r in rows if r.split()[:2] == [NAME, "1.0"]]
    ok = prometheus.value(f'sum(transerve_requests_total{{model_name="{NAME}", model_version="1.0", outcome="ok"}})')
    assert row[2] == "embedding" and float(row[3].replace(",", "")) == ok

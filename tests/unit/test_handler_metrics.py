"""The handler's metrics, as a worker emits them to TorchServe for one known batch."""

from __future__ import annotations

import logging
import re

import pytest
import yaml

from handlers.metrics import LABELS, METRICS
from transerve.operate.inprocess import LocalWorker
from transerve.torchserve.metrics_config import render
from transerve.build.spec import REPO

LINE = re.compile(r"\[METRICS\](?P<name>\w+)\.(?P<unit>\w+):(?P<value>[-0-9.e]+)\|#(?P<dims>[^|]*)\|#type:(?P<type>\w+)")


def emitted(caplog) -> list[tuple[str, float, dict, str]]:
    found = []
    for record in caplog.records:
        m = LINE.search(record.getMessage())
        if m and m["name"].startswith("transerve_"):
            dims = dict(d.split(":", 1) for d in m["dims"].split(","))
            found.append((m["name"], float(m["value"]), dims, m["type"]))
    return found


@pytest.fixture(scope="module")
def worker(minilm):
    worker = LocalWorker(minilm.version("1.0"))
    yield worker
    worker.close()


def test_a_known_batch_emits_known_values(worker, caplog):
    caplog.set_level(logging.INFO)
    texts = [["one two three", "four"], ["five six"]]
    answers = worker.predict([{"inputs": texts[0]}, {"inputs": []}, {"inputs": texts[1]}, b"\xff"])
    assert [a.status for a in answers] == [200, 400, 200, 400]
    metrics = emitted(caplog)
    base = {"model_name": "minilm-embed", "model_version": "1.0", "task": "embedding"}
    for _, _, dims, _ in metrics:
        assert {k: dims[k] for k in base} == base
    def values(name, **labels):
        return [v for n, v, d, _ in metrics if n == name and all(d.get(k) == x for k, x in labels.items())]
    # One line per outcome and one for the inputs per batch, not one per request: the
    # frontend parses every line, so a batch of 32 costs it a few lines, not 64.
    assert values("transerve_requests_total", outcome="ok", reason="ok") == [2]
    assert values("transerve_requests_total", outcome="400", reason="empty_input") == [1]
    assert values("transerve_requests_total", outcome="400", reason="invalid_utf8") == [1]
    assert values("transerve_inputs_total") == [3]
    assert values("transerve_forward_batches_total") == [1]
    assert values("transerve_forward_inputs_total") == values("transerve_batch_inputs") == [3]
    tokenizer = worker.handler.task.tokenizer
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts[0] + texts[1])
    assert values("transerve_input_tokens_total") == [tokens]
    for stage in ("preprocess", "inference", "postprocess"):
        [seconds] = values(f"transerve_{stage}_seconds")
        assert 0 < seconds < 10
    types = {n: t for n, _, _, t in metrics}
    assert types["transerve_requests_total"] == "COUNTER" and types["transerve_inference_seconds"] == "HISTOGRAM"


def test_the_worker_reports_its_device_at_load(minilm, caplog):
    caplog.set_level(logging.INFO)
    local = LocalWorker(minilm.version("1.1"))
    try:
        [(value, dims)] = [(v, d) for n, v, d, _ in emitted(caplog) if n == "transerve_worker_info"]
        assert value == 1 and dims["device"] == "cpu" and dims["model_version"] == "1.1"
    finally:
        local.close()


def test_the_shipped_metrics_yaml_declares_every_metric_with_its_labels():
    shipped = (REPO / "metrics.yaml").read_text()
    assert shipped == render(), "metrics.yaml is stale: python -m transerve.torchserve.metrics_config > metrics.yaml"
    declared = {m["name"]: (kind, m["dimensions"]) for kind, ms in yaml.safe_load(shipped)["model_metrics"].items() for m in ms}
    for name, (kind, _, extra, _) in METRICS.items():
        assert declared[name] == (kind.name.lower(), LABELS + extra)
    # TorchServe's own frontend metrics are still there
    assert "ts_inference_requests_total" in shipped


def test_the_metrics_page_describes_every_metric():
    page = (REPO / "docs" / "metrics.md").read_text()
    for name, (kind, _, _, description) in METRICS.items():
        assert f"| `{name}` | {kind.name.lower()} |" in page and description in page, name

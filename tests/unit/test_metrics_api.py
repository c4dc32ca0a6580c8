"""Reading TorchServe's /metrics text back into per-version figures."""

from __future__ import annotations

import math

import pytest

from transerve.torchserve.metrics_api import parse, per_version

TEXT = """\
# HELP transerve_requests_total Torchserve prometheus counter metric with unit: count
# TYPE transerve_requests_total counter
transerve_requests_total{model_name="m",model_version="1.0",task="embedding",outcome="ok",reason="ok",Hostname="a",} 7.0
transerve_requests_total{model_name="m",model_version="1.0",task="embedding",outcome="ok",reason="ok",Hostname="b",} 3.0
transerve_requests_total{model_name="m",model_version="1.0",task="embedding",outcome="400",reason="empty_input",Hostname="a",} 2.0
transerve_inputs_total{model_name="m",model_version="1.0",task="embedding",Hostname="a",} 25.0
transerve_forward_inputs_total{model_name="m",model_version="1.0",task="embedding",Hostname="a",} 25.0
transerve_forward_batches_total{model_name="m",model_version="1.0",task="embedding",Hostname="a",} 4.0
transerve_inference_seconds_sum{model_name="m",model_version="1.0",task="embedding",Hostname="a",} 0.2
transerve_inference_seconds_count{model_name="m",model_version="1.0",task="embedding",Hostname="a",} 4.0
transerve_generated_tokens_total{model_name="g",model_version="2",task="generation",Hostname="a",} 64.0
ts_inference_requests_total{model_name="m",model_version="default",hostname="a",} 12.0
"""


def test_samples_parse_with_their_labels():
    samples = parse(TEXT)
    assert len(samples) == 10
    first = samples[0]
    assert (first.name, first.value, first.labels["outcome"], first.labels["Hostname"]) == ("transerve_requests_total", 7.0, "ok", "a")


def test_figures_sum_over_hosts_per_version():
    g, m = per_version(parse(TEXT))  # sorted by model name
    assert (g.model, g.version, g.task, g.generated_tokens, g.mean_batch) == ("g", "2", "generation", 64.0, None)
    assert (m.model, m.version, m.ok, m.refused, m.inputs) == ("m", "1.0", 10.0, 2.0, 25.0)
    assert m.mean_batch == 25 / 4 and abs(m.mean_inference_ms - 50.0) < 1e-9


def test_escaped_label_values_and_nan_read_as_prometheus_reads_them():
    [sample] = parse('x_total{path="a\\"b\\\\c",model_name="m",} NaN\n')
    assert sample.labels == {"path": 'a"b\\c', "model_name": "m"} and math.isnan(sample.value)


def test_text_that_is_not_an_exposition_is_refused():
    with pytest.raises(ValueError):
        parse('transerve_requests_total{model_name="m" 7\n')

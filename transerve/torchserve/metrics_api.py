"""TorchServe's metrics API (Prometheus text format) read back into per-version figures.

For `transerve status --metrics`: the same numbers Prometheus scrapes, summed over
workers and hosts, per model version. Counters are totals since TorchServe started.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


def parse(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, by prometheus_client's own parser (escaped
    label values, NaN and TorchServe's trailing commas included); ValueError if it is not one."""
    return [
        Sample(sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def scrape(metrics_url: str, timeout: float = 10) -> list[Sample]:
    answer = requests.get(f"{metrics_url.rstrip('/')}/metrics", timeout=timeout)
    answer.raise_for_status()
    return parse(answer.text)


@dataclass(frozen=True)
class Figures:
    model: str
    version: str
    task: str
    ok: float
    refused: float
    inputs: float
    mean_batch: float | None  # inputs per model forward
    input_tokens: float
    generated_tokens: float
    mean_inference_ms: float | None
    mean_first_token_ms: float | None


def per_version(samples: list[Sample]) -> list[Figures]:
    sums: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    tasks = {}
    for s in samples:
        if not s.name.startswith("transerve_") or "model_name" not in s.labels:
            continue
        key = (s.labels["model_name"], s.labels.get("model_version", ""))
        tasks[key] = s.labels.get("task", "")
        name = s.name
        if name == "transerve_requests_total":
            name += ".ok" if s.labels.get("outcome") == "ok" else ".refused"
        sums[key][name] += s.value

    def ratio(total: str, count: str, scale: float = 1.0) -> float | None:
        return sums[key][total] / sums[key][count] * scale if sums[key][count] else None

    figures = []
    for key in sorted(sums):
        values = sums[key]
        figures.append(
            Figures(
                model=key[0],
                version=key[1],
                task=tasks[key],
                ok=values["transerve_requests_total.ok"],
                refused=values["transerve_requests_total.refused"],
                inputs=values["transerve_inputs_total"],
                mean_batch=ratio("transerve_forward_inputs_total", "transerve_forward_batches_total"),
                input_tokens=values["transerve_input_tokens_total"],
                generated_tokens=values["transerve_generated_tokens_total"],
                mean_inference_ms=ratio("transerve_inference_seconds_sum", "transerve_inference_seconds_count", 1000),
                mean_first_token_ms=ratio(
                    "transerve_time_to_first_token_seconds_sum", "transerve_time_to_first_token_seconds_count", 1000
                ),
            )
        )
    return figures

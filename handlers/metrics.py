"""The handler's own metrics, sent through TorchServe's metrics cache (`context.metrics`).

Each metric is declared in the repository's metrics.yaml, which TorchServe reads
(`metrics_config`): in metrics_mode=prometheus the frontend then shows it on the metrics
port's /metrics, with the labels below plus the `Hostname` TorchServe adds. Durations are
in seconds and counts in units, as Prometheus names them; counters end in `_total`.
Metrics never fail a request: an error here is logged once and the request goes on.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)

LABELS = ["model_name", "model_version", "task"]
COUNTER, GAUGE, HISTOGRAM = MetricTypes.COUNTER, MetricTypes.GAUGE, MetricTypes.HISTOGRAM

# name: (type, unit, labels after LABELS, description)
METRICS = {
    "transerve_requests_total": (
        COUNTER,
        "count",
        ["outcome", "reason"],
        "Requests answered, by outcome (ok, or the 4xx status) and reason (ok, or what was wrong)",
    ),
    "transerve_inputs_total": (COUNTER, "count", [], "Inputs (texts, prompts) in the requests answered ok"),
    "transerve_forward_batches_total": (
        COUNTER,
        "count",
        [],
        "Model forward calls, one per TorchServe batch with an accepted request",
    ),
    "transerve_forward_inputs_total": (
        COUNTER,
        "count",
        [],
        "Inputs run through the model; divided by forward batches, the mean model batch size",
    ),
    "transerve_input_tokens_total": (
        COUNTER,
        "count",
        [],
        "Tokens of the inputs run through the model (prompt tokens for generation)",
    ),
    "transerve_generated_tokens_total": (COUNTER, "count", [], "Tokens generated (generation)"),
    "transerve_batch_inputs": (GAUGE, "count", [], "Inputs in the latest model batch"),
    "transerve_preprocess_seconds": (
        HISTOGRAM,
        "seconds",
        [],
        "Time to decode, validate and tokenize a TorchServe batch",
    ),
    "transerve_inference_seconds": (
        HISTOGRAM,
        "seconds",
        [],
        "Time in the model for a TorchServe batch (the whole generation, for generation)",
    ),
    "transerve_postprocess_seconds": (HISTOGRAM, "seconds", [], "Time to encode the answers of a TorchServe batch"),
    "transerve_time_to_first_token_seconds": (
        HISTOGRAM,
        "seconds",
        [],
        "Generation: from the start of the batch's forward (continuous batching: from "
        "the request's arrival) to a prompt's first token",
    ),
    "transerve_time_per_output_token_seconds": (
        HISTOGRAM,
        "seconds",
        [],
        "Generation: mean time per token after the first, per prompt",
    ),
    "transerve_generation_running_rows": (
        GAUGE,
        "count",
        [],
        "Continuous batching: rows decoding after the latest step",
    ),
    "transerve_generation_waiting_requests": (
        GAUGE,
        "count",
        [],
        "Continuous batching: requests waiting for a row after the latest step",
    ),
    "transerve_generation_rows_admitted_total": (
        COUNTER,
        "count",
        [],
        "Continuous batching: rows (prompts) that joined the running batch",
    ),
    "transerve_generation_queue_seconds": (
        HISTOGRAM,
        "seconds",
        [],
        "Continuous batching: from a request's arrival to its rows joining the running batch",
    ),
    "transerve_generation_rows_evicted_total": (
        COUNTER,
        "count",
        ["reason"],
        "Continuous batching: rows that left before their end (reason: disconnected, timeout, cancelled)",
    ),
    "transerve_requests_in_flight": (
        GAUGE,
        "count",
        ["worker"],
        "Requests a worker holds (the batch it runs; under continuous batching, those decoding "
        "or waiting for a row), by worker pid: a rollout drains a version until its live workers hold none",
    ),
    "transerve_worker_info": (GAUGE, "count", ["device"], "1 per loaded worker, labelled with the device it runs on"),
    "transerve_worker_loads_total": (
        COUNTER,
        "count",
        ["device"],
        "Worker loads: one per start, so a rise without scaling means workers restart",
    ),
    "transerve_cuda_memory_allocated_bytes": (
        GAUGE,
        "bytes",
        ["device"],
        "CUDA memory allocated by the worker's torch (CUDA only)",
    ),
}


class HandlerMetrics:
    """Emit the metrics above for one model version's worker."""

    def __init__(self, cache, model_name: str, model_version: str, task: str):
        self.cache = cache
        self.labels = [model_name, model_version, task]
        self._failed = False

    def emit(self, name: str, value: float, *labels: object) -> None:
        if self.cache is None:
            return
        kind, unit, extra, _ = METRICS[name]
        try:
            try:
                metric = self.cache.get_metric(name, kind)
            except MetricsCacheKeyError:  # a TorchServe not started with transerve's metrics.yaml
                metric = self.cache.add_metric_to_cache(name, unit, LABELS + extra, kind)
            metric.add_or_update(value, self.labels + [str(label) for label in labels])
        except Exception:  # noqa: BLE001 - a metric must never fail a request
            if not self._failed:
                logger.exception("transerve: metric %s could not be emitted; metrics are skipped from now on", name)
            self._failed = True
            self.cache = None

    def forward(self, usage, inputs: int, seconds: float) -> None:
        """One model forward of a static batch: its time, its inputs and the task's token usage."""
        self.emit("transerve_inference_seconds", seconds)
        self.emit("transerve_forward_batches_total", 1)
        self.emit("transerve_forward_inputs_total", inputs)
        self.emit("transerve_batch_inputs", inputs)
        self.emit("transerve_input_tokens_total", usage.input_tokens)
        if usage.generated_tokens:
            self.emit("transerve_generated_tokens_total", usage.generated_tokens)
        for value in usage.first_token_seconds:
            self.emit("transerve_time_to_first_token_seconds", value)
        for value in usage.per_token_seconds:
            self.emit("transerve_time_per_output_token_seconds", value)

    def step(self, scheduler) -> None:
        """One continuous batching call (handlers/generation/scheduler.py: `last`, what it did)."""
        step = scheduler.last
        self.emit("transerve_generation_running_rows", scheduler.decoder.busy)
        self.emit("transerve_generation_waiting_requests", len(scheduler.waiting))
        if step.generated:
            self.emit("transerve_generated_tokens_total", step.generated)
        if step.admitted:
            self.emit("transerve_generation_rows_admitted_total", step.admitted)
            self.emit("transerve_input_tokens_total", step.prompt_tokens)
        for reason, count in step.ended.items():
            self.emit("transerve_generation_rows_evicted_total", count, reason)
        for value in step.queue_seconds:
            self.emit("transerve_generation_queue_seconds", value)
        for value in step.first_token_seconds:
            self.emit("transerve_time_to_first_token_seconds", value)
        for value in step.per_token_seconds:
            self.emit("transerve_time_per_output_token_seconds", value)

    def outcomes(self, counts: Counter) -> None:
        """A call's answers, counted by (outcome, reason): one line per pair, not one per request,
        since each emit is a line the frontend parses."""
        for (outcome, reason), count in counts.items():
            self.emit("transerve_requests_total", count, outcome, reason)

    def in_flight(self, requests: int) -> None:
        """What this worker holds now, for a rollout's drain (transerve/operate/rollout.py)."""
        self.emit("transerve_requests_in_flight", requests, os.getpid())

    def cuda_memory(self, device) -> None:
        """The worker's CUDA memory, on a CUDA device (nothing on any other)."""
        if device.type == "cuda":
            import torch  # here, not at the top: transerve's CLI reads METRICS from this module without torch

            self.emit("transerve_cuda_memory_allocated_bytes", torch.cuda.memory_allocated(device), device)

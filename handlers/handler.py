"""TransformersHandler: TorchServe's four methods wired to one task; nothing else lives here.

TorchServe imports this file as the top-level module `handler` from the archive root, so
imports are absolute (`handlers.…`, bundled beside it) and this module defines exactly one
class: TorchServe instantiates the only class it finds.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import Counter

import torch
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler

from handlers.config import HandlerConfig
from handlers.device import configure_threads, pick_device
from handlers.generation.decoder import end
from handlers.generation.requeued import StreamMarks
from handlers.metrics import HandlerMetrics
from handlers.payload import InputError
from handlers.protocols import Protocol, Ready, for_route, render
from handlers.protocols.hf import HF
from handlers.tasks import task_class
from handlers.tasks.base import Item

logger = logging.getLogger(__name__)

# The operator's key for POST .../<version>/drain: `transerve serve` gives its TorchServe one, in
# the environment the workers inherit, and keeps it in its run directory for the rollout.
DRAIN_KEY_ENV = "TRANSERVE_DRAIN_KEY"
DRAIN_KEY_HEADER = "x-transerve-drain-key"


class TransformersHandler(BaseHandler):
    def initialize(self, context):
        started = time.perf_counter()
        properties = context.system_properties
        self.manifest = context.manifest
        self.cfg = HandlerConfig.from_model_config(context.model_yaml_config)
        self.device = pick_device(properties.get("gpu_id"))
        threads = configure_threads(self.cfg)
        self.task = task_class(self.cfg.task)()
        self.task.load(properties["model_dir"], self.cfg, self.device)
        self.model_name = context.model_name
        self.marks = StreamMarks(os.path.join(properties["model_dir"], ".transerve-streams"))
        self.wires: dict[int, Protocol] = {}  # this call's requests' protocols, by index
        # TorchServe's continuous batching: one decode step per call (handlers/generation/scheduler.py)
        self.scheduler = None
        if (context.model_yaml_config or {}).get("continuousBatching"):
            if not self.cfg.entry.decodes:
                raise ValueError(f"continuousBatching decodes step by step; this model's task is {self.cfg.task}")
            from handlers.generation.scheduler import ContinuousScheduler, cancel_id  # imports the generation task

            self.cancel_id = cancel_id

            self.scheduler = ContinuousScheduler(self.task)
        version = (self.manifest or {}).get("model", {}).get("modelVersion", "")
        self.metrics = HandlerMetrics(getattr(context, "metrics", None), context.model_name, version, self.cfg.task)
        self.metrics.emit("transerve_worker_info", 1, self.device)
        self.metrics.emit("transerve_worker_loads_total", 1, self.device)
        self.count_cuda_memory()
        self.initialized = True
        logger.info(
            "transerve: %s task=%s loaded on %s (engine %s, dtype %s, %d threads) in %.2fs",
            context.model_name,
            self.cfg.task,
            self.device,
            getattr(getattr(self.task, "engine", None), "name", "torch"),
            self.cfg.dtype,
            threads,
            time.perf_counter() - started,
        )

    def parse(self, idx: int, row):
        """Request `idx` read by the protocol its path names (handlers/protocols), then by the
        task; InputError when refused, written in that protocol once it is known (HF's before)."""
        route = self.context.get_request_header(idx, "url_path")
        wire = self.wires[idx] = for_route(route, self.model_name, self.context.request_ids[idx])
        payload = wire.decode(row, self.task)
        if (body := wire.ready()) is not None:
            return Ready(body)
        item = self.task.parse(payload)
        item.index = idx
        return item

    def handle(self, data, context):
        if self.scheduler is not None:
            return self.handle_step(data, context)
        self.count_in_flight(len(data))
        try:
            return super().handle(data, context)
        finally:
            self.count_in_flight(0)
            for idx in range(len(data)):
                self.marks.ended(context.request_ids[idx])

    def count_in_flight(self, requests: int) -> None:
        """What this worker holds now, for a rollout's drain (transerve/operate/rollout.py)."""
        self.metrics.emit("transerve_requests_in_flight", requests, os.getpid())

    def drain_allowed(self, idx: int) -> None:
        """A drain ends every request of this version: the operator's alone (the key `transerve
        serve` put in the workers' environment), else 403."""
        expected = os.environ.get(DRAIN_KEY_ENV, "")
        headers = self.context.request_processor[idx].get_request_properties()
        given = next((str(v) for k, v in headers.items() if str(k).lower() == DRAIN_KEY_HEADER), "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise InputError(
                "a drain ends every request of this version: it takes the operator's drain key "
                f"(header {DRAIN_KEY_HEADER}, from the run directory of `transerve serve`)",
                status=403,
                reason="forbidden",
            )

    def handle_step(self, data, context):
        """One call in continuous batching mode: parse the new requests, one decode step, one
        reply per request with its stopping criterion (handlers/generation/scheduler.py)."""
        self.context = context
        ids = [context.request_ids[idx] for idx in range(len(data))]
        new, grpc, cancels, drains, requeued = {}, set(), {}, set(), set()
        self.wires = {}
        for idx, row in enumerate(data):
            if ids[idx] in self.scheduler.requests:
                continue  # a running request: TorchServe sends it again without its body
            if self.came_over_grpc(idx):
                grpc.add(idx)
            try:
                path = context.get_request_header(idx, "url_path")
                if path == "cancel":
                    cancels[idx] = self.cancel_id(row)
                    continue
                if path == "drain":
                    self.drain_allowed(idx)
                    drains.add(idx)
                    continue
                item = self.parse(idx, row)
                if isinstance(item, Item) and self.marks.elsewhere(ids[idx]):
                    requeued.add(idx)
            except InputError as e:
                item = e
            new[idx] = item
        for rid in self.marks.held - set(ids):  # dropped by the frontend: their clients went away
            self.marks.ended(rid)
        with torch.inference_mode():
            replies = self.scheduler.iterate(ids, new, grpc, cancels, drains, requeued)
        outcomes: Counter[tuple] = Counter()
        for idx, reply in enumerate(replies):
            self.end_grpc_stream(idx)
            if idx in requeued:
                reply.ends = True  # the chunks before were sent by the worker that stopped
            if reply.ends is False and reply.body:  # a part went out: a second answer would repeat it
                self.marks.begun(ids[idx])
            else:
                self.marks.ended(ids[idx])
            if reply.error is not None:
                reply.body = self.refuse(idx, reply.error, outcomes)
                if reply.error.status in (429, 503):
                    context.set_response_header(idx, "Retry-After", str(self.scheduler.retry_after))
                continue
            if reply.content_type:
                context.set_response_content_type(idx, reply.content_type)
            if reply.ends is not False:
                outcomes["ok", "ok"] += 1
        self.count_outcomes(outcomes)
        if inputs := sum(reply.inputs for reply in replies if reply.error is None):
            self.metrics.emit("transerve_inputs_total", inputs)
        self.count_step(self.scheduler)
        self.count_in_flight(len(self.scheduler.requests))
        context.stopping_criteria = [lambda _answer, ends=reply.ends: ends for reply in replies]
        return [reply.body for reply in replies]

    def preprocess(self, data):
        """Parse every request; one bad request is remembered by index, not raised."""
        started = time.perf_counter()
        items = []
        self.wires = {}
        for idx, row in enumerate(data):
            try:
                item = self.parse(idx, row)
            except InputError as e:
                items.append(e)
                continue
            if isinstance(item, Item) and item.payload.stream:
                self.context.set_response_content_type(idx, item.payload.wire.stream_content_type)
                if self.marks.elsewhere(self.context.request_ids[idx]):
                    item = self.end_requeued(idx, item)
            items.append(item)
        accepted = [item for item in items if isinstance(item, Item)]
        batch = self.task.collate(accepted)
        self.metrics.emit("transerve_preprocess_seconds", time.perf_counter() - started)
        return items, batch

    def end_requeued(self, idx: int, item: Item) -> Item | Ready:
        """A stream another worker began, handed here when TorchServe scaled that worker down
        (handlers/generation/requeued.py): its last chunk at once, finish_reason "cancelled"."""
        logger.info(
            "transerve: stream %s was begun by a worker that stopped: ended, cancelled", self.context.request_ids[idx]
        )
        prompts = self.task.collate([item])
        if item.error is not None:
            return item  # refused as any other
        for row in prompts.rows:
            end(row, "cancelled")
        self.context.set_response_header(idx, "ts_stream_next", "false")  # the chunks before were sent elsewhere
        return Ready(render(self.task, item, prompts.rows))

    def inference(self, data, *args, **kwargs):
        items, batch = data
        if batch is None:  # every request of this batch was refused
            return items, []
        accepted = [item for item in items if isinstance(item, Item) and item.error is None]
        inputs = sum(item.size for item in accepted)
        started = time.perf_counter()
        with torch.inference_mode():
            outputs = self.generate(batch) if self.task.streams else self.task.forward(batch)
        seconds = time.perf_counter() - started
        logger.info(
            "transerve: batch of %d requests (%d refused), %d inputs, forward %.1f ms",
            len(items),
            len(items) - len(accepted),
            inputs,
            seconds * 1000,
        )
        self.count_forward(batch, inputs, seconds)
        return items, outputs

    def count_forward(self, batch, inputs: int, seconds: float) -> None:
        usage = self.task.usage(batch)
        emit = self.metrics.emit
        emit("transerve_inference_seconds", seconds)
        emit("transerve_forward_batches_total", 1)
        emit("transerve_forward_inputs_total", inputs)
        emit("transerve_batch_inputs", inputs)
        emit("transerve_input_tokens_total", usage.input_tokens)
        if usage.generated_tokens:
            emit("transerve_generated_tokens_total", usage.generated_tokens)
        for value in usage.first_token_seconds:
            emit("transerve_time_to_first_token_seconds", value)
        for value in usage.per_token_seconds:
            emit("transerve_time_per_output_token_seconds", value)
        self.count_cuda_memory()

    def count_step(self, scheduler) -> None:
        step, emit = scheduler.last, self.metrics.emit
        emit("transerve_generation_running_rows", scheduler.decoder.busy)
        emit("transerve_generation_waiting_requests", len(scheduler.waiting))
        if step.generated:
            emit("transerve_generated_tokens_total", step.generated)
        if step.admitted:
            emit("transerve_generation_rows_admitted_total", step.admitted)
            emit("transerve_input_tokens_total", step.prompt_tokens)
        for reason, count in step.ended.items():
            emit("transerve_generation_rows_evicted_total", count, reason)
        for value in step.queue_seconds:
            emit("transerve_generation_queue_seconds", value)
        for value in step.first_token_seconds:
            emit("transerve_time_to_first_token_seconds", value)
        for value in step.per_token_seconds:
            emit("transerve_time_per_output_token_seconds", value)

    def count_cuda_memory(self) -> None:
        if self.device.type == "cuda":
            self.metrics.emit(
                "transerve_cuda_memory_allocated_bytes", torch.cuda.memory_allocated(self.device), self.device
            )

    def postprocess(self, data):
        """One answer per request, in order: its own outputs, or its own 4xx."""
        started = time.perf_counter()
        items, outputs = data
        answers, position, inputs = [], 0, 0
        outcomes: Counter[tuple] = Counter()
        for idx, item in enumerate(items):
            self.end_grpc_stream(idx)
            error = item if isinstance(item, InputError) else item.error
            if error is not None:
                answers.append(self.refuse(idx, error, outcomes))
                continue
            if isinstance(item, Ready):
                answers.append(item.body)
                outcomes["ok", "ok"] += 1
                continue
            own = outputs[position : position + item.size]
            position += item.size
            answers.append(render(self.task, item, own))
            outcomes["ok", "ok"] += 1
            inputs += item.size
        self.count_outcomes(outcomes)
        if inputs:
            self.metrics.emit("transerve_inputs_total", inputs)
        self.metrics.emit("transerve_postprocess_seconds", time.perf_counter() - started)
        return answers

    def refuse(self, idx: int, error: InputError, outcomes: Counter) -> str:
        """Request `idx`'s own 4xx: the one place a status phrase is handed to TorchServe; the
        body, in the request's protocol."""
        self.context.set_response_status(error.status, error.phrase, idx)
        outcomes[error.status, error.reason] += 1
        return self.wires.get(idx, HF()).error(error)

    def count_outcomes(self, outcomes: Counter) -> None:
        # Counted per batch, not per request: each emit is a line the frontend parses.
        for (outcome, reason), count in outcomes.items():
            self.metrics.emit("transerve_requests_total", count, outcome, reason)

    def end_grpc_stream(self, idx: int) -> None:
        """Mark the last reply to a gRPC request as the end of its stream.

        TorchServe 0.12's frontend answers a gRPC StreamPredictions call with whatever the worker
        sends and reads its `ts_stream_next` header to know when to close the stream; a reply
        without one (any answer that was not streamed, any 4xx) throws in GRPCJob.response and
        the worker is restarted. A REST reply must not carry it unless chunks went before (the
        frontend would then send no status line), so it is set only where the request came
        over gRPC: the one kind of request with no HTTP headers, only its input parameters.
        """
        if self.came_over_grpc(idx):
            self.context.set_response_header(idx, "ts_stream_next", "false")

    def came_over_grpc(self, idx: int) -> bool:
        """A gRPC request reaches the worker with its input parameters only, no HTTP headers."""
        properties = self.context.request_processor[idx].get_request_properties()
        return not any(isinstance(value, str) for value in properties.values())

    def generate(self, batch) -> list:
        """Static batching's generation: decoded step by step, what each step streamed sent at once."""
        for stepped in self.task.steps(batch):
            if stepped.deltas:
                self.send_deltas(stepped.deltas)
        return batch.rows

    def send_deltas(self, deltas) -> None:
        """Stream the next part of each request's text now, framed by its protocol, as chunked
        HTTP response parts (one message to the frontend for the step)."""
        texts: dict[int, list[str]] = {}
        items = {}
        for delta in deltas:
            item = delta.row.item
            texts.setdefault(item.index, []).append(delta.text)
            items[item.index] = item
        for idx in texts:
            self.marks.begun(self.context.request_ids[idx])
        send_intermediate_predict_response(
            {idx: items[idx].payload.wire.delta(items[idx], "".join(parts)) for idx, parts in texts.items()},
            {idx: self.context.request_ids[idx] for idx in texts},
            "Intermediate response",
            200,
            self.context,
        )

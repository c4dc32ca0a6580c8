"""TransformersHandler: TorchServe's four methods wired to each request's protocol and one task.

What lives elsewhere: how TorchServe 0.12 carries a call and its quirks, with the call's own
state (handlers/torchserve_io.py); what the metrics count (handlers/metrics.py).

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
from ts.torch_handler.base_handler import BaseHandler

from handlers.config import HandlerConfig
from handlers.device import configure_threads, pick_device
from handlers.generation.decoder import end
from handlers.generation.requeued import StreamMarks
from handlers.metrics import HandlerMetrics
from handlers.payload import InputError
from handlers.protocols import Ready, for_route, render
from handlers.tasks import task_class
from handlers.tasks.base import Item
from handlers.torchserve_io import Call

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
        self.metrics.cuda_memory(self.device)
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

    def handle(self, data, context):
        """One call from TorchServe: a batch through preprocess, inference and postprocess, or,
        under continuous batching, one decode step. Its state is a Call (handlers/torchserve_io.py)."""
        call = Call(context, data)
        if self.scheduler is not None:
            return self.handle_step(call)
        self.metrics.in_flight(len(data))
        try:
            # TorchServe's own handle: it times the call (HandlerTime) and runs the three methods
            # below, passing the call to preprocess where it passes the rows.
            return super().handle(call, context)
        finally:
            self.metrics.in_flight(0)
            for rid in call.ids:
                self.marks.ended(rid)

    def preprocess(self, call: Call) -> tuple:
        """Parse every request; one bad request is remembered by index, not raised."""
        started = time.perf_counter()
        items = []
        for idx, row in enumerate(call.rows):
            try:
                item = self.parse(call, idx, row)
            except InputError as e:
                items.append(e)
                continue
            if isinstance(item, Item) and item.payload.stream:
                call.set_content_type(idx, item.payload.wire.stream_content_type)
                if self.marks.elsewhere(call.ids[idx]):
                    item = self.end_requeued(call, idx, item)
            items.append(item)
        accepted = [item for item in items if isinstance(item, Item)]
        batch = self.task.collate(accepted)
        self.metrics.emit("transerve_preprocess_seconds", time.perf_counter() - started)
        return call, items, batch

    def inference(self, data: tuple, *args, **kwargs) -> tuple:
        call, items, batch = data
        if batch is None:  # every request of this batch was refused
            return call, items, []
        accepted = [item for item in items if isinstance(item, Item) and item.error is None]
        inputs = sum(item.size for item in accepted)
        started = time.perf_counter()
        with torch.inference_mode():
            outputs = self.generate(call, batch) if self.task.streams else self.task.forward(batch)
        seconds = time.perf_counter() - started
        logger.info(
            "transerve: batch of %d requests (%d refused), %d inputs, forward %.1f ms",
            len(items),
            len(items) - len(accepted),
            inputs,
            seconds * 1000,
        )
        self.metrics.forward(self.task.usage(batch), inputs, seconds)
        self.metrics.cuda_memory(self.device)
        return call, items, outputs

    def postprocess(self, data: tuple) -> list:
        """One answer per request, in order: its own outputs, or its own 4xx."""
        started = time.perf_counter()
        call, items, outputs = data
        answers, position, inputs = [], 0, 0
        outcomes: Counter[tuple] = Counter()
        for idx, item in enumerate(items):
            call.end_grpc_stream(idx)
            error = item if isinstance(item, InputError) else item.error
            if error is not None:
                answers.append(self.refuse(call, idx, error, outcomes))
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
        self.metrics.outcomes(outcomes)
        if inputs:
            self.metrics.emit("transerve_inputs_total", inputs)
        self.metrics.emit("transerve_postprocess_seconds", time.perf_counter() - started)
        return answers

    def handle_step(self, call: Call) -> list:
        """One call in continuous batching mode: parse the new requests, one decode step, one
        reply per request with its stopping criterion (handlers/generation/scheduler.py)."""
        ids = call.ids
        new, grpc, cancels, drains, requeued = {}, set(), {}, set(), set()
        for idx, row in enumerate(call.rows):
            if ids[idx] in self.scheduler.requests:
                continue  # a running request: TorchServe sends it again without its body
            if call.came_over_grpc(idx):
                grpc.add(idx)
            try:
                path = call.route(idx)
                if path == "cancel":
                    cancels[idx] = self.cancel_id(row)
                    continue
                if path == "drain":
                    self.drain_allowed(call, idx)
                    drains.add(idx)
                    continue
                item = self.parse(call, idx, row)
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
            call.end_grpc_stream(idx)
            if idx in requeued:
                reply.ends = True  # the chunks before were sent by the worker that stopped
            if reply.ends is False and reply.body:  # a part went out: a second answer would repeat it
                self.marks.begun(ids[idx])
            else:
                self.marks.ended(ids[idx])
            if reply.error is not None:
                reply.body = self.refuse(call, idx, reply.error, outcomes)
                if reply.error.status in (429, 503):
                    call.retry_after(idx, self.scheduler.retry_after)
                continue
            if reply.content_type:
                call.set_content_type(idx, reply.content_type)
            if reply.ends is not False:
                outcomes["ok", "ok"] += 1
        self.metrics.outcomes(outcomes)
        if inputs := sum(reply.inputs for reply in replies if reply.error is None):
            self.metrics.emit("transerve_inputs_total", inputs)
        self.metrics.step(self.scheduler)
        self.metrics.in_flight(len(self.scheduler.requests))
        call.set_stopping_criteria([reply.ends for reply in replies])
        return [reply.body for reply in replies]

    def parse(self, call: Call, idx: int, row):
        """Request `idx` read by the protocol its path names (handlers/protocols), then by the
        task; InputError when refused, written in that protocol once it is known (HF's before)."""
        wire = call.wires[idx] = for_route(call.route(idx), self.model_name, call.ids[idx])
        payload = wire.decode(row, self.task)
        if (body := wire.ready()) is not None:
            return Ready(body)
        item = self.task.parse(payload)
        item.index = idx
        return item

    def refuse(self, call: Call, idx: int, error: InputError, outcomes: Counter) -> str:
        """Request `idx`'s own 4xx (its status and body), counted among the call's outcomes."""
        body = call.refuse(idx, error)
        outcomes[error.status, error.reason] += 1
        return body

    def drain_allowed(self, call: Call, idx: int) -> None:
        """A drain ends every request of this version: the operator's alone (the key `transerve
        serve` put in the workers' environment), else 403."""
        expected = os.environ.get(DRAIN_KEY_ENV, "")
        given = call.request_header(idx, DRAIN_KEY_HEADER)
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise InputError(
                "a drain ends every request of this version: it takes the operator's drain key "
                f"(header {DRAIN_KEY_HEADER}, from the run directory of `transerve serve`)",
                status=403,
                reason="forbidden",
            )

    def end_requeued(self, call: Call, idx: int, item: Item) -> Item | Ready:
        """A stream another worker began, handed here when TorchServe scaled that worker down
        (handlers/generation/requeued.py): its last chunk at once, finish_reason "cancelled"."""
        logger.info("transerve: stream %s was begun by a worker that stopped: ended, cancelled", call.ids[idx])
        prompts = self.task.collate([item])
        if item.error is not None:
            return item  # refused as any other
        for row in prompts.rows:
            end(row, "cancelled")
        call.end_stream(idx)  # the chunks before were sent elsewhere
        return Ready(render(self.task, item, prompts.rows))

    def generate(self, call: Call, batch) -> list:
        """Static batching's generation: decoded step by step, what each step streamed sent at once."""
        for stepped in self.task.steps(batch):
            if stepped.deltas:
                self.send_deltas(call, stepped.deltas)
        return batch.rows

    def send_deltas(self, call: Call, deltas) -> None:
        """Stream the next part of each request's text now, framed by its protocol."""
        texts: dict[int, list[str]] = {}
        items = {}
        for delta in deltas:
            item = delta.row.item
            texts.setdefault(item.index, []).append(delta.text)
            items[item.index] = item
        for idx in texts:
            self.marks.begun(call.ids[idx])
        call.send({idx: items[idx].payload.wire.delta(items[idx], "".join(parts)) for idx, parts in texts.items()})

"""Is a version fit to serve? Its spec's samples, sent and checked, in-process or on a server.

`run_samples` sends each sample through any `predict(request) -> (status, body)` and says
what is wrong with each answer (smoke.check). `transerve validate` runs it on the archive's
handler loaded in this process as a worker would load it (`validate`), and a rollout's smoke
step on the version registered on TorchServe, before it takes traffic.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transerve.build import archive
from transerve.build.spec import ModelVersion
from transerve.operate import smoke
from transerve.torchserve.management import ApiError, InferenceClient

# An exception at load, matched by name or message, and what usually causes it.
HINTS = (
    ("SafetensorError", "the weights file is damaged or not safetensors; rebuild the archive from good weights"),
    ("ModuleNotFoundError", "the worker's Python lacks a package the model needs; install it where TorchServe runs"),
    ("ConfigError", "the handler settings in the spec are wrong; the message names the key"),
    ("OutOfMemoryError", "the model does not fit; use a smaller dtype, fewer workers or a bigger device"),
    ("OSError", "a file the model needs is missing from the archive (tokenizer.json? config.json?)"),
)


@dataclass(frozen=True)
class SampleResult:
    index: int
    request: Any
    status: int
    answer: Any
    ms: float
    problems: list[str]  # [] when the answer is what the task and the sample's `expect` promise


def run_samples(mv: ModelVersion, predict: Callable[[Any], tuple[int, Any]]) -> Iterator[SampleResult]:
    """Each of the version's samples through `predict`, checked, one result at a time."""
    for i, sample in enumerate(mv.samples):
        started = time.perf_counter()
        status, answer = predict(sample.request)
        ms = (time.perf_counter() - started) * 1000
        problems = (
            [f"refused with status {status}: {answer}"] if status != 200 else smoke.check(mv.task, sample, answer)
        )
        yield SampleResult(i, sample.request, status, answer, ms, problems)


def served(inference: InferenceClient, mv: ModelVersion) -> Callable[[Any], tuple[int, Any]]:
    """A predict for run_samples that asks the version registered on TorchServe over the
    inference API; a refusal is its status and TorchServe's message."""
    timeout = mv.runtime.responseTimeout + 10

    def predict(request: Any) -> tuple[int, Any]:
        try:
            return 200, inference.predict(mv.name, request, version=mv.version, timeout=timeout)
        except ApiError as e:
            return e.status, str(e)

    return predict


def hint(error: BaseException) -> str:
    return next((h for name, h in HINTS if name in f"{type(error).__name__} {error}"), "the traceback above says where")


def validate(mv: ModelVersion, store: Path, gpu: int | None = None, log=print, short=lambda answer: answer) -> bool:
    """Build (or reuse) the archive, load its handler in-process as a worker would, run the
    samples; log what happened. True when it loaded and every sample came back right."""
    from transerve.operate.inprocess import LocalWorker  # torch: only when a version is loaded here

    record = archive.build(mv, store, refuse_tampered=True)
    log(
        f"archive   {record.path} ({record.size / 1e6:.1f} MB, sha256 {record.sha256[:16]}…, "
        f"{'reused' if record.reused else 'built'})"
    )
    with tempfile.TemporaryDirectory(prefix="transerve-validate-") as tmp:
        model_dir = Path(tmp) / "model"
        with zipfile.ZipFile(record.path) as z:
            z.extractall(model_dir)
        started = time.perf_counter()
        try:
            worker = LocalWorker(mv, gpu_id=gpu, model_dir=model_dir)
        except Exception as e:  # noqa: BLE001 - whatever kills a worker at load is what we are here to show
            log(f"load      FAILED after {time.perf_counter() - started:.1f}s: {type(e).__name__}: {e}")
            log("".join(traceback.format_exception(e)[-6:]).rstrip())
            log(f"hint      {hint(e)}")
            return False
        log(f"load      ok in {time.perf_counter() - started:.1f}s: task {mv.task} on {worker.handler.device}")

        def predict(request):
            [answer] = worker.predict([request])
            return answer.status, answer.body

        failed = 0
        try:
            for result in run_samples(mv, predict):
                failed += bool(result.problems)
                log(
                    f"sample {result.index}  {'FAILED' if result.problems else 'ok'} in {result.ms:.0f} ms: "
                    f"{json.dumps(result.request)[:100]}"
                )
                log(
                    "          "
                    + ("; ".join(result.problems) if result.problems else json.dumps(short(result.answer))[:300])
                )
        finally:
            worker.close()
    if not mv.samples:
        log("samples   none in the spec; add some to test the handle path")
    return not failed

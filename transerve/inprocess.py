"""Load a model version's handler in this process exactly as a TorchServe worker does.

The model is staged the way the archive lays it out, loaded through TorchServe's own
ModelLoader (same import of `handler`, same Context fields, same initialize), and requests
go through the same entry point with the same per-request statuses. Used by the unit
tests, and the answer to "the worker died and I don't know why".
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.model_loader import TsModelLoader
from ts.service import Service

from transerve.archive import stage
from transerve.spec import ModelVersion

METRICS_CONFIG = Path(__file__).resolve().parent.parent / "metrics.yaml"  # TorchServe's and the handler's


@dataclass
class Answer:
    """What TorchServe would send back for one request."""

    status: int
    body: Any  # parsed JSON when the handler sent JSON, else the raw value
    phrase: str = ""
    chunks: list = field(default_factory=list)  # streamed parts sent before the body, as sent

    def json(self) -> Any:
        return self.body


class LocalWorker:
    """A TorchServe worker's model, in-process: `predict` takes a batch of request bodies."""

    def __init__(self, mv: ModelVersion, gpu_id: int | None = None, model_dir: Path | None = None):
        self.mv = mv
        self._tmp = None
        if model_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"transerve-{mv.name}-")
            model_dir = stage(mv, Path(self._tmp.name) / "model")
        self.model_dir = Path(model_dir)
        # A worker runs with its model directory on sys.path and imports `handler` from it.
        sys.path.insert(0, str(self.model_dir))
        sys.modules.pop("handler", None)
        (self.model_dir / "MAR-INF").mkdir(exist_ok=True)
        manifest = {
            "runtime": "python",
            "model": {"modelName": mv.name, "handler": "handler.py", "modelVersion": mv.version, "configFile": "model-config.yaml"},
        }
        (self.model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
        self.metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_CONFIG))
        self.metrics.initialize_cache()
        self.metrics.model_name = mv.name
        try:
            self.service: Service = TsModelLoader().load(
                mv.name, str(self.model_dir), "handler.py", gpu_id, mv.runtime.batchSize, metrics_cache=self.metrics,
            )
        finally:
            sys.path.remove(str(self.model_dir))
        self.service.set_cl_socket(None)

    @property
    def handler(self):
        return self.service._entry_point.__self__

    def predict(self, bodies: list[Any], content_type: str = "application/json") -> list[Answer]:
        """Send a batch of request bodies through the entry point, as Service.predict does."""
        batch = [
            {
                "requestId": f"req-{i}".encode(),
                "parameters": [{"name": "body", "value": body, "contentType": content_type}],
                "headers": [],
            }
            for i, body in enumerate(bodies)
        ]
        headers, inputs, ids = Service.retrieve_data_for_inference(batch)
        context = self.service.context
        context.request_ids, context.request_processor = ids, headers
        context.metrics.request_ids = ids
        context.cl_socket = socket = _Recorder()
        outputs = self.service._entry_point(inputs, context)
        streamed = socket.parts_by_request()
        answers = []
        for idx, out in enumerate(outputs):
            status, phrase = context.get_response_status(idx)
            try:
                body = json.loads(out)
            except (TypeError, ValueError):
                body = out
            chunks = streamed.get(ids[idx], [])
            answers.append(Answer(status or 200, body, phrase or "", chunks))
        return answers

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


class _Recorder:
    """Stands in for the worker's socket to the frontend; keeps what intermediate responses send."""

    def __init__(self):
        self.sent = bytearray()

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def parts_by_request(self) -> dict[str, list[str]]:
        """Parse the predict-response messages (TorchServe's OTF protocol) into each request's parts."""
        parts: dict[str, list[str]] = {}
        buf, pos = bytes(self.sent), 0

        def integer() -> int:
            nonlocal pos
            (value,) = struct.unpack_from("!i", buf, pos)
            pos += 4
            return value

        def blob() -> bytes:
            nonlocal pos
            n = integer()
            pos += n
            return buf[pos - n : pos]

        while pos < len(buf):
            integer()  # code
            blob()  # message
            while (n := integer()) != -1:
                request_id = buf[pos : pos + n].decode()
                pos += n
                blob()  # content type
                integer()  # status
                blob()  # phrase
                for _ in range(integer()):  # headers
                    blob(), blob()
                parts.setdefault(request_id, []).append(blob().decode())
        return parts

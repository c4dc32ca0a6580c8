"""Load a model version's handler in this process exactly as a TorchServe worker does.

The model is staged the way the archive lays it out, loaded through TorchServe's own
ModelLoader (same import of `handler`, same Context fields, same initialize), and requests
travel as they do between TorchServe's frontend and a worker: a request frame read by
TorchServe's own protocol code, its own Service.predict, and reply frames read back the
way the Java frontend reads them, so a reply that would cost a real worker its life fails
here too. Used by the unit tests, and the answer to "the worker died and I don't know why".
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.model_loader import TsModelLoader
from ts.protocol.otf_message_handler import retrieve_msg
from ts.service import Service

from transerve.build.archive import stage
from transerve.build.spec import ModelVersion

METRICS_CONFIG = Path(__file__).resolve().parents[2] / "metrics.yaml"  # TorchServe's and the handler's


@dataclass
class Answer:
    """What TorchServe would send back for one request."""

    status: int
    body: Any  # parsed JSON when the handler sent JSON, else the raw value
    phrase: str = ""
    chunks: list = field(default_factory=list)  # streamed parts sent before the body, as sent
    headers: dict = field(default_factory=dict)  # the reply's headers to the frontend

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
            "model": {
                "modelName": mv.name,
                "handler": "handler.py",
                "modelVersion": mv.version,
                "configFile": "model-config.yaml",
            },
        }
        (self.model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
        self.metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_CONFIG))
        self.metrics.initialize_cache()
        self.metrics.model_name = mv.name
        try:
            self.service: Service = TsModelLoader().load(
                mv.name,
                str(self.model_dir),
                "handler.py",
                gpu_id,
                mv.runtime.batchSize,
                metrics_cache=self.metrics,
            )
        finally:
            sys.path.remove(str(self.model_dir))
        self.service.set_cl_socket(None)

    @property
    def handler(self):
        return self.service._entry_point.__self__

    def predict(
        self, bodies: list[Any], content_type: str = "application/json", path: str | None = None
    ) -> list[Answer]:
        """Send a batch of request bodies: bytes as they are, a str as text/plain, anything
        else as JSON (what a client's json= sends); `path`: what follows the version in the URL."""
        return self.predict_raw([_as_request(body, content_type) for body in bodies], path=path)

    def predict_raw(
        self, requests: list[tuple[str, bytes]], grpc: bool = False, path: str | None = None
    ) -> list[Answer]:
        """Send a batch of (content type, body bytes) the whole way a worker takes it: the
        request frame as the frontend writes it, read by TorchServe's own protocol code,
        TorchServe's own Service.predict, and the reply frames read back exactly as the
        frontend would (`read_frames`). A frame the frontend could not read raises
        FrameError: in a real server it costs the worker its life. With `grpc`, the requests
        come as TorchServe's gRPC API sends them: the input parameter alone, no HTTP headers."""
        frame, intermediate = self.exchange(request_frame(requests, http_headers=not grpc, path=path))
        streamed: dict[str, list[str]] = {}
        for sent in intermediate:
            for part in sent.parts:
                streamed.setdefault(part.request_id, []).append(part.body.decode("utf-8"))
        answers = []
        for part in frame.parts:
            text = part.body.decode("utf-8")
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            answers.append(Answer(part.status, body, part.phrase, streamed.get(part.request_id, []), part.headers))
        return answers

    def exchange(self, request: bytes) -> tuple[Frame, list[Frame]]:
        """One request frame in, as TorchServe's own protocol code reads it; the reply frame
        and the intermediate (streamed) frames sent before it out, as the frontend reads them."""
        _, batch = retrieve_msg(_Conn(request))
        socket = _Recorder()
        self.service.cl_socket = socket
        [reply] = read_frames(bytes(self.service.predict(batch)))
        if reply.code != 200:  # the whole batch failed outside the handler's per-request statuses
            raise WorkerError(f"the worker answered the batch with {reply.code} {reply.message!r}")
        return reply, read_frames(bytes(socket.sent))

    def continuous(self, batch_size: int | None = None) -> ContinuousDriver:
        """TorchServe's continuous batching around this worker (runtime continuousBatching)."""
        return ContinuousDriver(self, batch_size or self.mv.runtime.batchSize)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _as_request(body: Any, content_type: str) -> tuple[str, bytes]:
    if isinstance(body, (bytes, bytearray)):
        return content_type, bytes(body)
    if isinstance(body, str):
        return "text/plain", body.encode("utf-8", "surrogatepass")
    return content_type, json.dumps(body).encode("utf-8")


def request_frame(requests: list[tuple[str, bytes]], http_headers: bool = True, path: str | None = None) -> bytes:
    """An inference request frame as TorchServe's frontend writes it (ModelRequestEncoder at
    v0.12.0): b"I", then per request its id, its headers (a REST request's HTTP headers; none
    for gRPC) and its one parameter, `body`."""
    headers = {"url_path": path} if path else {}
    return _frame(
        [
            (f"req-{i}", content_type, body, headers if http_headers else None)
            for i, (content_type, body) in enumerate(requests)
        ]
    )


def _frame(requests: list[tuple[str, str, bytes | None, dict | None]]) -> bytes:
    """(request id, content type, body or None, extra HTTP headers or None for gRPC) each. A
    None body sends no parameter, as the frontend re-sends a running request in continuous
    batching; gRPC requests carry no headers and no content type."""

    def blob(data: bytes) -> bytes:
        return struct.pack("!i", len(data)) + data

    end = struct.pack("!i", -1)
    frame = bytearray(b"I")
    for request_id, content_type, body, headers in requests:
        frame += blob(request_id.encode())
        if headers is None:
            content_type = ""
        else:
            for name, value in {"content-type": content_type, **headers}.items():
                frame += blob(name.encode()) + blob(value.encode())
        frame += end
        if body is not None:
            frame += blob(b"body") + blob(content_type.encode()) + blob(body)
        frame += end
    return bytes(frame + end)


class _Conn:
    """A socket that yields one frame to TorchServe's reader."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def recv(self, n: int) -> bytes:
        self.pos += n
        return self.data[self.pos - n : self.pos]


class _Recorder:
    """Stands in for the worker's socket to the frontend; keeps what intermediate responses send."""

    def __init__(self):
        self.sent = bytearray()

    def sendall(self, data: bytes) -> None:
        self.sent += data


class WorkerError(RuntimeError):
    """The worker failed a whole batch (TorchServe's 5xx for every request in it)."""


class FrameError(ValueError):
    """A reply frame the frontend could not read: in a real server the worker is restarted."""


@dataclass
class Part:
    request_id: str
    content_type: str
    status: int
    phrase: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Frame:
    code: int
    message: str
    parts: list[Part]


def read_frames(buf: bytes) -> list[Frame]:
    """Reply frames of TorchServe's worker protocol, read as the Java frontend reads them
    (ModelResponseDecoder, CodecUtils at v0.12.0: every length in bytes, strings in UTF-8),
    and checked as its HTTP layer needs them: a reason phrase of printable ASCII.
    Raises FrameError where the frontend would fail; all of `buf` must be used."""
    pos = 0

    def integer() -> int:
        nonlocal pos
        if pos + 4 > len(buf):
            raise FrameError(f"frame ends inside an integer at byte {pos}")
        (value,) = struct.unpack_from("!i", buf, pos)
        pos += 4
        return value

    def blob(length: int | None = None) -> bytes:
        nonlocal pos
        n = integer() if length is None else length
        if n < 0 or pos + n > len(buf):
            raise FrameError(f"a field of {n} bytes at byte {pos} overruns the frame of {len(buf)}")
        pos += n
        return buf[pos - n : pos]

    def text(length: int | None = None) -> str:
        try:
            return blob(length).decode("utf-8")
        except UnicodeDecodeError as e:
            raise FrameError(f"a string field is not UTF-8: {e}") from None

    frames = []
    while pos < len(buf):
        code, message, parts = integer(), text(), []
        while (n := integer()) != -1:
            request_id, content_type, status = text(n), text(), integer()
            phrase = text()
            if any(not " " <= c <= "~" for c in phrase):
                raise FrameError(f"reason phrase {phrase!r} is not printable ASCII")
            headers = {text(): text() for _ in range(integer())}
            parts.append(Part(request_id, content_type, status, phrase, headers, blob()))
        frames.append(Frame(code, message, parts))
    return frames


@dataclass
class Job:
    """One request under continuous batching: the replies it got, each a part of its response."""

    id: str
    content_type: str
    body: bytes
    headers: dict | None = None  # extra HTTP headers (url_path, say); None: a gRPC request
    parts: list[Part] = field(default_factory=list)
    gone: bool = False  # its client disconnected: the frontend no longer sends it

    @property
    def done(self) -> bool:  # a reply that does not say "more to come" ends the response
        return bool(self.parts) and self.parts[-1].headers.get("ts_stream_next") != "true"

    @property
    def status(self) -> int:  # the status line goes out with the first reply
        return self.parts[0].status

    @property
    def text(self) -> str:
        return "".join(part.body.decode("utf-8") for part in self.parts)


class ContinuousDriver:
    """What TorchServe's frontend does in continuous batching mode (wlm/ContinuousBatching.java
    at v0.12.0, and checked on a live server): each call sends the running jobs again with no
    body and new jobs with theirs, up to batch_size; a job ends with a reply that does not
    carry ts_stream_next: true; a job whose client went away is no longer sent."""

    def __init__(self, worker: LocalWorker, batch_size: int):
        self.worker, self.batch_size = worker, batch_size
        self.jobs: list[Job] = []

    def submit(self, body: Any, grpc: bool = False, path: str | None = None, headers: dict | None = None) -> Job:
        """A request: over gRPC, or over REST with `path` after the version (url_path) and any
        other HTTP `headers`."""
        content_type, data = _as_request(body, "application/json")
        headers = None if grpc else {**({"url_path": path} if path else {}), **(headers or {})}
        job = Job(str(uuid.uuid4()), content_type, data, headers)  # TorchServe's ids are UUIDs too
        self.jobs.append(job)
        return job

    @property
    def active(self) -> list[Job]:
        return [job for job in self.jobs if not job.done and not job.gone][: self.batch_size]

    def call(self) -> None:
        jobs = self.active
        reply, _ = self.worker.exchange(
            _frame([(j.id, j.content_type, None if j.parts else j.body, j.headers) for j in jobs])
        )
        by_id = {job.id: job for job in jobs}
        assert [part.request_id for part in reply.parts] == [job.id for job in jobs]
        for part in reply.parts:
            by_id[part.request_id].parts.append(part)

    def run(self, until=None, max_calls: int = 5000) -> None:
        """Call until no job is active (or `until()` holds)."""
        for _ in range(max_calls):
            if not self.active or (until is not None and until()):
                return
            self.call()
        raise RuntimeError(f"jobs still active after {max_calls} calls")

"""How TorchServe 0.12 carries one `handle` call's requests in and its answers out.

Everything here is the transport, not transerve: where a request's route and headers are, how a
gRPC request looks, and what a reply must carry (status and phrase, content type, headers, the
stream markers, streamed parts, continuous batching's stopping criteria) for the frontend to
read it. The quirks are TorchServe 0.12's, read from its source and checked on a live server.
"""

from __future__ import annotations

from ts.context import Context
from ts.handler_utils.utils import send_intermediate_predict_response

from handlers.payload import InputError
from handlers.protocols import Protocol
from handlers.protocols.hf import HF


class Call:
    """One `handle` call: TorchServe's context, the batch's rows and their request ids, and the
    protocol each request was read with (by index), with what TorchServe is told per request."""

    def __init__(self, context: Context, rows: list) -> None:
        self.context = context
        self.rows = rows
        self.ids: list[str] = [context.request_ids[idx] for idx in range(len(rows))]
        self.wires: dict[int, Protocol] = {}  # each request's protocol, once its route was read

    def route(self, idx: int) -> str | None:
        """What follows the version in the request's URL: `/predictions/{model}/{version}/a/b`
        reaches the worker as the request header `url_path` "a/b". None over gRPC and KServe's routes."""
        return self.context.get_request_header(idx, "url_path")

    def request_header(self, idx: int, name: str) -> str:
        """The request's HTTP header `name`, in any case; "" when it has none. TorchServe forwards
        every HTTP header to the worker."""
        properties = self.context.request_processor[idx].get_request_properties()
        return next((str(v) for k, v in properties.items() if str(k).lower() == name.lower()), "")

    def came_over_grpc(self, idx: int) -> bool:
        """A gRPC request reaches the worker with its input parameters only, no HTTP headers."""
        properties = self.context.request_processor[idx].get_request_properties()
        return not any(isinstance(value, str) for value in properties.values())

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
            self.end_stream(idx)

    def end_stream(self, idx: int) -> None:
        """This reply is the last part of a stream whose earlier parts went out before it."""
        self.context.set_response_header(idx, "ts_stream_next", "false")

    def refuse(self, idx: int, error: InputError) -> str:
        """Request `idx`'s own 4xx: the one place a status phrase is handed to TorchServe (ASCII:
        `InputError.phrase`, handlers/payload.py says why); the body, in the request's protocol
        (HF's when it was refused before its protocol was known)."""
        self.context.set_response_status(error.status, error.phrase, idx)
        return self.wires.get(idx, HF()).error(error)

    def set_content_type(self, idx: int, content_type: str) -> None:
        self.context.set_response_content_type(idx, content_type)

    def retry_after(self, idx: int, seconds: int) -> None:
        """A 429 or 503's Retry-After header."""
        self.context.set_response_header(idx, "Retry-After", str(seconds))

    def send(self, parts: dict[int, str]) -> None:
        """Send the next part of these requests' answers now, as chunked HTTP response parts (one
        message to the frontend). Not under continuous batching: there the frontend reads one
        reply per call, and each reply is the next part."""
        send_intermediate_predict_response(
            parts, {idx: self.ids[idx] for idx in parts}, "Intermediate response", 200, self.context
        )

    def set_stopping_criteria(self, ends: list[bool | None]) -> None:
        """Continuous batching: after this call's reply, whether each request goes on (False),
        ends (True) or was answered in one piece (None). TorchServe reads it for every index of
        every call and never resets it, so it is set for all of them."""
        self.context.stopping_criteria = [lambda _answer, end=end: end for end in ends]

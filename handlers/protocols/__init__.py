"""Wire formats: a protocol reads a request body into the task's typed input (a Payload)
and writes the task's typed results (handlers/results.py) as its own body, its own stream
framing and its own error body. Tasks know none of them.

- hf: transerve's own shape, {"inputs", "parameters", "stream"} or {"messages", ...};
  streams NDJSON. Also the default for a bare /predictions/<model>[/<version>].
- kserve_v1: {"instances": [...]} in, {"predictions": [...]} out (KServe's V1 protocol);
  recognised by its key on the same route.
- openai: the OpenAI API on /predictions/<model>/<version>/v1/..., streams Server-Sent Events.

A protocol object is made per request (`for_route`), so it can keep that request's state:
an OpenAI stream's id and whether its first chunk went out.
"""

from __future__ import annotations

from handlers.config import short
from handlers.payload import InputError
from handlers.protocols import hf, openai
from handlers.protocols.base import Protocol, Ready, dumps, render

__all__ = ["Protocol", "Ready", "dumps", "for_route", "render"]


def for_route(route: str | None, model: str = "", request_id: str = "") -> Protocol:
    """The protocol serving `route`, the path after /predictions/<model>/<version>/ (TorchServe's
    url_path header); an unknown path is refused with 404 in the HF shape."""
    if not route:
        return hf.HF()
    if route.startswith("v1/"):  # an unknown one is refused in OpenAI's error body
        return openai.OpenAI(route, model, request_id)
    served = f" (POST .../<version>/{route} needs runtime continuousBatching)" if route in ("cancel", "drain") else ""
    raise InputError(f"no such path: {short(route)} after the model version{served}", status=404, reason="unknown_path")

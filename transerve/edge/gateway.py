"""The OpenAI gateway: one base URL, http://HOST:PORT/v1, for every model TorchServe serves.

TorchServe routes `/predictions/<model>/<version>/v1/...` to the handler's OpenAI routes
(handlers/protocols/openai.py) but cannot route `/v1/...` itself, and needs the version in
the path, so a client pinned to one would not follow a rollout. The gateway takes the
OpenAI paths, reads `model` from the body, and forwards the request as it came to that
model's current default version (looked up in the management API, at most `refresh`
seconds old, so `transerve rollout` and `rollback` move clients within a second).

- Streams pass through as TorchServe sends them; when a client goes away the upstream
  connection is closed at once, so TorchServe drops the request (under continuous
  batching its rows leave the batch at the next step).
- `Authorization` passes through: the inference key is the API key. The gateway checks it
  first against the key file, so a caller without it learns nothing (401, OpenAI's body),
  not even which models exist.
- Errors are OpenAI's body ({"error": {message, type, param, code}}): an unknown model is
  404 model_not_found, TorchServe's own refusals (no worker, a body over its size limit)
  are rewritten with their status and message.

    python -m transerve.edge.gateway --listen 127.0.0.1:8000 --inference http://127.0.0.1:8080 \
        --management http://127.0.0.1:8081 [--key-file run/key_file.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import re
import sys
import time
from pathlib import Path

from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, TCPConnector, web

from handlers.protocols.openai import ROUTES, error_body, model_card
from transerve.torchserve.rundir import read_keys

logger = logging.getLogger("transerve.edge.gateway")

FORWARDED = ("Authorization", "Content-Type", "Accept", "X-Request-Id")
PASSED_BACK = ("Content-Type", "Content-Length", "Retry-After", "x-request-id")
VERSION_HEADER = "x-transerve-model-version"
MAX_BODY = 6_553_600
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # TorchServe's max_request_size in config.properties


def failure(status: int, message: str, code: str | None = None, param: str | None = None, headers=None) -> web.Response:
    return web.Response(
        status=status, text=error_body(status, message, param, code), content_type="application/json", headers=headers
    )


class Gateway:
    def __init__(self, inference: str, management: str, key_file: Path | None, refresh: float = 0.5):
        self.inference, self.management = inference.rstrip("/"), management.rstrip("/")
        self.key_file, self.refresh = key_file, refresh
        self.defaults: dict[str, tuple[str | None, float]] = {}  # name -> (default version, looked up at)
        self.started = int(time.time())
        self.session: ClientSession  # TorchServe's connections, opened with the app (open)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{name}", self.get_model)
        for route in ROUTES:
            if route != "v1/models":
                app.router.add_post(f"/{route}", self.forward)
        app.router.add_route("*", "/{tail:.*}", self.unknown)
        app.on_response_prepare.append(self.plain_server_header)
        app.on_startup.append(self.open)
        app.on_cleanup.append(self.close)
        return app

    @staticmethod
    async def plain_server_header(_request, response) -> None:
        response.headers["Server"] = "transerve"  # not aiohttp's and Python's versions

    async def open(self, _app) -> None:
        # No overall timeout: a stream lasts as long as its generation; connecting must be quick.
        self.session = ClientSession(
            connector=TCPConnector(limit=512, limit_per_host=512),
            timeout=ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

    async def close(self, _app) -> None:
        await self.session.close()

    # keys

    def keys(self) -> dict[str, str]:
        return read_keys(self.key_file) if self.key_file else {}

    def refused(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries the inference key (when TorchServe has keys)."""
        if self.key_file is None:
            return None
        key = self.keys().get("inference")
        sent = request.headers.get("Authorization", "")
        token = sent[7:].strip() if sent[:7].lower() == "bearer " else ""
        if key and token and hmac.compare_digest(token.encode(), key.encode()):
            return None
        message = (
            (
                "Incorrect API key provided: send the inference key from TorchServe's key_file.json as "
                "'Authorization: Bearer <key>' (the OpenAI clients' api_key)"
            )
            if token
            else "You didn't provide an API key: send the inference key as 'Authorization: Bearer <key>' "
            "(the OpenAI clients' api_key)"
        )
        return failure(401, message, "invalid_api_key")

    # the management API

    async def manage(self, path: str) -> tuple[int, object]:
        key = self.keys().get("management")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async with self.session.get(
                f"{self.management}{path}", headers=headers, timeout=ClientTimeout(total=10)
            ) as answer:
                text = await answer.text()
        except (ClientConnectionError, asyncio.TimeoutError) as e:
            raise web.HTTPServiceUnavailable(
                text=error_body(503, f"TorchServe's management API did not answer: {e}"),
                content_type="application/json",
            ) from None
        try:
            return answer.status, json.loads(text)
        except ValueError:
            return answer.status, text

    async def default_version(self, name: str) -> str | None:
        """`name`'s default version now (at most `refresh` s old); None: no such model."""
        if not MODEL_NAME.fullmatch(name):  # TorchServe's names; nothing else goes into a URL
            return None
        cached = self.defaults.get(name)
        if cached is not None and time.monotonic() - cached[1] < self.refresh:
            return cached[0]
        status, body = await self.manage(f"/models/{name}")
        version = None
        if status == 200 and isinstance(body, list) and body:
            version = body[0].get("modelVersion")
        elif status not in (400, 404):
            raise web.HTTPServiceUnavailable(
                text=error_body(503, f"TorchServe's management API answered {status}: {body}"),
                content_type="application/json",
            )
        if version is not None:  # unknown names are not remembered: they could be anything
            self.defaults[name] = (version, time.monotonic())
        return version

    async def names(self) -> list[str]:
        names, token = [], None
        while True:
            status, body = await self.manage("/models?limit=100" + (f"&next_page_token={token}" if token else ""))
            if status != 200 or not isinstance(body, dict):
                raise web.HTTPServiceUnavailable(
                    text=error_body(503, f"TorchServe's management API answered {status}"),
                    content_type="application/json",
                )
            names += [m["modelName"] for m in body.get("models", [])]
            token = body.get("nextPageToken")
            if not token:
                return names

    # routes

    async def list_models(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        data = [model_card(name, self.started) for name in await self.names()]
        return web.json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        name = request.match_info["name"]
        if await self.default_version(name) is None:
            return failure(404, f"The model '{name}' does not exist", "model_not_found", "model")
        return web.json_response(model_card(name, self.started))

    async def unknown(self, request: web.Request) -> web.Response:
        known = ", ".join(f"POST /{r}" for r in ROUTES if r != "v1/models")
        return failure(
            404,
            f"no such route: {request.method} {request.path}; this gateway serves GET /v1/models and {known}",
            "unknown_url",
        )

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.refused(request)) is not None:
            return refused
        body = await request.read()
        try:
            name = json.loads(body).get("model")
        except (ValueError, AttributeError, RecursionError):
            return failure(
                400, "the body must be a JSON object with 'model', as the OpenAI API takes it", "invalid_body"
            )
        if not isinstance(name, str) or not name:
            return failure(
                400,
                "'model' is required: the name of a served model (GET /v1/models lists them)",
                "missing_model",
                "model",
            )
        version = await self.default_version(name)
        if version is None:
            return failure(
                404,
                f"The model '{name}' does not exist: GET /v1/models lists the served ones",
                "model_not_found",
                "model",
            )
        headers = {k: request.headers[k] for k in FORWARDED if k in request.headers}
        url = f"{self.inference}/predictions/{name}/{version}{request.path}"
        upstream = None
        try:
            upstream = await self.session.post(url, data=body, headers=headers)
            if upstream.status >= 400:
                return await self.refusal(upstream, version)
            headers = {
                **{k: upstream.headers[k] for k in PASSED_BACK if k in upstream.headers},
                VERSION_HEADER: version,
            }
            if "Content-Length" in upstream.headers:  # answered in one piece: one write
                data = await upstream.read()
                headers.pop("Content-Length")
                return web.Response(status=upstream.status, body=data, headers=headers)
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        except (ClientConnectionError, asyncio.TimeoutError) as e:
            if upstream is None:
                return failure(502, f"TorchServe's inference API did not answer: {e}", "upstream_unavailable")
            raise  # the response had started: the client sees it cut short
        finally:
            if upstream is not None:
                # Cancelled (the client went away) or done: closing the connection is what
                # tells TorchServe to drop a request still running.
                if not upstream.content.at_eof():
                    upstream.close()
                else:
                    upstream.release()

    async def refusal(self, upstream, version: str) -> web.Response:
        """A 4xx or 5xx: the handler's own (already OpenAI's body) as it is, TorchServe's rewritten."""
        text = await upstream.text()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"message": text.strip()}
        answer = answer if isinstance(answer, dict) else {}
        retry = {k: upstream.headers[k] for k in ("Retry-After",) if k in upstream.headers}
        if "error" in answer:
            return web.Response(
                status=upstream.status,
                text=text,
                content_type="application/json",
                headers={**retry, VERSION_HEADER: version},
            )
        return self.torchserve_error(upstream.status, answer, retry)

    @staticmethod
    def torchserve_error(status: int, answer: dict, retry: dict) -> web.Response:
        """TorchServe's own refusal, {"code", "type", "message"}, in OpenAI's body."""
        message = answer.get("message") or f"TorchServe answered {status}"
        if answer.get("type") == "InvalidKeyException":
            return failure(401, f"Incorrect API key provided ({message})", "invalid_api_key")
        return failure(status, message, answer.get("type"), headers=retry)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="host:port OpenAI clients call (base_url http://HOST:PORT/v1)")
    parser.add_argument("--inference", required=True, help="TorchServe's inference URL")
    parser.add_argument("--management", required=True, help="TorchServe's management URL (to find default versions)")
    parser.add_argument(
        "--key-file", type=Path, help="TorchServe's key_file.json; left out: token authorization is off"
    )
    parser.add_argument("--refresh", type=float, default=0.5, help="seconds a looked-up default version is reused")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="gateway: %(message)s")
    gateway = Gateway(args.inference, args.management, args.key_file, args.refresh)
    host, port = args.listen.rsplit(":", 1)
    print(f"gateway: http://{args.listen}/v1 -> {args.inference}/predictions/<model>/<default version>/v1", flush=True)
    # handler_cancellation: a client that disconnects cancels its handler, which closes upstream.
    web.run_app(gateway.app(), host=host, port=int(port), handler_cancellation=True, print=None, access_log=None)


if __name__ == "__main__":
    main()

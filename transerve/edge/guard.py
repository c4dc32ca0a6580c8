"""A guard in front of TorchServe's management APIs: registration from the model store only.

TorchServe 0.12 applies `allowed_urls` to URLs only: a directory path given as the `url`
of a registration is loaded from anywhere on the machine, handler code included, over
REST (POST /models) and over gRPC (ManagementAPIsService/RegisterModel) alike, and no
setting turns either API off while registration is wanted. The guard listens on the
management addresses the operator configured, passes every call through to TorchServe's
own on private loopback ports, and refuses a registration whose `url` is not an archive
in the model store (`NAME.mar` or `file://<store>/NAME.mar`). Authorization is still
TorchServe's: the guard forwards the key as it is.

    python -m transerve.edge.guard --listen 127.0.0.1:8081 --upstream http://127.0.0.1:PORT --store DIR \
        [--grpc-listen 127.0.0.1:7071 --grpc-upstream 127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


def allowed(url: str, store: Path) -> bool:
    """Is `url` an archive directly inside the model store?"""
    if url.startswith("file://"):
        path = Path(unquote(url[len("file://") :]))
        return path.suffix == ".mar" and path.parent == store and ".." not in path.parts
    return re.fullmatch(r"[\w.-]+\.mar", url) is not None and ".." not in url


def refusal_message(url: str) -> str:
    return (
        f"registration refused by transerve's guard: {url!r} is not an archive in the model store; "
        "register archives by their file name (NAME-VERSION.mar)"
    )


def refusal(url: str) -> dict:
    return {"code": 400, "type": "RegistrationRefused", "message": refusal_message(url)}


def make_handler(upstream: str, store: Path, timeout: float):
    target = urlsplit(upstream)

    class Guard(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if self.command == "POST" and urlsplit(self.path).path.rstrip("/") == "/models":
                urls = parse_qs(urlsplit(self.path).query).get("url", [])
                bad = [u for u in urls if not allowed(u, store)]
                if bad:
                    return self._reply(400, json.dumps(refusal(bad[0])).encode(), {"Content-Type": "application/json"})
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
            connection = http.client.HTTPConnection(str(target.hostname), target.port, timeout=timeout)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                kept = {k: v for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}}
                self._reply(answer.status, data, kept)
            except OSError as e:
                self._reply(
                    502,
                    json.dumps(
                        {
                            "code": 502,
                            "type": "UpstreamUnavailable",
                            "message": f"TorchServe's management API did not answer: {e}",
                        }
                    ).encode(),
                    {"Content-Type": "application/json"},
                )
            finally:
                connection.close()

        def _reply(self, status: int, data: bytes, headers: dict) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _forward

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            sys.stderr.write(f"guard: {self.address_string()} {format % args}\n")

    return Guard


def grpc_guard(listen: str, upstream: str, store: Path, timeout: float):
    """A gRPC server on `listen` passing every management call to `upstream` as bytes, but a
    RegisterModel whose url is not an archive in the store (refused with PERMISSION_DENIED)."""
    import grpc

    from transerve.torchserve import protos

    management = protos.load("management")
    register = management.method("RegisterModel")
    channel = grpc.insecure_channel(upstream)

    def forward(method: str):
        call = channel.unary_unary(method)  # no (de)serializers: the bytes pass as they came

        def handle(request: bytes, context):
            if method == register:
                try:
                    url = management.pb2.RegisterModelRequest.FromString(request).url
                except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a RegisterModelRequest")
                if not allowed(url, store):
                    sys.stderr.write(f"guard: gRPC RegisterModel refused: {url!r}\n")
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal_message(url))
            metadata = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
            try:
                return call(request, metadata=metadata, timeout=timeout)
            except grpc.RpcError as e:
                context.abort(e.code(), e.details() or "")

        return grpc.unary_unary_rpc_method_handler(handle)

    class Forward(grpc.GenericRpcHandler):
        def service(self, details):
            return forward(details.method)

    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=8), handlers=[Forward()])
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"the gRPC guard cannot listen on {listen}")
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="host:port the operator's clients call")
    parser.add_argument("--upstream", required=True, help="TorchServe's own management URL")
    parser.add_argument("--store", required=True, help="the model store registrations must come from")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for TorchServe (registrations load models)"
    )
    parser.add_argument("--grpc-listen", help="host:port gRPC management clients call")
    parser.add_argument("--grpc-upstream", help="host:port of TorchServe's own gRPC management API")
    args = parser.parse_args(argv)
    store = Path(args.store).resolve()
    if args.grpc_listen:
        grpc_server = grpc_guard(args.grpc_listen, args.grpc_upstream, store, args.timeout)
        grpc_server.start()
        print(
            f"guard: gRPC {args.grpc_listen} -> {args.grpc_upstream}, registrations from {args.store} only", flush=True
        )
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), make_handler(args.upstream, store, args.timeout))
    server.daemon_threads = True
    print(f"guard: {args.listen} -> {args.upstream}, registrations from {args.store} only", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""TorchServe's own gRPC protos, compiled from the jar it ships, for its gRPC APIs.

TorchServe 0.12 packs `inference.proto` and `management.proto` inside
`ts/frontend/model-server.jar`; grpcio-tools compiles them once per process into a
temporary directory, and the generated modules are imported from there:

    inference = protos.load("inference")    # .pb2 (messages) and .grpc (stubs)
    stub = inference.grpc.InferenceAPIsServiceStub(channel)
"""

from __future__ import annotations

import functools
import importlib
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

SERVICES = {"inference": "InferenceAPIsService", "management": "ManagementAPIsService"}


@dataclass(frozen=True)
class Protos:
    pb2: ModuleType
    grpc: ModuleType
    service: str  # the full service name, e.g. org.pytorch.serve.grpc.management.ManagementAPIsService

    def method(self, name: str) -> str:
        """The path of a method on the wire, e.g. /org.pytorch.serve...ManagementAPIsService/RegisterModel."""
        return f"/{self.service}/{name}"


def jar() -> Path:
    import ts

    return Path(ts.__file__).parent / "frontend" / "model-server.jar"


@functools.cache
def load(kind: str) -> Protos:
    """The compiled protos of TorchServe's `inference` or `management` gRPC API."""
    if kind not in SERVICES:
        raise ValueError(f"unknown gRPC API {kind!r}; TorchServe has {', '.join(SERVICES)}")
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="transerve-protos-"))
    with zipfile.ZipFile(jar()) as archive:
        archive.extract(f"proto/{kind}.proto", out)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    # google/rpc/status.proto (inference.proto returns it): its module comes from googleapis-common-protos
    common = Path(importlib.import_module("google.rpc").__path__[0]).parent.parent
    args = [
        "protoc",
        f"-I{out / 'proto'}",
        f"-I{include}",
        f"-I{common}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"{kind}.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpcio-tools could not compile {kind}.proto from {jar()}")
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module(f"{kind}_pb2")
        stubs = importlib.import_module(f"{kind}_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return Protos(pb2, stubs, f"{pb2.DESCRIPTOR.package}.{SERVICES[kind]}")

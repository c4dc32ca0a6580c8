"""Deployment files for one model version: KServe's TorchServe runtime, or a plain Kubernetes
Deployment + Service running transerve's image.

KServe (`export_kserve`) mounts the model's storage at /mnt/models and its TorchServe
runtime reads exactly two things there (TorchServe's kubernetes/kserve/kserve_wrapper at
v0.12.0): `config/config.properties`, whose `model_snapshot` names the models, and
`model-store/<archive>`. The wrapper in front of TorchServe checks readiness on the
management address and forwards predictions to the inference address, both inside the
pod and without a key, so this config turns token authorization off and binds those two
APIs to the pod's loopback; KServe's ingress is what guards the model.

One model version per directory: a new version is a new storageUri on the same
InferenceService, and `canary_percent` sends that share of traffic to it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from handlers.config import ConfigError
from transerve.build import archive
from transerve.build.spec import ModelVersion
from transerve.torchserve.metrics_config import render as render_metrics_config
from transerve.torchserve.rundir import read_properties
from transerve.torchserve.server import CONFIG_TEMPLATE

KSERVE_ROOT = "/mnt/models"  # where KServe's storage initializer puts storageUri
INFERENCE_PORT, METRICS_PORT = 8080, 8082
KSERVE_TS_PORT = 8085  # TorchServe behind KServe's wrapper, as in TorchServe's kserve image
HEALTH = ["/opt/transerve/.venv/bin/python", "-m", "transerve.torchserve.health"]


@dataclass(frozen=True)
class Resources:
    cpu: str = "2"
    memory: str = "4Gi"
    gpus: int = 0

    def manifest(self) -> dict:
        requests = {"cpu": self.cpu, "memory": self.memory}
        limits = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        return {"requests": requests, "limits": limits}


def _quantity(value: str, what: str) -> str:
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?", value):
        raise ConfigError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    return value


def _check_device(mv: ModelVersion, res: Resources) -> None:
    if res.gpus and mv.runtime.deviceType == "cpu":
        raise ConfigError(
            f"{mv.name} {mv.version} pins deviceType: cpu in {mv.spec_file}; asking for {res.gpus} GPU(s) "
            "would leave them idle: remove deviceType or set it to gpu"
        )


def resources(cpu: str, memory: str, gpus: int) -> Resources:
    if gpus < 0:
        raise ConfigError(f"gpus must be >= 0, got {gpus}")
    return Resources(_quantity(cpu, "cpu"), _quantity(memory, "memory"), gpus)


def kserve_properties(mv: ModelVersion, gpus: int = 0) -> str:
    """config/config.properties for KServe's TorchServe runtime, serving this one version."""
    runtime = mv.runtime
    snapshot = {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {
            mv.name: {
                mv.version: {
                    "defaultVersion": True,
                    "marName": mv.archive_name,
                    "minWorkers": runtime.minWorkers,
                    "maxWorkers": runtime.maxWorkers,
                    "batchSize": runtime.batchSize,
                    "maxBatchDelay": runtime.maxBatchDelay,
                    "responseTimeout": runtime.responseTimeout,
                }
            }
        },
    }
    lines = [
        f"# Written by `transerve export kserve {mv.name} {mv.version}` for KServe's TorchServe runtime,",
        f"# which mounts this directory at {KSERVE_ROOT}. KServe's wrapper reaches TorchServe inside",
        "# the pod, without a key: token authorization is off and inference/management listen on",
        "# the pod's loopback only; KServe's ingress guards the model. Metrics are for Prometheus.",
        f"inference_address=http://127.0.0.1:{KSERVE_TS_PORT}",
        f"management_address=http://127.0.0.1:{KSERVE_TS_PORT}",
        f"metrics_address=http://0.0.0.0:{METRICS_PORT}",
        "grpc_inference_port=7070",
        "grpc_management_port=7071",
        "enable_envvars_config=true",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "install_py_dep_per_model=false",
        "metrics_mode=prometheus",
        "enable_metrics_api=true",
        f"metrics_config={KSERVE_ROOT}/config/metrics.yaml",
        f"model_store={KSERVE_ROOT}/model-store",
        f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}",
        "max_request_size=6553600",
        "max_response_size=6553600",
        # the frontend's bounded heap, as transerve serves (config.properties)
        f"vmargs={read_properties(CONFIG_TEMPLATE)['vmargs']}",
    ]
    if gpus:
        lines.append(f"number_of_gpu={gpus}")
    return "\n".join(lines) + "\n"


def inference_service(
    mv: ModelVersion,
    storage_uri: str,
    res: Resources,
    min_replicas: int,
    max_replicas: int,
    canary_percent: int | None = None,
    protocol: str = "v1",
) -> dict:
    """The InferenceService for this version; with canary_percent, a canary rollout of it."""
    if not 0 <= min_replicas <= max_replicas or max_replicas < 1:
        raise ConfigError(f"replicas: need 0 <= min ({min_replicas}) <= max ({max_replicas}) and max >= 1")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise ConfigError(f"canary percent must be 0..100, got {canary_percent}")
    predictor = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "model": {
            "modelFormat": {"name": "pytorch"},
            "protocolVersion": protocol,
            "storageUri": storage_uri,
            "resources": res.manifest(),
        },
    }
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": mv.name,
            "labels": {
                "app.kubernetes.io/name": mv.name,
                "app.kubernetes.io/version": mv.version,
                "app.kubernetes.io/managed-by": "transerve",
            },
            "annotations": {
                "serving.kserve.io/enable-prometheus-scraping": "true",
                "prometheus.kserve.io/port": str(METRICS_PORT),
                "prometheus.kserve.io/path": "/metrics",
            },
        },
        "spec": {"predictor": predictor},
    }


def export_kserve(
    mv: ModelVersion,
    store: Path,
    out: Path,
    storage_uri: str | None,
    res: Resources,
    min_replicas: int = 1,
    max_replicas: int = 1,
    canary_percent: int | None = None,
    manifest_only: bool = False,
    log=print,
) -> dict[str, Path]:
    """Write out/config/config.properties, out/config/metrics.yaml, out/model-store/<archive>
    and out/inferenceservice.yaml; returns what was written."""
    _check_device(mv, res)
    storage_uri = storage_uri or f"pvc://transerve-models/{mv.name}/{mv.version}"
    manifest = inference_service(mv, storage_uri, res, min_replicas, max_replicas, canary_percent)
    out.mkdir(parents=True, exist_ok=True)
    written = {"manifest": out / "inferenceservice.yaml"}
    written["manifest"].write_text(_header(f"transerve export kserve {mv.name} {mv.version}") + dump([manifest]))
    if manifest_only:
        return written
    record = archive.build(mv, store, refuse_tampered=True, log=log)
    (out / "config").mkdir(exist_ok=True)
    (out / "model-store").mkdir(exist_ok=True)
    written["config"] = out / "config" / "config.properties"
    written["config"].write_text(kserve_properties(mv, res.gpus))
    written["metrics"] = out / "config" / "metrics.yaml"
    written["metrics"].write_text(render_metrics_config())
    written["archive"] = out / "model-store" / mv.archive_name
    shutil.copy2(record.path, written["archive"])
    return written


def kubernetes_manifests(mv: ModelVersion, image: str, res: Resources, replicas: int) -> list[dict]:
    """A Deployment of transerve's image serving this version, and its Service."""
    if replicas < 1:
        raise ConfigError(f"replicas must be >= 1, got {replicas}")
    name = f"{mv.name}-{mv.version.replace('.', '-')}"
    labels = {"app.kubernetes.io/name": mv.name, "app.kubernetes.io/version": mv.version}
    startup_seconds = max(mv.runtime.startupTimeout, 120)
    container = {
        "name": "torchserve",
        "image": image,
        "env": [{"name": "TRANSERVE_MODELS", "value": f"{mv.name}:{mv.version}"}],
        "ports": [
            {"name": "inference", "containerPort": INFERENCE_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": res.manifest(),
        # Probes run inside the container, where the key file is: TorchServe refuses /ping
        # without the inference key while token authorization is on.
        "startupProbe": {
            "exec": {"command": HEALTH},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": startup_seconds // 5,
        },
        "livenessProbe": {"exec": {"command": HEALTH}, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 4},
        "readinessProbe": {
            "exec": {"command": [*HEALTH, "--model", mv.name]},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 60},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [
                {"name": "inference", "port": INFERENCE_PORT, "targetPort": "inference"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }
    return [deployment, service]


def export_kubernetes(mv: ModelVersion, out: Path, image: str, res: Resources, replicas: int) -> dict[str, Path]:
    _check_device(mv, res)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "kubernetes.yaml"
    documents = kubernetes_manifests(mv, image, res, replicas)
    path.write_text(_header(f"transerve export k8s {mv.name} {mv.version}") + dump(documents))
    return {"manifest": path}


class _Dumper(yaml.SafeDumper):
    """Plain YAML for kubectl and people: no &anchors for repeated label maps."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump(documents: list[dict]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)


def _header(command: str) -> str:
    return f"# Written by `{command}`; regenerate it rather than edit it.\n"


# The example manifests committed under deploy/ (a unit test keeps them in step):
# (target, model, version, output directory, export options).
EXAMPLES: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    ("kserve", "minilm-embed", "1.0", "deploy/kserve/minilm-embed-1.0", {"max_replicas": 4}),
    (
        "kserve",
        "minilm-embed",
        "1.1",
        "deploy/kserve/minilm-embed-1.1-canary",
        {"max_replicas": 4, "canary_percent": 10},
    ),
    (
        "kserve",
        "smollm2-chat",
        "1.0",
        "deploy/kserve/smollm2-chat-1.0-gpu",
        {"max_replicas": 2, "res": Resources(cpu="4", memory="8Gi", gpus=1)},
    ),
    ("k8s", "minilm-embed", "1.0", "deploy/kubernetes/minilm-embed-1.0", {"replicas": 2}),
)


def write_examples(root: Path) -> list[Path]:
    from transerve.build.spec import find_spec

    written = []
    for target, name, version, directory, options in EXAMPLES:
        mv = find_spec(name).version(version)
        options = dict(options)
        res = options.pop("res", Resources())
        out = root / directory
        if target == "kserve":
            files = export_kserve(mv, archive.STORE, out, None, res, manifest_only=True, **options)
        else:
            files = export_kubernetes(mv, out, "transerve:latest", res, **options)
        written.append(files["manifest"])
    return written


if __name__ == "__main__":  # python -m transerve.operate.deploy: regenerate the examples under deploy/
    from transerve.build.spec import REPO

    for path in write_examples(REPO):
        print(path.relative_to(REPO))

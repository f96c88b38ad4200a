"""deploy/kubernetes: the kustomization renders, every manifest is valid against the
Kubernetes API schemas (kubernetes-validate, offline, strict: no unknown fields), and the
pods are hardened as the issue asks. The relay.toml it ships loads."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trustme
import yaml

from relay.config import Config
from relay.policy import load_policies

BASE = Path(__file__).parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.30"


REPO = BASE.parents[1]


def readme_section() -> str:
    """README.md's "Deploy on Kubernetes", whose steps these tests follow."""
    text = (REPO / "README.md").read_text()
    return text.split("\n## Deploy on Kubernetes\n", 1)[1].split("\n## ", 1)[0]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is needed to render the kustomization (scripts/setup.sh --test)")
    return found


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The base rendered with the README's own command, from the repository's root."""
    [command] = re.findall(r"^ *(kubectl kustomize \S+)$", readme_section(), re.M)
    result = subprocess.run([kubectl(), *command.split()[1:]], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # e.g. a deprecated field
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


def test_the_readme_steps_make_what_the_pods_mount(
        rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    """Step 1 builds the image the Deployment runs; step 3's commands, run as written
    (kubectl asked for the objects instead of creating them), make every Secret the
    pods mount, with the keys relay.toml names; its dkim.toml and key load as policies."""
    section = readme_section()
    pod = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]
    [built] = re.findall(r"docker build -t (\S+) \.", section)
    assert pod["containers"][0]["image"] == built

    secrets = _run_secret_steps(section, tmp_path)
    assert set(secrets["relay-secrets"]["data"]) == {"dsn", "admin-token", "feedback-key"}
    assert secrets["relay-tls"]["type"] == "kubernetes.io/tls"
    mounts = {v["name"]: v for v in pod["volumes"]}
    assert mounts["secrets"]["secret"]["secretName"] == "relay-secrets"
    assert mounts["tls"]["secret"]["secretName"] == "relay-tls"
    data = next(d for d in rendered if d["kind"] == "ConfigMap"
                and "relay.toml" in d["data"])["data"]
    for key in ("dsn", "admin-token", "feedback-key"):  # the files relay.toml names
        assert f"/run/secrets/relay/{key}" in data["relay.toml"]

    dkim = secrets["relay-dkim"]["data"]
    assert set(dkim) == {"dkim.toml", "example.com.s2026.pem"}
    projected = {source["secret"]["name"]: source["secret"]["items"]
                 for source in mounts["policies"]["projected"]["sources"] if "secret" in source}
    assert projected["relay-dkim"] == [{"key": "dkim.toml", "path": "dkim.toml"}]
    policies = tmp_path / "policies"  # /etc/relay/policies as a pod sees it
    policies.mkdir()
    keys = tmp_path / "dkim"  # /etc/relay/dkim
    for name in ("access.toml", "domains.toml"):
        (policies / name).write_text(data[name])
    toml = base64.b64decode(dkim["dkim.toml"]).decode()
    (policies / "dkim.toml").write_text(toml.replace("/etc/relay/dkim", str(keys)))
    loaded = load_policies(policies)
    assert [k.domain for k in loaded.dkim.keys] == ["example.com"]


def _run_secret_steps(section: str, directory: Path) -> dict[str, dict[str, Any]]:
    """Step 3's shell block, run in `directory` with a kubectl that prints the objects it
    is asked to create (--dry-run=client): the Secrets, by name."""
    block = next(b for b in re.findall(r"```sh\n(.*?)```", section, re.S)
                 if "kubectl create secret" in b)
    certificate = trustme.CA().issue_cert("relay.example.com")
    certificate.cert_chain_pems[0].write_to_path(str(directory / "relay.crt"))
    certificate.private_key_pem.write_to_path(str(directory / "relay.key"))
    (directory / ".venv").symlink_to(Path(sys.prefix))
    tools = directory / "bin"
    tools.mkdir()
    (tools / "kubectl").write_text(f'#!/bin/sh\nset -e\n{kubectl()} "$@" --dry-run=client '
                                   '-o yaml >> "$SECRETS"\necho --- >> "$SECRETS"\n')
    (tools / "kubectl").chmod(0o755)
    out = directory / "secrets.yaml"
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "SECRETS": str(out)}
    result = subprocess.run(["sh", "-ec", block], cwd=directory, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    made = [d for d in yaml.safe_load_all(out.read_text()) if d]
    for document in made:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    return {d["metadata"]["name"]: d for d in made}

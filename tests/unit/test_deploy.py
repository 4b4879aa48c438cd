"""What can be checked of the Docker/Kubernetes deployment without a Docker engine or a cluster."""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ROOT = DOCKER.parent
K8S_VERSION = "1.30.0"


def yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_compose_file_matches_the_compose_spec() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    (compose,) = yaml_documents(DOCKER / "compose.yaml")
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=str)
    assert not errors, [e.message for e in errors]
    triton, frontend = compose["services"]["triton"], compose["services"]["frontend"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "/readyz" in " ".join(frontend["healthcheck"]["test"])
    assert frontend["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "runs:/data" in frontend["volumes"]


@pytest.mark.parametrize("manifest", sorted((DOCKER / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_validate_strictly(manifest: Path) -> None:
    for document in yaml_documents(manifest):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_kubernetes_wiring() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for p in (DOCKER / "k8s").glob("*.yaml") for d in yaml_documents(p)}
    triton = docs[("Deployment", "sd-triton")]["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "triton_canary.py" in " ".join(triton["livenessProbe"]["exec"]["command"])
    frontend = docs[("Deployment", "sd-frontend")]["spec"]["template"]["spec"]["containers"][0]
    assert frontend["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert frontend["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert docs[("Service", "triton-grpc")]["spec"]["clusterIP"] == "None"
    hpa = docs[("HorizontalPodAutoscaler", "sd-triton")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "sd-triton"


@pytest.mark.parametrize("dockerfile", ["triton.Dockerfile", "frontend.Dockerfile"])
def test_dockerfiles_copy_only_what_exists(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    sources = [part for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE) for part in line.split()[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_frontend_image_is_slim_and_non_root() -> None:
    text = (DOCKER / "frontend.Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^USER app$", text, re.MULTILINE)
    assert "pip install --no-cache-dir ." in text  # the core dependencies: no torch


def test_triton_image_matches_the_tested_server_and_pins() -> None:
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in text  # Triton 2.51.0, as nvidia-pytriton 0.7.0 bundles
    pinned = dict(
        line.split("==")
        for line in (DOCKER / "requirements-triton.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["model"] + project["dependencies"]:
        name, _, version = requirement.partition("==")
        if name in pinned and name != "scipy":  # scipy 1.17 needs Python 3.11; the container has 3.10
            assert pinned[name] == version, name

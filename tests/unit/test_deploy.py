"""What can be checked of the Docker/Kubernetes deployment without a Docker engine or a cluster."""

from __future__ import annotations

import importlib.resources
import json
import math
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ROOT = DOCKER.parent
K8S_VERSION = "1.30.0"


def yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kubernetes_documents() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in (DOCKER / "k8s").glob("*.yaml") for d in yaml_documents(p)}


def compose_environment(service: dict) -> dict[str, str]:
    """A compose service's environment, written as a mapping or as a list of NAME=value."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {name: str(value) for name, value in environment.items()}


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


def test_compose_frontend_uses_the_postgres_service() -> None:
    (compose,) = yaml_documents(DOCKER / "compose.yaml")
    services = compose["services"]
    assert "postgres" in services, "compose.yaml has no `postgres` service for the shared run store"
    postgres, frontend = services["postgres"], services["frontend"]
    assert re.fullmatch(r"postgres:\d+.*", postgres.get("image", "")), (
        f"the postgres service should run a pinned postgres image, not {postgres.get('image')!r}"
    )
    healthcheck = " ".join(postgres.get("healthcheck", {}).get("test", []))
    assert "pg_isready" in healthcheck, "the postgres service needs a pg_isready healthcheck"
    assert any(str(volume).endswith(":/var/lib/postgresql/data") for volume in postgres.get("volumes", [])), (
        "the postgres service should keep its data in a volume at /var/lib/postgresql/data"
    )

    url = compose_environment(frontend).get("SD_DATABASE_URL", "")
    assert url, "the frontend service does not set SD_DATABASE_URL (it would fall back to SQLite)"
    parts = urlsplit(url)
    assert parts.scheme in ("postgresql", "postgres"), f"SD_DATABASE_URL is not a PostgreSQL URL: {url!r}"
    assert parts.hostname == "postgres", f"SD_DATABASE_URL does not point at the postgres service: {url!r}"
    assert parts.port in (None, 5432), f"SD_DATABASE_URL uses port {parts.port}, the postgres service listens on 5432"
    db = compose_environment(postgres)
    assert parts.username == db.get("POSTGRES_USER"), "SD_DATABASE_URL's user is not the service's POSTGRES_USER"
    assert parts.password == db.get("POSTGRES_PASSWORD"), (
        "SD_DATABASE_URL's password is not the service's POSTGRES_PASSWORD"
    )
    assert parts.path == f"/{db.get('POSTGRES_DB')}", "SD_DATABASE_URL's database is not the service's POSTGRES_DB"

    depends_on = frontend.get("depends_on", {})
    assert isinstance(depends_on, dict), "the frontend's depends_on needs the long form (with conditions)"
    assert depends_on.get("postgres", {}).get("condition") == "service_healthy", (
        "the frontend does not wait for a healthy postgres (depends_on: postgres: condition: service_healthy)"
    )


@pytest.mark.parametrize("manifest", sorted((DOCKER / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_validate_strictly(manifest: Path) -> None:
    for document in yaml_documents(manifest):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_kubernetes_wiring() -> None:
    docs = kubernetes_documents()
    triton = docs[("Deployment", "sd-triton")]["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "triton_canary.py" in " ".join(triton["livenessProbe"]["exec"]["command"])
    frontend = docs[("Deployment", "sd-frontend")]["spec"]["template"]["spec"]["containers"][0]
    assert frontend["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert frontend["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert docs[("Service", "triton-grpc")]["spec"]["clusterIP"] == "None"
    hpa = docs[("HorizontalPodAutoscaler", "sd-triton")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "sd-triton"


def test_kubernetes_frontend_replicas_share_a_database() -> None:
    docs = kubernetes_documents()
    deployment = docs[("Deployment", "sd-frontend")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    replicas = spec.get("replicas", 1)
    assert replicas >= 3, f"the frontend Deployment runs {replicas} replica(s); it needs at least 3"
    strategy = spec.get("strategy", {})
    assert strategy.get("type", "RollingUpdate") == "RollingUpdate", (
        f"the frontend Deployment's strategy is {strategy.get('type')!r}: a Recreate takes every replica down"
    )

    claims = [volume["name"] for volume in pod.get("volumes", []) if "persistentVolumeClaim" in volume]
    assert not claims, f"the frontend mounts PersistentVolumeClaim volume(s) {claims}: replicas cannot share one"

    (frontend,) = [container for container in pod["containers"] if container["name"] == "frontend"]
    env = {item["name"]: item for item in frontend.get("env", [])}
    assert "SD_DATABASE_URL" in env, "the frontend container has no SD_DATABASE_URL (each pod would use SQLite)"
    secret = env["SD_DATABASE_URL"].get("valueFrom", {}).get("secretKeyRef", {})
    assert secret.get("name") and secret.get("key"), "SD_DATABASE_URL must come from a Secret (secretKeyRef)"
    assert not secret.get("optional", False), "SD_DATABASE_URL's secretKeyRef must not be optional"

    budgets = [
        doc
        for (kind, _), doc in docs.items()
        if kind == "PodDisruptionBudget"
        and (selector := doc["spec"].get("selector", {}).get("matchLabels"))
        and selector.items() <= labels.items()
    ]
    assert budgets, f"no PodDisruptionBudget selects the frontend pods (labels {labels})"
    for budget in budgets:
        name = budget["metadata"]["name"]
        if "minAvailable" in budget["spec"]:
            available = pod_count(budget["spec"]["minAvailable"], replicas)
        else:
            available = replicas - pod_count(budget["spec"].get("maxUnavailable", 0), replicas)
        assert 2 <= available < replicas, (
            f"PodDisruptionBudget {name} keeps {available} of {replicas} frontend pods: it should keep at least 2"
            " and still let a node drain"
        )

    affinity = pod.get("affinity", {}).get("podAntiAffinity", {})
    terms = [term["podAffinityTerm"] for term in affinity.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    terms += affinity.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    terms += pod.get("topologySpreadConstraints", [])
    assert any(
        term.get("topologyKey") == "kubernetes.io/hostname"
        and term.get("labelSelector", {}).get("matchLabels", {}).items() <= labels.items()
        and term.get("labelSelector", {}).get("matchLabels")
        for term in terms
    ), "the frontend pods are not spread over nodes (podAntiAffinity or topologySpreadConstraints by hostname)"

    for (kind, name), doc in docs.items():
        if kind == "HorizontalPodAutoscaler" and doc["spec"]["scaleTargetRef"]["name"] == "sd-frontend":
            assert doc["spec"].get("minReplicas", 1) >= 3, f"HPA {name} may scale the frontend below 3 replicas"


def pod_count(value: int | str, replicas: int) -> int:
    """A PodDisruptionBudget's minAvailable or maxUnavailable in pods (percentages round up, as Kubernetes does)."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(replicas * int(value[:-1]) / 100)
    return int(value)


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


def test_the_installed_package_carries_the_playground(tmp_path: Path) -> None:
    """The frontend image installs the package (not the source tree): the page must be in the wheel."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("frontend", "embedded", "bench"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"frontend/playground/{name}" for name in ("index.html", "playground.css", "playground.js")}
    assert expected <= names, sorted(n for n in names if "playground" in n)


def test_the_autoscaler_reads_the_metric_its_adapter_rule_serves_and_triton_has_a_disruption_budget() -> None:
    docs = kubernetes_documents()
    metric = docs[("HorizontalPodAutoscaler", "sd-triton")]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    (rule,) = yaml.safe_load(docs[("ConfigMap", "sd-triton-adapter-rules")]["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == metric
    assert re.match(rule["name"]["matches"], "nv_inference_pending_request_count")
    assert 'model="sd_img2img"' in rule["seriesQuery"] and 'model="sd_img2img"' in rule["metricsQuery"]
    budget = docs[("PodDisruptionBudget", "sd-triton")]["spec"]
    triton = docs[("Deployment", "sd-triton")]["spec"]["selector"]["matchLabels"]
    assert budget["selector"]["matchLabels"] == triton and budget["maxUnavailable"] == 1

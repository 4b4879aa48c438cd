"""Rules that must live in more than one place (another process, another package, the page's script) are
pinned here to their one source: run statuses, the API's defaults, the routes against OpenAPI, versions."""

from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

from aiohttp import web

from frontend import defaults
from frontend.app import create_app
from frontend.generation import GenerationInput
from frontend.http.openapi import openapi_document
from frontend.http.playground import ASSETS, PAGE_PATHS
from frontend.schemas import PredictBody
from frontend.settings import Settings
from frontend.store import sql
from frontend.store.records import TERMINAL, UNFINISHED, RunStatus
from frontend.version import user_agent, version

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {
    "num_inference_steps": defaults.NUM_INFERENCE_STEPS,
    "guidance_scale": defaults.GUIDANCE_SCALE,
    "strength": defaults.STRENGTH,
    "num_images_per_prompt": defaults.NUM_IMAGES_PER_PROMPT,
    "negative_prompt": defaults.NEGATIVE_PROMPT,
    "scheduler": defaults.SCHEDULER,
}


# -- run statuses: the enum, the SQL, the client, the playground ---------------------------------------
def test_the_sql_status_lists_come_from_the_enum() -> None:
    assert sql.UNFINISHED_SQL == "status IN ('queued', 'processing')"
    assert set(re.findall(r"'(\w+)'", sql.FINISHED_SQL)) == {s.value for s in TERMINAL}
    assert set(TERMINAL) | set(UNFINISHED) == set(RunStatus) and not set(TERMINAL) & set(UNFINISHED)


def test_the_clients_and_the_playgrounds_final_statuses_are_the_stores_terminal_ones() -> None:
    from sd_img2img_client.models import FINAL_STATUSES

    assert {s.value for s in TERMINAL} == FINAL_STATUSES
    script = (ROOT / "frontend" / "playground" / "playground.js").read_text()
    declared = re.search(r"const FINAL = new Set\(\[([^\]]*)\]\);", script)
    assert declared is not None, "playground.js no longer declares FINAL"
    assert set(re.findall(r"'(\w+)'", declared.group(1))) == {s.value for s in TERMINAL}


# -- the API's defaults: diffusers', the schema, the domain object, the model, the client ----------------
def _dataclass_defaults(cls: Any) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name in DEFAULTS}


def test_the_defaults_are_diffusers_own() -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    signature = inspect.signature(StableDiffusionImg2ImgPipeline.__call__).parameters
    for name in ("num_inference_steps", "guidance_scale", "strength", "num_images_per_prompt"):
        assert signature[name].default == DEFAULTS[name], name


def test_the_aesthetic_scores_defaults_are_the_sdxl_refiners_in_diffusers_and_the_model() -> None:
    """The API's default is "not given" (the model applies these); the schema's descriptions and the docs say them."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from families import AESTHETIC_DEFAULTS

    signature = inspect.signature(StableDiffusionXLImg2ImgPipeline.__call__).parameters
    ours = {"aesthetic_score": defaults.AESTHETIC_SCORE, "negative_aesthetic_score": defaults.NEGATIVE_AESTHETIC_SCORE}
    assert ours == {name: signature[name].default for name in ours} == AESTHETIC_DEFAULTS
    for name, value in ours.items():
        assert PredictBody.model_fields[name].default is None
        assert f"default {value}" in (PredictBody.model_fields[name].description or ""), name


def test_schema_domain_model_and_client_share_the_defaults() -> None:
    from img2img_requests import Defaults
    from sd_img2img_client.models import Img2ImgRequest
    from sd_img2img_client.triton import TritonImg2ImgClient

    schema = {name: field.default for name, field in PredictBody.model_fields.items() if name in DEFAULTS}
    triton_call = inspect.signature(TritonImg2ImgClient.generate).parameters
    copies = {
        "PredictBody": schema,
        "GenerationInput": _dataclass_defaults(GenerationInput),
        "model Defaults": _dataclass_defaults(Defaults),
        "client Img2ImgRequest": _dataclass_defaults(Img2ImgRequest),
        "client TritonImg2ImgClient.generate": {n: p.default for n, p in triton_call.items() if n in DEFAULTS},
    }
    for where, found in copies.items():
        assert found == {name: DEFAULTS[name] for name in found}, where
        assert {"num_inference_steps", "guidance_scale", "strength"} <= set(found), where


# -- routes: the router is what OpenAPI documents ---------------------------------------------------------
def test_the_router_serves_exactly_the_documented_paths(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_keys="sk-a")  # type: ignore[arg-type]
    app = create_app(settings)
    served: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method not in ("HEAD", "OPTIONS") and isinstance(path, str):
            served.add((path, route.method.lower()))
    documented = {(path, method) for path, item in openapi_document(settings)["paths"].items() for method in item}
    # The playground's page aliases and assets are one documented page, /playground.
    page = {(path, "get") for path in (*PAGE_PATHS, *ASSETS)}
    assert served - page == documented - {("/playground", "get")}
    assert ("/playground", "get") in documented and ("/playground", "get") in served
    assert isinstance(app, web.Application)


# -- versions: the package's, everywhere ---------------------------------------------------------------
def test_openapi_and_the_user_agent_carry_the_packages_version(tmp_path: Path) -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version() == declared
    settings = Settings(data_dir=tmp_path / "data", api_keys="sk-a")  # type: ignore[arg-type]
    assert openapi_document(settings)["info"]["version"] == declared
    assert user_agent() == f"sd-img2img/{declared}"


# -- death: the words that prove the model cannot serve, to the frontend, the liveness canary and the model ------
def test_the_frontend_and_the_canary_call_the_same_failures_death_and_the_model_uses_them() -> None:
    from embedded.supervisor import canary  # docker/triton_canary.py: stdlib only, alone in the Triton image
    from frontend.triton_backend import FATAL_MARKERS

    assert FATAL_MARKERS == canary.FATAL_MARKERS
    model = (ROOT / "model_repository" / "sd_img2img" / "1" / "model.py").read_text()
    said = re.search(r'^FATAL_MARKER = "([^"]+)"$', model, re.MULTILINE)
    assert said is not None, "model.py no longer declares FATAL_MARKER"
    assert said.group(1) in canary.FATAL_MARKERS  # what a model whose step engine died says

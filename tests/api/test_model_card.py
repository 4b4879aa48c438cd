"""The served model's card (what it says it is) at the API: a field it does not take refused before a run
exists, the image side it accepts, the OpenAPI document that shows it; and without a card, the model's own
refusal mapped to the same 400."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from frontend.app import create_app
from frontend.settings import Settings

from ..helpers.api import SDXL_BASE, SDXL_REFINER, ScriptedBackend, auth, body, predict

Client = TestClient[web.Request, web.Application]


async def runs_of(api: Client) -> list[dict[str, Any]]:
    async with api.get("/runs", headers=auth()) as response:
        return list((await response.json())["runs"])


async def openapi_body(api: Client) -> dict[str, Any]:
    async with api.get("/openapi.json") as response:
        return dict((await response.json())["components"]["schemas"]["PredictBody"])


@pytest.mark.parametrize("name", ["aesthetic_score", "negative_aesthetic_score"])
@pytest.mark.parametrize("background", [False, True], ids=["sync", "webhook-less background"])
async def test_a_field_the_served_model_does_not_take_is_refused_before_a_run_exists(
    api: Client, backend: ScriptedBackend, name: str, background: bool
) -> None:
    backend.card = SDXL_BASE
    headers = {**auth(), "Prefer": "respond-async"} if background else auth()
    status, answer, _ = await predict(api, body(**{name: 6.0}), headers=headers)
    assert status == 400, answer
    assert answer["error"] == {
        "code": "unsupported_field",
        "message": f"{name}: the served model (SDXL base) does not take it; only an SDXL refiner does",
        "param": name,
    }
    assert backend.jobs == [] and await runs_of(api) == []  # nothing was accepted, nothing sent
    status, answer, _ = await predict(api, body(**{name: None}))  # null is "not given": fine on any model
    assert status == 200, answer


async def test_a_refiner_takes_the_aesthetic_scores_and_none_means_its_default(
    api: Client, backend: ScriptedBackend
) -> None:
    backend.card = SDXL_REFINER
    status, answer, _ = await predict(api, body(aesthetic_score=7.5, negative_aesthetic_score=1.0))
    assert status == 200, answer
    status, answer, _ = await predict(api, body())
    assert status == 200, answer
    given, default = backend.jobs
    assert (given.aesthetic_score, given.negative_aesthetic_score) == (7.5, 1.0)
    assert (default.aesthetic_score, default.negative_aesthetic_score) == (None, None)
    (newest, older) = await runs_of(api)
    assert (older["params"]["aesthetic_score"], older["params"]["negative_aesthetic_score"]) == (7.5, 1.0)
    assert newest["params"]["aesthetic_score"] is None  # history refills the form with what was sent


async def test_without_a_card_the_field_goes_to_the_model_whose_refusal_is_the_same_400(
    api: Client, backend: ScriptedBackend
) -> None:
    assert backend.card is None
    status, answer, _ = await predict(api, body(prompt="fail:unsupported", aesthetic_score=7.0))
    assert status == 400 and answer["error"]["code"] == "unsupported_field", answer
    assert answer["error"]["param"] == "aesthetic_score"
    assert answer["error"]["message"].startswith("aesthetic_score: ")
    assert backend.jobs[0].aesthetic_score == 7.0  # it reached the model, which refused it


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-0.5, "greater than or equal to 0"), (10.5, "less than or equal to 10"), ("NaN", "finite number")],
)
async def test_aesthetic_scores_out_of_bounds_are_invalid_whatever_the_model(
    api: Client, backend: ScriptedBackend, value: Any, expected: str
) -> None:
    backend.card = SDXL_REFINER
    raw = body(aesthetic_score=0.0)
    text = json.dumps(raw).replace('"aesthetic_score": 0.0', f'"aesthetic_score": {value}')
    status, answer, _ = await predict(api, text)
    assert (status, answer["error"]["param"]) == (422, "aesthetic_score"), answer
    assert expected in answer["error"]["message"]


async def test_images_fit_the_served_models_side_unless_the_setting_says_otherwise(
    api: Client, backend: ScriptedBackend, aiohttp_client: Any, settings: Settings
) -> None:
    status, answer, _ = await predict(api, body())  # 64x64, unknown model: under 1024, kept
    assert status == 200, answer
    backend.card = dataclasses.replace(SDXL_BASE, max_image_side=32)
    status, answer, _ = await predict(api, body())
    assert status == 200, answer
    assert [job.image.shape for job in backend.jobs] == [(64, 64, 3), (32, 32, 3)]
    assert (await openapi_body(api))["x-limits"]["max_image_side"] == 32

    pinned = await aiohttp_client(create_app(settings.model_copy(update={"max_image_side": 48}), backend=backend))
    status, answer, _ = await predict(pinned, body())
    assert status == 200, answer
    assert backend.jobs[-1].image.shape == (48, 48, 3)  # the setting wins over the card
    assert (await openapi_body(pinned))["x-limits"]["max_image_side"] == 48


async def test_openapi_shows_the_served_models_card_and_only_while_it_is_known(
    api: Client, backend: ScriptedBackend
) -> None:
    unknown = await openapi_body(api)
    assert "x-model" not in unknown and unknown["x-limits"]["max_image_side"] == 1024
    assert {"aesthetic_score", "negative_aesthetic_score"} <= set(unknown["properties"])
    assert "SDXL refiner only" in unknown["properties"]["aesthetic_score"]["description"]

    backend.card = SDXL_REFINER  # the model was read (the document is built per request)
    known = await openapi_body(api)
    assert known["x-model"] == {
        "family": "sdxl-refiner",
        "title": "SDXL refiner",
        "schedulers": ["ddim", "euler"],
        "fields": ["aesthetic_score", "negative_aesthetic_score"],
        "native_side": 1024,
        "max_image_side": 2048,
    }
    assert known["properties"]["scheduler"]["examples"] == ["ddim", "euler"]  # exactly the model's
    assert known["x-limits"]["max_image_side"] == 2048

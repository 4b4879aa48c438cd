"""The HTTP API in process: ``create_app(settings)`` under pytest-aiohttp, the backend replaced at its seam
(``frontend/triton_backend.py``, the one module that imports tritonclient) by a scripted one, the real
SQLite store in a temporary folder, real file servers and webhook receivers on 127.0.0.1.

Milliseconds per test; what needs a real tritonserver stays in tests/e2e.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from frontend.errors import ERROR_TABLE

from ..helpers.api import ScriptedBackend, auth, body, predict
from ..helpers.servers import png_bytes
from ..helpers.support import API_KEYS, WEBHOOK_SECRET


async def test_the_seed_request_answers_in_the_seed_shape_with_bytes_fixed_by_the_seed(
    api: TestClient[web.Request, web.Application], backend: ScriptedBackend
) -> None:
    status, first, _ = await predict(api, body(num_images_per_prompt=2))
    assert status == 200, first
    assert first["message"] == "Successfully generated image" and first["seeds"] == [120, 121]
    status, again, _ = await predict(api, body(num_images_per_prompt=2))
    assert again["result"] == first["result"] and again["run_id"] != first["run_id"]
    sent = backend.jobs[0]
    assert (sent.prompt, sent.seed, sent.num_inference_steps, sent.image.shape) == ("a cat", 120, 8, (64, 64, 3))


@pytest.mark.parametrize("header", [API_KEYS[0], f"Bearer {API_KEYS[0]}", f"  bearer   {API_KEYS[0]} "])
async def test_the_key_is_accepted_bare_or_as_a_bearer_token(
    api: TestClient[web.Request, web.Application], header: str
) -> None:
    status, answer, _ = await predict(api, body(), headers={"Authorization": header})
    assert status == 200, answer


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}, {"Authorization": "sk-wrong"}, auth(API_KEYS[0] + "x")])
async def test_a_missing_or_wrong_key_is_401(
    api: TestClient[web.Request, web.Application], headers: dict[str, str], backend: ScriptedBackend
) -> None:
    status, answer, response_headers = await predict(api, body(), headers=headers)
    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    assert response_headers["WWW-Authenticate"] == "Bearer" and backend.jobs == []


async def test_another_keys_run_is_404_like_an_unknown_one(api: TestClient[web.Request, web.Application]) -> None:
    _, answer, _ = await predict(api, body())
    async with api.get(f"/runs/{answer['run_id']}", headers=auth(API_KEYS[0])) as mine:
        assert mine.status == 200 and (await mine.json())["status"] == "succeeded"
    async with api.get(f"/runs/{answer['run_id']}", headers=auth(API_KEYS[1])) as theirs:
        not_theirs = await theirs.json()
    async with api.get("/runs/no-such-run", headers=auth(API_KEYS[1])) as unknown:
        assert (theirs.status, unknown.status) == (404, 404)
        assert not_theirs["error"]["code"] == (await unknown.json())["error"]["code"] == "not_found"


ERROR_CASES: dict[str, tuple[int, Callable[[], Any]]] = {
    "invalid_json": (400, lambda: '{"prompt": "a cat"\n"seed": 1}'),
    "invalid_request": (422, lambda: body(num_inference_steps=0)),
    "unsupported_field": (400, lambda: body(prompt="fail:unsupported", aesthetic_score=7.0)),
    "unsupported_image": (415, lambda: body(image=base64.b64encode(b"%PDF-1.7 not an image").decode())),
    "invalid_image": (422, lambda: body(image=base64.b64encode(png_bytes()[:60]).decode())),
    "invalid_request:not base64": (422, lambda: body(image="not base64 at all!")),
    "file_url_failed": (422, lambda: {"prompt": "a cat", "file_url": "http://169.254.169.254/latest/meta-data"}),
    "payload_too_large": (413, lambda: body(prompt="x" * 2_100_000)),
    "backend_unavailable": (503, lambda: body(prompt="fail:unavailable")),
    "backend_timeout": (504, lambda: body(prompt="fail:timeout")),
    "generation_failed": (500, lambda: body(prompt="fail:generation")),
}


@pytest.mark.parametrize("code", sorted(ERROR_CASES))
async def test_every_predict_error_row_answers_its_status_and_code(
    api: TestClient[web.Request, web.Application], code: str
) -> None:
    expected_status, make = ERROR_CASES[code]
    code = code.partition(":")[0]  # "code:variant": another way to the same row
    status, answer, headers = await predict(api, make())
    assert (status, answer["error"]["code"]) == (expected_status, code), answer
    assert set(answer["error"]) == {"code", "message", "param"} and answer["error"]["message"]
    if status == 503:
        assert int(headers["Retry-After"]) > 0
    assert (status, code) in {(s, c) for s, c, _ in ERROR_TABLE}


async def test_the_remaining_error_rows_and_an_unexpected_failure(
    api: TestClient[web.Request, web.Application],
) -> None:
    async with api.get("/no/such/endpoint", headers=auth()) as response:
        assert (response.status, (await response.json())["error"]["code"]) == (404, "not_found")
    async with api.put("/predict", headers=auth()) as response:
        assert (response.status, (await response.json())["error"]["code"]) == (405, "method_not_allowed")
    status, answer, _ = await predict(api, body(prompt="fail:crash"))
    assert (status, answer["error"]["code"]) == (500, "internal_error")
    assert "a bug" not in json.dumps(answer)  # internals stay in the log
    status, answer, _ = await predict(api, body())
    assert status == 200  # and the server keeps serving


async def test_a_run_the_model_server_cancels_ends_canceled_not_unavailable(
    api: TestClient[web.Request, web.Application],
) -> None:
    """Triton's CANCELLED is the run's canceled outcome (409 run_canceled, status canceled), not a 503 to retry."""
    status, answer, _ = await predict(api, body(prompt="fail:server-cancel"))
    assert (status, answer["error"]["code"]) == (409, "run_canceled"), answer
    run = answer["error"]["run"]
    async with api.get(f"/runs/{run['run_id']}", headers=auth()) as response:
        assert (await response.json())["status"] == "canceled"


async def test_invalid_fields_are_named_with_their_value(api: TestClient[web.Request, web.Application]) -> None:
    status, answer, _ = await predict(api, body(strength=1.5))
    assert (status, answer["error"]["param"]) == (422, "strength")
    assert "1.5" in answer["error"]["message"]


async def test_file_url_is_fetched_from_an_allowed_host(
    api: TestClient[web.Request, web.Application], backend: ScriptedBackend
) -> None:
    image = png_bytes((32, 48), seed=3)
    files = web.Application()

    async def serve_image(_: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/png")

    files.router.add_get("/init.png", serve_image)
    async with TestServer(files, host="127.0.0.1") as server:
        status, answer, _ = await predict(api, {"prompt": "a cat", "file_url": str(server.make_url("/init.png"))})
    assert status == 200, answer
    assert answer["image_source"] == "file_url" and (answer["width"], answer["height"]) == (48, 32)
    assert backend.jobs[-1].image.shape == (32, 48, 3)


async def test_a_webhook_run_answers_202_then_delivers_a_signed_result_and_get_shows_it(
    api: TestClient[web.Request, web.Application],
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        arrived.set()
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    async with TestServer(receiver, host="127.0.0.1") as server:
        status, accepted, headers = await predict(api, body(webhook_endpoint=str(server.make_url("/hook"))))
        assert (status, accepted["status"]) == (202, "queued")
        assert headers["Location"] == f"/runs/{accepted['run_id']}"
        await asyncio.wait_for(arrived.wait(), 10)
    headers, raw = received[0]
    delivered = Webhook(WEBHOOK_SECRET).verify(raw, headers)
    assert delivered["status"] == "succeeded" and delivered["run_id"] == accepted["run_id"]
    for _ in range(100):
        async with api.get(f"/runs/{accepted['run_id']}", headers=auth()) as response:
            view = await response.json()
        if view.get("webhook", {}).get("status") == "delivered":
            break
        await asyncio.sleep(0.02)
    assert view["status"] == "succeeded" and view["result"] == delivered["result"]
    assert view["webhook"] == {"status": "delivered", "attempts": 1, "last_status": 204}


async def test_a_failed_webhook_run_is_stored_and_announced_as_failed(
    api: TestClient[web.Request, web.Application],
) -> None:
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await arrived.put(await request.read())
        return web.Response(status=200)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    async with TestServer(receiver, host="127.0.0.1") as server:
        status, accepted, _ = await predict(
            api, body(prompt="fail:generation", webhook_endpoint=str(server.make_url("/hook")))
        )
        assert status == 202
        payload = json.loads(await asyncio.wait_for(arrived.get(), 10))
    assert payload["status"] == "failed" and payload["error"]["code"] == "generation_failed"
    async with api.get(f"/runs/{accepted['run_id']}", headers=auth()) as response:
        view = await response.json()
    assert view["status"] == "failed" and view["error"]["code"] == "generation_failed"


async def test_public_endpoints_need_no_key(api: TestClient[web.Request, web.Application]) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        async with api.get(path) as response:
            assert response.status == 200, path

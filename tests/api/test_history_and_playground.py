"""``GET /runs`` (a key's history, newest first, paged, with thumbnails) and the playground's serving: the
page and its assets public and same-origin, strict security headers on every answer."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from frontend.app import create_app
from frontend.app_keys import STORE
from frontend.http.playground import API_CSP, PAGE_CSP
from frontend.settings import Settings

from ..helpers.api import ScriptedBackend, auth, body, predict
from ..helpers.support import API_KEYS

Client = TestClient[web.Request, web.Application]


async def history(api: Client, key: str = API_KEYS[0], **query: Any) -> tuple[int, Any]:
    async with api.get("/runs", params=query, headers=auth(key)) as response:
        return response.status, await response.json()


async def test_history_lists_the_keys_runs_newest_first_a_page_at_a_time(api: Client) -> None:
    made = []
    for seed in range(5):
        status, answer, _ = await predict(api, body(seed=seed, prompt=f"cat {seed}", file_url=None))
        assert status == 200, answer
        made.append(answer["run_id"])
    await predict(api, body(seed=99), headers=auth(API_KEYS[1]))  # another key's run

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        status, page = await history(api, limit=2, **({"cursor": cursor} if cursor else {}))
        assert status == 200, page
        assert len(page["runs"]) <= 2
        seen += page["runs"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [run["run_id"] for run in seen] == made[::-1]  # newest first, each once, never the other key's
    newest = seen[0]
    assert newest["status"] == "succeeded" and newest["seeds"] == [4] and newest["result_count"] == 1
    assert newest["params"]["prompt"] == "cat 4" and newest["params"]["seed"] == 4
    assert newest["params"]["num_inference_steps"] == 8 and newest["params"]["image_source"] == "image"
    assert "image" not in newest["params"] and "result" not in newest


async def test_a_history_thumbnail_is_a_small_jpeg_of_the_first_result(api: Client) -> None:
    status, answer, _ = await predict(api, body(num_images_per_prompt=2, seed=3))
    assert status == 200
    _, page = await history(api)
    thumbnail = page["runs"][0]["thumbnail"]
    prefix = "data:image/jpeg;base64,"
    assert thumbnail.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(thumbnail[len(prefix) :]))) as small:
        assert small.format == "JPEG" and small.size == (64, 64)  # at most 128 a side; 64x64 stays
        pixels = small.convert("RGB").tobytes()

    def distance(result_b64: str) -> float:
        other = Image.open(io.BytesIO(base64.b64decode(result_b64))).convert("RGB").tobytes()
        return sum(abs(a - b) for a, b in zip(pixels, other, strict=True)) / len(pixels)

    # the first result's picture (JPEG of the scripted noise is lossy: nearer, not equal), not the second's
    assert distance(answer["result"][0]) * 1.5 < distance(answer["result"][1])


async def test_once_its_result_expires_a_run_is_listed_without_a_thumbnail(api: Client) -> None:
    status, answer, _ = await predict(api, body(seed=11))
    assert status == 200
    _, page = await history(api)
    assert page["runs"][0]["thumbnail"] is not None  # made, and now kept by this replica
    store = api.server.app[STORE]
    await store.expire(time.time() + 10, result_ttl_s=1, run_ttl_s=3600)
    _, page = await history(api)
    listed = page["runs"][0]
    assert listed["run_id"] == answer["run_id"] and listed["result_expired"] and listed["result_count"] == 0
    assert listed["thumbnail"] is None  # not a picture of a result the service no longer holds


async def test_a_failed_run_is_listed_with_its_error_and_no_thumbnail(api: Client) -> None:
    status, answer, _ = await predict(api, body(prompt="fail:generation"))
    assert status >= 500, answer
    _, page = await history(api)
    failed = page["runs"][0]
    assert failed["status"] == "failed" and failed["thumbnail"] is None and failed["seeds"] is None
    assert failed["error"]["code"] == answer["error"]["code"]


async def test_history_needs_a_key_and_names_a_bad_limit_or_cursor(api: Client) -> None:
    async with api.get("/runs") as response:
        assert response.status == 401
    for query, param in [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["x", 1]').decode()}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"[1, 2]").decode()}, "cursor"),  # an id that is not a string
        ({"cursor": base64.urlsafe_b64encode(b'[NaN, "a"]').decode()}, "cursor"),  # a time that is not finite
    ]:
        status, answer = await history(api, **query)
        assert status == 422 and answer["error"]["param"] == param, (query, answer)
        assert param in answer["error"]["message"]
    status, page = await history(api, key=API_KEYS[1])
    assert status == 200 and page == {"runs": [], "next_cursor": None}


async def test_the_playground_is_public_same_origin_and_under_a_strict_policy(api: Client) -> None:
    for path in ("/", "/playground"):
        async with api.get(path) as response:
            assert response.status == 200 and response.content_type == "text/html"
            page = await response.text()
            assert response.headers["Content-Security-Policy"] == PAGE_CSP
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            etag = response.headers["ETag"]
        async with api.get(path, headers={"If-None-Match": etag}) as again:
            # a revalidation's headers replace the cached page's: the page's policy, or a reload breaks
            assert again.status == 304 and again.headers["Content-Security-Policy"] == PAGE_CSP
    assert '<script src="/playground/playground.js"' in page and "<script>" not in page
    for path, media_type in (
        ("/playground/playground.js", "text/javascript"),
        ("/playground/playground.css", "text/css"),
    ):
        async with api.get(path) as response:
            assert response.status == 200 and response.content_type == media_type, path
            assert len(await response.read()) > 1000
    async with api.get("/playground/../settings.py") as response:
        assert response.status in (401, 404)  # nothing else under the folder is served
    # the policy forbids what an injected string would need: inline script, other origins, framing
    assert "'unsafe-inline'" not in PAGE_CSP and "frame-ancestors 'none'" in PAGE_CSP
    assert "script-src 'self';" in PAGE_CSP and "img-src 'self' data: blob:;" in PAGE_CSP


async def test_every_api_answer_is_data_never_a_document(api: Client) -> None:
    status, _, headers = await predict(api, body())
    assert status == 200
    assert headers["Content-Security-Policy"] == API_CSP and headers["X-Content-Type-Options"] == "nosniff"
    async with api.get("/runs/nope", headers=auth()) as response:  # errors too
        assert response.status == 404 and response.headers["Content-Security-Policy"] == API_CSP


async def test_the_playground_can_be_turned_off(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]], settings: Settings, backend: ScriptedBackend
) -> None:
    api = await aiohttp_client(create_app(settings.model_copy(update={"playground": False}), backend=backend))
    for path in ("/", "/playground", "/playground/playground.js"):
        async with api.get(path) as response:
            assert response.status == 404, path

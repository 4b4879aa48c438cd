"""Retention in process, on both engines: results go after ``SD_RESULT_TTL_S`` (410 ``result_expired``),
runs after ``SD_RUN_TTL_S`` (404), and a soak leaves the store no bigger than one TTL's worth of runs."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from frontend.app import create_app
from frontend.app_keys import STORE
from frontend.settings import Settings

from ..helpers.api import ScriptedBackend, auth, body, predict
from ..helpers.servers import png_bytes
from ..helpers.support import API_KEYS, WEBHOOK_SECRET

Client = TestClient[web.Request, web.Application]
# Long enough that 20 runs posted at once still hold their results when the soak measures them (the
# first ones finish while the last are still being admitted, each through the store).
RESULT_TTL_S, RUN_TTL_S = 1.0, 2.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def api(
    request: pytest.FixtureRequest,
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    tmp_path: Path,
) -> Client:
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        api_keys=",".join(API_KEYS),  # type: ignore[arg-type]
        webhook_secret=WEBHOOK_SECRET,  # type: ignore[arg-type]
        result_ttl_s=RESULT_TTL_S,
        run_ttl_s=RUN_TTL_S,
        retention_interval_s=0.05,
        max_body_bytes=4_000_000,
    )
    return await aiohttp_client(create_app(settings, backend=ScriptedBackend()))  # type: ignore[arg-type]


async def get_run(api: Client, run_id: str) -> tuple[int, dict[str, Any]]:
    async with api.get(f"/runs/{run_id}", headers=auth()) as response:
        return response.status, await response.json()


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "retention did not act in time"
        await asyncio.sleep(0.05)


async def test_an_expired_result_answers_410_result_expired_then_the_run_404(api: Client) -> None:
    status, answer, _ = await predict(api, body())
    assert status == 200, answer
    run_id = answer["run_id"]
    status, view = await get_run(api, run_id)
    assert status == 200 and view["result"] == answer["result"]

    async def expired() -> bool:
        return (await get_run(api, run_id))[0] == 410

    await until(expired)
    status, gone = await get_run(api, run_id)
    assert gone["error"]["code"] == "result_expired" and "SD_RESULT_TTL_S" in gone["error"]["message"]
    assert (gone["run_id"], gone["status"]) == (run_id, "succeeded") and "result" not in gone
    assert gone["result_expired_at"] >= gone["finished_at"] + RESULT_TTL_S

    async def deleted() -> bool:
        return (await get_run(api, run_id))[0] == 404

    await until(deleted)
    assert (await get_run(api, run_id))[1]["error"]["code"] == "not_found"


async def test_a_soak_keeps_the_store_bounded(api: Client) -> None:
    store = api.server.app[STORE]
    image = base64.b64encode(png_bytes((256, 256))).decode()
    sizes = []
    for round_ in range(3):
        answers = await asyncio.gather(*(predict(api, body(image=image, seed=round_ * 100 + i)) for i in range(20)))
        assert all(status == 200 for status, _, _ in answers)
        full = await store.usage()

        async def emptied() -> bool:
            usage = await store.usage()
            return usage.runs == 0 and usage.result_bytes == 0

        await until(emptied)
        sizes.append((full, await store.usage()))
    for number, (full, empty) in enumerate(sizes, 1):
        print(
            f"\nround {number}: with results {full.runs} runs, {full.result_bytes:,} result bytes,"
            f" {full.disk_bytes:,} bytes on disk; after retention {empty.runs} runs, {empty.result_bytes} result"
            f" bytes, {empty.disk_bytes:,} bytes on disk"
        )
    assert all(full.runs == 20 and full.result_bytes > 20 * 100_000 for full, _ in sizes)
    assert all((empty.runs, empty.results, empty.result_bytes) == (0, 0, 0) for _, empty in sizes)
    # Bounded: the space of expired results is reused, so the file does not grow round after round.
    assert sizes[-1][1].disk_bytes <= 1.25 * sizes[0][1].disk_bytes, [empty.disk_bytes for _, empty in sizes]

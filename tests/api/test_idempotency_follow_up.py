"""A synchronous caller with an Idempotency-Key hangs up: the answer is still recorded for its retry, by a
task the service tracks and drains at shutdown (not a stray ``create_task``)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from frontend.app_keys import RUNS
from frontend.errors import GenerationFailed


async def test_a_gone_callers_answer_is_recorded_before_shutdown_finishes(api: TestClient[Any, Any]) -> None:
    runs = api.server.app[RUNS]
    assert await runs.idempotency.claim("key-a", "k-1", "fingerprint", "run-1") is None

    async def generation() -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {"run_id": "run-1", "message": "Successfully generated image", "result": []}

    runs.remember_when_done(asyncio.create_task(generation()), "key-a", "k-1", "run-1")
    await runs.drain(timeout_s=5)  # what SIGTERM runs: it must wait for the follow-up too
    first = await runs.idempotency.claim("key-a", "k-1", "fingerprint", "run-2")
    assert first is not None and first.response_status == 200 and '"run-1"' in (first.response_body or "")


async def test_a_gone_callers_failure_is_replayed_and_a_not_now_frees_the_key(api: TestClient[Any, Any]) -> None:
    runs = api.server.app[RUNS]

    async def fails(error: Exception) -> dict[str, Any]:
        raise error

    for key, error, kept in (("k-500", GenerationFailed("boom"), True), ("k-503", _unavailable(), False)):
        assert await runs.idempotency.claim("key-a", key, "fp", f"run-{key}") is None
        runs.remember_when_done(asyncio.create_task(fails(error)), "key-a", key, f"run-{key}")
        await runs.drain(timeout_s=5)
        again = await runs.idempotency.claim("key-a", key, "fp", "run-next")
        assert (again is not None) == kept, key
        if kept:
            assert again is not None and again.response_status == error.status  # type: ignore[attr-defined]


def _unavailable() -> Exception:
    from frontend.errors import BackendUnavailable

    return BackendUnavailable("Triton is restarting")

"""Progress through ``GET /runs/{id}/events``: what the model reports reaches the stream while the run runs,
from this replica's feed and, bounded, through the store for other replicas."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from frontend.app_keys import STORE
from frontend.auth import key_hash
from frontend.generation import Progress
from frontend.settings import Settings

from ..helpers.api import ScriptedBackend, auth, body, predict
from ..helpers.support import API_KEYS

Api = TestClient[web.Request, web.Application]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"progress_poll_s": 0.02, "progress_store_s": 0.2, "events_poll_s": 0.05})


async def read_events(response: Any, until: Any, timeout_s: float = 10) -> list[tuple[str, dict[str, Any], str]]:
    """(event, data, id) of each event until ``until(event, data)`` is true."""
    events: list[tuple[str, dict[str, Any], str]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(timeout_s):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" in fields:
                event = (fields["event"], json.loads(fields["data"]), fields.get("id", ""))
                events.append(event)
                if until(event[0], event[1]):
                    return events
            fields = {}
    return events


async def test_each_reported_step_reaches_the_stream_with_its_preview_while_the_run_runs(
    api: Api, backend: ScriptedBackend
) -> None:
    status, answer, _ = await predict(api, body(prompt="hold"), headers={**auth(), "Prefer": "respond-async"})
    assert status == 202
    run_id = answer["run_id"]
    async with api.get(f"/runs/{run_id}/events", headers=auth()) as response:
        assert response.status == 200
        backend.progress_of[run_id] = Progress(1, 9, b"\xff\xd8first")
        first = await read_events(response, lambda event, data: event == "progress")
        backend.progress_of[run_id] = Progress(5, 9, b"\xff\xd8fifth")
        second = await read_events(response, lambda event, data: event == "progress")
        backend.release.set()
        rest = await read_events(response, lambda event, data: event == "succeeded")
    statuses = [(event, event_id) for event, _, event_id in first if event != "progress"]
    assert ("processing", "2") in statuses
    progress = [data for event, data, _ in first + second if event == "progress"]
    assert [(p["step"], p["total"]) for p in progress] == [(1, 9), (5, 9)]
    assert progress[0]["preview"] == "data:image/jpeg;base64,/9hmaXJzdA=="
    assert all(event_id == "" for event, _, event_id in first + second if event == "progress")  # state, not history
    assert rest[-1][2] == "3" and rest[-1][1]["status"] == "succeeded"


async def test_progress_reaches_the_store_for_other_replicas_at_a_bounded_rate(
    api: Api, backend: ScriptedBackend, settings: Settings
) -> None:
    status, answer, _ = await predict(api, body(prompt="hold"), headers={**auth(), "Prefer": "respond-async"})
    run_id = answer["run_id"]
    store = api.server.app[STORE]
    writes: list[int] = []
    set_progress = store.set_progress

    async def counting(run_id_: str, progress: dict[str, Any]) -> None:
        writes.append(progress["step"])
        await set_progress(run_id_, progress)

    store.set_progress = counting  # type: ignore[method-assign]
    for step in range(1, 21):  # a step every 0.03 s for 0.6 s: 20 changes
        backend.progress_of[run_id] = Progress(step, 20)
        await asyncio.sleep(0.03)
    state = await store.run_state(run_id, key_hash(API_KEYS[0]))
    backend.release.set()
    assert state is not None and state.progress is not None and state.progress["total"] == 20
    # at most one write per progress_store_s (0.2 s) over 0.6 s, and not one per change
    assert 1 <= len(writes) <= 4 < 20

"""The run store failing under the API (issue 29): a fault-injecting proxy over the real SQLite store.

A run's own writes are tried again through a passing outage; a run whose task cannot record its outcome
is handed back and taken over within the lease (its webhook delivered, its synchronous caller answered
503 at once); a delivery whose attempt fails unexpectedly goes back to pending without stranding its
batch; a request that answers 5xx leaves no run behind, or one that ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiosqlite
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from frontend.app import create_app
from frontend.app_keys import STORE
from frontend.runs.recovery import REPLICA_LOST
from frontend.settings import Settings
from frontend.store import Lease, RunStatus, open_store
from frontend.store.sqlite import SqliteRunStore

from ..helpers.api import ScriptedBackend, auth, body, predict
from ..helpers.support import WEBHOOK_SECRET
from .faults import FaultyStore

Api = TestClient[web.Request, web.Application]
LEASE_S = 1.0
# Taken over within the lease, plus a heartbeat interval and some slack for a loaded machine.
TAKEN_OVER_WITHIN_S = LEASE_S + 2.0


@pytest.fixture
def fault_settings(settings: Settings) -> Callable[..., Settings]:
    """The API tests' settings with a short lease (so a takeover shows within the test) and ``overrides``."""

    def make(**overrides: Any) -> Settings:
        return settings.model_copy(update={"lease_s": LEASE_S, "lease_poll_s": 0.1, **overrides})

    return make


@pytest.fixture
def make_api(
    aiohttp_client: Callable[[web.Application], Awaitable[Api]], backend: ScriptedBackend
) -> Callable[..., Awaitable[tuple[Api, FaultyStore]]]:
    async def make(settings: Settings) -> tuple[Api, FaultyStore]:
        store = FaultyStore(open_store(settings.store_url))
        return await aiohttp_client(create_app(settings, backend=backend, store=store)), store  # type: ignore[arg-type]

    return make


class Hooks:
    """A webhook receiver on loopback that checks every signature."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.arrived = asyncio.Condition()

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            raw = await request.read()
            payload = Webhook(WEBHOOK_SECRET).verify(raw, dict(request.headers))
            async with self.arrived:
                self.payloads.append(payload)
                self.arrived.notify_all()
            return web.Response(status=200)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", hook)
        return app

    async def wait_for(self, run_id: str, timeout_s: float = 10) -> dict[str, Any]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: self.of(run_id) is not None), timeout_s)
        payload = self.of(run_id)
        assert payload is not None
        return payload

    def of(self, run_id: str) -> dict[str, Any] | None:
        return next((p for p in self.payloads if p["run_id"] == run_id), None)


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[Hooks, str]]:
    receiver = Hooks()
    async with TestServer(receiver.app(), host="127.0.0.1") as server:
        yield receiver, str(server.make_url("/hook"))


async def view_of(api: Api, run_id: str) -> dict[str, Any]:
    async with api.get(f"/runs/{run_id}", headers=auth()) as response:
        return dict(await response.json())


async def final_view(api: Api, run_id: str, timeout_s: float) -> tuple[dict[str, Any], float]:
    """The run's view once final, and how long that took."""
    started = time.monotonic()
    while True:
        view = await view_of(api, run_id)
        if view["status"] in {status.value for status in RunStatus if status.is_terminal}:
            return view, time.monotonic() - started
        assert time.monotonic() - started < timeout_s, f"not final within {timeout_s:g} s: {view}"
        await asyncio.sleep(0.05)


async def only_run(api: Api) -> dict[str, Any]:
    async with api.get("/runs", headers=auth()) as response:
        (run,) = (await response.json())["runs"]
    return dict(run)


@pytest.mark.parametrize("landed", [False, True], ids=["lost-before-commit", "answer-lost-after-commit"])
async def test_a_finish_run_that_fails_once_is_tried_again_and_the_run_ends_once(
    make_api: Callable[..., Awaitable[tuple[Api, FaultyStore]]],
    fault_settings: Callable[..., Settings],
    hooks: tuple[Hooks, str],
    landed: bool,
) -> None:
    """Lost before it committed, the finish is written by the retry; committed with its answer lost, the
    retry is refused by fencing (the lease ended with the first), and the record, holding exactly our
    outcome, says it was ours: success, not "taken over"."""
    api, store = await make_api(fault_settings(store_retry_s=5.0))
    receiver, hook_url = hooks
    store.inject("finish_run", times=2, landed=landed)  # the synchronous run's, then the webhook run's
    status, answer, _ = await predict(api, body())
    assert status == 200 and answer["message"] == "Successfully generated image", answer
    status, accepted, _ = await predict(api, body(webhook_endpoint=hook_url))
    assert status == 202
    delivered = await receiver.wait_for(accepted["run_id"])
    assert delivered["status"] == "succeeded" and store.failed == ["finish_run", "finish_run"]
    for run_id, expected in ((answer["run_id"], answer), (accepted["run_id"], delivered)):
        view = await view_of(api, run_id)
        assert view["status"] == "succeeded" and view["result"] == expected["result"]
    await asyncio.sleep(0.3)
    assert len(receiver.payloads) == 1  # announced once
    async with api.get("/metrics") as response:
        metrics = await response.text()
    assert 'sd_leases_lost_total{kind="run"}' not in metrics  # never counted as lost to a takeover


async def test_a_run_whose_outcome_cannot_be_recorded_is_handed_back_and_ends_within_the_lease(
    make_api: Callable[..., Awaitable[tuple[Api, FaultyStore]]],
    fault_settings: Callable[..., Settings],
    hooks: tuple[Hooks, str],
) -> None:
    """``store_retry_s=0``: one failed ``finish_run`` ends the task without an outcome. The synchronous
    caller gets a clear 503 at once (not a hang, not 500 "no answer recorded"); the run, no longer
    renewed, is taken over within the lease: failed (its caller is gone), or, a webhook run, run again
    and announced."""
    api, store = await make_api(fault_settings(store_retry_s=0.0))
    receiver, hook_url = hooks
    store.inject("finish_run", times=2)
    status, answer, headers = await predict(api, body())
    assert (status, answer["error"]["code"]) == (503, "store_unavailable"), answer
    assert "could not be recorded" in answer["error"]["message"] and "Retry-After" in headers
    sync_id = (await only_run(api))["run_id"]
    status, accepted, _ = await predict(api, body(webhook_endpoint=hook_url))
    assert status == 202
    view, took_s = await final_view(api, sync_id, TAKEN_OVER_WITHIN_S)
    assert (view["status"], view["error"]["message"]) == ("failed", REPLICA_LOST), view
    delivered = await receiver.wait_for(accepted["run_id"], TAKEN_OVER_WITHIN_S)
    assert delivered["status"] == "succeeded" and store.failed == ["finish_run", "finish_run"]
    print(f"\nsynchronous run failed {took_s:.2f} s after its task gave it back (lease {LEASE_S:g} s)")


async def test_an_unexpected_failure_fails_the_run_and_announces_it(
    make_api: Callable[..., Awaitable[tuple[Api, FaultyStore]]],
    fault_settings: Callable[..., Settings],
    hooks: tuple[Hooks, str],
) -> None:
    """A bug in the run's own code (here the backend raising what it never should): recorded as the run's
    failure and announced, not a run left 'processing' under a lease its replica renews forever."""
    api, _ = await make_api(fault_settings())
    receiver, hook_url = hooks
    status, accepted, _ = await predict(api, body(prompt="fail:crash", webhook_endpoint=hook_url))
    assert status == 202
    delivered = await receiver.wait_for(accepted["run_id"], TAKEN_OVER_WITHIN_S)
    assert delivered["status"] == "failed" and delivered["error"]["code"] == "internal_error"
    assert "a bug" not in json.dumps(delivered)  # internals stay in the log
    view = await view_of(api, accepted["run_id"])
    assert view["status"] == "failed" and view["webhook"]["status"] == "delivered"


async def test_a_delivery_whose_attempt_fails_unexpectedly_goes_back_to_pending_and_its_batch_goes_on(
    make_api: Callable[..., Awaitable[tuple[Api, FaultyStore]]],
    fault_settings: Callable[..., Settings],
    hooks: tuple[Hooks, str],
) -> None:
    """One batch of due deliveries: one whose attempt raises (its record write fails with a bug), one whose
    run has no answer to send (a torn write left its body NULL), and healthy ones. The healthy ones are
    delivered, the raising one goes back to pending at once (not when its lease lapses: 30 s here) and is
    delivered next time, the torn one fails."""
    settings = fault_settings(lease_s=30.0)
    receiver, hook_url = hooks
    seeded = SqliteRunStore(settings.data_dir / "runs.sqlite3")
    await seeded.open()
    for run_id in ("ok-0", "raising", "ok-1", "torn"):
        await seeded.create_run(run_id, "k", {}, None, hook_url, owner="seed", lease_s=60)
        await seeded.finish_run(run_id, Lease("seed", 1), RunStatus.SUCCEEDED, {"run_id": run_id}, hook_url)
    await seeded.close()
    async with aiosqlite.connect(settings.data_dir / "runs.sqlite3") as db:
        await db.execute("UPDATE runs SET body = NULL WHERE id = 'torn'")
        await db.commit()
    api, store = await make_api(settings)
    store.inject(
        "record_attempt",
        error=lambda: RuntimeError("a bug"),
        when=lambda delivery_id, *_, **__: delivery_id == "msg_raising",
    )
    for run_id in ("ok-0", "ok-1", "raising"):
        assert (await receiver.wait_for(run_id, 5))["run_id"] == run_id
    store_ = api.server.app[STORE]
    for _ in range(100):
        states = {run_id: await store_.delivery_for_run(run_id) for run_id in ("ok-0", "raising", "torn")}
        if all(state is not None and state.status != "pending" for state in states.values()):
            break
        await asyncio.sleep(0.05)
    assert {run_id: (s.status, s.attempts) for run_id, s in states.items() if s} == {
        "ok-0": ("delivered", 1), "raising": ("delivered", 2), "torn": ("failed", 1)
    }  # fmt: skip
    assert store.failed == ["record_attempt"]


async def test_a_post_whose_idempotency_answer_cannot_be_written_still_answers_202_and_its_run_ends(
    make_api: Callable[..., Awaitable[tuple[Api, FaultyStore]]],
    fault_settings: Callable[..., Settings],
    hooks: tuple[Hooks, str],
) -> None:
    """After the run was accepted, the Idempotency-Key's answer is best effort: the request answers what
    happened (202), not a 5xx for a run that goes on; a repeat reads the run's record instead."""
    api, store = await make_api(fault_settings(store_retry_s=0.0))
    receiver, hook_url = hooks
    store.inject("answer_idempotency", times=10)
    headers = {**auth(), "Idempotency-Key": "once"}
    status, accepted, _ = await predict(api, body(webhook_endpoint=hook_url), headers=headers)
    assert status == 202, accepted
    assert (await receiver.wait_for(accepted["run_id"]))["status"] == "succeeded"
    status, replayed, response_headers = await predict(api, body(webhook_endpoint=hook_url), headers=headers)
    assert status == 200 and replayed["run_id"] == accepted["run_id"] and response_headers["Idempotent-Replayed"]
    assert len(receiver.payloads) == 1 and "answer_idempotency" in store.failed


async def test_a_post_answering_503_because_its_record_could_not_be_confirmed_leaves_a_run_that_ends(
    make_api: Callable[..., Awaitable[tuple[Api, FaultyStore]]], fault_settings: Callable[..., Settings]
) -> None:
    """The run's record committed but the answer was lost, and the store stays unreachable for this
    request: it answers 503, and the run it left (no task works it, so its lease is not renewed) is
    taken over and ends within the lease."""
    api, store = await make_api(fault_settings(store_retry_s=0.0))
    store.inject("create_run", landed=True)
    status, answer, headers = await predict(api, body())
    assert (status, answer["error"]["code"], headers["Retry-After"]) == (503, "store_unavailable", "2"), answer
    left = await only_run(api)
    view, _ = await final_view(api, left["run_id"], TAKEN_OVER_WITHIN_S)
    assert (view["status"], view["error"]["message"]) == ("failed", REPLICA_LOST)

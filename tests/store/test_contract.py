"""The run store contract: every ``RunStore`` method, run against each engine (today: SQLite).

A second engine adds one id to ``ENGINES`` and one branch to ``open_engine``; every test then runs on it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from frontend.store import Delivery, DeliveryStatus, Run, RunStatus, RunStore, open_store

ENGINES = ["sqlite"]
KEY, OTHER_KEY = "a" * 64, "b" * 64
PARAMS: dict[str, Any] = {"prompt": "a cat", "seed": 7, "nested": {"list": [1, 2.5, "x"]}}


def open_engine(engine: str, tmp_path: Path) -> RunStore:
    if engine == "sqlite":
        return open_store(f"sqlite:///{tmp_path / 'runs.sqlite3'}")
    raise AssertionError(engine)


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    engine = open_engine(request.param, tmp_path)
    await engine.open()
    yield engine
    await engine.close()


def delivery(run_id: str, due_at: float, payload: str = '{"status":"succeeded"}') -> Delivery:
    return Delivery(f"msg_{run_id}", run_id, "https://example.com/hook", payload, DeliveryStatus.PENDING, 0, due_at)


async def finished_with_delivery(store: RunStore, run_id: str, due_at: float) -> None:
    await store.create_run(run_id, KEY, PARAMS, b"png", "https://example.com/hook")
    await store.finish_run(run_id, RunStatus.SUCCEEDED, {"result": ["x"]}, delivery(run_id, due_at))


async def test_create_then_get_round_trips_every_field(store: RunStore) -> None:
    before = time.time()
    await store.create_run("r1", KEY, PARAMS, b"\x89PNG...", "https://example.com/hook")
    run = await store.get_run("r1")
    assert run is not None
    assert (run.id, run.key_hash, run.status, run.params, run.image_png) == ("r1", KEY, "queued", PARAMS, b"\x89PNG...")
    assert run.webhook_endpoint == "https://example.com/hook" and run.body is None
    assert before <= run.created_at <= time.time() and run.started_at is None and run.finished_at is None
    assert isinstance(run.status, RunStatus) and not run.status.is_terminal


async def test_a_run_created_processing_has_started(store: RunStore) -> None:
    await store.create_run("sync", KEY, PARAMS, None, None, RunStatus.PROCESSING)
    run = await store.get_run("sync")
    assert run is not None and run.status == RunStatus.PROCESSING and run.started_at is not None
    assert run.image_png is None and run.webhook_endpoint is None


async def test_mark_processing_sets_status_and_start_time(store: RunStore) -> None:
    await store.create_run("r1", KEY, PARAMS, b"png", "https://example.com/hook")
    await store.mark_processing("r1")
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.PROCESSING and run.started_at is not None


async def test_get_run_is_scoped_to_the_key_that_created_it(store: RunStore) -> None:
    await store.create_run("r1", KEY, PARAMS, None, None)
    assert (await store.get_run("r1", KEY)) is not None
    assert await store.get_run("r1", OTHER_KEY) is None
    assert await store.get_run("no-such-run") is None and await store.get_run("no-such-run", KEY) is None


async def test_finish_stores_the_outcome_drops_the_input_and_writes_the_outbox_row(store: RunStore) -> None:
    await finished_with_delivery(store, "r1", due_at=time.time())
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.SUCCEEDED and run.status.is_terminal
    assert run.body == {"result": ["x"]} and run.finished_at is not None
    assert run.image_png is None  # the input is kept only while the run may need resuming
    state = await store.delivery_for_run("r1")
    assert state is not None and (state.status, state.attempts, state.last_status) == ("pending", 0, None)


async def test_finish_without_a_webhook_writes_no_delivery(store: RunStore) -> None:
    await store.create_run("r1", KEY, PARAMS, None, None, RunStatus.PROCESSING)
    await store.finish_run("r1", RunStatus.FAILED, {"error": {"code": "x"}}, None)
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.FAILED and run.body == {"error": {"code": "x"}}
    assert await store.delivery_for_run("r1") is None
    assert await store.next_delivery_at() is None


async def test_claim_unfinished_runs_hands_out_queued_and_processing_oldest_first(store: RunStore) -> None:
    await store.create_run("first", KEY, PARAMS, b"png", "https://example.com/hook")
    await store.create_run("second", KEY, PARAMS, None, None, RunStatus.PROCESSING)
    await finished_with_delivery(store, "done", due_at=time.time())
    claimed = await store.claim_unfinished_runs("replica-1", lease_s=30)
    assert [r.id for r in claimed] == ["first", "second"]
    assert all(isinstance(r, Run) and not r.status.is_terminal for r in claimed)
    assert claimed[0].image_png == b"png"


async def test_claim_due_deliveries_hands_out_due_pending_ones_soonest_first(store: RunStore) -> None:
    now = time.time()
    await finished_with_delivery(store, "later", due_at=now - 1)
    await finished_with_delivery(store, "sooner", due_at=now - 5)
    await finished_with_delivery(store, "future", due_at=now + 60)
    due = await store.claim_due_deliveries("replica-1", now, lease_s=30)
    assert [d.id for d in due] == ["msg_sooner", "msg_later"]
    assert due[0] == delivery("sooner", due_at=due[0].next_attempt_at)
    assert abs(due[0].next_attempt_at - (now - 5)) < 1e-3
    assert [d.id for d in await store.claim_due_deliveries("replica-1", now, lease_s=30, limit=1)] == ["msg_sooner"]


async def test_next_delivery_at_is_the_soonest_pending(store: RunStore) -> None:
    now = time.time()
    assert await store.next_delivery_at() is None
    await finished_with_delivery(store, "a", due_at=now + 30)
    await finished_with_delivery(store, "b", due_at=now + 10)
    next_at = await store.next_delivery_at()
    assert next_at is not None and abs(next_at - (now + 10)) < 1e-3


async def test_record_attempt_reschedules_and_a_final_one_ends_the_delivery(store: RunStore) -> None:
    now = time.time()
    await finished_with_delivery(store, "r1", due_at=now)
    common = {"http_status": 503, "error": "HTTP 503"}
    await store.record_attempt("msg_r1", status=DeliveryStatus.PENDING, attempts=1, next_attempt_at=now + 60, **common)
    assert await store.claim_due_deliveries("replica-1", now + 1, lease_s=30) == []
    (again,) = await store.claim_due_deliveries("replica-1", now + 61, lease_s=30)
    assert again.attempts == 1 and abs(again.next_attempt_at - (now + 60)) < 1e-3
    state = await store.delivery_for_run("r1")
    assert state is not None and (state.status, state.attempts, state.last_status) == ("pending", 1, 503)
    await store.record_attempt(
        "msg_r1", status=DeliveryStatus.DELIVERED, attempts=2, next_attempt_at=now, http_status=200, error=None
    )
    assert await store.claim_due_deliveries("replica-1", now + 3600, lease_s=30) == []
    assert await store.next_delivery_at() is None
    state = await store.delivery_for_run("r1")
    assert state is not None and (state.status, state.attempts, state.last_status) == ("delivered", 2, 200)


async def test_leases_renew_and_release_and_released_work_is_claimable(store: RunStore) -> None:
    now = time.time()
    await store.create_run("r1", KEY, PARAMS, b"png", "https://example.com/hook")
    await finished_with_delivery(store, "r2", due_at=now)
    assert [r.id for r in await store.claim_unfinished_runs("replica-1", lease_s=30)] == ["r1"]
    assert [d.id for d in await store.claim_due_deliveries("replica-1", now, lease_s=30)] == ["msg_r2"]
    await store.renew_leases("replica-1", lease_s=30)
    await store.release_leases("replica-1")
    assert [r.id for r in await store.claim_unfinished_runs("replica-2", lease_s=30)] == ["r1"]
    assert [d.id for d in await store.claim_due_deliveries("replica-2", now, lease_s=30)] == ["msg_r2"]


async def test_the_store_survives_a_reopen(store: RunStore, tmp_path: Path) -> None:
    await store.create_run("r1", KEY, PARAMS, b"png", "https://example.com/hook")
    await store.close()
    with pytest.raises(Exception):  # noqa: B017 - each engine raises its own "closed" error
        await store.get_run("r1")
    await store.open()
    run = await store.get_run("r1", KEY)
    assert run is not None and run.params == PARAMS


def test_an_unknown_engine_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        open_store("mysql://db/runs")

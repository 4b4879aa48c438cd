"""The run store contract: every ``RunStore`` method, run against each engine on a real database
(SQLite in a file, PostgreSQL on a real server started for the session).

A new engine adds one id to ``ENGINES`` and one branch to ``store_url``; every test then runs on it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from frontend.quota import Quota
from frontend.store import DeliveryStatus, Lease, LeaseLost, Run, RunStatus, RunStore, open_store, redacted
from frontend.store.records import RETENTION_BATCH

ENGINES = ["sqlite", "postgresql"]
KEY, OTHER_KEY = "a" * 64, "b" * 64
PARAMS: dict[str, Any] = {"prompt": "a cat", "seed": 7, "nested": {"list": [1, 2.5, "x"]}}
HOOK = "https://example.com/hook"
A, B = "replica-a", "replica-b"
LONG = 30.0  # a lease that outlives the test


@pytest.fixture(params=ENGINES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def open_more(store_url: str) -> AsyncIterator[Callable[[], Any]]:
    """More stores on the same database: other replicas."""
    opened: list[RunStore] = []

    async def another() -> RunStore:
        engine = open_store(store_url)
        await engine.open()
        opened.append(engine)
        return engine

    yield another
    for engine in opened:
        await engine.close()


@pytest.fixture
async def store(open_more: Callable[[], Any]) -> RunStore:
    engine: RunStore = await open_more()
    return engine


async def webhook_run(store: RunStore, run_id: str, owner: str = A, lease_s: float = LONG) -> Lease:
    return await store.create_run(run_id, KEY, PARAMS, b"png", HOOK, owner=owner, lease_s=lease_s)


async def finished_with_delivery(store: RunStore, run_id: str, body: dict[str, Any] | None = None) -> None:
    lease = await webhook_run(store, run_id)
    await store.finish_run(run_id, lease, RunStatus.SUCCEEDED, body or {"result": ["x"]}, HOOK)


async def test_create_then_get_round_trips_every_field(store: RunStore) -> None:
    before = time.time()
    lease = await store.create_run("r1", KEY, PARAMS, b"\x89PNG...", HOOK, owner=A, lease_s=LONG)
    assert lease == Lease(A, 1)
    run = await store.get_run("r1")
    assert run is not None
    assert (run.id, run.key_hash, run.status, run.params, run.image_png) == ("r1", KEY, "queued", PARAMS, b"\x89PNG...")
    assert run.webhook_endpoint == HOOK and run.body is None and run.result_expired_at is None
    assert before <= run.created_at <= time.time() and run.started_at is None and run.finished_at is None
    assert isinstance(run.status, RunStatus) and not run.status.is_terminal


async def test_a_run_created_processing_has_started(store: RunStore) -> None:
    await store.create_run("sync", KEY, PARAMS, None, None, owner=A, lease_s=LONG, status=RunStatus.PROCESSING)
    run = await store.get_run("sync")
    assert run is not None and run.status == RunStatus.PROCESSING and run.started_at is not None
    assert run.image_png is None and run.webhook_endpoint is None


async def test_mark_processing_needs_the_current_lease(store: RunStore) -> None:
    lease = await webhook_run(store, "r1")
    with pytest.raises(LeaseLost, match="mark_processing"):
        await store.mark_processing("r1", Lease(B, 1))
    with pytest.raises(LeaseLost):
        await store.mark_processing("r1", Lease(A, 2))
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.QUEUED and run.started_at is None
    await store.mark_processing("r1", lease)
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.PROCESSING and run.started_at is not None


async def test_a_refused_write_names_itself_and_the_lease_it_was_made_under(store: RunStore) -> None:
    """What the log and a caller read: the write that was refused, and whose lease (owner, token) it held."""
    lease = await webhook_run(store, "r1")
    await finished_with_delivery(store, "d1")
    (delivery,) = await store.claim_due_deliveries(A, time.time(), LONG)
    stale = Lease(B, 1)
    refused: dict[str, Callable[[], Awaitable[Any]]] = {
        "mark_processing": lambda: store.mark_processing("r1", stale),
        "finish_run": lambda: store.finish_run("r1", stale, RunStatus.SUCCEEDED, {"result": []}, HOOK),
        "record_attempt": lambda: store.record_attempt(
            delivery.id,
            stale,
            status=DeliveryStatus.DELIVERED,
            attempts=1,
            next_attempt_at=0,
            http_status=200,
            error=None,
        ),
        "create_run": lambda: webhook_run(store, "r1", owner=B),
    }
    for what, write in refused.items():
        with pytest.raises(LeaseLost) as lost:
            await write()
        assert str(lost.value) == f"{what}: the lease of 'replica-b' (token 1) was taken over"
        assert lost.value.lease == stale
    run = await store.get_run("r1")
    assert run is not None and (run.status, run.body, run.started_at) == (RunStatus.QUEUED, None, None)
    assert await store.delivery_for_run("r1") is None
    state = await store.delivery_for_run("d1")
    assert state is not None and (state.status, state.attempts) == (DeliveryStatus.PENDING, 0)
    await store.finish_run("r1", lease, RunStatus.SUCCEEDED, {"result": []}, None)  # the holder's lease still works


async def test_get_run_is_scoped_to_the_key_that_created_it(store: RunStore) -> None:
    await store.create_run("r1", KEY, PARAMS, None, None, owner=A, lease_s=LONG)
    assert (await store.get_run("r1", KEY)) is not None
    assert await store.get_run("r1", OTHER_KEY) is None
    assert await store.get_run("no-such-run") is None and await store.get_run("no-such-run", KEY) is None


async def test_list_runs_pages_one_keys_runs_newest_first_without_their_images(store: RunStore) -> None:
    for n in range(5):
        await webhook_run(store, f"r{n}")
        await store.create_run(f"other{n}", OTHER_KEY, PARAMS, None, None, owner=A, lease_s=LONG)
    await store.finish_run("r1", Lease(A, 1), RunStatus.SUCCEEDED, {"result": ["x"], "seeds": [3]}, None)
    first = await store.list_runs(KEY, 2)
    assert [run.id for run in first] == ["r4", "r3"]
    seen = [run.id for run in first]
    while True:  # each page starts after the last run of the one before
        page = await store.list_runs(KEY, 2, (first[-1].created_at, first[-1].id))
        if not page:
            break
        seen += [run.id for run in page]
        first = page
    assert seen == ["r4", "r3", "r2", "r1", "r0"]
    listed = {run.id: run for run in await store.list_runs(KEY, 100)}
    assert set(listed) == {f"r{n}" for n in range(5)}  # never another key's
    assert all(run.image_png is None and run.params == PARAMS for run in listed.values())
    assert listed["r1"].status == RunStatus.SUCCEEDED and listed["r1"].body == {"result": ["x"], "seeds": [3]}
    assert await store.list_runs("c" * 64, 10) == []


async def test_list_runs_breaks_created_at_ties_by_id(store: RunStore) -> None:
    for run_id in ("b", "c", "a"):
        await webhook_run(store, run_id)
    runs = await store.list_runs(KEY, 10)
    tied = runs[0].created_at
    # a cursor at an exact created_at keeps the runs of that instant with a smaller id
    assert [run.id for run in await store.list_runs(KEY, 10, (tied, runs[0].id))] == [run.id for run in runs[1:]]
    assert [run.id for run in await store.list_runs(KEY, 10, (runs[-1].created_at, "~"))] == [runs[-1].id]


async def test_finish_stores_the_outcome_drops_the_input_and_writes_the_outbox_row(store: RunStore) -> None:
    body = {"run_id": "r1", "message": "ok", "result": ["x"], "seeds": [3], "b": 1, "a": 2}
    await finished_with_delivery(store, "r1", body)
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.SUCCEEDED and run.status.is_terminal
    assert run.body == body and list(run.body) == list(body) and run.finished_at is not None
    assert run.image_png is None  # the input is kept only while the run may need resuming
    state = await store.delivery_for_run("r1")
    assert state is not None and (state.status, state.attempts, state.last_status) == ("pending", 0, None)
    # One copy of the result: the payload is built from the run's answer, the same bytes every time.
    (delivery,) = await store.claim_due_deliveries(A, time.time(), lease_s=0.01)
    assert delivery.payload == json.dumps({"status": "succeeded", **body}, separators=(",", ":"))
    assert (delivery.id, delivery.run_id, delivery.url, delivery.attempts) == ("msg_r1", "r1", HOOK, 0)
    await asyncio.sleep(0.05)
    (again,) = await store.claim_due_deliveries(B, time.time(), lease_s=LONG)
    assert again.payload == delivery.payload


async def test_finish_without_a_webhook_writes_no_delivery(store: RunStore) -> None:
    lease = await store.create_run("r1", KEY, PARAMS, None, None, owner=A, lease_s=LONG, status=RunStatus.PROCESSING)
    await store.finish_run("r1", lease, RunStatus.FAILED, {"error": {"code": "x"}}, None)
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.FAILED and run.body == {"error": {"code": "x"}}
    assert await store.delivery_for_run("r1") is None
    assert await store.next_delivery_at() is None


async def test_claims_skip_live_leases_and_take_expired_ones_oldest_first(store: RunStore) -> None:
    await webhook_run(store, "first", lease_s=0.3)
    await store.create_run("second", KEY, PARAMS, None, None, owner=A, lease_s=0.3, status=RunStatus.PROCESSING)
    await webhook_run(store, "held", lease_s=LONG)
    await finished_with_delivery(store, "done")
    assert await store.claim_unfinished_runs(B, lease_s=LONG) == []  # A's leases are live
    await asyncio.sleep(0.4)
    claimed = await store.claim_unfinished_runs(B, lease_s=LONG)
    assert [r.id for r in claimed] == ["first", "second"]
    assert all(isinstance(r, Run) and r.lease == Lease(B, 2) for r in claimed)
    assert claimed[0].image_png == b"png"
    assert await store.claim_unfinished_runs(A, lease_s=LONG) == []  # now B's


async def test_a_claim_takes_the_oldest_lapsed_runs_up_to_its_limit_and_raises_each_token_by_one(
    store: RunStore,
) -> None:
    for n in range(19):
        await webhook_run(store, f"r{n:02}", lease_s=0.01)
    await webhook_run(store, "held")  # a live lease is never taken, however old the run
    await finished_with_delivery(store, "done")  # nor a finished run
    await asyncio.sleep(0.05)
    first = await store.claim_unfinished_runs(B, lease_s=LONG, limit=2)
    assert [(r.id, r.lease) for r in first] == [("r00", Lease(B, 2)), ("r01", Lease(B, 2))]
    default = await store.claim_unfinished_runs(B, lease_s=LONG)  # 16 at most
    assert [r.id for r in default] == [f"r{n:02}" for n in range(2, 18)]
    assert [r.id for r in await store.claim_unfinished_runs(B, lease_s=LONG)] == ["r18"]
    assert await store.claim_unfinished_runs(A, lease_s=LONG) == []
    await store.release_run("r01", Lease(B, 2))  # given back: taken again, one token up
    assert [(r.id, r.lease) for r in await store.claim_unfinished_runs(A, lease_s=LONG)] == [("r01", Lease(A, 3))]
    with pytest.raises(LeaseLost):  # the earlier holder is fenced out
        await store.mark_processing("r01", Lease(B, 2))
    await store.mark_processing("r01", Lease(A, 3))


async def test_a_stale_replicas_writes_after_takeover_are_refused(store: RunStore) -> None:
    stale = await webhook_run(store, "r1", lease_s=0.2)
    await asyncio.sleep(0.3)
    (taken,) = await store.claim_unfinished_runs(B, lease_s=LONG)
    assert taken.lease is not None and taken.lease.token > stale.token
    with pytest.raises(LeaseLost, match="finish_run"):
        await store.finish_run("r1", stale, RunStatus.SUCCEEDED, {"result": ["stale"]}, HOOK)
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.QUEUED and run.body is None
    assert await store.delivery_for_run("r1") is None  # the refused write wrote no outbox row either
    await store.finish_run("r1", taken.lease, RunStatus.SUCCEEDED, {"result": ["new"]}, HOOK)
    run = await store.get_run("r1")
    assert run is not None and run.body == {"result": ["new"]}


async def test_a_heartbeat_keeps_a_lease_past_its_first_expiry(store: RunStore) -> None:
    lease = await webhook_run(store, "r1", lease_s=0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await store.renew_leases(A, 0.4, runs=["r1"], deliveries=[]) == 1
    assert await store.claim_unfinished_runs(B, lease_s=LONG) == []
    await store.mark_processing("r1", lease)
    await asyncio.sleep(0.5)  # no heartbeat: it lapses
    assert [r.id for r in await store.claim_unfinished_runs(B, lease_s=LONG)] == ["r1"]
    assert await store.renew_leases(A, LONG, runs=["r1"], deliveries=[]) == 0  # B's now: nothing of A's to renew


async def test_a_heartbeat_renews_only_the_work_named_so_work_whose_task_died_lapses(store: RunStore) -> None:
    """A replica names what its tasks are doing; what it holds but no task works (a run whose task died
    without an outcome, a delivery whose attempt failed) is not renewed, and another replica takes it."""
    await webhook_run(store, "live", lease_s=0.4)
    await webhook_run(store, "orphan", lease_s=0.4)
    await finished_with_delivery(store, "sending")
    await finished_with_delivery(store, "stranded")
    claimed = await store.claim_due_deliveries(A, time.time(), lease_s=0.4)
    assert sorted(d.id for d in claimed) == ["msg_sending", "msg_stranded"]
    assert await store.renew_leases(A, 0.4, runs=[], deliveries=[]) == 0  # nothing to do: no write at all
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await store.renew_leases(A, 0.4, runs=["live", "gone"], deliveries=["msg_sending"]) == 2
    assert [r.id for r in await store.claim_unfinished_runs(B, lease_s=LONG)] == ["orphan"]
    assert [d.id for d in await store.claim_due_deliveries(B, time.time(), lease_s=LONG)] == ["msg_stranded"]
    # Naming another owner's work renews nothing of it.
    assert await store.renew_leases(A, LONG, runs=["orphan"], deliveries=["msg_stranded"]) == 0


async def test_a_heartbeat_of_deliveries_alone_renews_them(store: RunStore) -> None:
    await finished_with_delivery(store, "r1")
    (delivery,) = await store.claim_due_deliveries(A, time.time(), lease_s=0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await store.renew_leases(A, 0.4, runs=[], deliveries=[delivery.id]) == 1
    assert await store.claim_due_deliveries(B, time.time(), lease_s=LONG) == []  # past its first expiry, still A's
    await store.record_attempt(
        delivery.id, delivery.lease, status=DeliveryStatus.DELIVERED, attempts=1, next_attempt_at=time.time(),
        http_status=200, error=None,
    )  # fmt: skip
    assert await store.renew_leases(A, 0.4, runs=[], deliveries=[delivery.id]) == 0  # delivered: nothing to renew


async def test_a_released_run_is_claimable_at_once_and_a_stale_release_is_a_no_op(store: RunStore) -> None:
    lease = await webhook_run(store, "r1")
    await store.release_run("r1", Lease(B, lease.token))  # not B's: nothing happens
    await store.release_run("r1", Lease(A, lease.token + 1))  # not this token's
    assert await store.claim_unfinished_runs(B, lease_s=LONG) == []
    await store.release_run("r1", lease)
    (taken,) = await store.claim_unfinished_runs(B, lease_s=LONG)
    assert taken.lease == Lease(B, lease.token + 1)
    await store.release_run("r1", lease)  # the old lease again: B's claim stands
    assert await store.claim_unfinished_runs(A, lease_s=LONG) == []
    await store.finish_run("r1", taken.lease, RunStatus.SUCCEEDED, {"result": []}, None)
    await store.release_run("r1", taken.lease)  # a finished run stays finished
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.SUCCEEDED


async def test_sqlite_hands_back_every_lease_when_it_is_opened(tmp_path: Path) -> None:
    """(SQLite only: one process per file, so a lease found at start is a previous process's, and it is gone.
    Several PostgreSQL replicas share their leases and wait for them to lapse.)"""
    url = f"sqlite:///{tmp_path / 'runs.sqlite3'}"
    before = open_store(url)
    await before.open()
    await webhook_run(before, "r1")
    await finished_with_delivery(before, "r2")
    assert [d.id for d in await before.claim_due_deliveries(A, time.time(), LONG)] == ["msg_r2"]
    await before.close()
    after = open_store(url)
    await after.open()
    try:
        (run,) = await after.claim_unfinished_runs(B, LONG)
        assert (run.id, run.lease) == ("r1", Lease(B, 2))
        (delivery,) = await after.claim_due_deliveries(B, time.time(), LONG)
        assert (delivery.id, delivery.lease) == ("msg_r2", Lease(B, 2))
    finally:
        await after.close()


async def test_creating_a_run_again_after_a_lost_answer_hands_back_its_lease(store: RunStore) -> None:
    """A retry of ``create_run`` whose first try landed (its answer lost with the connection) is not a
    duplicate: the same owner gets the same lease; another owner or key does not get the run."""
    first = await webhook_run(store, "r1")
    assert await webhook_run(store, "r1") == first
    with pytest.raises(LeaseLost, match="create_run"):
        await webhook_run(store, "r1", owner=B)
    with pytest.raises(LeaseLost, match="create_run"):
        await store.create_run("r1", OTHER_KEY, PARAMS, b"png", HOOK, owner=A, lease_s=LONG)
    assert [run.id for run in await store.list_runs(KEY, 10)] == ["r1"]


async def test_released_work_is_claimable_at_once(store: RunStore) -> None:
    await webhook_run(store, "r1")
    await finished_with_delivery(store, "r2")
    assert [d.id for d in await store.claim_due_deliveries(A, time.time(), lease_s=LONG)] == ["msg_r2"]
    assert await store.claim_due_deliveries(B, time.time(), lease_s=LONG) == []
    await store.release_leases(A)
    assert [r.id for r in await store.claim_unfinished_runs(B, lease_s=LONG)] == ["r1"]
    assert [d.id for d in await store.claim_due_deliveries(B, time.time(), lease_s=LONG)] == ["msg_r2"]


async def test_postgres_wakes_the_other_replicas_on_new_and_released_work(postgres_url: str) -> None:
    """(PostgreSQL only: one process per SQLite file leaves nobody else to wake.)"""
    store, peer = open_store(postgres_url), open_store(postgres_url)
    await store.open()
    await peer.open()
    try:
        woken = asyncio.Event()
        peer.subscribe(woken.set)
        await asyncio.wait_for(woken.wait(), timeout=5)  # once, when its listener connects
        for make_work in (lambda: finished_with_delivery(store, "r1"), lambda: store.release_leases(A)):
            woken.clear()
            await webhook_run(store, f"queued-{id(make_work)}")
            await asyncio.sleep(0.2)
            assert not woken.is_set()  # creating a run wakes nobody: its replica works it
            await make_work()
            await asyncio.wait_for(woken.wait(), timeout=5)
    finally:
        await peer.close()
        await store.close()


async def test_due_deliveries_come_soonest_first_and_one_claimer_gets_each(
    store: RunStore, open_more: Callable[[], Any]
) -> None:
    peers: list[RunStore] = [await open_more() for _ in range(3)]
    for run_id in ("a", "b", "c"):
        await finished_with_delivery(store, run_id)
    now = time.time()
    claimed = {d.id: d for d in await store.claim_due_deliveries(A, now + 3600, LONG)}
    # a: due in the future; b before c.
    for run_id, due in (("a", now + 60), ("b", now - 5), ("c", now - 1)):
        lease = claimed[f"msg_{run_id}"].lease
        await store.record_attempt(
            f"msg_{run_id}", lease, status=DeliveryStatus.PENDING, attempts=1, next_attempt_at=due, http_status=503,
            error="HTTP 503",
        )  # fmt: skip
        with pytest.raises(LeaseLost):  # the lease ended with the attempt
            await store.record_attempt(
                f"msg_{run_id}", lease, status=DeliveryStatus.DELIVERED, attempts=2, next_attempt_at=due,
                http_status=200, error=None,
            )  # fmt: skip
    next_at = await store.next_delivery_at()
    assert next_at is not None and abs(next_at - (now - 5)) < 1e-3
    assert [d.id for d in await store.claim_due_deliveries(A, now, LONG, limit=1)] == ["msg_b"]
    # Replicas race for the rest at the same instant: each due delivery goes to exactly one.
    results = await asyncio.gather(*(peer.claim_due_deliveries(f"peer-{i}", now, LONG) for i, peer in enumerate(peers)))
    assert sorted(d.id for batch in results for d in batch) == ["msg_c"]


async def test_a_delivery_is_due_from_its_instant_and_a_claim_returns_the_soonest_first_up_to_its_limit(
    store: RunStore,
) -> None:
    for n in range(34):
        await finished_with_delivery(store, f"r{n:02}")
    claimed = {d.id: d for d in await store.claim_due_deliveries(A, time.time(), lease_s=0.01, limit=100)}
    assert all(d.lease == Lease(A, 1) for d in claimed.values())
    due = float(int(time.time())) - 100  # exact in both engines' floats
    # r00 due last, r01 first, the rest in between in order; r33 not before `due + 50`.
    times = {"r00": due + 40, "r01": due - 40, "r33": due + 50} | {f"r{n:02}": due + n for n in range(2, 33)}
    for run_id, at in times.items():
        await store.record_attempt(
            f"msg_{run_id}", claimed[f"msg_{run_id}"].lease, status=DeliveryStatus.PENDING, attempts=1,
            next_attempt_at=at, http_status=503, error="HTTP 503",
        )  # fmt: skip
    assert await store.claim_due_deliveries(B, due - 40.001, LONG) == []  # not due yet
    (first,) = await store.claim_due_deliveries(B, due - 40, lease_s=0.01)  # due at that very instant
    assert (first.id, first.lease, first.next_attempt_at) == ("msg_r01", Lease(B, 2), due - 40)
    await asyncio.sleep(0.05)  # B's lease lapses: the next claim takes it again, one token up
    batch = await store.claim_due_deliveries(A, due + 45, LONG)  # 32 at most, soonest first
    assert [d.id for d in batch] == ["msg_r01", *(f"msg_r{n:02}" for n in range(2, 33))]
    assert batch[0].lease == Lease(A, 3)
    rest = await store.claim_due_deliveries(A, due + 45, LONG)
    assert [d.id for d in rest] == ["msg_r00"]  # r33 is not due at due + 45


async def test_a_final_attempt_ends_the_delivery(store: RunStore) -> None:
    await finished_with_delivery(store, "r1")
    (delivery,) = await store.claim_due_deliveries(A, time.time(), LONG)
    with pytest.raises(LeaseLost, match="record_attempt"):
        await store.record_attempt(
            delivery.id, Lease(B, delivery.lease.token), status=DeliveryStatus.DELIVERED, attempts=1,
            next_attempt_at=time.time(), http_status=200, error=None,
        )  # fmt: skip
    await store.record_attempt(
        delivery.id, delivery.lease, status=DeliveryStatus.DELIVERED, attempts=1, next_attempt_at=time.time(),
        http_status=200, error=None,
    )  # fmt: skip
    assert await store.claim_due_deliveries(B, time.time() + 3600, LONG) == []
    assert await store.next_delivery_at() is None
    state = await store.delivery_for_run("r1")
    assert state is not None and (state.status, state.attempts, state.last_status) == ("delivered", 1, 200)


async def test_retention_drops_results_then_runs_and_keeps_what_a_pending_delivery_needs(store: RunStore) -> None:
    lease = await store.create_run("sync", KEY, PARAMS, None, None, owner=A, lease_s=LONG)
    await store.finish_run("sync", lease, RunStatus.SUCCEEDED, {"result": ["x" * 1000]}, None)
    await finished_with_delivery(store, "hooked")
    await webhook_run(store, "unfinished")
    before = await store.usage()
    assert (before.runs, before.results, before.pending_deliveries) == (3, 2, 1) and before.result_bytes > 1000
    now = time.time()
    assert (await store.expire(now, result_ttl_s=60, run_ttl_s=3600)).results == 0  # nothing old enough
    expired = await store.expire(now + 61, result_ttl_s=60, run_ttl_s=3600)
    assert (expired.results, expired.runs) == (1, 0)  # the hooked run's result waits for its delivery
    sync = await store.get_run("sync", KEY)
    assert sync is not None and sync.status == RunStatus.SUCCEEDED and sync.body is None
    assert sync.result_expired_at == pytest.approx(now + 61)
    (delivery,) = await store.claim_due_deliveries(A, time.time(), LONG)
    await store.record_attempt(
        delivery.id, delivery.lease, status=DeliveryStatus.DELIVERED, attempts=1, next_attempt_at=now,
        http_status=200, error=None,
    )  # fmt: skip
    assert (await store.expire(now + 61, result_ttl_s=60, run_ttl_s=3600)).results == 1
    gone = await store.expire(now + 3601, result_ttl_s=60, run_ttl_s=3600)
    assert gone.runs == 2  # both finished runs; the unfinished one stays
    assert await store.get_run("sync") is None and await store.delivery_for_run("hooked") is None
    after = await store.usage()
    assert (after.runs, after.results, after.pending_deliveries, after.result_bytes) == (1, 0, 0, 0)


async def test_retention_on_every_replica_at_once_expires_each_row_once(
    store: RunStore, open_more: Callable[[], Any]
) -> None:
    count = RETENTION_BATCH + 50  # more than one batch
    for i in range(count):
        lease = await store.create_run(f"r{i}", KEY, PARAMS, None, None, owner=A, lease_s=LONG)
        await store.finish_run(f"r{i}", lease, RunStatus.SUCCEEDED, {"result": ["x"]}, None)
    peers: list[RunStore] = [store, *[await open_more() for _ in range(2)]]
    later = time.time() + 10
    totals = [0, 0]
    while True:
        rounds = await asyncio.gather(*(peer.expire(later, result_ttl_s=1, run_ttl_s=5) for peer in peers))
        if not any(r.results or r.runs for r in rounds):
            break
        totals[0] += sum(r.results for r in rounds)
        totals[1] += sum(r.runs for r in rounds)
    assert totals[1] == count and totals[0] <= count
    assert (await store.usage()).runs == 0


async def test_replicas_starting_at_once_migrate_once(open_more: Callable[[], Any]) -> None:
    stores: list[RunStore] = list(await asyncio.gather(*(open_more() for _ in range(4))))
    await stores[0].create_run("r1", KEY, PARAMS, None, None, owner=A, lease_s=LONG)
    assert all([await s.get_run("r1") is not None for s in stores])
    await stores[1].ping()


async def test_the_store_survives_a_reopen(store: RunStore) -> None:
    await webhook_run(store, "r1")
    await store.close()
    with pytest.raises(Exception):  # noqa: B017 - each engine raises its own "closed" error
        await store.get_run("r1")
    await store.open()
    run = await store.get_run("r1", KEY)
    assert run is not None and run.params == PARAMS


def test_an_unknown_engine_is_refused_by_name_without_its_password() -> None:
    with pytest.raises(ValueError, match="unsupported database 'mysql'") as refused:
        open_store("mysql://user:hunter2@db/runs")
    assert "hunter2" not in str(refused.value)
    assert redacted("postgresql://sd:secret@db:5432/runs") == "postgresql://sd:***@db:5432/runs"


async def test_stop_outranks_the_lease_fences_the_worker_out_and_announces_once(open_more: Callable[[], Any]) -> None:
    worker, canceler = await open_more(), await open_more()  # two replicas
    lease = await webhook_run(worker, "s1")
    assert await canceler.stop_run("s1", OTHER_KEY, RunStatus.CANCELED, {"reason": "x"}) is None  # not theirs
    stopped = await canceler.stop_run("s1", KEY, RunStatus.CANCELED, {"run_id": "s1", "reason": "asked"})
    assert stopped is not None
    run, did = stopped
    assert did and run.status == RunStatus.CANCELED and run.body == {"run_id": "s1", "reason": "asked"}
    assert await worker.finished_among(["s1", "nope"]) == ["s1"]
    with pytest.raises(LeaseLost):  # the worker's late success is not stored over the cancel
        await worker.finish_run("s1", lease, RunStatus.SUCCEEDED, {"result": ["x"]}, HOOK)
    again = await worker.stop_run("s1", KEY, RunStatus.ABORTED, {"reason": "late"})
    assert again is not None and again[1] is False and again[0].status == RunStatus.CANCELED
    (delivery,) = await worker.claim_due_deliveries(A, time.time(), lease_s=LONG)
    assert json.loads(delivery.payload)["status"] == "canceled"
    assert await worker.claim_unfinished_runs(B, LONG) == []


async def test_finished_among_names_only_the_runs_asked_about_that_have_ended(store: RunStore) -> None:
    await finished_with_delivery(store, "done")
    await finished_with_delivery(store, "done, not asked")
    await webhook_run(store, "running")
    await store.create_run("sync", KEY, PARAMS, None, None, owner=A, lease_s=LONG, status=RunStatus.PROCESSING)
    stopped = await store.stop_run("sync", None, RunStatus.ABORTED, {"reason": "deadline"})
    assert stopped is not None and stopped[1] and stopped[0].status == RunStatus.ABORTED
    assert await store.delivery_for_run("sync") is None  # stopped without a webhook: no delivery row
    assert sorted(await store.finished_among(["done", "running", "sync", "nope"])) == ["done", "sync"]
    assert await store.finished_among(["running"]) == [] and await store.finished_among([]) == []


async def test_an_idempotency_key_is_claimed_once_per_api_key_and_replays_its_answer(store: RunStore) -> None:
    now = time.time()
    assert await store.claim_idempotency(KEY, "k", "f1", "r1", now=now, ttl_s=60) is None
    running = await store.claim_idempotency(KEY, "k", "f2", "r2", now=now, ttl_s=60)
    assert running is not None and (running.fingerprint, running.run_id, running.response_status) == ("f1", "r1", None)
    assert await store.claim_idempotency(OTHER_KEY, "k", "f2", "r3", now=now, ttl_s=60) is None  # scoped per key
    await store.answer_idempotency(KEY, "k", 200, '{"a": 1}')
    answered = await store.claim_idempotency(KEY, "k", "f1", "r4", now=now, ttl_s=60)
    assert answered is not None and (answered.response_status, answered.response_body) == (200, '{"a": 1}')
    assert await store.claim_idempotency(KEY, "k", "f5", "r5", now=now + 61, ttl_s=60) is None  # expired: new
    await store.release_idempotency(KEY, "k")
    assert await store.claim_idempotency(KEY, "k", "f6", "r6", now=now, ttl_s=60) is None
    await store.expire(now + 10, 3600, 3600, idempotency_ttl_s=5)
    assert await store.claim_idempotency(KEY, "k", "f7", "r7", now=now + 10, ttl_s=3600) is None  # retention took it


async def test_an_idempotency_key_is_held_for_exactly_its_ttl(store: RunStore) -> None:
    now = float(int(time.time()))  # whole seconds: now + 60 - 60 is now again, exactly
    assert await store.claim_idempotency(KEY, "k", "f1", "r1", now=now, ttl_s=60) is None
    held = await store.claim_idempotency(KEY, "k", "f2", "r2", now=now + 60, ttl_s=60)  # the last instant
    assert held is not None and (held.fingerprint, held.run_id, held.created_at) == ("f1", "r1", now)
    assert await store.claim_idempotency(KEY, "k", "f3", "r3", now=now + 60.001, ttl_s=60) is None  # then free
    again = await store.claim_idempotency(KEY, "k", "f4", "r4", now=now + 61, ttl_s=60)
    assert again is not None and (again.fingerprint, again.run_id) == ("f3", "r3")


async def test_an_idempotency_record_is_read_answered_and_released_alone(store: RunStore) -> None:
    """The same Idempotency-Key under another API key, and another key under the same API key, are other
    records: a claim reads its own, an answer or a release touches only its own."""
    now = time.time()
    assert await store.claim_idempotency(OTHER_KEY, "k", "theirs", "r0", now=now, ttl_s=60) is None
    assert await store.claim_idempotency(KEY, "k2", "mine too", "r1", now=now, ttl_s=60) is None
    assert await store.claim_idempotency(KEY, "k", "mine", "r2", now=now, ttl_s=60) is None
    await store.answer_idempotency(KEY, "k", 200, '{"mine": 1}')

    async def held(key_hash: str, key: str) -> tuple[str, str, int | None, str | None]:
        record = await store.claim_idempotency(key_hash, key, "again", "r9", now=now, ttl_s=60)
        assert record is not None
        return record.fingerprint, record.run_id, record.response_status, record.response_body

    assert await held(KEY, "k") == ("mine", "r2", 200, '{"mine": 1}')
    assert await held(OTHER_KEY, "k") == ("theirs", "r0", None, None)
    assert await held(KEY, "k2") == ("mine too", "r1", None, None)
    await store.release_idempotency(KEY, "k")
    assert await held(OTHER_KEY, "k") == ("theirs", "r0", None, None)
    assert await held(KEY, "k2") == ("mine too", "r1", None, None)
    assert await store.claim_idempotency(KEY, "k", "new", "r3", now=now, ttl_s=60) is None


async def test_progress_is_kept_while_processing_and_read_without_the_result(store: RunStore) -> None:
    lease = await webhook_run(store, "p1")
    progress = {"step": 3, "total": 10, "preview": "data:image/jpeg;base64,AAAA"}
    await store.set_progress("p1", progress)  # still queued: not a processing run's progress
    state = await store.run_state("p1", KEY)
    assert state is not None and state.status == RunStatus.QUEUED and state.progress is None
    await store.mark_processing("p1", lease)
    await store.set_progress("p1", progress)
    state = await store.run_state("p1", KEY)
    assert state is not None and state.status == RunStatus.PROCESSING and state.progress == progress
    assert state.started_at is not None and state.created_at <= state.started_at
    assert await store.run_state("p1", "another key's hash") is None
    assert await store.run_state("missing", KEY) is None
    await store.finish_run("p1", lease, RunStatus.SUCCEEDED, {"result": []}, None)
    await store.set_progress("p1", {"step": 9, "total": 10, "preview": None})  # too late: kept as it was
    state = await store.run_state("p1", KEY)
    assert state is not None and state.status == RunStatus.SUCCEEDED and state.progress == progress


async def staggered(write: Awaitable[Any], rng: random.Random) -> Any:
    """``write`` after a few turns of the event loop, so that concurrent calls' statements interleave."""
    for _ in range(rng.randrange(6)):
        await asyncio.sleep(0)
    return await write


async def test_interleaved_writers_with_lost_leases_each_commit_whole_or_not_at_all(store: RunStore) -> None:
    """Many writers at once on one store (on SQLite: one connection), some fenced out, claims among them.
    Each successful finish or stop has its body and its delivery, each fenced-out write wrote nothing, no
    write undid another's, and no reader ever saw a result without its delivery (a half-done transaction)."""
    count = 32
    leases = {f"r{i}": await webhook_run(store, f"r{i}") for i in range(count)}
    for j in range(8):
        await webhook_run(store, f"lapsed{j}", lease_s=0.01)
    for j in range(count // 2):
        await finished_with_delivery(store, f"d{j}", {"d": j})
    claimed = {d.id: d for d in await store.claim_due_deliveries(A, time.time(), LONG)}
    stale = Lease(B, 1)
    await asyncio.sleep(0.05)  # the lapsed runs' leases are over

    async def expect_lost(write: Awaitable[None]) -> str:
        with pytest.raises(LeaseLost):
            await write
        return "lost"

    async def done(write: Awaitable[Any]) -> str:
        await write
        return "done"

    def delivery_attempt(j: int, lease: Lease) -> Awaitable[None]:
        return store.record_attempt(
            f"msg_d{j}", lease, status=DeliveryStatus.DELIVERED, attempts=1, next_attempt_at=time.time(),
            http_status=200, error=None,
        )  # fmt: skip

    writes: dict[str, Awaitable[str]] = {}
    for i in range(count):
        run_id, body = f"r{i}", {"n": i}
        kind = i % 4
        if kind == 0:
            writes[run_id] = done(store.finish_run(run_id, leases[run_id], RunStatus.SUCCEEDED, body, HOOK))
        elif kind == 1:
            writes[run_id] = expect_lost(store.finish_run(run_id, stale, RunStatus.SUCCEEDED, body, HOOK))
        elif kind == 2:
            writes[run_id] = done(store.stop_run(run_id, KEY, RunStatus.CANCELED, body))
        else:
            writes[run_id] = expect_lost(store.mark_processing(run_id, stale))
    for j in range(count // 2):
        lease = claimed[f"msg_d{j}"].lease if j % 2 == 0 else Lease(B, 1)
        writes[f"d{j}"] = (done if j % 2 == 0 else expect_lost)(delivery_attempt(j, lease))
    writes["claim"] = done(store.claim_unfinished_runs(B, LONG))
    writes["claim deliveries"] = done(store.claim_due_deliveries(B, time.time(), LONG))
    order = list(writes)
    rng = random.Random(29)
    rng.shuffle(order)
    torn: list[str] = []
    stop_reading = asyncio.Event()

    async def reader() -> None:
        while not stop_reading.is_set():
            for i in range(0, count, 2):  # the finished and the stopped
                run = await store.get_run(f"r{i}")
                if run is not None and run.status.is_terminal and await store.delivery_for_run(f"r{i}") is None:
                    torn.append(f"r{i} {run.status} without its delivery")
            await asyncio.sleep(0)

    reading = asyncio.create_task(reader())
    outcomes = dict(zip(order, await asyncio.gather(*(staggered(writes[n], rng) for n in order)), strict=True))
    stop_reading.set()
    await reading
    assert not torn, torn
    assert all(outcome in ("done", "lost") for outcome in outcomes.values())
    for i in range(count):
        run = await store.get_run(f"r{i}")
        assert run is not None
        delivery = await store.delivery_for_run(f"r{i}")
        if i % 4 == 0:
            assert (run.status, run.body, delivery is not None) == (RunStatus.SUCCEEDED, {"n": i}, True), run
        elif i % 4 == 2:
            assert (run.status, run.body, delivery is not None) == (RunStatus.CANCELED, {"n": i}, True), run
        else:  # fenced out: as created
            assert (run.status, run.body, run.started_at, delivery) == (RunStatus.QUEUED, None, None, None), run
    for j in range(count // 2):
        state = await store.delivery_for_run(f"d{j}")
        assert state is not None
        assert state.status == (DeliveryStatus.DELIVERED if j % 2 == 0 else DeliveryStatus.PENDING), (j, state)
    taken = await store.list_runs(KEY, 100)
    assert sorted(r.id for r in taken if r.id.startswith("lapsed") and r.status == RunStatus.QUEUED) == [
        f"lapsed{j}" for j in range(8)
    ]
    assert await store.claim_unfinished_runs(B, LONG) == []  # the claim took every lapsed run, and only those


async def test_a_claim_racing_a_release_of_its_key_never_fails(store: RunStore) -> None:
    """A claim that finds the key taken reads it in the same transaction: a release landing in between
    cannot make the record it found disappear."""
    rng = random.Random(29)
    outcomes = []
    for n in range(60):
        now = time.time()
        await store.release_idempotency(KEY, "k")
        assert await store.claim_idempotency(KEY, "k", "fp", "first", now=now, ttl_s=60) is None
        claim = store.claim_idempotency(KEY, "k", "fp", f"run-{n}", now=now, ttl_s=60)
        found, _ = await asyncio.gather(claim, staggered(store.release_idempotency(KEY, "k"), rng))
        outcomes.append("claimed" if found is None else found.run_id)
    assert set(outcomes) <= {"claimed", "first"}


# -- per-key fairness: the key's slots and token bucket, shared by every replica on the store -------------
CAP_2 = Quota(max_in_flight=2, rate_per_s=0.0, burst=1)


async def test_a_keys_in_flight_cap_holds_across_replicas_and_a_slot_given_back_makes_room(
    store: RunStore, open_more: Callable[[], Any]
) -> None:
    other = await open_more()  # another replica
    assert (await store.take_quota(KEY, "s1", A, CAP_2, LONG)).in_flight == 1
    assert (await other.take_quota(KEY, "s2", B, CAP_2, LONG)).in_flight == 2
    refused = await store.take_quota(KEY, "s3", A, CAP_2, LONG)
    assert (refused.refused, refused.in_flight) == ("in_flight", 2)
    assert (await other.take_quota(OTHER_KEY, "t1", B, CAP_2, LONG)).refused is None  # its own count
    await other.release_quota("s2")
    await other.release_quota("s2")  # again: a no-op
    assert (await store.take_quota(KEY, "s3", A, CAP_2, LONG)).refused is None


async def test_concurrent_admissions_on_two_replicas_never_pass_the_cap(
    store: RunStore, open_more: Callable[[], Any]
) -> None:
    other = await open_more()
    cap = Quota(max_in_flight=3, rate_per_s=0.0, burst=1)
    decisions = await asyncio.gather(
        *(replica.take_quota(KEY, f"s{i}", A, cap, LONG) for i, replica in enumerate([store, other] * 6))
    )
    assert sum(decision.refused is None for decision in decisions) == 3
    assert sorted(decision.in_flight for decision in decisions if decision.refused is None) == [1, 2, 3]


async def test_a_slot_nobody_renews_lapses_and_a_renewed_one_keeps_counting(store: RunStore) -> None:
    await store.take_quota(KEY, "kept", A, CAP_2, 0.3)
    await store.take_quota(KEY, "dropped", A, CAP_2, 0.3)
    assert (await store.take_quota(KEY, "late", A, CAP_2, LONG)).refused == "in_flight"
    await asyncio.sleep(0.15)
    assert await store.renew_leases(A, LONG, [], [], ["kept"]) == 1
    assert await store.renew_leases(B, LONG, [], [], ["dropped"]) == 0  # only its owner renews it
    await asyncio.sleep(0.3)  # "dropped" lapsed (its replica died, say); "kept" did not
    admitted = await store.take_quota(KEY, "late", A, CAP_2, LONG)
    assert (admitted.refused, admitted.in_flight) == (None, 2)
    await store.release_leases(A)  # shutdown: its slots go with its leases
    assert (await store.take_quota(KEY, "after", B, CAP_2, LONG)).in_flight == 1


async def test_a_keys_token_bucket_is_shared_by_replicas(store: RunStore, open_more: Callable[[], Any]) -> None:
    other = await open_more()
    rate = Quota(max_in_flight=0, rate_per_s=0.5, burst=2)
    assert (await store.take_quota(KEY, "r1", A, rate, LONG)).tokens == pytest.approx(1, abs=0.01)
    assert (await other.take_quota(KEY, "r2", B, rate, LONG)).refused is None
    limited = await store.take_quota(KEY, "r3", A, rate, LONG)
    assert limited.refused == "rate" and limited.retry_after_s == 2
    assert (await other.take_quota(OTHER_KEY, "r4", B, rate, LONG)).refused is None

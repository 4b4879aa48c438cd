"""The ``Idempotency-Key`` protocol against a recording store: what is claimed (per API key, with the body's
fingerprint, now, for the TTL), what a repeat replays (the recorded answer, else the run's record, else
409 while the first runs), a reused key with another body (422), and which failures free the key."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from frontend.errors import (
    ApiError,
    BackendTimeout,
    BackendUnavailable,
    GenerationFailed,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    RateLimited,
    StoreUnavailable,
)
from frontend.runs.idempotency import IdempotencyKeys
from frontend.store import IdempotencyRecord


class RecordingStore:
    def __init__(self, first: IdempotencyRecord | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.first = first

    async def claim_idempotency(self, *args: Any, **kwargs: Any) -> IdempotencyRecord | None:
        self.calls.append(("claim", args, kwargs))
        return self.first

    async def answer_idempotency(self, *args: Any) -> None:
        self.calls.append(("answer", *args))

    async def release_idempotency(self, *args: Any) -> None:
        self.calls.append(("release", *args))


def keys(store: RecordingStore, finished: dict[tuple[str, str], tuple[int, dict[str, Any]]] | None = None) -> Any:
    asked: list[tuple[str, str]] = []

    async def finished_answer(run_id: str, key_hash: str) -> tuple[int, dict[str, Any]] | None:
        asked.append((run_id, key_hash))
        return (finished or {}).get((run_id, key_hash))

    protocol = IdempotencyKeys(store, 3600.0, finished_answer)  # type: ignore[arg-type]
    protocol.asked = asked  # type: ignore[attr-defined]
    return protocol


def record(status: int | None = None, body: str | None = None, fingerprint: str = "fp") -> IdempotencyRecord:
    return IdempotencyRecord(fingerprint, "run-1", 1.0, status, body)


async def test_a_claim_names_the_key_its_owner_the_fingerprint_now_and_the_ttl() -> None:
    store = RecordingStore()
    before = time.time()
    assert await keys(store).claim("hash-a", "k-1", "fp", "run-1") is None
    ((_, args, kwargs),) = store.calls
    assert args == ("hash-a", "k-1", "fp", "run-1") and kwargs["ttl_s"] == 3600.0
    assert before <= kwargs["now"] <= time.time()
    store.first = record()
    assert await keys(store).claim("hash-a", "k-1", "fp", "run-2") == record()


async def test_a_recorded_answer_is_replayed_as_it_was() -> None:
    protocol = keys(RecordingStore())
    assert await protocol.replay("hash-a", "k-1", record(201, '{"a": 1}'), "fp") == (201, '{"a": 1}')
    assert protocol.asked == []  # nothing else is read


@pytest.mark.parametrize("first", [record(None, '{"a": 1}'), record(200, None), record()])
async def test_a_half_recorded_answer_is_read_from_the_runs_record(first: IdempotencyRecord) -> None:
    protocol = keys(RecordingStore(), {("run-1", "hash-a"): (200, {"run_id": "run-1", "seeds": [0]})})
    assert await protocol.replay("hash-a", "k-1", first, "fp") == (200, json.dumps({"run_id": "run-1", "seeds": [0]}))
    assert protocol.asked == [("run-1", "hash-a")]  # the run, for the calling key


async def test_a_repeat_while_the_first_runs_is_409_with_retry_after() -> None:
    protocol = keys(RecordingStore(), {("run-1", "hash-b"): (200, {})})  # another key's record is not ours
    with pytest.raises(IdempotencyKeyInUse) as in_use:
        await protocol.replay("hash-a", "k-1", record(), "fp")
    assert in_use.value.message == "the first request with Idempotency-Key 'k-1' (run run-1) is still running"
    assert (in_use.value.param, in_use.value.headers) == ("Idempotency-Key", {"Retry-After": "1"})


async def test_the_same_key_with_another_body_is_422_and_replays_nothing() -> None:
    protocol = keys(RecordingStore())
    with pytest.raises(IdempotencyKeyReused) as reused:
        await protocol.replay("hash-a", "k-1", record(200, "{}", fingerprint="fp-first"), "fp-second")
    assert reused.value.message == (
        "Idempotency-Key 'k-1' was used with another request body; send a new key for a new request"
    )
    assert reused.value.param == "Idempotency-Key" and protocol.asked == []


async def test_an_answer_is_remembered_as_json() -> None:
    store = RecordingStore()
    await keys(store).remember("hash-a", "k-1", 202, {"run_id": "run-1", "status": "queued"})
    assert store.calls == [("answer", "hash-a", "k-1", 202, '{"run_id": "run-1", "status": "queued"}')]


@pytest.mark.parametrize(
    "error, kept",
    [
        (RateLimited("slow down"), False),
        (BackendUnavailable("restarting"), False),
        (GenerationFailed("boom"), True),
        (BackendTimeout("late"), True),
        (ApiError("internal"), True),
    ],
)
async def test_a_not_now_frees_the_key_and_any_other_failure_is_replayed(error: ApiError, kept: bool) -> None:
    store = RecordingStore()
    await keys(store).remember_error("hash-a", "k-1", error)
    if kept:
        assert store.calls == [("answer", "hash-a", "k-1", error.status, json.dumps(error.body()))]
    else:
        assert store.calls == [("release", "hash-a", "k-1")]


async def test_release_frees_the_calling_keys_key() -> None:
    store = RecordingStore()
    await keys(store).release("hash-a", "k-1")
    assert store.calls == [("release", "hash-a", "k-1")]


class FlakyStore(RecordingStore):
    """Its writes fail with StoreUnavailable ``failures`` times, then succeed."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def answer_idempotency(self, *args: Any) -> None:
        await super().answer_idempotency(*args)
        self._maybe_fail()

    async def release_idempotency(self, *args: Any) -> None:
        await super().release_idempotency(*args)
        self._maybe_fail()

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the run store cannot be reached")


@pytest.mark.parametrize(
    "write, logged",
    [
        ("remember", "Idempotency-Key answer not recorded: a repeat replays it from the run's record"),
        ("release", "Idempotency-Key not freed: the run store cannot be reached"),
    ],
)
async def test_a_store_outage_is_no_error_after_the_run_was_answered(
    write: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    """By default nothing is tried again: one write, and a warning; the request's own answer stands."""
    store = FlakyStore(failures=1)
    protocol = keys(store)
    with caplog.at_level(logging.WARNING):
        if write == "remember":
            await protocol.remember("hash-a", "k-1", 200, {})
        else:
            await protocol.release("hash-a", "k-1")
    assert len(store.calls) == 1
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("frontend.runs", logged)]


@pytest.mark.parametrize("write", ["remember", "release"])
async def test_a_passing_store_outage_is_tried_through(write: str, caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(failures=1)
    protocol = IdempotencyKeys(store, 3600.0, keys(store).finished_answer, retry_s=5.0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        if write == "remember":
            await protocol.remember("hash-a", "k-1", 200, {})
        else:
            await protocol.release("hash-a", "k-1")
    assert len(store.calls) == 2 and store.calls[0] == store.calls[1]
    assert [r.getMessage() for r in caplog.records] == [
        f"{write}: the run store cannot be reached; trying again in 0.05 s"
    ]

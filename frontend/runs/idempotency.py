"""The ``Idempotency-Key`` protocol, behind ``RunService``: one key and body, one generation, one answer.

Per API key, a key is claimed with the request body's fingerprint before anything is generated. The
same key again then replays the first answer (``Idempotent-Replayed``), whatever replica it reaches:
another body under it is 422, a first request still running 409 with ``Retry-After``. A first request
that was refused for "not now" (429, 503) frees its key, so the client's retry generates rather than
replays the refusal. Keys are kept ``SD_IDEMPOTENCY_TTL_S`` (retention deletes them after).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ApiError, IdempotencyKeyInUse, IdempotencyKeyReused, StoreUnavailable
from ..store import IdempotencyRecord, RunStore
from ..store.retry import retrying

log = logging.getLogger("frontend.runs")

# A finished run's answer from its record (status, body); None while it is not final or not there.
FinishedAnswer = Callable[[str, str], Awaitable[tuple[int, dict[str, Any]] | None]]


class IdempotencyKeys:
    """``retry_s``: how long ``remember`` and ``release`` try again while the store is unavailable."""

    def __init__(self, store: RunStore, ttl_s: float, finished_answer: FinishedAnswer, retry_s: float = 0.0) -> None:
        self.store, self.ttl_s, self.finished_answer, self.retry_s = store, ttl_s, finished_answer, retry_s

    async def claim(self, key_hash: str, key: str, fingerprint: str, run_id: str) -> IdempotencyRecord | None:
        """Claim ``key`` for ``run_id``; the first request's record when it was already claimed."""
        return await self.store.claim_idempotency(key_hash, key, fingerprint, run_id, now=time.time(), ttl_s=self.ttl_s)

    async def replay(self, key_hash: str, key: str, first: IdempotencyRecord, fingerprint: str) -> tuple[int, str]:
        """The first request's answer (status, JSON body) for a request that repeats its key."""
        if first.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was used with another request body; send a new key for a new request",
                param="Idempotency-Key",
            )
        if first.response_status is not None and first.response_body is not None:
            return first.response_status, first.response_body
        # The first is running; or its replica died before it answered: the run's record says.
        finished = await self.finished_answer(first.run_id, key_hash)
        if finished is None:
            raise IdempotencyKeyInUse(
                f"the first request with Idempotency-Key {key!r} (run {first.run_id}) is still running",
                param="Idempotency-Key",
                headers={"Retry-After": "1"},
            )
        status, payload = finished
        return status, json.dumps(payload)

    async def remember(self, key_hash: str, key: str, status: int, payload: dict[str, Any]) -> None:
        """The answer a repeat of this key replays. Best effort, after the run was accepted: a request whose
        run goes on must not answer 5xx for this; a key left without its answer replays from the run's
        record (``replay``)."""
        body = json.dumps(payload)
        try:
            await retrying(lambda: self.store.answer_idempotency(key_hash, key, status, body), self.retry_s, "remember")
        except StoreUnavailable:
            log.warning("Idempotency-Key answer not recorded: a repeat replays it from the run's record")

    async def remember_error(self, key_hash: str, key: str, error: ApiError) -> None:
        """A failure is the answer to replay, unless it says "not now" (503, 429): then the key is freed."""
        if error.status in (429, 503):
            await self.release(key_hash, key)
        else:
            await self.remember(key_hash, key, error.status, error.body())

    async def release(self, key_hash: str, key: str) -> None:
        """Nothing of the request was kept: the key may be used again. Best effort: the request already
        failed, and its own error is the answer (a key left claimed answers 409 until its TTL)."""
        try:
            await retrying(lambda: self.store.release_idempotency(key_hash, key), self.retry_s, "release")
        except StoreUnavailable:
            log.warning("Idempotency-Key not freed: the run store cannot be reached")

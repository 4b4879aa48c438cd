"""Retention on every replica: results go after ``result_ttl_s``, runs after ``run_ttl_s``, in small
batches (the store makes concurrent passes safe), so the store stays bounded."""

from __future__ import annotations

import asyncio
import logging
import time

from ..errors import StoreUnavailable
from ..metrics import Metrics
from ..settings import Settings
from ..store import RunStore
from ..store.records import RETENTION_BATCH

log = logging.getLogger("frontend.retention")


async def expire_once(store: RunStore, settings: Settings, metrics: Metrics) -> tuple[int, int]:
    """Batches until a short one; (results, runs) deleted."""
    results = runs = 0
    while True:
        expired = await store.expire(
            time.time(), settings.result_ttl_s, settings.run_ttl_s, idempotency_ttl_s=settings.idempotency_ttl_s
        )
        results, runs = results + expired.results, runs + expired.runs
        if expired.results < RETENTION_BATCH and expired.runs < RETENTION_BATCH:
            break
        await asyncio.sleep(0)  # let requests in between batches
    metrics.expired.labels("result").inc(results)
    metrics.expired.labels("run").inc(runs)
    if results or runs:
        log.info("retention: %d results and %d runs deleted", results, runs)
    return results, runs


async def expire_forever(store: RunStore, settings: Settings, metrics: Metrics) -> None:
    while True:
        try:
            await expire_once(store, settings, metrics)
        except StoreUnavailable as exc:  # the next pass will do it
            log.warning("retention pass: %s", exc.message)
        except Exception:
            log.exception("retention pass failed")
        await asyncio.sleep(settings.retention_interval_s)

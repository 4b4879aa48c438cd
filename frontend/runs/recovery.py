"""Work whose replica is gone (dead, stopped, or this one before a restart): keep this replica's leases
alive, and take over unfinished runs whose lease lapsed or was handed back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .. import images
from ..errors import BackendUnavailable
from ..metrics import Metrics
from ..settings import Settings
from ..store import LeaseLost, RunStatus, RunStore
from ..waits import wait_at_most
from .control import is_background
from .execute import failure_body
from .service import RunService

log = logging.getLogger("frontend.runs")
REPLICA_LOST = (
    "the frontend replica running this run stopped before it finished (killed, crashed or restarted); send it again"
)


async def resume_unfinished(runs: RunService, store: RunStore, settings: Settings, metrics: Metrics) -> int:
    """Webhook runs start again from their stored input; synchronous ones fail (their caller is gone)."""
    if runs.draining:
        return 0
    claimed = await store.claim_unfinished_runs(runs.owner, settings.lease_s)
    for run in claimed:
        assert run.lease is not None
        if runs.is_running(run.id):  # ours, and still running: our own lease had lapsed
            runs.adopt(run.id, run.lease)
            continue
        metrics.takeovers.inc()
        # A synchronous run's caller saw the connection break; a background one resumes from its kept image.
        if not is_background(run.params, run.webhook_endpoint) or run.image_png is None:
            with contextlib.suppress(LeaseLost):  # a faster replica failed it first
                body = failure_body(run.id, BackendUnavailable(REPLICA_LOST))
                await store.finish_run(run.id, run.lease, RunStatus.FAILED, body, None)
            log.info("failed a synchronous run whose replica stopped", extra={"run_id": run.id})
            continue
        image = await asyncio.to_thread(images.from_png_bytes, run.image_png)
        task = runs.start(run.id, run.lease, run.params, image, run.webhook_endpoint)
        task.add_done_callback(consume_outcome)
        log.info("resuming run", extra={"run_id": run.id})
    return len(claimed)


async def keep_leases(
    runs: RunService, store: RunStore, settings: Settings, metrics: Metrics, wake: asyncio.Event
) -> None:
    """The heartbeat (well inside the lease), then a look for lapsed work; ``wake`` (a peer handed work
    back) looks at once. A replica that died is taken over within ``lease_s`` plus one interval."""
    interval = min(settings.lease_poll_s, settings.lease_s / 3)
    while True:
        try:
            await store.renew_leases(runs.owner, settings.lease_s)
            await runs.stop_finished_elsewhere()
            await resume_unfinished(runs, store, settings, metrics)
        except Exception:  # the loop must outlive a database hiccup: leases lapse, peers take over
            log.exception("lease loop error")
        wake.clear()
        await wait_at_most(wake.wait(), interval)


def consume_outcome(task: asyncio.Task[Any]) -> None:
    """Background runs report through the store and webhooks; swallow their raised ApiError here."""
    if not task.cancelled():
        task.exception()

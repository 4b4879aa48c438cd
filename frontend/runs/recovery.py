"""Work whose replica is gone (dead, stopped, or this one before a restart): keep this replica's leases
alive, and take over unfinished runs whose lease lapsed or was handed back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .. import images
from ..errors import BackendUnavailable, StoreUnavailable
from ..metrics import Metrics
from ..settings import Settings
from ..store import LeaseLost, Run, RunStatus, RunStore
from ..waits import wait_at_most
from ..webhooks import WebhookDeliverer
from .control import is_background
from .execute import failure_body
from .service import RunService

log = logging.getLogger("frontend.runs")
REPLICA_LOST = (
    "the frontend replica running this run stopped before it finished (killed, crashed, restarted, or cut off"
    " from the run store); send it again"
)


async def resume_unfinished(runs: RunService, store: RunStore, settings: Settings, metrics: Metrics) -> int:
    """Webhook runs start again from their stored input; synchronous ones fail (their caller is gone)."""
    if runs.draining:
        return 0
    claimed = await store.claim_unfinished_runs(runs.owner, settings.lease_s)
    for run in claimed:
        # One at a time: a run that cannot be taken over now (the store dropped the connection) is left to
        # lapse and be claimed again; the others of the batch are not left claimed and idle.
        try:
            await take_over(runs, store, metrics, run)
        except Exception:
            log.exception("could not take the run over; it lapses and is claimed again", extra={"run_id": run.id})
    return len(claimed)


async def take_over(runs: RunService, store: RunStore, metrics: Metrics, run: Run) -> None:
    assert run.lease is not None
    if runs.is_running(run.id):
        # Still running here, yet claimed again: another replica took it from us and then lost it (its
        # lease lapsed). Our task goes on, writing under the new lease rather than being fenced out.
        runs.adopt(run.id, run.lease)
        return
    metrics.takeovers.inc()
    # A synchronous run's caller saw the connection break; a background one resumes from its kept image.
    if is_background(run.params, run.webhook_endpoint) and run.image_png is not None:
        try:
            image = await asyncio.to_thread(images.from_png_bytes, run.image_png)
        except Exception:  # a stored input that cannot be decoded never will be: fail it, once
            log.exception("the run's stored input cannot be decoded", extra={"run_id": run.id})
        else:
            task = runs.start(run.id, run.lease, run.params, image, run.webhook_endpoint)
            task.add_done_callback(consume_outcome)
            log.info("resuming run", extra={"run_id": run.id})
            return
    with contextlib.suppress(LeaseLost):  # a faster replica failed it first
        body = failure_body(run.id, BackendUnavailable(REPLICA_LOST))
        await store.finish_run(run.id, run.lease, RunStatus.FAILED, body, run.webhook_endpoint)
    log.info("failed a run whose replica stopped working on it", extra={"run_id": run.id})


async def keep_leases(
    runs: RunService,
    deliverer: WebhookDeliverer,
    store: RunStore,
    settings: Settings,
    metrics: Metrics,
    wake: asyncio.Event,
) -> None:
    """The heartbeat (well inside the lease), then a look for lapsed work; ``wake`` (a peer handed work
    back) looks at once. A replica that died is taken over within ``lease_s`` plus one interval; so is a
    run or a delivery whose task ended without an outcome, since only the work a task is doing is renewed."""
    interval = min(settings.lease_poll_s, settings.lease_s / 3)
    while True:
        try:
            await store.renew_leases(
                runs.owner, settings.lease_s, runs.live(), deliverer.in_flight(), runs.fairness.held()
            )
            await runs.stop_finished_elsewhere()
            await resume_unfinished(runs, store, settings, metrics)
        except StoreUnavailable as exc:  # a database hiccup: our leases may lapse, and peers take over
            log.warning("lease loop: %s", exc.message)
        except Exception:  # the loop must outlive anything
            log.exception("lease loop error")
        wake.clear()
        await wait_at_most(wake.wait(), interval)


def consume_outcome(task: asyncio.Task[Any]) -> None:
    """Background runs report through the store and webhooks; swallow their raised ApiError here."""
    if not task.cancelled():
        task.exception()

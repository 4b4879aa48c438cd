"""After a restart (or a peer's death): take over what was accepted but not finished."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import images
from ..errors import BackendUnavailable
from ..store import RunStatus, RunStore
from .execute import failure_body
from .service import RunService

log = logging.getLogger("frontend.runs")


async def resume_unfinished(runs: RunService, store: RunStore, owner: str, lease_s: float) -> int:
    """Webhook runs start again from their stored input; synchronous ones fail (their caller is gone)."""
    claimed = await store.claim_unfinished_runs(owner, lease_s)
    for run in claimed:
        if runs.is_running(run.id):
            continue
        if run.image_png is None:  # a synchronous run: its caller saw the connection break
            error = BackendUnavailable("the server restarted before this run finished; send it again")
            await store.finish_run(run.id, RunStatus.FAILED, failure_body(run.id, error), None)
            continue
        image = await asyncio.to_thread(images.from_png_bytes, run.image_png)
        task = runs.start(run.id, run.params, image, run.webhook_endpoint)
        task.add_done_callback(consume_outcome)
        log.info("resuming run", extra={"run_id": run.id})
    return len(claimed)


def consume_outcome(task: asyncio.Task[Any]) -> None:
    """Background runs report through the store and webhooks; swallow their raised ApiError here."""
    if not task.cancelled():
        task.exception()

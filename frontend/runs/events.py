"""``GET /runs/{id}/events``: a run's status changes and its progress as Server-Sent Events.

Status events carry ids (1 queued, 2 processing, 3 the final one, with the run's view), so a client
that reconnects with ``Last-Event-ID`` gets only what it missed. ``progress`` events carry none: they
are the run's state now (step, total, the latest preview), not history, and a reconnected client gets
the current one. Any replica serves any run: it reads the run's status and progress from the store
(``run_state``: never the result or the input image) every ``SD_EVENTS_POLL_S``; the replica running
the run also wakes on its progress feed, so its streams see every step the feed saw.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from ..settings import Settings
from ..store import RunState, RunStatus, RunStore
from . import control
from .progress import ProgressFeed
from .view import run_view


def frame(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def moved_on(progress: dict[str, Any], shown: tuple[Any, Any] | None) -> bool:
    """Worth an event: a later step, or the shown step's first preview. Never a step back: the store's
    copy (written every SD_PROGRESS_STORE_S) may lag the feed's, and a stream may read either."""
    if shown is None:
        return True
    step, preview = shown
    return bool(progress["step"] > step or (progress["step"] == step and progress["preview"] and not preview))


async def stream(
    store: RunStore, feed: ProgressFeed, settings: Settings, state: RunState, key_hash: str, seen: int
) -> AsyncIterator[bytes]:
    """Frames until the final event (then the stream ends); ``: keep-alive`` comments while quiet."""
    run_id = state.id
    quiet_since = read_at = time.monotonic()
    shown: tuple[Any, Any] | None = None
    current: RunState | None = state
    while current is not None:
        for event in control.events_so_far(current):
            if event.id <= seen:
                continue
            if event.id == control.FINAL_EVENT_ID:
                run = await store.get_run(run_id, key_hash)
                data = run_view(run, await store.delivery_for_run(run_id)) if run else {"run_id": run_id}
            else:
                data = {"run_id": run_id, "status": str(event.status), "created_at": current.created_at}
            yield frame(str(event.status), data, event.id)
            seen, quiet_since = event.id, time.monotonic()
        if current.status.is_terminal:
            return
        progress = feed.latest(run_id) or current.progress
        if current.status == RunStatus.PROCESSING and progress and moved_on(progress, shown):
            shown = (progress["step"], progress["preview"])
            yield frame("progress", {"run_id": run_id, **progress})
            quiet_since = time.monotonic()
        if time.monotonic() - quiet_since > settings.events_keepalive_s:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await feed.wait(settings.events_poll_s)  # wakes early when this replica's feed moves
        if time.monotonic() - read_at >= settings.events_poll_s:
            current, read_at = await store.run_state(run_id, key_hash), time.monotonic()

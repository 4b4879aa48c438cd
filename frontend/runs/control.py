"""Run control's pure parts: deadlines (``Cancel-After``), ``Idempotency-Key`` checks and fingerprints,
and a run's status events (``GET /runs/{id}/events``). No I/O: the service and handlers use them."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest
from ..store import Run, RunState, RunStatus

MIN_CANCEL_AFTER_S, MAX_CANCEL_AFTER_S = 1.0, 24 * 3600.0
_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?")
_KEY = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}")


def parse_duration(value: Any, param: str) -> float:
    """``90s``, ``5m``, ``1h30m``, ``1.5s`` or a bare number of seconds, between 1 s and 24 h."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"{param}: must be a duration such as 90s, 5m or 1h30m but is {value!r}", param=param)
    text = str(value).strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise InvalidRequest(
                f"{param}: must be a duration such as 90s, 5m or 1h30m but is {value!r}", param=param
            ) from None
        seconds = sum(float(match[unit] or 0) * scale for unit, scale in (("h", 3600), ("m", 60), ("s", 1)))
    if not MIN_CANCEL_AFTER_S <= seconds <= MAX_CANCEL_AFTER_S:
        raise InvalidRequest(
            f"{param}: must be between {MIN_CANCEL_AFTER_S:g} s and {MAX_CANCEL_AFTER_S:g} s but is {seconds:g} s",
            param=param,
        )
    return seconds


def cancel_after(header: str | None, body: dict[str, Any]) -> float | None:
    """The run's deadline in seconds from now: the header wins over the body field."""
    if header is not None:
        return parse_duration(header, "Cancel-After")
    if body.get("cancel_after") is not None:
        return parse_duration(body["cancel_after"], "cancel_after")
    return None


def idempotency_key(header: str | None) -> str | None:
    """The draft's sf-string, taken as printable ASCII up to 255 characters (quotes optional)."""
    if header is None:
        return None
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY.fullmatch(key):
        raise InvalidRequest("Idempotency-Key: must be 1 to 255 printable ASCII characters", param="Idempotency-Key")
    return key


def fingerprint(body: Any, respond_async: bool) -> str:
    """The request as the draft compares it: the JSON body, key order and spacing aside, and how it was
    asked to be answered."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{int(respond_async)}:{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class Event:
    id: int
    status: RunStatus


# Event ids are fixed per status (queued 1, processing 2, the final one 3), so a reconnecting client's
# Last-Event-ID says what it has seen.
FINAL_EVENT_ID = 3


def events_so_far(run: Run | RunState) -> list[Event]:
    """The status changes a run has been through, from its record (any replica can tell them)."""
    events = []
    if run.started_at is None or run.started_at > run.created_at:  # synchronous runs start 'processing'
        events.append(Event(1, RunStatus.QUEUED))
    if run.started_at is not None:
        events.append(Event(2, RunStatus.PROCESSING))
    if run.status.is_terminal:
        events.append(Event(FINAL_EVENT_ID, run.status))
    return events


def is_background(params: dict[str, Any], webhook_endpoint: str | None) -> bool:
    """Answered 202 at once (a webhook, or ``Prefer: respond-async``): its input image is kept and the run
    is resumed after a crash. Otherwise synchronous: its caller holds the connection, and retries."""
    return webhook_endpoint is not None or bool(params.get("respond_async"))

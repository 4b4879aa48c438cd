"""``GET /runs``: the calling key's runs, newest first, a page at a time, each summarised with a thumbnail."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
from collections import OrderedDict
from typing import Any

from ..errors import InvalidRequest
from ..images import thumbnail_data_uri
from ..store import Run, RunStatus, RunStore

log = logging.getLogger("frontend.history")
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
THUMBNAIL_SIDE = 128
# What a summary shows of a run's parameters: enough to fill the form again.
SUMMARY_PARAMS = (
    "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "num_images_per_prompt", "strength",
    "seed", "scheduler", "output_format", "image_source", "file_url", "aesthetic_score", "negative_aesthetic_score",
)  # fmt: skip


def page_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        message = f"limit: must be an integer from 1 to {MAX_LIMIT} (got {text[:40]!r})"
        raise InvalidRequest(message, param="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit: must be from 1 to {MAX_LIMIT} but is {limit}", param="limit")
    return limit


def encode_cursor(run: Run) -> str:
    """Opaque to clients: where the next page starts (keyset pagination, stable while runs are added)."""
    return base64.urlsafe_b64encode(json.dumps([run.created_at, run.id]).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        created_at, run_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(created_at, int | float) and math.isfinite(created_at) and isinstance(run_id, str):
            return float(created_at), run_id
    except (binascii.Error, ValueError, TypeError, RecursionError):
        pass
    raise InvalidRequest(
        f"cursor: not a cursor this service gave (got {text[:40]!r}); use next_cursor from the previous page",
        param="cursor",
    )


class RunHistory:
    """Pages of summaries; thumbnails are made once per finished run and kept in a small LRU (they never
    change), so paging through history decodes each result once per replica."""

    def __init__(self, store: RunStore, cache_size: int = 1024) -> None:
        self.store = store
        self._thumbnails: OrderedDict[str, str | None] = OrderedDict()
        self._cache_size = cache_size

    async def page(self, key_hash: str, limit: int, cursor: str | None) -> dict[str, Any]:
        before = decode_cursor(cursor) if cursor is not None else None
        runs = await self.store.list_runs(key_hash, limit + 1, before)
        more, runs = len(runs) > limit, runs[:limit]
        thumbnails = await self._thumbnails_of(runs)
        return {
            "runs": [run_summary(run, thumbnails.get(run.id)) for run in runs],
            "next_cursor": encode_cursor(runs[-1]) if more else None,
        }

    async def _thumbnails_of(self, runs: list[Run]) -> dict[str, str | None]:
        # only runs whose result is still stored: a cached thumbnail must not outlive its result
        shown = [run for run in runs if _first_result(run) is not None]
        todo = [run for run in shown if run.id not in self._thumbnails]
        made = await asyncio.to_thread(_make_thumbnails, todo) if todo else {}
        thumbnails = {run.id: made[run.id] if run.id in made else self._thumbnails[run.id] for run in shown}
        for run_id, thumbnail in thumbnails.items():  # re-inserted: most recently listed last (LRU order)
            self._thumbnails.pop(run_id, None)
            self._thumbnails[run_id] = thumbnail
        while len(self._thumbnails) > self._cache_size:
            self._thumbnails.popitem(last=False)
        return thumbnails


def _first_result(run: Run) -> str | None:
    if run.status != RunStatus.SUCCEEDED or not run.body or not run.body.get("result"):
        return None  # unfinished, failed, or its result expired (SD_RESULT_TTL_S)
    first = run.body["result"][0]
    return first if isinstance(first, str) else None


def _make_thumbnails(runs: list[Run]) -> dict[str, str | None]:
    made: dict[str, str | None] = {}
    for run in runs:
        try:
            made[run.id] = thumbnail_data_uri(_first_result(run) or "", max_side=THUMBNAIL_SIDE)
        except Exception:  # a stored result we cannot read should not break the whole list
            log.warning("no thumbnail for run %s", run.id, exc_info=True)
            made[run.id] = None
    return made


def run_summary(run: Run, thumbnail: str | None) -> dict[str, Any]:
    body = run.body or {}
    return {
        "run_id": run.id,
        "status": str(run.status),
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "params": {name: run.params[name] for name in SUMMARY_PARAMS if name in run.params},
        "seeds": body.get("seeds"),
        "result_count": len(body.get("result") or []),
        "result_expired": run.result_expired_at is not None,
        "thumbnail": thumbnail,
        "error": body.get("error"),
    }

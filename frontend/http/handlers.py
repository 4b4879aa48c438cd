"""Thin handlers: parse, call the run service, shape the answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..app_keys import METRICS, READINESS, RUNS, SETTINGS
from ..errors import BackendUnavailable, InvalidJson, NotFound
from ..runs.recovery import consume_outcome
from ..runs.service import ACCEPTED_MESSAGE
from ..schemas import parse_body
from ..store import RunStatus
from .middlewares import KEY_HASH
from .openapi import openapi_document


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        text = raw.decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError) as exc:  # not UTF-8 (binary, an image), or an unknown charset
        raise InvalidJson(f"the body is not valid JSON: it is not {request.charset or 'utf-8'} text ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJson(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (character {exc.pos})"
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer over 4300 digits, nesting too deep
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None


async def predict(request: web.Request) -> web.Response:
    runs = request.app[RUNS]
    body = parse_body(await read_json(request), request.app[SETTINGS])
    prepared = await runs.prepare(body)
    lease = await runs.create(prepared, request[KEY_HASH])
    task = runs.start(prepared.run_id, lease, prepared.params, prepared.image, prepared.webhook_endpoint)
    if prepared.webhook_endpoint is not None:
        task.add_done_callback(consume_outcome)
        answer: dict[str, Any] = {
            "run_id": prepared.run_id,
            "message": ACCEPTED_MESSAGE,
            "status": str(RunStatus.QUEUED),
        }
        if prepared.warnings:
            answer["warnings"] = prepared.warnings
        return web.json_response(answer, status=202, headers={"Location": f"/runs/{prepared.run_id}"})
    # Shielded: if the client hangs up, the run still finishes and is stored.
    return web.json_response(await asyncio.shield(task))


async def get_run(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    view = await request.app[RUNS].view(run_id, request[KEY_HASH])
    if view is None:  # also for another key's run: its existence is not ours to reveal
        raise NotFound(f"no run {run_id!r} for this API key", param="run_id")
    return web.json_response(view)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready = the model is loaded, not known dead, its queue not full; busy is ready (``readiness.py``)."""
    unready = await request.app[READINESS].verdict()
    if unready is not None:
        raise BackendUnavailable(f"not ready: {unready}")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SETTINGS]))

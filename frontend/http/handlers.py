"""Thin handlers: parse, call the run service, shape the answer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..app_keys import BACKEND, HISTORY, METRICS, READINESS, RUNS, SETTINGS
from ..errors import (
    ApiError,
    BackendUnavailable,
    InvalidJson,
    NotFound,
    RunFinished,
)
from ..fairness import Slot
from ..runs import control
from ..runs.history import page_limit
from ..runs.recovery import consume_outcome
from ..runs.service import ACCEPTED_MESSAGE, QUEUED_MESSAGE, RunService
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


# How often a synchronous request looks whether its client is still connected.
DISCONNECT_POLL_S = 0.2


async def predict(request: web.Request) -> web.Response:
    runs, key_hash = request.app[RUNS], request[KEY_HASH]
    # Fairness first, before the body is read (a key past its limits costs almost nothing), unless the
    # request may be a replay, which is answered whatever the limits.
    slot = None if "Idempotency-Key" in request.headers else await runs.fairness.acquire(key_hash)
    try:
        return await _predict(request, runs, key_hash, slot)
    finally:
        if slot is not None and not slot.started:
            slot.release()


async def _predict(request: web.Request, runs: RunService, key_hash: str, slot: Slot | None) -> web.Response:
    data = await read_json(request)
    fields = data if isinstance(data, dict) else {}
    respond_async = "respond-async" in request.headers.get("Prefer", "").lower()
    key = control.idempotency_key(request.headers.get("Idempotency-Key"))
    cancel_after_s = control.cancel_after(request.headers.get("Cancel-After"), fields)
    body = parse_body(data, request.app[SETTINGS])
    run_id = str(uuid.uuid4())
    # 1. The same Idempotency-Key again: the first answer, never a second generation.
    if key is not None:
        fingerprint = control.fingerprint(data, respond_async)
        first = await runs.idempotency.claim(key_hash, key, fingerprint, run_id)
        if first is not None:
            status, replayed = await runs.idempotency.replay(key_hash, key, first, fingerprint)
            return web.Response(
                status=status, body=replayed, content_type="application/json", headers={"Idempotent-Replayed": "true"}
            )
    # 2. Admit (per-key fairness), prepare and record; nothing of a refused request is kept.
    try:
        slot = slot or await runs.fairness.acquire(key_hash)
        try:
            prepared = await runs.prepare(body, run_id)
            if respond_async and prepared.webhook_endpoint is None:
                prepared.params["respond_async"] = True
            if cancel_after_s is not None:
                prepared.params.update(cancel_after_s=cancel_after_s, deadline=time.time() + cancel_after_s)
            lease = await runs.create(prepared, key_hash)
        except BaseException:
            slot.release()
            raise
    except BaseException:
        if key is not None:
            await runs.idempotency.release(key_hash, key)
        raise
    slot.started = True
    task = runs.start(run_id, lease, prepared.params, prepared.image, prepared.webhook_endpoint, slot)
    limits = slot.headers
    # 3. Background runs answer at once.
    if prepared.background:
        task.add_done_callback(consume_outcome)
        answer: dict[str, Any] = {
            "run_id": run_id,
            "message": ACCEPTED_MESSAGE if prepared.webhook_endpoint else QUEUED_MESSAGE.format(run_id=run_id),
            "status": str(RunStatus.QUEUED),
        }
        if prepared.warnings:
            answer["warnings"] = prepared.warnings
        if key is not None:
            await runs.idempotency.remember(key_hash, key, 202, answer)
        return web.json_response(answer, status=202, headers={"Location": f"/runs/{run_id}", **limits})
    # 4. Synchronous: wait, unless the caller hangs up. Then nobody can fetch a result whose run id they
    #    never got, so the run is canceled, unless a retry with the same Idempotency-Key will ask for it.
    if not await _finished_or_gone(request, task):
        if key is None:
            await runs.cancel(run_id, key_hash, reason="the client disconnected")
        else:
            runs.remember_when_done(task, key_hash, key, run_id)
        return web.Response(status=499)  # nobody reads it: the connection is gone
    try:
        status, payload = await runs.answer(task, key_hash, run_id)
    except ApiError as error:
        if key is not None:
            await runs.idempotency.remember_error(key_hash, key, error)
        raise
    if key is not None:
        await runs.idempotency.remember(key_hash, key, status, payload)
    return web.json_response(payload, status=status, headers=limits)


async def _finished_or_gone(request: web.Request, task: asyncio.Task[dict[str, Any]]) -> bool:
    """True when ``task`` finished; False as soon as the client's connection closed."""
    while not task.done():
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
    return True


async def cancel_run(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    view, stopped = await request.app[RUNS].cancel(run_id, request[KEY_HASH])
    if not stopped:
        raise RunFinished(f"run {run_id} had already finished: {view['status']}", run=view)
    return web.json_response(view)


async def run_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of the run's status changes and progress, ending after the final one (``runs/events.py``)."""
    try:
        seen = int(request.headers.get("Last-Event-ID", "0"))
    except ValueError:
        seen = 0
    frames = await request.app[RUNS].events(request.match_info["run_id"], request[KEY_HASH], seen)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        async for chunk in frames:
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:  # the client went away (a tab closed, a reload): nothing to answer
        pass
    return response


async def list_runs(request: web.Request) -> web.Response:
    """The calling key's runs, newest first; ``?limit=`` (1-100, default 20), ``?cursor=`` from ``next_cursor``."""
    limit = page_limit(request.query.get("limit"))
    page = await request.app[HISTORY].page(request[KEY_HASH], limit, request.query.get("cursor"))
    return web.json_response(page)


async def get_run(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    view = await request.app[RUNS].view(run_id, request[KEY_HASH])
    if view is None:  # also for another key's run: its existence is not ours to reveal
        raise NotFound.run(run_id)
    return web.json_response(view)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready = the store answers and a pod can take work (loaded, not known dead, its queue not full); busy is
    ready (``readiness.py``). ``pods_out`` names the pods that cannot, and why."""
    readiness = request.app[READINESS]
    unready = await readiness.verdict()
    if unready is not None:
        raise BackendUnavailable(f"not ready: {unready}")
    return web.json_response({"status": "ready", "pods_out": readiness.pods_out})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SETTINGS], request.app[BACKEND].model_card()))

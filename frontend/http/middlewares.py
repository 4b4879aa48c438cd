"""Middlewares, outermost first: request context (ids, metrics, access log), errors, auth."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..app_keys import KEY_HASHES, METRICS, SETTINGS
from ..auth import match_key, presented_key
from ..errors import ApiError, MethodNotAllowed, NotFound, PayloadTooLarge, Unauthorized
from . import playground

log = logging.getLogger("frontend.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", *playground.PUBLIC_PATHS}
KEY_HASH = web.RequestKey("key_hash", str)  # the caller's key hash, set by auth


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        metrics = request.app[METRICS]
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(elapsed)
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            status,
            extra={"request_id": request_id, "status": status, "duration_ms": round(elapsed * 1000, 1)},
        )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return error_response(PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes"))
    except web.HTTPNotFound:
        return error_response(NotFound(f"no such endpoint: {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allowed}"))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError("internal error; the failure was logged"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Before the body is read: a missing or wrong key costs us no body parsing."""
    matched = authenticate(request)
    if matched is not None:
        request[KEY_HASH] = matched
    return await handler(request)


def authenticate(request: web.Request) -> str | None:
    """The hash of the caller's key; None on a public path; else 401. Undecorated, so that mutation testing
    (``make mutation``, which skips decorated functions) reaches the rule."""
    if request.path in PUBLIC_PATHS:
        return None
    key = presented_key(request.headers.get("Authorization"))
    matched = match_key(key, request.app[KEY_HASHES]) if key else None
    if matched is None:
        raise Unauthorized(
            "missing or invalid API key: send it as 'Authorization: <API_KEY>'", headers={"WWW-Authenticate": "Bearer"}
        )
    return matched

"""``create_app(settings)``: the only constructor of the aiohttp application (tests use it too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from . import handlers
from .keys import BACKEND, DELIVERER, KEY_HASHES, METRICS, READINESS, RUNS, SESSION, SETTINGS, STORE, key_hash
from .metrics import Metrics
from .middlewares import auth_middleware, context_middleware, error_middleware
from .netguard import guarded_socket_factory
from .readiness import Readiness
from .runs import RunService
from .settings import Settings
from .store import RunStore
from .triton_backend import TritonBackend
from .webhooks import WebhookDeliverer, WebhookSigner

log = logging.getLogger("frontend")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[context_middleware, error_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[KEY_HASHES] = tuple(key_hash(key.get_secret_value()) for key in settings.api_keys)
    app.cleanup_ctx.append(_services)
    app.on_shutdown.append(_drain)
    app.router.add_post("/predict", handlers.predict)
    app.router.add_get("/runs/{run_id}", handlers.get_run)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi)
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    """Open the store, the guarded HTTP session, the Triton client and the webhook loop; resume runs."""
    settings = app[SETTINGS]
    if not settings.api_keys:
        raise RuntimeError("no API keys configured: set SD_API_KEYS (comma-separated)")
    if settings.webhook_secret is None:
        raise RuntimeError("no webhook secret configured: set SD_WEBHOOK_SECRET (whsec_ + base64)")
    store = RunStore(settings.runs_db)
    await store.open()
    # trust_env=False: a proxy would connect on our behalf, out of the socket guard's sight.
    connector = aiohttp.TCPConnector(
        socket_factory=guarded_socket_factory(settings.allow_private_networks), limit=100, ttl_dns_cache=60
    )
    session = aiohttp.ClientSession(connector=connector, trust_env=False, headers={"User-Agent": "sd-img2img/1.0"})
    backend = TritonBackend(settings.triton_url, settings.triton_model, settings.triton_timeout_s)
    deliverer = WebhookDeliverer(
        store, session, WebhookSigner(settings.webhook_secret.get_secret_value()), settings, app[METRICS]
    )
    app[STORE], app[SESSION], app[BACKEND], app[DELIVERER] = store, session, backend, deliverer
    app[READINESS] = Readiness(backend, settings)
    app[RUNS] = RunService(settings, store, backend, session, deliverer, app[METRICS])
    delivery_task = asyncio.create_task(deliverer.run_forever(), name="webhook-deliveries")
    resumed = await app[RUNS].resume_unfinished()
    if resumed:
        log.info("resumed %d unfinished runs", resumed)
    try:
        yield
    finally:
        delivery_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await delivery_task
        await backend.close()
        await session.close()
        await store.close()


async def _drain(app: web.Application) -> None:
    """Graceful shutdown: in-flight runs finish, or stay recorded as unfinished and resume next start."""
    if RUNS in app:
        await app[RUNS].drain(app[SETTINGS].shutdown_timeout_s)

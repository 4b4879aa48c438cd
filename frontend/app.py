"""``create_app(settings)``: the only constructor of the aiohttp application (tests use it too)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from .app_keys import BACKEND, DELIVERER, HISTORY, KEY_HASHES, METRICS, READINESS, RUNS, SESSION, SETTINGS, STORE
from .auth import key_hash
from .backend import Backend
from .fleet import Fleet, parse_targets
from .http import handlers
from .http.middlewares import auth_middleware, context_middleware, error_middleware
from .http.playground import security_headers, setup_playground
from .metrics import Metrics
from .netguard import guarded_socket_factory
from .readiness import Readiness
from .runs.execute import RunExecutor
from .runs.history import RunHistory
from .runs.progress import ProgressFeed
from .runs.recovery import keep_leases
from .runs.retention import expire_forever
from .runs.service import RunService
from .settings import Settings
from .store import RunStore, open_store, redacted
from .triton_backend import TritonPod
from .version import user_agent
from .webhooks import WebhookDeliverer, WebhookSigner

log = logging.getLogger("frontend")


def create_app(settings: Settings, *, backend: Backend | None = None, store: RunStore | None = None) -> web.Application:
    """``backend`` and ``store`` replace the Triton client and the configured store (tests)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[context_middleware, error_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[KEY_HASHES] = tuple(key_hash(key.get_secret_value()) for key in settings.api_keys)
    app.cleanup_ctx.append(_store(store))
    app.cleanup_ctx.append(_session)
    app.cleanup_ctx.append(_backend(backend))
    app.cleanup_ctx.append(_runs)
    app.on_shutdown.append(_drain)
    app.on_response_prepare.append(security_headers)
    setup_routes(app)
    if settings.playground:
        setup_playground(app)
    return app


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/predict", handlers.predict)
    app.router.add_get("/runs", handlers.list_runs)
    app.router.add_get("/runs/{run_id}", handlers.get_run)
    app.router.add_post("/runs/{run_id}/cancel", handlers.cancel_run)
    app.router.add_get("/runs/{run_id}/events", handlers.run_events)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi)


def _store(given: RunStore | None):  # type: ignore[no-untyped-def]  # a cleanup_ctx factory
    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        if not settings.api_keys:
            raise RuntimeError("no API keys configured: set SD_API_KEYS (comma-separated)")
        if settings.webhook_secret is None:
            raise RuntimeError("no webhook secret configured: set SD_WEBHOOK_SECRET (whsec_ + base64)")
        store = given or open_store(settings.store_url, pool_size=settings.database_pool_size)
        await store.open()
        log.info("run store open: %s", redacted(settings.store_url))
        app[STORE] = store
        try:
            yield
        finally:
            await store.close()

    return store_ctx


async def _session(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client for file_url and webhooks, every connection through the SSRF guard."""
    # trust_env=False: a proxy would connect on our behalf, out of the socket guard's sight.
    connector = aiohttp.TCPConnector(
        socket_factory=guarded_socket_factory(app[SETTINGS].allow_private_networks), limit=100, ttl_dns_cache=60
    )
    app[SESSION] = aiohttp.ClientSession(connector=connector, trust_env=False, headers={"User-Agent": user_agent()})
    try:
        yield
    finally:
        await app[SESSION].close()


def _backend(given: Backend | None):  # type: ignore[no-untyped-def]  # a cleanup_ctx factory
    async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        backend = given or Fleet(
            parse_targets(settings.triton_url),
            lambda address: TritonPod(
                address, settings.triton_model, settings.triton_timeout_s, settings.triton_progress_model
            ),
            max_rows=settings.pod_max_rows,
            placement=settings.pod_placement,
            resolve_s=settings.fleet_resolve_s,
            metrics=app[METRICS],
        )
        readiness = Readiness(backend, settings, app[STORE])
        app[BACKEND], app[READINESS] = backend, readiness
        await backend.refresh()
        watch = asyncio.create_task(_watch_pods(backend, readiness, settings.pod_check_s), name="watch-pods")
        try:
            yield
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await backend.close()

    return backend_ctx


async def _watch_pods(backend: Backend, readiness: Readiness, every_s: float) -> None:
    """Pods join and leave (a headless Service resolved again); a pod out of placement is probed until it
    answers, so it comes back without waiting for a probe of /readyz."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await backend.refresh()
            await readiness.probe_out()
        except Exception:  # one bad round must not end the watch
            log.exception("watching the pods failed")


async def _runs(app: web.Application) -> AsyncIterator[None]:
    """The run service and this replica's loops: webhook deliveries, leases (heartbeat and takeover of
    lapsed work), retention. At shutdown, after the drain, what is still leased is handed back at once."""
    settings, store, metrics = app[SETTINGS], app[STORE], app[METRICS]
    assert settings.webhook_secret is not None
    owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"  # this replica, for leases
    signer = WebhookSigner(settings.webhook_secret.get_secret_value())
    deliverer = WebhookDeliverer(store, app[SESSION], signer, settings, metrics, owner)
    feed = ProgressFeed(app[BACKEND], store, settings.progress_poll_s, settings.progress_store_s)
    executor = RunExecutor(settings, store, app[BACKEND], deliverer, metrics, feed)
    app[DELIVERER], app[RUNS] = deliverer, RunService(settings, store, executor, app[SESSION], metrics, owner)
    app[HISTORY] = RunHistory(store)
    look_for_runs = asyncio.Event()

    def peer_made_work() -> None:
        deliverer.wake()
        look_for_runs.set()

    store.subscribe(peer_made_work)
    log.info("replica %s", owner)
    loops = [
        asyncio.create_task(deliverer.run_forever(), name="webhook-deliveries"),
        asyncio.create_task(keep_leases(app[RUNS], deliverer, store, settings, metrics, look_for_runs), name="leases"),
        asyncio.create_task(expire_forever(store, settings, metrics), name="retention"),
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await app[RUNS].fairness.drain()  # slots being given back, before the rest go with the leases
        try:
            await store.release_leases(owner)
        except Exception as exc:  # noqa: BLE001 - a store already gone (an interrupted shutdown): they lapse
            log.warning("leases not handed back (%r); they lapse within SD_LEASE_S", exc)


async def _drain(app: web.Application) -> None:
    """Graceful shutdown: in-flight runs finish, or stay recorded as unfinished and resume next start."""
    if RUNS in app:
        await app[RUNS].drain(app[SETTINGS].shutdown_timeout_s)

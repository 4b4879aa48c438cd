"""Accept a run: turn a validated request into a run (fetch and decode its image, check its webhook),
record it before answering, start it as a tracked task; look runs up for their key; drain at shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from .. import images
from ..errors import InvalidRequest, ResultExpired
from ..fetch import check_url, fetch_file_url
from ..metrics import Metrics
from ..netguard import host_denial_reason
from ..schemas import PredictBody
from ..settings import Settings
from ..store import Lease, RunStatus, RunStore
from .execute import HeldLease, RunExecutor, ms_since
from .view import run_view

log = logging.getLogger("frontend.runs")
ACCEPTED_MESSAGE = "Run accepted; the result will be POSTed to webhook_endpoint"
BOTH_SOURCES_WARNING = "both image and file_url were sent: image was used, file_url was not fetched"


@dataclass
class PreparedRun:
    run_id: str
    params: dict[str, Any]  # everything but the image, JSON-serialisable
    image: np.ndarray
    webhook_endpoint: str | None
    warnings: list[str] = field(default_factory=list)


class RunService:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        executor: RunExecutor,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        owner: str,
    ) -> None:
        self.settings, self.store, self.executor, self.session, self.metrics = (
            settings,
            store,
            executor,
            session,
            metrics,
        )
        self.owner = owner  # this replica: the holder of the leases on the runs it accepts
        self._tasks: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._leases: dict[str, HeldLease] = {}
        self.draining = False  # shutting down: take over nothing more

    # 1. Turn a validated body into a run: fetch/decode the image, check the webhook URL.
    async def prepare(self, body: PredictBody) -> PreparedRun:
        warnings: list[str] = []
        timings: dict[str, float] = {}
        started = time.perf_counter()
        if body.webhook_endpoint is not None:
            await self._check_webhook_endpoint(body.webhook_endpoint)
        limits = {"max_pixels": self.settings.max_image_pixels, "max_side": self.settings.max_image_side}
        if body.image:
            if body.file_url:
                warnings.append(BOTH_SOURCES_WARNING)
            source = "image"
            image = await asyncio.to_thread(
                images.load_base64_image, body.image, max_bytes=self.settings.max_image_bytes, **limits
            )
            timings["decode"] = ms_since(started)
        else:
            assert body.file_url is not None
            source = "file_url"
            data = await fetch_file_url(
                self.session,
                body.file_url,
                max_bytes=self.settings.max_image_bytes,
                max_redirects=self.settings.fetch_max_redirects,
                connect_timeout_s=self.settings.fetch_connect_timeout_s,
                total_timeout_s=self.settings.fetch_total_timeout_s,
            )
            timings["fetch"] = ms_since(started)
            decode_started = time.perf_counter()
            image = await asyncio.to_thread(images.load_image, data, param="file_url", **limits)
            timings["decode"] = ms_since(decode_started)
        params = body.model_dump(exclude={"image", "file_url", "webhook_endpoint"})
        params.update(image_source=source, warnings=warnings, width=int(image.shape[1]), height=int(image.shape[0]))
        params["timings_ms"] = timings
        return PreparedRun(str(uuid.uuid4()), params, image, body.webhook_endpoint, warnings)

    async def _check_webhook_endpoint(self, url: str) -> None:
        # Early and clear (literals in any spelling, names as they resolve now); every delivery's real
        # connection is checked again, so a name that resolves elsewhere later (DNS rebinding) is refused.
        parsed = check_url(url, "webhook_endpoint", InvalidRequest)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        reason = await host_denial_reason(parsed.host or "", port, self.settings.allow_private_networks)
        if reason is not None:
            raise InvalidRequest(f"webhook_endpoint is not allowed: {reason}", param="webhook_endpoint")

    # 2. Record it before answering, leased to this replica.
    async def create(self, prepared: PreparedRun, key_hash: str) -> Lease:
        owner, lease_s = self.owner, self.settings.lease_s
        if prepared.webhook_endpoint is None:
            # Synchronous: the caller holds the connection and retries if it breaks, so after a crash
            # there is no one to resume for. No input image is kept (a PNG encode per request saved,
            # 40 ms at 512x512) and the run starts as 'processing' (one commit fewer).
            granted = await self.store.create_run(
                prepared.run_id, key_hash, prepared.params, None, None, owner=owner, lease_s=lease_s,
                status=RunStatus.PROCESSING,
            )  # fmt: skip
        else:
            png = await asyncio.to_thread(images.png_bytes, prepared.image)
            granted = await self.store.create_run(
                prepared.run_id, key_hash, prepared.params, png, prepared.webhook_endpoint, owner=owner, lease_s=lease_s
            )
        log.info("run accepted", extra={"run_id": prepared.run_id})
        return granted

    # 3. Generate: a tracked task, so a client that hangs up does not cancel an accepted run.
    def start(
        self, run_id: str, lease: Lease, params: dict[str, Any], image: np.ndarray, webhook_endpoint: str | None
    ) -> asyncio.Task[dict[str, Any]]:
        held = self._leases[run_id] = HeldLease(lease)
        task = asyncio.create_task(
            self.executor.execute(run_id, held, params, image, webhook_endpoint), name=f"run-{run_id}"
        )
        self._tasks[run_id] = task
        self.metrics.in_flight.inc()

        def done(_: asyncio.Task[dict[str, Any]]) -> None:
            self._tasks.pop(run_id, None)
            self._leases.pop(run_id, None)
            self.metrics.in_flight.dec()

        task.add_done_callback(done)
        return task

    def is_running(self, run_id: str) -> bool:
        return run_id in self._tasks

    def adopt(self, run_id: str, lease: Lease) -> None:
        """This replica re-claimed a run it is still running (its own lease had lapsed): write under the new one."""
        self._leases[run_id].current = lease

    # 4. Look it up, for the key that created it only.
    async def view(self, run_id: str, key_hash: str) -> dict[str, Any] | None:
        run = await self.store.get_run(run_id, key_hash)
        if run is None:
            return None
        view = run_view(run, await self.store.delivery_for_run(run_id))
        if run.result_expired_at is not None:
            raise ResultExpired(
                f"the result of run {run_id} was deleted {self.settings.result_ttl_s:g} s after it finished"
                " (SD_RESULT_TTL_S); send the request again with the same seed for the same images",
                run={**view, "result_expired_at": run.result_expired_at},
            )
        return view

    # 5. Shutdown.
    async def drain(self, timeout_s: float) -> None:
        """Let in-flight runs finish; what does not is still 'queued'/'processing' in the store and is
        taken over by another replica (or by this one after a restart)."""
        self.draining = True
        tasks = list(self._tasks.values())
        if tasks:
            log.info("waiting for %d in-flight runs", len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

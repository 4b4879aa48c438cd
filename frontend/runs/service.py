"""Accept a run: turn a validated request into a run (fetch and decode its image, check its webhook),
record it before answering, start it as a tracked task; look runs up for their key; drain at shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from .. import images
from ..errors import ERROR_TABLE, ApiError, InvalidRequest, NotFound, ResultExpired, RunAborted, RunCanceled
from ..fairness import Fairness, Slot
from ..fetch import check_url, fetch_file_url
from ..metrics import Metrics
from ..model_card import max_image_side, refuse_unsupported
from ..netguard import host_denial_reason
from ..quota import Quota
from ..schemas import PredictBody
from ..settings import Settings
from ..store import Lease, Run, RunStatus, RunStore
from ..store.retry import retrying
from . import events
from .control import is_background
from .execute import HeldLease, RunExecutor, RunStopped, RunTakenOver, ms_since, stopped_body
from .idempotency import IdempotencyKeys
from .view import run_view

log = logging.getLogger("frontend.runs")
ACCEPTED_MESSAGE = "Run accepted; the result will be POSTed to webhook_endpoint"
QUEUED_MESSAGE = "Run accepted; follow it at /runs/{run_id} or /runs/{run_id}/events"
_STATUS_OF_CODE = {code: status for status, code, _ in ERROR_TABLE}
BOTH_SOURCES_WARNING = "both image and file_url were sent: image was used, file_url was not fetched"


@dataclass
class PreparedRun:
    run_id: str
    params: dict[str, Any]  # everything but the image, JSON-serialisable
    image: np.ndarray
    webhook_endpoint: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return is_background(self.params, self.webhook_endpoint)


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
        self._stopping: set[str] = set()  # runs whose task is being cancelled because they were stopped
        quota = Quota(settings.max_runs_in_flight_per_key, settings.rate_per_key_per_s, settings.rate_burst_per_key)
        self.fairness = Fairness(quota, store, owner, settings.lease_s)
        self.draining = False  # shutting down: take over nothing more
        self.idempotency = IdempotencyKeys(
            store, settings.idempotency_ttl_s, self._finished_answer, settings.store_retry_s
        )
        # Work started for a request that has gone (an idempotent answer to record): drained like runs.
        self._follow_ups: set[asyncio.Task[None]] = set()

    async def events(self, run_id: str, key_hash: str, seen: int) -> AsyncIterator[bytes]:
        """The run's Server-Sent Events after ``seen`` (``runs/events.py``); NotFound for another key's run."""
        state = await self.store.run_state(run_id, key_hash)
        if state is None:
            raise NotFound.run(run_id)
        return events.stream(self.store, self.executor.progress, self.settings, state, key_hash, seen)

    # 1. Turn a validated body into a run: fetch/decode the image, check the webhook URL.
    async def prepare(self, body: PredictBody, run_id: str | None = None) -> PreparedRun:
        warnings: list[str] = []
        timings: dict[str, float] = {}
        started = time.perf_counter()
        # What the served model is, as last read from it: a field it cannot take is refused before any work
        # (an unknown card lets it through, and the model refuses it with the same 400).
        card = self.executor.backend.model_card()
        refuse_unsupported(body.model_dump(), card)
        if body.webhook_endpoint is not None:
            await self._check_webhook_endpoint(body.webhook_endpoint)
        limits = {
            "max_pixels": self.settings.max_image_pixels,
            "max_side": max_image_side(self.settings.max_image_side, card),
        }
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
        params = body.model_dump(exclude={"image", "webhook_endpoint"})
        params.update(image_source=source, warnings=warnings, width=int(image.shape[1]), height=int(image.shape[0]))
        params["timings_ms"] = timings
        return PreparedRun(run_id or str(uuid.uuid4()), params, image, body.webhook_endpoint, warnings)

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
        """Tried again while the store is unavailable (the same id again hands back the lease a try whose
        answer was lost got). If it still fails, the request answers 503; a try that did land left a run
        no task works, whose lease lapses, and the replica that takes it over ends it."""
        owner, lease_s = self.owner, self.settings.lease_s
        if not prepared.background:
            # Synchronous: the caller holds the connection and retries if it breaks, so after a crash
            # there is no one to resume for. No input image is kept (a PNG encode per request saved,
            # 40 ms at 512x512) and the run starts as 'processing' (one commit fewer).
            png, webhook, status = None, None, RunStatus.PROCESSING
        else:
            png = await asyncio.to_thread(images.png_bytes, prepared.image)
            webhook, status = prepared.webhook_endpoint, RunStatus.QUEUED
        granted = await retrying(
            lambda: self.store.create_run(
                prepared.run_id, key_hash, prepared.params, png, webhook, owner=owner, lease_s=lease_s, status=status
            ),
            self.settings.store_retry_s,
            "create_run",
        )
        log.info("run accepted", extra={"run_id": prepared.run_id})
        return granted

    # 3. Generate: a tracked task, so a client that hangs up does not cancel an accepted run.
    def start(
        self,
        run_id: str,
        lease: Lease,
        params: dict[str, Any],
        image: np.ndarray,
        webhook_endpoint: str | None,
        slot: Slot | None = None,
    ) -> asyncio.Task[dict[str, Any]]:
        """``slot``: the key's fairness slot, which this run holds (and gives back) from now on."""
        held = self._leases[run_id] = HeldLease(lease)
        task = asyncio.create_task(
            self.executor.execute(run_id, held, params, image, webhook_endpoint), name=f"run-{run_id}"
        )
        self._tasks[run_id] = task
        self.metrics.in_flight.inc()

        def done(_: asyncio.Task[dict[str, Any]]) -> None:
            self._tasks.pop(run_id, None)
            self._leases.pop(run_id, None)
            self._stopping.discard(run_id)
            self.metrics.in_flight.dec()
            if slot is not None:
                slot.release()

        task.add_done_callback(done)
        return task

    def is_running(self, run_id: str) -> bool:
        return run_id in self._tasks

    def live(self) -> list[str]:
        """The runs a task of this replica is working now: the only run leases its heartbeat renews."""
        return list(self._leases)

    def adopt(self, run_id: str, lease: Lease) -> None:
        """This replica re-claimed a run it is still running (another had taken it over and lost it in turn):
        its task writes under the new lease."""
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

    # 5. Stop it: canceled on request (or a synchronous caller gone), from any replica.
    async def cancel(
        self, run_id: str, key_hash: str, *, status: RunStatus = RunStatus.CANCELED, reason: str = "canceled by request"
    ) -> tuple[dict[str, Any], bool]:
        """The run's view after the cancel, and whether this call stopped it (False: it had finished)."""
        outcome = await self.store.stop_run(run_id, key_hash, status, stopped_body(run_id, status, reason))
        if outcome is None:
            raise NotFound.run(run_id)
        run, stopped = outcome
        if stopped:
            self.metrics.runs.labels(str(status)).inc()
            self.executor.deliverer.wake()
            self._stop_local(run_id)
            log.info("run %s: %s", status, reason, extra={"run_id": run_id})
        return run_view(run, await self.store.delivery_for_run(run_id)), stopped

    def _stop_local(self, run_id: str) -> None:
        """Cancel the task: a call waiting in Triton's queue is dropped there (gRPC cancellation), one in
        the model stops at its next denoising step once all of its pipeline call is cancelled."""
        task = self._tasks.get(run_id)
        if task is not None and run_id not in self._stopping:
            self._stopping.add(run_id)
            task.cancel()

    async def stop_finished_elsewhere(self) -> None:
        """Runs running here that another replica finished (canceled there, or taken over after this one
        stalled past its lease): stop them here, rather than finish work whose outcome stands elsewhere."""
        running = [run_id for run_id in self._tasks if run_id not in self._stopping]
        for run_id in await self.store.finished_among(running):
            self.metrics.leases_lost.labels("run").inc()
            log.warning(
                "run taken over by another replica: it finished there; stopping it here", extra={"run_id": run_id}
            )
            self._stop_local(run_id)

    async def _recorded_answer(
        self, run_id: str, key_hash: str, *, final_only: bool
    ) -> tuple[int, dict[str, Any]] | None:
        run = await self.store.get_run(run_id, key_hash)
        if run is None or (final_only and not run.status.is_terminal):
            return None
        return answer_of(run, run_view(run, await self.store.delivery_for_run(run_id)))

    async def _finished_answer(self, run_id: str, key_hash: str) -> tuple[int, dict[str, Any]] | None:
        """A replay's answer from the record once the run is final; None while it runs (or is not there)."""
        return await self._recorded_answer(run_id, key_hash, final_only=True)

    # 6. A synchronous request's answer: as the task ended here, else (stopped, taken over) as recorded.
    async def answer(
        self, task: asyncio.Task[dict[str, Any]], key_hash: str, run_id: str
    ) -> tuple[int, dict[str, Any]]:
        error = None
        if not task.cancelled():
            error = task.exception()
            if error is None:
                return 200, task.result()
            if isinstance(error, ApiError) and not isinstance(error, RunStopped | RunTakenOver):
                raise error  # as it happened here, headers (Retry-After) and all
        recorded = await self._recorded_answer(run_id, key_hash, final_only=True)
        if recorded is None:  # taken over and not final there yet, or cut short here by a shutdown: not "no answer"
            raise error if isinstance(error, RunTakenOver) else RunTakenOver(run_id)
        return recorded

    def remember_when_done(self, task: asyncio.Task[dict[str, Any]], key_hash: str, key: str, run_id: str) -> None:
        """The caller hung up but may retry with its Idempotency-Key: record the answer when the run ends
        (a tracked task, drained at shutdown, its failures logged)."""

        async def remember() -> None:
            await asyncio.wait({task})
            try:
                status, payload = await self.answer(task, key_hash, run_id)
            except ApiError as error:
                await self.idempotency.remember_error(key_hash, key, error)
                return
            await self.idempotency.remember(key_hash, key, status, payload)

        follow_up = asyncio.create_task(remember(), name=f"idempotent-{run_id}")
        self._follow_ups.add(follow_up)
        follow_up.add_done_callback(self._follow_up_done)

    def _follow_up_done(self, task: asyncio.Task[None]) -> None:
        self._follow_ups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not record an idempotent answer: %r", task.exception(), extra={"task": task.get_name()})

    # 7. Shutdown.
    async def drain(self, timeout_s: float) -> None:
        """Let in-flight runs finish; what does not is still 'queued'/'processing' in the store and is
        taken over by another replica (or by this one after a restart)."""
        self.draining = True
        tasks: list[asyncio.Task[Any]] = [*self._tasks.values(), *self._follow_ups]
        if tasks:
            log.info("waiting for %d in-flight runs", len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()


def answer_of(run: Run, view: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """What a run's synchronous request answers once it is final: its body, or its error."""
    if run.status == RunStatus.SUCCEEDED and run.body is not None:
        return 200, run.body
    if run.status in (RunStatus.CANCELED, RunStatus.ABORTED):
        error: ApiError = (RunAborted if run.status == RunStatus.ABORTED else RunCanceled)(
            f"run {run.id} was {run.status}: {(run.body or {}).get('reason', '')}".rstrip(": "), run=view
        )
        return error.status, error.body()
    body = run.body or {"run_id": run.id, "error": {"code": "internal_error", "message": "no answer recorded"}}
    return _STATUS_OF_CODE.get(body.get("error", {}).get("code", ""), 500), body

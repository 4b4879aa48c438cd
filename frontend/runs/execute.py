"""Execute a run: generate through Triton (retrying a full or restarting server for webhook runs), encode
the images, and record the outcome with its outbox row; announce it to the webhook deliverer.

A run's task always ends with its outcome recorded, or with the run handed back: a failure nobody
expected is recorded as the run's failure; a database that cannot be reached for ``SD_STORE_RETRY_S``
hands the run back (its lease released, or left to lapse: the heartbeat renews only runs a task works),
and any replica takes it over within ``SD_LEASE_S``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from .. import images
from ..backend import Backend, CanceledByServer, QueueDeadlineExpired
from ..errors import ApiError, BackendUnavailable, StoreUnavailable
from ..generation import Generated, GenerationInput
from ..metrics import Metrics
from ..settings import Settings
from ..store import Lease, LeaseLost, RunStatus, RunStore
from ..store.retry import retrying
from ..webhooks import WebhookDeliverer
from .control import is_background
from .progress import ProgressFeed

log = logging.getLogger("frontend.runs")
SUCCESS_MESSAGE = "Successfully generated image"
FAILURE_MESSAGE = "Failed to generate image"
CANCELED_MESSAGE = "The run was canceled"
ABORTED_MESSAGE = "The run was aborted: its Cancel-After passed before it reached the model"
INTERNAL_ERROR = "internal error; the failure was logged"  # an unexpected failure's answer: internals stay in the log
# Triton drops a request still queued at the deadline itself (it then never used the model); past the
# deadline by this much, a request that is running is cancelled from here.
DEADLINE_GRACE_S = 0.25


def ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def generation_input(params: dict[str, Any], image: np.ndarray) -> GenerationInput:
    return GenerationInput(
        prompt=params["prompt"],
        image=image,
        negative_prompt=params["negative_prompt"],
        strength=params["strength"],
        num_inference_steps=params["num_inference_steps"],
        guidance_scale=params["guidance_scale"],
        num_images_per_prompt=params["num_images_per_prompt"],
        seed=-1 if params["seed"] is None else params["seed"],
        scheduler=params["scheduler"],
        # absent from runs recorded before the fields existed (taken over after an upgrade)
        aesthetic_score=params.get("aesthetic_score"),
        negative_aesthetic_score=params.get("negative_aesthetic_score"),
    )


def failure_body(run_id: str, error: ApiError) -> dict[str, Any]:
    return {"run_id": run_id, "message": FAILURE_MESSAGE, **error.body()}


def stopped_body(run_id: str, status: RunStatus, reason: str) -> dict[str, Any]:
    message = ABORTED_MESSAGE if status == RunStatus.ABORTED else CANCELED_MESSAGE
    return {"run_id": run_id, "message": message, "reason": reason}


class RunStopped(ApiError):
    """The run ended ``canceled`` or ``aborted`` (its deadline): recorded; the caller answers with its view."""

    def __init__(self, run_id: str, status: RunStatus) -> None:
        super().__init__(f"run {run_id} was {status}")
        self.run_status = status


@dataclass
class HeldLease:
    """The lease a running run writes under: re-claiming a run still running here updates it in place."""

    current: Lease


class RunTakenOver(BackendUnavailable):
    """This replica stalled past its lease and another took the run over: our outcome was not stored."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} was taken over by another replica after this one stalled; its outcome there stands"
            f" (GET /runs/{run_id}); send it again if it failed"
        )


class OutcomeNotRecorded(StoreUnavailable):
    """The run store could not be reached to record the run's outcome: the run was handed back."""

    def __init__(self, run_id: str, lease_s: float) -> None:
        super().__init__(
            f"run {run_id}: its outcome could not be recorded (the run store cannot be reached); it is taken over"
            f" within {lease_s:g} s, and a synchronous run is then marked failed (GET /runs/{run_id}): send it again"
        )


class RunExecutor:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        backend: Backend,
        deliverer: WebhookDeliverer,
        metrics: Metrics,
        progress: ProgressFeed,
    ) -> None:
        self.settings, self.store, self.backend, self.deliverer, self.metrics = (
            settings,
            store,
            backend,
            deliverer,
            metrics,
        )
        self.progress = progress  # the runs generating here: their progress, polled while in the model

    async def execute(
        self, run_id: str, lease: HeldLease, params: dict[str, Any], image: np.ndarray, webhook_endpoint: str | None
    ) -> dict[str, Any]:
        """Returns the answer body; raises ApiError for a failed run (stored and announced first), for a run
        another replica owns now (``RunTakenOver``), or for one handed back unrecorded (``OutcomeNotRecorded``)."""
        try:
            try:
                return await self._execute(run_id, lease, params, image, webhook_endpoint)
            except ApiError:
                raise  # recorded (failed, stopped), or another replica's now; or the store is unavailable: below
            except Exception:  # a bug, an encoder's surprise: the run fails, it does not hang
                log.exception("run failed unexpectedly", extra={"run_id": run_id})
                return await self.fail(run_id, lease, ApiError(INTERNAL_ERROR), webhook_endpoint)
        except StoreUnavailable as exc:
            # Handed back at once if the store answers now; else the lease lapses within SD_LEASE_S, since
            # the heartbeat renews only runs a task still works (this one's ends with this exception).
            try:
                await self.store.release_run(run_id, lease.current)
            except Exception as release_error:  # noqa: BLE001 - best effort: the lease lapses instead
                log.warning("could not hand the run back: %r", release_error, extra={"run_id": run_id})
            log.error("run handed back: its outcome could not be recorded", extra={"run_id": run_id})
            raise OutcomeNotRecorded(run_id, self.settings.lease_s) from exc

    async def _execute(
        self, run_id: str, lease: HeldLease, params: dict[str, Any], image: np.ndarray, webhook_endpoint: str | None
    ) -> dict[str, Any]:
        # 1. Mark it started (synchronous runs are created 'processing').
        background = is_background(params, webhook_endpoint)
        if background:
            await self._fenced(run_id, lambda: self.store.mark_processing(run_id, lease.current))
        # 2. Generate, within the run's deadline (Cancel-After) if it has one.
        started = time.perf_counter()
        job, retry = generation_input(params, image), background
        in_triton = [False]
        try:
            deadline = params.get("deadline")
            if deadline is None:
                generated = await self._generate(run_id, job, retry, None, in_triton)
            elif deadline <= time.time():
                raise QueueDeadlineExpired("the deadline passed before the run was sent")
            else:
                wait_s = deadline - time.time() + DEADLINE_GRACE_S
                generated = await asyncio.wait_for(self._generate(run_id, job, retry, deadline, in_triton), wait_s)
        except QueueDeadlineExpired:
            return await self.stop(run_id, RunStatus.ABORTED, "its Cancel-After passed before it reached the model")
        except CanceledByServer:
            return await self.stop(run_id, RunStatus.CANCELED, "the model server cancelled it")
        except TimeoutError:  # ours: Triton's own queue timeout fires first for a request still queued
            status = RunStatus.CANCELED if in_triton[0] else RunStatus.ABORTED
            return await self.stop(run_id, status, "its Cancel-After passed")
        except StoreUnavailable:
            raise  # not the run's failure: it is handed back (execute)
        except ApiError as exc:
            return await self.fail(run_id, lease, exc, webhook_endpoint)
        triton_ms = ms_since(started)
        self.metrics.triton_latency.observe(triton_ms / 1000)
        # 3. Encode and shape the answer.
        body = await self._answer(run_id, params, generated, started, triton_ms)
        # 4. Record it with its outbox row (under our lease only), then announce it.
        await self._finish(run_id, lease, RunStatus.SUCCEEDED, body, webhook_endpoint)
        self.metrics.images.inc(len(body["result"]))
        self.metrics.runs.labels("succeeded").inc()
        self.deliverer.wake()
        log.info("run succeeded", extra={"run_id": run_id, "run_time_ms": body["run_time_ms"]})
        return body

    async def _generate(
        self, run_id: str, job: GenerationInput, retry: bool, deadline: float | None, in_triton: list[bool]
    ) -> Generated:
        """An accepted webhook run waits out a full queue or a restarting server instead of failing."""
        retry_until = time.monotonic() + (self.settings.async_retry_window_s if retry else 0.0)
        while True:
            queue_timeout_s = None if deadline is None else deadline - time.time()
            if queue_timeout_s is not None and queue_timeout_s <= 0:
                raise QueueDeadlineExpired("the deadline passed while waiting to retry")
            in_triton[0] = True
            try:
                async with self.progress.follow(run_id):
                    return await self.backend.generate(job, request_id=run_id, queue_timeout_s=queue_timeout_s)
            except BackendUnavailable:
                in_triton[0] = False
                if time.monotonic() >= retry_until:
                    raise
                log.info("backend unavailable; retrying run", extra={"run_id": run_id})
                await asyncio.sleep(self.settings.async_retry_interval_s)

    async def _answer(
        self, run_id: str, params: dict[str, Any], generated: Generated, started: float, triton_ms: float
    ) -> dict[str, Any]:
        encode_started = time.perf_counter()
        encoded = await asyncio.to_thread(
            images.encode_images,
            generated.images,
            params["output_format"],
            png_level=self.settings.png_compress_level,
            jpeg_quality=self.settings.jpeg_quality,
            webp_quality=self.settings.webp_quality,
        )
        body = {
            "run_id": run_id,
            "message": SUCCESS_MESSAGE,
            "result": encoded,
            "seeds": generated.seeds,
            "run_time_ms": round((time.perf_counter() - started) * 1000),
            "output_format": params["output_format"],
            "image_source": params["image_source"],
            "width": params["width"],
            "height": params["height"],
            # Where the time went (ms): fetch (file_url), decode (base64 + image), triton (queue, transfer
            # and compute, as seen from here), encode (output images).
            "timings_ms": {**params.get("timings_ms", {}), "triton": triton_ms, "encode": ms_since(encode_started)},
        }
        if params["warnings"]:
            body["warnings"] = params["warnings"]
        return body

    async def fail(self, run_id: str, lease: HeldLease, exc: ApiError, webhook_endpoint: str | None) -> NoReturn:
        await self._finish(run_id, lease, RunStatus.FAILED, failure_body(run_id, exc), webhook_endpoint)
        self.metrics.runs.labels("failed").inc()
        self.deliverer.wake()
        log.info("run failed: %s", exc.message, extra={"run_id": run_id, "code": exc.code})
        raise exc

    async def stop(self, run_id: str, status: RunStatus, reason: str) -> NoReturn:
        """Record ``canceled``/``aborted`` (whoever holds the run: a stop outranks the lease), announce it."""
        body = stopped_body(run_id, status, reason)
        # Safe to repeat: a stop whose answer was lost finds the run final, and leaves it as it is.
        await retrying(lambda: self.store.stop_run(run_id, None, status, body), self.settings.store_retry_s, "stop_run")
        self.metrics.runs.labels(str(status)).inc()
        self.deliverer.wake()
        log.info("run %s: %s", status, reason, extra={"run_id": run_id})
        raise RunStopped(run_id, status)

    async def _finish(
        self, run_id: str, lease: HeldLease, status: RunStatus, body: dict[str, Any], webhook_endpoint: str | None
    ) -> None:
        """The outcome, with its outbox row."""

        async def landed() -> bool:  # the record holds exactly this outcome: it was our write
            run = await retrying(lambda: self.store.get_run(run_id), self.settings.store_retry_s, "get_run")
            return run is not None and run.status == status and run.body == json.loads(json.dumps(body))

        await self._fenced(
            run_id, lambda: self.store.finish_run(run_id, lease.current, status, body, webhook_endpoint), landed
        )

    async def _fenced(
        self, run_id: str, write: Callable[[], Awaitable[None]], landed: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """One of the run's own writes, tried again while the store is unavailable. Refused by fencing, it
        means another replica owns the run now: stop, store nothing. Except after a try whose answer was
        lost: if that one had landed, a write that ends the lease refuses its own repeat, and ``landed``
        tells that from a takeover."""
        try:
            await retrying(write, self.settings.store_retry_s, "run write")
        except LeaseLost as exc:
            if exc.after_lost_answer and landed is not None and await landed():
                log.info("run write landed before its answer was lost", extra={"run_id": run_id})
                return
            self.metrics.leases_lost.labels("run").inc()
            log.warning("run taken over by another replica: %s", exc, extra={"run_id": run_id})
            raise RunTakenOver(run_id) from exc

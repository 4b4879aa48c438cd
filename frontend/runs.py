"""Runs: accept a validated request, record it, generate through the backend, store and announce it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from . import images
from .errors import ApiError, BackendUnavailable, InvalidRequest
from .fetch import check_url, fetch_file_url
from .generation import GenerationInput
from .metrics import Metrics
from .netguard import host_denial_reason
from .schemas import PredictBody
from .settings import Settings
from .store import Delivery, Run, RunStore
from .triton_backend import TritonBackend
from .webhooks import WebhookDeliverer

log = logging.getLogger("frontend.runs")
SUCCESS_MESSAGE = "Successfully generated image"
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
        backend: TritonBackend,
        session: aiohttp.ClientSession,
        deliverer: WebhookDeliverer,
        metrics: Metrics,
    ) -> None:
        self.settings, self.store, self.backend = settings, store, backend
        self.session, self.deliverer, self.metrics = session, deliverer, metrics
        self._tasks: dict[str, asyncio.Task[dict[str, Any]]] = {}

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
            timings["decode"] = _ms_since(started)
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
            timings["fetch"] = _ms_since(started)
            decode_started = time.perf_counter()
            image = await asyncio.to_thread(images.load_image, data, param="file_url", **limits)
            timings["decode"] = _ms_since(decode_started)
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

    # 2. Record it before answering.
    async def create(self, prepared: PreparedRun, key_hash: str) -> None:
        if prepared.webhook_endpoint is None:
            # Synchronous: the caller holds the connection and retries if it breaks, so after a crash
            # there is no one to resume for. No input image is kept (a PNG encode per request saved,
            # 40 ms at 512x512) and the run starts as 'processing' (one commit fewer).
            await self.store.create_run(prepared.run_id, key_hash, prepared.params, None, None, "processing")
            return
        png = await asyncio.to_thread(images.png_bytes, prepared.image)
        await self.store.create_run(prepared.run_id, key_hash, prepared.params, png, prepared.webhook_endpoint)

    # 3. Generate: a tracked task, so a client that hangs up does not cancel an accepted run.
    def start(
        self, run_id: str, params: dict[str, Any], image: np.ndarray, webhook_endpoint: str | None
    ) -> asyncio.Task[dict[str, Any]]:
        task = asyncio.create_task(self._execute(run_id, params, image, webhook_endpoint), name=f"run-{run_id}")
        self._tasks[run_id] = task
        self.metrics.in_flight.inc()

        def done(_: asyncio.Task[dict[str, Any]]) -> None:
            self._tasks.pop(run_id, None)
            self.metrics.in_flight.dec()

        task.add_done_callback(done)
        return task

    async def _execute(
        self, run_id: str, params: dict[str, Any], image: np.ndarray, webhook_endpoint: str | None
    ) -> dict[str, Any]:
        """Returns the answer body; raises ApiError for a failed run (stored and announced first)."""
        job = GenerationInput(
            prompt=params["prompt"],
            image=image,
            negative_prompt=params["negative_prompt"],
            strength=params["strength"],
            num_inference_steps=params["num_inference_steps"],
            guidance_scale=params["guidance_scale"],
            num_images_per_prompt=params["num_images_per_prompt"],
            seed=-1 if params["seed"] is None else params["seed"],
            scheduler=params["scheduler"],
        )
        if webhook_endpoint is not None:  # synchronous runs are created 'processing'
            await self.store.mark_processing(run_id)
        started = time.perf_counter()
        retry_until = time.monotonic() + (self.settings.async_retry_window_s if webhook_endpoint else 0.0)
        while True:
            try:
                generated = await self.backend.generate(job, request_id=run_id)
                break
            except BackendUnavailable as exc:
                # An accepted async run waits out a full queue or a restarting server instead of failing.
                if time.monotonic() >= retry_until:
                    return await self._fail(run_id, exc, webhook_endpoint)
                log.info("backend unavailable; retrying run", extra={"run_id": run_id})
                await asyncio.sleep(self.settings.async_retry_interval_s)
            except ApiError as exc:
                return await self._fail(run_id, exc, webhook_endpoint)
        triton_ms = _ms_since(started)
        self.metrics.triton_latency.observe(triton_ms / 1000)
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
            "timings_ms": {**params.get("timings_ms", {}), "triton": triton_ms, "encode": _ms_since(encode_started)},
        }
        if params["warnings"]:
            body["warnings"] = params["warnings"]
        await self.store.finish_run(
            run_id, "succeeded", body, self._delivery(run_id, webhook_endpoint, body, "succeeded")
        )
        self.metrics.images.inc(len(encoded))
        self.metrics.runs.labels("succeeded").inc()
        self.deliverer.wake()
        log.info("run succeeded", extra={"run_id": run_id, "run_time_ms": body["run_time_ms"]})
        return body

    async def _fail(self, run_id: str, exc: ApiError, webhook_endpoint: str | None) -> dict[str, Any]:
        body = {"run_id": run_id, "message": "Failed to generate image", **exc.body()}
        await self.store.finish_run(run_id, "failed", body, self._delivery(run_id, webhook_endpoint, body, "failed"))
        self.metrics.runs.labels("failed").inc()
        self.deliverer.wake()
        log.info("run failed: %s", exc.message, extra={"run_id": run_id, "code": exc.code})
        raise exc

    @staticmethod
    def _delivery(run_id: str, url: str | None, body: dict[str, Any], status: str) -> Delivery | None:
        if url is None:
            return None
        payload = json.dumps({"status": status, **body}, separators=(",", ":"))
        # webhook-id is stable across retries (receivers deduplicate on it).
        return Delivery(f"msg_{run_id}", run_id, url, payload, "pending", 0, time.time())

    # 4. After a restart: resume what was accepted but not finished.
    async def resume_unfinished(self) -> int:
        runs = await self.store.unfinished_runs()
        for run in runs:
            if run.id in self._tasks:
                continue
            if run.image_png is None:  # a synchronous run: its caller saw the connection break
                error = BackendUnavailable("the server restarted before this run finished; send it again")
                body = {"run_id": run.id, "message": "Failed to generate image", **error.body()}
                await self.store.finish_run(run.id, "failed", body, None)
                continue
            image = await asyncio.to_thread(images.from_png_bytes, run.image_png)
            task = self.start(run.id, run.params, image, run.webhook_endpoint)
            task.add_done_callback(consume_outcome)
            log.info("resuming run", extra={"run_id": run.id})
        return len(runs)

    async def get(self, run_id: str, key_hash: str) -> Run | None:
        run = await self.store.get_run(run_id)
        return run if run is not None and run.key_hash == key_hash else None

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight runs finish; what does not is still 'queued'/'processing' in the store and resumes."""
        tasks = list(self._tasks.values())
        if tasks:
            log.info("waiting for %d in-flight runs", len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def consume_outcome(task: asyncio.Task[Any]) -> None:
    """Background runs report through the store and webhooks; swallow their raised ApiError here."""
    if not task.cancelled():
        task.exception()


def run_view(run: Run, delivery: dict[str, Any] | None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "run_id": run.id,
        "status": run.status,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
    if run.body is not None:
        view.update({k: v for k, v in run.body.items() if k != "run_id"})
    if delivery is not None:
        view["webhook"] = delivery
    return view

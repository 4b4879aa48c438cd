"""Execute a run: generate through Triton (retrying a full or restarting server for webhook runs), encode
the images, and record the outcome with its outbox row; announce it to the webhook deliverer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np

from .. import images
from ..errors import ApiError, BackendUnavailable
from ..generation import Generated, GenerationInput
from ..metrics import Metrics
from ..settings import Settings
from ..store import Delivery, DeliveryStatus, RunStatus, RunStore
from ..triton_backend import TritonBackend
from ..webhooks import WebhookDeliverer

log = logging.getLogger("frontend.runs")
SUCCESS_MESSAGE = "Successfully generated image"
FAILURE_MESSAGE = "Failed to generate image"


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
    )


def failure_body(run_id: str, error: ApiError) -> dict[str, Any]:
    return {"run_id": run_id, "message": FAILURE_MESSAGE, **error.body()}


def webhook_delivery(run_id: str, url: str | None, body: dict[str, Any], status: RunStatus) -> Delivery | None:
    if url is None:
        return None
    payload = json.dumps({"status": str(status), **body}, separators=(",", ":"))
    # webhook-id is stable across retries (receivers deduplicate on it).
    return Delivery(f"msg_{run_id}", run_id, url, payload, DeliveryStatus.PENDING, 0, time.time())


class RunExecutor:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        backend: TritonBackend,
        deliverer: WebhookDeliverer,
        metrics: Metrics,
    ) -> None:
        self.settings, self.store, self.backend, self.deliverer, self.metrics = (
            settings,
            store,
            backend,
            deliverer,
            metrics,
        )

    async def execute(
        self, run_id: str, params: dict[str, Any], image: np.ndarray, webhook_endpoint: str | None
    ) -> dict[str, Any]:
        """Returns the answer body; raises ApiError for a failed run (stored and announced first)."""
        # 1. Mark it started (synchronous runs are created 'processing').
        if webhook_endpoint is not None:
            await self.store.mark_processing(run_id)
        # 2. Generate.
        started = time.perf_counter()
        try:
            generated = await self._generate(run_id, generation_input(params, image), webhook_endpoint is not None)
        except ApiError as exc:
            return await self.fail(run_id, exc, webhook_endpoint)
        triton_ms = ms_since(started)
        self.metrics.triton_latency.observe(triton_ms / 1000)
        # 3. Encode and shape the answer.
        body = await self._answer(run_id, params, generated, started, triton_ms)
        # 4. Record it with its outbox row, then announce it.
        delivery = webhook_delivery(run_id, webhook_endpoint, body, RunStatus.SUCCEEDED)
        await self.store.finish_run(run_id, RunStatus.SUCCEEDED, body, delivery)
        self.metrics.images.inc(len(body["result"]))
        self.metrics.runs.labels("succeeded").inc()
        self.deliverer.wake()
        log.info("run succeeded", extra={"run_id": run_id, "run_time_ms": body["run_time_ms"]})
        return body

    async def _generate(self, run_id: str, job: GenerationInput, retry: bool) -> Generated:
        """An accepted webhook run waits out a full queue or a restarting server instead of failing."""
        retry_until = time.monotonic() + (self.settings.async_retry_window_s if retry else 0.0)
        while True:
            try:
                return await self.backend.generate(job, request_id=run_id)
            except BackendUnavailable:
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

    async def fail(self, run_id: str, exc: ApiError, webhook_endpoint: str | None) -> dict[str, Any]:
        body = failure_body(run_id, exc)
        delivery = webhook_delivery(run_id, webhook_endpoint, body, RunStatus.FAILED)
        await self.store.finish_run(run_id, RunStatus.FAILED, body, delivery)
        self.metrics.runs.labels("failed").inc()
        self.deliverer.wake()
        log.info("run failed: %s", exc.message, extra={"run_id": run_id, "code": exc.code})
        raise exc

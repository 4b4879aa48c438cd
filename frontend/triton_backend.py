"""The one module that talks to Triton (gRPC, asyncio): one pod's calls, its failures mapped onto our error
table. Which pod gets a run is ``fleet.py``'s business."""

from __future__ import annotations

import json
import logging
import re
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from .backend import CanceledByServer, QueueDeadlineExpired
from .errors import ApiError, BackendTimeout, BackendUnavailable, GenerationFailed, InvalidRequest, UnsupportedField
from .generation import Generated, GenerationInput, PodLoad, Progress
from .health import BackendHealth
from .model_card import ModelCard, parse_card
from .wire import input_arrays

log = logging.getLogger(__name__)

CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # Reconnect soon after a Triton restart: gRPC's default backoff grows to 120 s, so a channel that
    # failed through a 10 s restart could stay down for tens of seconds more (calls fail fast meanwhile).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


_INVALID_INPUT = re.compile(r"invalid input '(?P<name>\w+)': (?P<detail>.*)", re.DOTALL)
# A field the served model does not take (one of another family's: the SDXL refiner's aesthetic scores).
_UNSUPPORTED_INPUT = re.compile(r"unsupported input '(?P<name>\w+)': (?P<detail>.*)", re.DOTALL)
# Failures that prove the model cannot serve until Triton restarts: a dead stub ("Stub process '...' is not
# healthy."), or a model that says it is not healthy (its step engine died). The liveness canary
# (docker/triton_canary.py, stdlib only, in the Triton image) keeps the same tuple: tests/unit/test_one_source.py.
FATAL_MARKERS = ("is not healthy", "Stub process")


def build_inputs(job: GenerationInput) -> list[grpcclient.InferInput]:
    """The wire contract's arrays (``wire.input_arrays``) as gRPC tensors."""
    inputs = []
    for spec, array in input_arrays(job):
        tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def map_error(exc: InferenceServerException) -> ApiError:
    """Triton's answer to our error table; raw Triton text only for the model's own input messages."""
    status = str(exc.status() or "")
    message = exc.message() or ""
    invalid = _INVALID_INPUT.match(message)
    if invalid:
        return InvalidRequest(f"{invalid['name']}: {invalid['detail']}", param=invalid["name"])
    unsupported = _UNSUPPORTED_INPUT.match(message)
    if unsupported:
        return UnsupportedField(f"{unsupported['name']}: {unsupported['detail']}", param=unsupported["name"])
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
        return BackendTimeout("the model did not answer in time")
    if "maximum queue size" in message:
        return BackendUnavailable("the model's queue is full; retry later", retry_after_s=2)
    if "UNAVAILABLE" in status or is_death(exc) or "not ready" in message or "NOT_FOUND" in status:
        return BackendUnavailable("the model is not available; retry later")
    return GenerationFailed("the model failed to generate the images")


def is_death(exc: InferenceServerException) -> bool:
    """A failure that proves the model cannot serve until Triton restarts: a dead stub, or no server."""
    message = exc.message() or ""
    return any(marker in message for marker in FATAL_MARKERS) or "UNAVAILABLE" in str(exc.status() or "")


# A progress read is a file read in the model server: past this it is not worth waiting for.
PROGRESS_TIMEOUT_S = 2.0


class TritonPod:
    """One tritonserver (``address``: host:port), on its own gRPC channel: calls that must reach the server
    holding a request (its progress, its cancellation) reach it, which a channel spread over pods would not."""

    def __init__(self, address: str, model: str, timeout_s: float, progress_model: str = "sd_img2img_progress") -> None:
        self.address, self.model, self.timeout_s, self.progress_model = address, model, timeout_s, progress_model
        self._client: grpcaio.InferenceServerClient | None = None
        self.health = BackendHealth()  # every call's outcome: what /readyz and placement judge by
        self._bad_card = ""  # the last unreadable model card's error (logged once, not every refresh)

    @property
    def client(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            self._client = grpcaio.InferenceServerClient(self.address, channel_args=CHANNEL_ARGS)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def generate(
        self,
        job: GenerationInput,
        *,
        timeout_s: float | None = None,
        request_id: str = "",
        queue_timeout_s: float | None = None,
    ) -> Generated:
        """``queue_timeout_s``: Triton drops the request if it is still queued then (QueueDeadlineExpired);
        it bounds the wait in the queue only, never a running generation. Cancelling the awaiting task
        cancels the gRPC call, which Triton honours in its queue and the model at its next step."""
        health = self.health
        health.in_flight += 1
        try:
            result = await self.client.infer(
                self.model,
                build_inputs(job),
                request_id=request_id,
                client_timeout=timeout_s or self.timeout_s,
                # Microseconds; honoured because config.pbtxt's queue policy allows overriding its default.
                timeout=None if queue_timeout_s is None else max(1, int(queue_timeout_s * 1e6)),
            )
        except InferenceServerException as exc:
            if "timeout expired" in (exc.message() or "").lower():
                raise QueueDeadlineExpired(exc.message()) from None
            if "CANCELLED" in str(exc.status() or ""):
                raise CanceledByServer(exc.message()) from None
            error = map_error(exc)
            if is_death(exc):  # the server's own words, for /readyz and the logs (the caller gets ``error``)
                health.dead_at, health.dead_reason = time.monotonic(), (exc.message() or str(exc.status()))[:200]
            elif "maximum queue size" in (exc.message() or ""):
                health.full_at = time.monotonic()
            raise error from None
        finally:
            health.in_flight -= 1
        health.ok_at = time.monotonic()
        images = result.as_numpy("images")
        seeds = result.as_numpy("seeds")
        if images is None or seeds is None:
            raise GenerationFailed("the model answered without images")
        return Generated(images=images[0], seeds=[int(s) for s in seeds[0]])

    async def progress(self, request_id: str) -> Progress | None:
        """The progress the model posted for the request sent with ``request_id``: None when it is not
        running (queued, finished) or cannot be read (no progress model): progress is best effort."""
        result = await self._ask_board(request_id)
        if result is None:
            return None
        step, total, preview = (result.as_numpy(name) for name in ("step", "total", "preview"))
        if step is None or total is None or preview is None or int(step[0]) < 0:
            return None
        return Progress(int(step[0]), int(total[0]), bytes(preview[0]))

    async def load(self) -> PodLoad | None:
        """The load the model reports (every frontend's runs there); None when it cannot be read."""
        result = await self._ask_board("")
        raw = None if result is None else result.as_numpy("load")
        if raw is None or not bytes(raw[0]):
            return None
        try:
            load = json.loads(bytes(raw[0]))
            sizes = frozenset((int(height), int(width)) for height, width in load["sizes"])
            rows = int(load["rows_active"]) + int(load["rows_waiting"])
        except (ValueError, KeyError, TypeError):
            return None
        return PodLoad(rows=rows, sizes=sizes, model=self._card(load.get("model")))

    def _card(self, data: object) -> ModelCard | None:
        """The model card of a load report; None when there is none (an older model). A card we cannot read
        is logged, once per change, and treated as unknown: the load itself still counts for placement."""
        if data is None:
            return None
        try:
            return parse_card(data)
        except ValueError as exc:
            if str(exc) != self._bad_card:
                self._bad_card = str(exc)
                log.warning("pod %s: unreadable model card, treated as unknown: %s", self.address, exc)
            return None

    async def _ask_board(self, request_id: str) -> grpcclient.InferResult | None:
        tensor = grpcclient.InferInput("request_id", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([request_id.encode()], dtype=np.object_))
        try:
            return await self.client.infer(self.progress_model, [tensor], client_timeout=PROGRESS_TIMEOUT_S)
        except InferenceServerException:
            return None

    async def is_model_ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(self.model))
        except InferenceServerException:
            return False

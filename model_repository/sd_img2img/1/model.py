"""Triton Python-backend model: diffusers ``StableDiffusionImg2ImgPipeline`` with dynamic batching.

Every request is answered on its own: a bad request gets ``INVALID_ARG`` naming its input while its
neighbours run, and a failure fails only the requests it touched. Two ways to batch (``batching``):

* ``step`` (default): Triton's dynamic batcher hands requests to ``execute``, which passes them to one
  engine thread (``engine.py``) and returns at once; the engine runs denoising steps, one UNet forward
  over every active request of a size whatever their settings, admits new requests at the next step and
  answers each through its response sender when its own last step is done. ``execute`` blocks only while
  requests wait for rows, so the rest wait in Triton's queue.
* ``request``: compatible requests (same size and settings) share one whole pipeline call, answered
  before ``execute`` returns.

The contract is in ``model_repository/README.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from stub_path import honour_pythonpath  # noqa: E402 - standard library only

honour_pythonpath()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from engine import Callbacks, EngineStopped, Job, OwnerThread, StepEngine  # noqa: E402
from model_parameters import ModelParameters, ParameterError  # noqa: E402
from progress_board import Progress, ProgressBoard, board_folder  # noqa: E402
from step_pace import StepPace  # noqa: E402

from img2img_requests import (  # noqa: E402
    Defaults,
    Img2ImgRequest,
    InvalidInput,
    Limits,
    PipelineCall,
    check_inputs,
    plan_calls,
    split_images,
)

INPUT_NAMES = (
    "prompt",
    "image",
    "negative_prompt",
    "strength",
    "num_inference_steps",
    "guidance_scale",
    "num_images_per_prompt",
    "seed",
    "scheduler",
    "aesthetic_score",
    "negative_aesthetic_score",
)
# Deployment override for the weights, read once in ``initialize`` (the container sets it).
MODEL_PATH_ENV = "SD_MODEL_PATH"
# Moves inside a long pipeline call, where Triton's own counts move only at its end: liveness probes
# (docker/triton_canary.py) tell a busy model from a hung one by it.
STEP_METRIC = "sd_img2img_denoising_steps_total"
EXECUTING_METRIC = "sd_img2img_requests_executing"
# Step batching: the rows of each UNet forward (a histogram; its _count moves with the step counter).
ROWS_METRIC = "sd_img2img_unet_rows"
ROWS_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]
ROWS_ACTIVE_METRIC = "sd_img2img_rows_in_flight"
ROWS_WAITING_METRIC = "sd_img2img_rows_waiting"
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Triton's own words for a model that cannot serve until the server restarts (a dead stub: "Stub process
# '<instance>' is not healthy."). A model whose step engine died says them too, so the frontend
# (triton_backend.FATAL_MARKERS: /readyz turns unready) and the liveness canary (docker/triton_canary.py
# FATAL_MARKERS: the server is restarted) treat it as the death it is, not as one failed request.
FATAL_MARKER = "is not healthy"
# Triton's answer to a request whose queue timeout passed (its dynamic batcher's): the frontend maps
# "timeout expired" to QueueDeadlineExpired, so the run is recorded aborted (it never used the model).
TIMEOUT_EXPIRED = "Request timeout expired"
T = TypeVar("T")


class Handle(NamedTuple):
    """What the step engine carries for a request it runs: how to ask and answer Triton about it.
    (A NamedTuple, not a dataclass: tests load this file without registering it in ``sys.modules``.)"""

    request: Any  # pb_utils.InferenceRequest: is_cancelled()
    sender: Any  # its response sender: the one final response
    request_id: str  # Triton's request id (the frontend's run id): where its progress is posted; "" = none


class QueuePolicy(NamedTuple):
    """``dynamic_batching.default_queue_policy``'s timeout, applied as Triton's queue applies it."""

    default_timeout_us: int = 0
    allow_timeout_override: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> QueuePolicy:
        policy = config.get("dynamic_batching", {}).get("default_queue_policy", {})
        # Triton's JSON writes uint64 fields as strings.
        return cls(int(policy.get("default_timeout_microseconds", 0)), bool(policy.get("allow_timeout_override")))

    def timeout_s(self, request_timeout_us: int) -> float | None:
        """Seconds the request may wait (None: forever). Triton's rule (scheduler_utils.cc, PolicyQueue::Enqueue):
        the default, or the request's own timeout where overriding is allowed and it is shorter."""
        timeout_us = self.default_timeout_us
        if self.allow_timeout_override and 0 < request_timeout_us < timeout_us:
            timeout_us = request_timeout_us
        return timeout_us / 1e6 if timeout_us else None


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Parse the config's parameters once (every bad value named), load the pipeline on this instance's
        device, register the metrics and, with step batching, start the engine thread.

        Raises ``TritonModelException`` for a bad parameter, so the model fails to load and says why.
        """
        import torch
        from batch_invariance import InvalidPlan
        from cuda_graphs import row_buckets
        from families import UnsupportedCheckpoint

        from img2img_pipeline import Img2ImgRunner

        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        try:
            parameters = ModelParameters.from_config(config)
        except ParameterError as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc
        self.parameters = parameters
        self.queue_policy = QueuePolicy.from_config(config)

        # KIND_MODEL: the model places itself (on the first visible GPU, if any).
        kind = args.get("model_instance_kind")
        on_gpu = kind == "GPU" or (kind == "MODEL" and torch.cuda.is_available())
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if on_gpu else "cpu"
        if parameters.dtype == "auto":
            dtype = torch.float16 if on_gpu else torch.float32
        else:
            dtype = getattr(torch, parameters.dtype)
        model_path = os.environ.get(MODEL_PATH_ENV) or parameters.model_name_or_path
        self.defaults = Defaults(scheduler=parameters.default_scheduler)
        self.max_images_per_call = parameters.max_images_per_call
        self.batching = parameters.batching
        self.max_rows_in_flight = parameters.max_rows_in_flight
        self.preview_every_steps = parameters.preview_every_steps
        self.model_repository = args.get("model_repository", os.getcwd())
        self.pace = StepPace(parameters.min_step_ms / 1000)

        self.logger.log_info(
            f"{self.model_name}: loading {model_path} on {device} as {dtype} "
            f"(determinism={parameters.determinism}, invariant_modules={parameters.invariant_modules})"
        )
        # Step batching: one thread owns every torch call, loading included. A second thread running torch
        # gets an OpenMP team of its own, and with two teams on the machine's cores libgomp stops spinning
        # between parallel regions: the engine thread ran the tiny model 3x slower than the thread that loaded it.
        self._torch = OwnerThread("sd-step-engine") if self.batching == "step" else None
        try:
            self.runner = self._on_torch_thread(
                lambda: Img2ImgRunner(
                    model_path,
                    device=device,
                    dtype=dtype,
                    determinism=parameters.determinism,
                    invariant_modules=parameters.invariant_modules,
                    cuda_graphs=on_gpu if parameters.cuda_graphs is None else parameters.cuda_graphs,
                    graph_sizes=parameters.cuda_graph_sizes,
                    graph_rows=row_buckets(self.max_rows_in_flight),
                    per_row_timesteps=self.batching == "step",
                    log=self.logger.log_info,
                    local_files_only=parameters.local_files_only,
                )
            )
        except InvalidPlan as exc:  # invariant_modules: batch_invariance names the kind and the value
            raise pb_utils.TritonModelException(f"parameter {exc}") from exc
        except UnsupportedCheckpoint as exc:  # a folder of another kind: what was found, and what is served
            raise pb_utils.TritonModelException(f"{self.model_name} cannot serve {model_path!r}: {exc}") from None
        except Exception as exc:  # the weights: one line naming where they were looked for, not a thread's traceback
            raise pb_utils.TritonModelException(
                f"could not load the pipeline from {model_path!r} (SD_MODEL_PATH or model_name_or_path):"
                f" {type(exc).__name__}: {exc}"
            ) from None
        family = self.runner.family
        self.logger.log_info(
            f"{self.model_name}: serving {family.title} ({family.name}, {family.prediction_type},"
            f" native {family.native_side} px) as {family.pipeline}"
        )
        if self.runner.plan is not None:
            self.logger.log_info(f"{self.model_name}: batch invariance plan {self.runner.plan}")
        self.schedulers = self.runner.scheduler_names
        for name, why in self.runner.missing_schedulers.items():
            self.logger.log_warn(f"{self.model_name}: scheduler {name} left out: {why}")
        # The family must outlive its metric (Triton refuses increments of an orphaned metric).
        self.step_family = pb_utils.MetricFamily(
            name=STEP_METRIC,
            description="Denoising steps run by the pipeline (one per step of a pipeline call)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        labels = {"model": self.model_name, "version": args.get("model_version", "1")}
        self.steps = self.step_family.Metric(labels=labels)
        # Triton's own gauge counts queued requests only; this one, those inside execute() now.
        self.executing_family = pb_utils.MetricFamily(
            name=EXECUTING_METRIC,
            description="Requests inside the model's execute() now (0: the model is idle)",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.executing = self.executing_family.Metric(labels=labels)
        self.limits = Limits(
            min_image_side=self.runner.min_image_side,
            max_image_side=parameters.max_image_side or self.runner.family.max_image_side,
            max_images_per_prompt=parameters.max_images_per_prompt,
            max_inference_steps=parameters.max_inference_steps,
        )
        if self.defaults.scheduler and self.defaults.scheduler not in self.schedulers:
            raise pb_utils.TritonModelException(
                f"parameter default_scheduler must be one of {sorted(self.schedulers)}"
                f" but is {self.defaults.scheduler!r}"
            )
        # What the frontend shows and checks before it accepts a run (posted with the load, read by every pod's reader).
        self.card = {
            "family": family.name,
            "title": family.title,
            "schedulers": sorted(self.schedulers),
            "fields": list(family.fields),
            "native_side": family.native_side,
            "max_image_side": self.limits.max_image_side,
        }
        self.engine: StepEngine | None = None
        if self.batching == "step":
            self._start_engine(labels, parameters.determinism)

    def _start_engine(self, labels: dict[str, str], determinism: str) -> None:
        from denoiser import StepDenoiser
        from previews import LatentPreviewer

        def family(name: str, description: str, kind: Any, **metric: Any) -> Any:
            made = pb_utils.MetricFamily(name=name, description=description, kind=kind)
            self._families.append(made)  # a family must outlive its metric
            return made.Metric(labels=labels, **metric)

        self._families: list[Any] = []
        self.rows_per_forward = family(
            ROWS_METRIC, "Rows of each UNet forward (requests x images x 2 under guidance)",
            pb_utils.MetricFamily.HISTOGRAM, buckets=ROWS_BUCKETS,
        )  # fmt: skip
        self.rows_active = family(
            ROWS_ACTIVE_METRIC, "UNet rows of the requests in flight", pb_utils.MetricFamily.GAUGE
        )
        self.rows_waiting = family(
            ROWS_WAITING_METRIC, "UNet rows of requests waiting for room in the model", pb_utils.MetricFamily.GAUGE
        )
        denoiser = StepDenoiser(self.runner.pipe, self.runner.schedulers, per_image=determinism == "per_image")
        callbacks = Callbacks(
            answer=self._answer,
            fail=lambda job, message: self._send(job, self._error(message, pb_utils.TritonError.INTERNAL)),
            cancelled=lambda job: self._send(job, self._cancelled()),
            # As Triton's queue answers it (UNAVAILABLE); the time it spent in that queue is not counted.
            timed_out=lambda job: self._send(job, self._error(TIMEOUT_EXPIRED, pb_utils.TritonError.UNAVAILABLE)),
            is_cancelled=lambda job: bool(job.handle.request.is_cancelled()),
            on_tick=self._on_tick,
            on_progress=self._on_progress,
            log_error=lambda message: self.logger.log_error(f"{self.model_name}: {message}"),
        )
        # Progress for requests that carry an id (the frontend's run id), read by the sd_img2img_progress model.
        self.board = ProgressBoard(board_folder(self.model_repository))
        self.board.sweep(older_than_s=3600)
        vae = self.runner.pipe.vae
        self.previewer = self._on_torch_thread(lambda: LatentPreviewer.fit(vae)) if self.preview_every_steps else None
        self._previews: dict[int, bytes] = {}  # id(job) -> its last preview, re-posted between new ones
        self._previews_lock = threading.Lock()  # the engine thread posts; finalize's thread may answer
        self.engine = StepEngine(denoiser, self.max_rows_in_flight, callbacks)
        self._gauges = {"jobs": self.executing, "rows_active": self.rows_active, "rows_waiting": self.rows_waiting}
        self._published: dict[str, int] = {}
        self._posted_load: dict[str, Any] = {}
        self._published_lock = threading.Lock()
        self.pace.start()
        assert self._torch is not None
        self._engine_done = self._torch.submit(self._run_engine)
        self._publish_load()  # the card (and an idle load) from the start, not after the first request

    def _on_torch_thread(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the thread that owns torch (step batching), or here (request batching)."""
        return work() if self._torch is None else self._torch.submit(work).result()

    def _run_engine(self) -> None:
        assert self.engine is not None
        try:
            self.engine.run()
        except BaseException:  # never silently: answer what it held; execute answers the rest (_refusal)
            self.logger.log_error(self._refusal_message())
            for job in self.engine.stop():
                self._send(job, self._refusal())
            raise

    def _refusal_message(self) -> str:
        """Why a stopped engine takes no request: dead (in fatal words: the server gets restarted), or unloading."""
        assert self.engine is not None
        failure = self.engine.failure
        if failure is None:
            return "the model is unloading"
        return f"{self.model_name} {FATAL_MARKER}: its step engine stopped ({failure!r}); the server must restart it"

    def _refusal(self) -> Any:
        return self._error(self._refusal_message(), pb_utils.TritonError.UNAVAILABLE)

    def execute(self, requests: list[Any]) -> list[Any] | None:
        """Called by Triton with a batch of requests, one ``execute`` at a time.

        ``request`` batching: returns one response per request, in order (an invalid one gets its own
        INVALID_ARG error, a failed pipeline call INTERNAL for its requests only). ``step`` batching:
        answers invalid requests now, hands the rest to the step engine and returns None; each is then
        answered once, later, through its response sender with the FINAL flag.
        """
        if self.engine is None:
            self.executing.set(len(requests))
            try:
                return self._execute(requests)
            finally:
                self.executing.set(0)
        # 1. Validate each request on its own; a bad one is answered now, the rest join the engine. Each
        # is answered exactly once, here or by the engine, whatever fails.
        for index, request in enumerate(requests):
            sender = request.get_response_sender()
            try:
                valid = self._check(index, request)
                # Its wait for rows obeys the queue policy, timed from now: its time in Triton's queue before
                # this execute is not known here, so not counted.
                timeout_s = self.queue_policy.timeout_s(int(request.timeout()))
                self.engine.submit(valid, Handle(request, sender, request.request_id()), timeout_s)
            except InvalidInput as exc:
                sender.send(self._error(str(exc), pb_utils.TritonError.INVALID_ARG), flags=FINAL)
            except EngineStopped:  # dead (or unloading): an answer now, not a wait for a client timeout
                sender.send(self._refusal(), flags=FINAL)
            except Exception as exc:
                self.logger.log_error(f"{self.model_name}: could not take request {index}: {exc!r}")
                sender.send(self._error(f"generation failed: {exc!r}", pb_utils.TritonError.INTERNAL), flags=FINAL)
        self._publish_load()
        # 2. Hold Triton's next batch while requests wait for rows: they wait in Triton's queue instead. A
        # stopped engine returns at once: the next batch is refused at once too.
        self.engine.wait_for_room()
        return None

    def _check(self, index: int, request: Any) -> Img2ImgRequest:
        return check_inputs(
            index,
            self._read_inputs(request),
            defaults=self.defaults,
            limits=self.limits,
            schedulers=self.schedulers,
            family=self.runner.family,
        )

    def _answer(self, job: Job[Any], images: Any) -> None:
        request: Img2ImgRequest = job.request
        self._send(job, self._images(request, images))

    def _send(self, job: Job[Any], response: Any) -> None:
        """The one answer of a job the engine settled (``Job.settled``: once, whichever thread settles it)."""
        self._publish_load()  # the engine has let go of the job: the gauges say so before the answer does
        if job.handle.request_id:
            with self._previews_lock:
                self._previews.pop(id(job), None)
            try:
                self.board.remove(job.handle.request_id)
            except OSError as exc:  # a stale post is swept later; the answer must still go
                self.logger.log_warn(f"{self.model_name}: could not remove a progress post: {exc!r}")
        try:
            job.handle.sender.send(response, flags=FINAL)
        except Exception as exc:  # the engine must go on for the others
            self.logger.log_error(f"{self.model_name}: could not answer request {job.request.index}: {exc!r}")

    def _on_tick(self, jobs: Sequence[Job[Any]], rows: int) -> None:
        self.pace.step()
        self.steps.increment(1)
        self.rows_per_forward.observe(rows)
        self._publish_load()

    def _on_progress(self, job: Job[Any], done: int, total: int) -> None:
        request_id = job.handle.request_id
        if not request_id:
            return
        # Best effort: a preview that cannot be drawn or a post that cannot be written costs the request its
        # progress, never its images (the engine would fail the request if this raised).
        try:
            estimate = getattr(job.flight, "estimate", None)
            every = self.preview_every_steps
            if self.previewer is not None and estimate is not None and (done == 1 or done % every == 0):
                fresh = self.previewer.jpeg(estimate)
                with self._previews_lock:
                    self._previews[id(job)] = fresh
            with self._previews_lock:
                preview = self._previews.get(id(job), b"")
            self.board.post(request_id, Progress(done, total, preview))
        except Exception as exc:
            self.logger.log_warn(f"{self.model_name}: could not post progress for {request_id}: {exc!r}")

    def _publish_load(self) -> None:
        if self.engine is None:
            return
        # Each set is a message to the server: only what changed (execute and the engine thread both call this).
        with self._published_lock:
            for name, value in self.engine.stats().items():
                if self._published.get(name) != value:
                    try:
                        self._gauges[name].set(value)
                    except Exception as exc:  # metrics are best effort: never at a request's expense
                        self.logger.log_warn(f"{self.model_name}: could not set {name}: {exc!r}")
                        continue
                    self._published[name] = value
            # The same, with the sizes held, for the placer across pods (read by sd_img2img_progress).
            sizes = [list(group) for group in self.engine.groups() if isinstance(group, tuple)]  # (height, width)
            load = {**self.engine.stats(), "sizes": sizes, "model": self.card}
            if load != self._posted_load:
                try:
                    self.board.post_load(load)
                    self._posted_load = load
                except Exception as exc:  # best effort, as the gauges
                    self.logger.log_warn(f"{self.model_name}: could not post the load: {exc!r}")

    def _execute(self, requests: list[Any]) -> list[Any]:
        # 1. Validate each request on its own; a bad one is answered now, the rest go on.
        responses: list[Any] = [None] * len(requests)
        valid: list[Img2ImgRequest] = []
        for index, request in enumerate(requests):
            try:
                valid.append(self._check(index, request))
            except InvalidInput as exc:
                responses[index] = self._error(str(exc), pb_utils.TritonError.INVALID_ARG)

        # 2. One pipeline call per group of compatible requests; 3. split the images back.
        calls = plan_calls(valid, self.max_images_per_call)
        self.logger.log_verbose(
            f"{self.model_name}: {len(requests)} requests, {len(valid)} valid, {len(calls)} pipeline calls"
        )
        for call in calls:
            self._run_call(call, requests, responses)
        return responses

    def _run_call(self, call: PipelineCall, requests: list[Any], responses: list[Any]) -> None:
        live = []
        for request in call.requests:
            if requests[request.index].is_cancelled():
                responses[request.index] = self._cancelled()
            else:
                live.append(request)
        if not live:
            return
        live_call = PipelineCall(call.key, tuple(live))

        def all_cancelled() -> bool:
            return all(requests[r.index].is_cancelled() for r in live_call.requests)

        def on_step() -> None:
            self.pace.step()
            self.steps.increment(1)

        self.pace.start()
        try:
            images = self.runner.run(live_call, should_stop=all_cancelled, on_step=on_step)
            # Inside the try: a count that does not split fails this call's requests, not the batch.
            per_request = split_images(live_call, images)
        except Exception as exc:  # a failing call fails only its own requests
            self.logger.log_error(f"{self.model_name}: pipeline call {live_call.key} failed: {exc!r}")
            for request in live_call.requests:
                responses[request.index] = self._error(
                    f"generation failed: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL
                )
            return
        for request, own in zip(live_call.requests, per_request, strict=True):
            if requests[request.index].is_cancelled():
                responses[request.index] = self._cancelled()
                continue
            responses[request.index] = self._images(request, own)

    @staticmethod
    def _images(request: Img2ImgRequest, images: np.ndarray) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("images", np.ascontiguousarray(images[np.newaxis])),
                pb_utils.Tensor("seeds", np.asarray([request.seeds], dtype=np.int64)),
            ]
        )

    @staticmethod
    def _read_inputs(request: Any) -> dict[str, np.ndarray | None]:
        arrays: dict[str, np.ndarray | None] = {}
        for name in INPUT_NAMES:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            # A copy: in step batching the request outlives execute(), and its input buffers with it.
            arrays[name] = None if tensor is None else np.array(tensor.as_numpy(), copy=True)
        return arrays

    @staticmethod
    def _error(message: str, code: Any) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

    @classmethod
    def _cancelled(cls) -> Any:
        return cls._error("request was cancelled", pb_utils.TritonError.CANCELLED)

    def finalize(self) -> None:
        """Called once when Triton unloads the model: stop the step engine and answer every request it still
        held with UNAVAILABLE (the client may send it again), then log the unload. The engine thread may be
        mid-tick: ``stop`` hands back only the jobs it claimed, so each is answered once, by one thread."""
        if self.engine is not None:
            for job in self.engine.stop():
                self._send(job, self._refusal())
            with contextlib.suppress(Exception):
                self._engine_done.result(timeout=30)
            self.board.close()
        self.logger.log_info(f"{self.model_name}: unloaded")

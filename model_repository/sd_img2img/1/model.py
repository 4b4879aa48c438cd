"""Triton Python-backend model: diffusers ``StableDiffusionImg2ImgPipeline`` with dynamic batching.

``execute`` answers every request on its own: a bad request gets ``INVALID_ARG`` naming its input while
its neighbours run; compatible requests share one pipeline call; a failing call fails only its own
requests. The contract is in ``model_repository/README.md``.
"""

from __future__ import annotations

import json
import os
import site
import sys
from typing import Any


def _honour_pythonpath() -> None:
    """The stub's embedded interpreter ignores ``PYTHONPATH``, which the embedded launcher uses to reach
    the project's virtualenv: put those folders (and their ``.pth`` entries) first, before any
    third-party import. A no-op in the Triton container, where the packages are installed system-wide."""
    before = list(sys.path)
    for folder in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if folder and folder not in before:
            site.addsitedir(folder)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before


_honour_pythonpath()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
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
)
# Deployment override for the weights, read once in ``initialize`` (the container sets it).
MODEL_PATH_ENV = "SD_MODEL_PATH"
# Moves inside a long pipeline call, where Triton's own counts move only at its end: liveness probes
# (docker/triton_canary.py) tell a busy model from a hung one by it.
STEP_METRIC = "sd_img2img_denoising_steps_total"
EXECUTING_METRIC = "sd_img2img_requests_executing"


def _parameter(config: dict[str, Any], name: str, default: str) -> str:
    """A ``parameters`` value from config.pbtxt; unset, empty or an unfilled ``${...}`` gives ``default``."""
    value = config.get("parameters", {}).get(name, {}).get("string_value", "")
    return default if not value or value.startswith("${") else value


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch

        from img2img_pipeline import DETERMINISM_MODES, Img2ImgRunner

        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]

        # KIND_MODEL: the model places itself (on the first visible GPU, if any).
        kind = args.get("model_instance_kind")
        on_gpu = kind == "GPU" or (kind == "MODEL" and torch.cuda.is_available())
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if on_gpu else "cpu"
        dtype_name = _parameter(config, "dtype", "auto")
        if dtype_name == "auto":
            dtype = torch.float16 if on_gpu else torch.float32
        elif dtype_name in {"float16", "bfloat16", "float32"}:
            dtype = getattr(torch, dtype_name)
        else:
            raise pb_utils.TritonModelException(
                f"parameter dtype must be auto, float16, bfloat16 or float32 but is {dtype_name!r}"
            )

        model_path = os.environ.get(MODEL_PATH_ENV) or _parameter(
            config, "model_name_or_path", "stable-diffusion-v1-5/stable-diffusion-v1-5"
        )
        self.defaults = Defaults(scheduler=_parameter(config, "default_scheduler", ""))
        max_images_per_prompt = int(_parameter(config, "max_images_per_prompt", "8"))
        self.max_images_per_call = int(_parameter(config, "max_images_per_call", "16"))
        if self.max_images_per_call < max_images_per_prompt:
            raise pb_utils.TritonModelException(
                f"parameter max_images_per_call ({self.max_images_per_call}) must be at least "
                f"max_images_per_prompt ({max_images_per_prompt})"
            )
        determinism = _parameter(config, "determinism", "batch_invariant")
        if determinism not in DETERMINISM_MODES:
            raise pb_utils.TritonModelException(
                f"parameter determinism must be one of {DETERMINISM_MODES} but is {determinism!r}"
            )

        invariant_modules = _parameter(config, "invariant_modules", "auto")
        graphs = _parameter(config, "cuda_graphs", "auto")
        min_step_ms = _parameter(config, "min_step_ms", "0")
        try:
            self.pace = StepPace(int(min_step_ms) / 1000)
        except ValueError as exc:
            raise pb_utils.TritonModelException(
                f"parameter min_step_ms must be a whole number of milliseconds, at least 0, but is {min_step_ms!r}"
            ) from exc

        self.logger.log_info(
            f"{self.model_name}: loading {model_path} on {device} as {dtype} "
            f"(determinism={determinism}, invariant_modules={invariant_modules})"
        )
        try:
            self.runner = Img2ImgRunner(
                model_path,
                device=device,
                dtype=dtype,
                determinism=determinism,
                invariant_modules=invariant_modules,
                cuda_graphs=on_gpu if graphs == "auto" else _flag(graphs),
                local_files_only=_flag(_parameter(config, "local_files_only", "false")),
            )
        except ValueError as exc:  # a bad parameter: name it rather than a traceback
            raise pb_utils.TritonModelException(f"parameter {exc}") from exc
        if self.runner.plan is not None:
            self.logger.log_info(f"{self.model_name}: batch invariance plan {self.runner.plan}")
        self.schedulers = self.runner.scheduler_names
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
            max_image_side=int(_parameter(config, "max_image_side", "1024")),
            max_images_per_prompt=max_images_per_prompt,
            max_inference_steps=int(_parameter(config, "max_inference_steps", "500")),
        )
        if self.defaults.scheduler and self.defaults.scheduler not in self.schedulers:
            raise pb_utils.TritonModelException(
                f"parameter default_scheduler must be one of {sorted(self.schedulers)}"
                f" but is {self.defaults.scheduler!r}"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        self.executing.set(len(requests))
        try:
            return self._execute(requests)
        finally:
            self.executing.set(0)

    def _execute(self, requests: list[Any]) -> list[Any]:
        # 1. Validate each request on its own; a bad one is answered now, the rest go on.
        responses: list[Any] = [None] * len(requests)
        valid: list[Img2ImgRequest] = []
        for index, request in enumerate(requests):
            try:
                valid.append(
                    check_inputs(
                        index,
                        self._read_inputs(request),
                        defaults=self.defaults,
                        limits=self.limits,
                        schedulers=self.schedulers,
                    )
                )
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
                responses[request.index] = self._error("request was cancelled", pb_utils.TritonError.CANCELLED)
            else:
                live.append(request)
        if not live:
            return
        call = PipelineCall(call.key, tuple(live))

        def all_cancelled() -> bool:
            return all(requests[r.index].is_cancelled() for r in call.requests)

        def on_step() -> None:
            self.pace.step()
            self.steps.increment(1)

        self.pace.start()
        try:
            images = self.runner.run(call, should_stop=all_cancelled, on_step=on_step)
        except Exception as exc:  # a failing call fails only its own requests
            self.logger.log_error(f"{self.model_name}: pipeline call {call.key} failed: {exc!r}")
            for request in call.requests:
                responses[request.index] = self._error(
                    f"generation failed: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL
                )
            return
        for request, own in zip(call.requests, split_images(call, images), strict=True):
            if requests[request.index].is_cancelled():
                responses[request.index] = self._error("request was cancelled", pb_utils.TritonError.CANCELLED)
                continue
            responses[request.index] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("images", np.ascontiguousarray(own[np.newaxis])),
                    pb_utils.Tensor("seeds", np.asarray([request.seeds], dtype=np.int64)),
                ]
            )

    @staticmethod
    def _read_inputs(request: Any) -> dict[str, np.ndarray | None]:
        arrays: dict[str, np.ndarray | None] = {}
        for name in INPUT_NAMES:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            arrays[name] = None if tensor is None else tensor.as_numpy()
        return arrays

    @staticmethod
    def _error(message: str, code: Any) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

    def finalize(self) -> None:
        self.logger.log_info(f"{self.model_name}: unloaded")

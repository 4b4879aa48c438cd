"""Pure request logic for the ``sd_img2img`` Triton model: parse, validate, group, split.

Nothing here imports Triton, torch or diffusers, so it is unit-tested on its own. ``model.py`` turns
Triton tensors into the ``Mapping[str, np.ndarray | None]`` these functions take, and back.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from families import AESTHETIC_DEFAULTS, Family

SEED_RANDOM = -1  # the seed value that asks the model to draw one (callers always send every input)
MAX_SEED = 2**63 - 1  # seeds travel as INT64


class InvalidInput(ValueError):
    """A request input the model cannot run; answered with INVALID_ARG for that request alone."""

    words = "invalid input"

    def __init__(self, input_name: str, detail: str) -> None:
        super().__init__(f"{self.words} '{input_name}': {detail}")
        self.input_name = input_name
        self.detail = detail


class UnsupportedInput(InvalidInput):
    """An input the served family does not take (the frontend answers it 400 ``unsupported_field``)."""

    words = "unsupported input"


@dataclass(frozen=True)
class Defaults:
    """Values used for optional inputs a request omits (diffusers' own defaults)."""

    strength: float = 0.8
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    num_images_per_prompt: int = 1
    scheduler: str = ""  # "" = the checkpoint's scheduler


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for; set from ``config.pbtxt`` parameters."""

    max_image_side: int = 1024
    min_image_side: int = 8
    image_multiple: int = 8  # the VAE downscale: diffusers would silently crop otherwise
    max_images_per_prompt: int = 8
    max_inference_steps: int = 500
    max_guidance_scale: float = 50.0
    max_prompt_chars: int = 4000


@dataclass(frozen=True)
class GroupKey:
    """Everything diffusers takes as one scalar per call: requests that share it share a call."""

    height: int
    width: int
    num_inference_steps: int
    strength: float
    guidance_scale: float
    scheduler: str
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None
    # diffusers' negative_prompt=None (SDXL base: zeros, force_zeros_for_empty_prompt) is one call's scalar too.
    no_negative_prompt: bool = False


@dataclass(frozen=True)
class Img2ImgRequest:
    """One validated request. ``index`` is its position in the ``execute`` batch."""

    index: int
    prompt: str
    negative_prompt: str
    image: np.ndarray  # uint8, HWC, RGB
    strength: float
    num_inference_steps: int
    guidance_scale: float
    num_images_per_prompt: int
    seed: int  # image i uses seed + i
    scheduler: str
    # SDXL refiner only (None for every other family): its size conditioning.
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images_per_prompt)]

    @property
    def group_key(self) -> GroupKey:
        height, width = self.image.shape[:2]
        return GroupKey(
            height,
            width,
            self.num_inference_steps,
            self.strength,
            self.guidance_scale,
            self.scheduler,
            self.aesthetic_score,
            self.negative_aesthetic_score,
            not self.negative_prompt,
        )


@dataclass(frozen=True)
class PipelineCall:
    """Requests that run as one pipeline call, in order; their images are concatenated."""

    key: GroupKey
    requests: tuple[Img2ImgRequest, ...]

    @property
    def num_images(self) -> int:
        return sum(r.num_images_per_prompt for r in self.requests)


def effective_steps(num_inference_steps: int, strength: float) -> int:
    """Denoising steps img2img really runs: diffusers' ``int(num_inference_steps * strength)``."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def draw_seed() -> int:
    return secrets.randbelow(2**32)


def _scalar(arrays: Mapping[str, np.ndarray | None], name: str) -> np.ndarray | None:
    value = arrays.get(name)
    if value is None:
        return None
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise InvalidInput(name, f"expected one value per request but got shape {list(np.shape(value))}")
    return flat


def _text(arrays: Mapping[str, np.ndarray | None], name: str, default: str | None) -> str:
    flat = _scalar(arrays, name)
    if flat is None:
        if default is None:
            raise InvalidInput(name, "is required")
        return default
    raw = flat[0]
    if isinstance(raw, bytes | np.bytes_):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(name, f"is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    return str(raw)


def _number(arrays: Mapping[str, np.ndarray | None], name: str, default: float) -> float:
    flat = _scalar(arrays, name)
    if flat is None:
        return default
    if np.issubdtype(flat.dtype, np.floating):
        # The shortest decimal that round-trips the FP32 value: 0.7 arrives as 0.69999999 and diffusers'
        # int(steps * strength) would run one step fewer than the caller asked for.
        value: Any = float(str(flat[0]))
    else:
        value = flat[0].item()
    if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidInput(name, f"must be a finite number but is {value!r}")
    return value


def _integer(arrays: Mapping[str, np.ndarray | None], name: str, default: int) -> int:
    value = _number(arrays, name, default)
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidInput(name, f"must be an integer but is {value}")
        value = int(value)
    return int(value)


def _image(arrays: Mapping[str, np.ndarray | None], limits: Limits) -> np.ndarray:
    value = arrays.get("image")
    if value is None:
        raise InvalidInput("image", "is required")
    image = np.asarray(value)
    if image.ndim == 4 and image.shape[0] == 1:  # the request's batch dimension
        image = image[0]
    if image.dtype != np.uint8:
        raise InvalidInput("image", f"must be UINT8 but is {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput("image", f"must be HWC RGB with shape [height, width, 3] but is {list(image.shape)}")
    height, width = int(image.shape[0]), int(image.shape[1])
    if height == 0 or width == 0:
        raise InvalidInput("image", f"is empty ({height}x{width})")
    lo, hi, multiple = limits.min_image_side, limits.max_image_side, limits.image_multiple
    for side_name, side in (("height", height), ("width", width)):
        if not lo <= side <= hi:
            raise InvalidInput("image", f"{side_name} must be in [{lo}, {hi}] but is {side}")
        if side % multiple:
            raise InvalidInput("image", f"{side_name} must be a multiple of {multiple} but is {side}")
    return image


def _aesthetic(arrays: Mapping[str, np.ndarray | None], name: str, family: Family | None) -> float | None:
    """A refiner's score (NaN or absent: diffusers' default); any other family refuses a value it cannot use."""
    flat = _scalar(arrays, name)
    given = flat is not None and not (np.issubdtype(flat.dtype, np.floating) and math.isnan(float(flat[0])))
    if family is None or name not in family.fields:
        if given:
            served = family.title if family is not None else "this model"
            raise UnsupportedInput(name, f"the served model ({served}) does not take it; only an SDXL refiner does")
        return None
    if not given:
        return AESTHETIC_DEFAULTS[name]
    value = float(_number(arrays, name, AESTHETIC_DEFAULTS[name]))
    if not 0.0 <= value <= 10.0:
        raise InvalidInput(name, f"must be in [0.0, 10.0] but is {value}")
    return value


def check_inputs(
    index: int,
    arrays: Mapping[str, np.ndarray | None],
    *,
    defaults: Defaults,
    limits: Limits,
    schedulers: Iterable[str],
    family: Family | None = None,
    seed_source: Callable[[], int] = draw_seed,
) -> Img2ImgRequest:
    """Validate one request's inputs; raises ``InvalidInput`` naming the input and echoing its value."""
    prompt = _text(arrays, "prompt", None)
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidInput("prompt", f"must be at most {limits.max_prompt_chars} characters but has {len(prompt)}")
    negative_prompt = _text(arrays, "negative_prompt", "")
    if len(negative_prompt) > limits.max_prompt_chars:
        raise InvalidInput(
            "negative_prompt",
            f"must be at most {limits.max_prompt_chars} characters but has {len(negative_prompt)}",
        )
    image = _image(arrays, limits)

    strength = float(_number(arrays, "strength", defaults.strength))
    if not 0.0 <= strength <= 1.0:
        raise InvalidInput("strength", f"must be in [0.0, 1.0] but is {strength}")
    steps = _integer(arrays, "num_inference_steps", defaults.num_inference_steps)
    if not 1 <= steps <= limits.max_inference_steps:
        raise InvalidInput("num_inference_steps", f"must be in [1, {limits.max_inference_steps}] but is {steps}")
    if effective_steps(steps, strength) < 1:
        raise InvalidInput(
            "num_inference_steps",
            f"int(num_inference_steps * strength) must be at least 1 but int({steps} * {strength}) is 0;"
            " raise num_inference_steps or strength",
        )
    guidance = float(_number(arrays, "guidance_scale", defaults.guidance_scale))
    if not 0.0 <= guidance <= limits.max_guidance_scale:
        raise InvalidInput("guidance_scale", f"must be in [0.0, {limits.max_guidance_scale}] but is {guidance}")
    count = _integer(arrays, "num_images_per_prompt", defaults.num_images_per_prompt)
    if not 1 <= count <= limits.max_images_per_prompt:
        raise InvalidInput("num_images_per_prompt", f"must be in [1, {limits.max_images_per_prompt}] but is {count}")
    seed = _integer(arrays, "seed", SEED_RANDOM)
    if seed == SEED_RANDOM:
        seed = seed_source()
    elif not 0 <= seed <= MAX_SEED - (count - 1):
        raise InvalidInput("seed", f"must be -1 (random) or in [0, {MAX_SEED - (count - 1)}] but is {seed}")
    scheduler = _text(arrays, "scheduler", "") or defaults.scheduler
    known = sorted(schedulers)
    if scheduler and scheduler not in known:
        raise InvalidInput("scheduler", f"must be one of {known} (or empty for the default) but is {scheduler!r}")
    aesthetic_score = _aesthetic(arrays, "aesthetic_score", family)
    negative_aesthetic_score = _aesthetic(arrays, "negative_aesthetic_score", family)

    return Img2ImgRequest(
        index=index,
        prompt=prompt,
        negative_prompt=negative_prompt,
        image=image,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        num_images_per_prompt=count,
        seed=seed,
        scheduler=scheduler,
        aesthetic_score=aesthetic_score,
        negative_aesthetic_score=negative_aesthetic_score,
    )


def plan_calls(requests: Sequence[Img2ImgRequest], max_images_per_call: int) -> list[PipelineCall]:
    """Group requests by ``GroupKey`` (first-seen order), then cut each group into calls of whole requests
    holding at most ``max_images_per_call`` images (a request bigger than that runs alone)."""
    groups: dict[GroupKey, list[Img2ImgRequest]] = {}
    for request in requests:
        groups.setdefault(request.group_key, []).append(request)
    calls: list[PipelineCall] = []
    for key, members in groups.items():
        chunk: list[Img2ImgRequest] = []
        images = 0
        for request in members:
            if chunk and images + request.num_images_per_prompt > max_images_per_call:
                calls.append(PipelineCall(key, tuple(chunk)))
                chunk, images = [], 0
            chunk.append(request)
            images += request.num_images_per_prompt
        if chunk:
            calls.append(PipelineCall(key, tuple(chunk)))
    return calls


def split_images(call: PipelineCall, images: np.ndarray) -> list[np.ndarray]:
    """Cut a call's ``[n, H, W, 3]`` output back into one array per request, in the call's order."""
    if len(images) != call.num_images:
        raise ValueError(f"pipeline returned {len(images)} images for a call of {call.num_images}")
    parts: list[np.ndarray] = []
    start = 0
    for request in call.requests:
        parts.append(images[start : start + request.num_images_per_prompt])
        start += request.num_images_per_prompt
    return parts


def to_uint8(images: np.ndarray) -> np.ndarray:
    """diffusers' float output in [0, 1] to uint8, rounded as ``numpy_to_pil`` does."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)

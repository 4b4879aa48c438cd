"""The HTTP request schema of ``POST /predict`` (the hosted API's body, plus a few fields beyond it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import defaults
from .errors import InvalidRequest
from .settings import Settings

MAX_SEED = 2**53 - 1  # JSON-safe integers
# The model's short scheduler names (its SCHEDULER_ALIASES; a test keeps the two equal), offered as
# examples; any diffusers class name the model loads is accepted too, and the model checks.
SCHEDULER_EXAMPLES = [
    "ddim", "ddpm", "pndm", "lms", "euler", "euler_a", "heun", "dpm++", "dpm_single", "kdpm2", "kdpm2_a", "deis",
    "unipc",
]  # fmt: skip


class PredictBody(BaseModel):
    """Bounds that depend on settings are checked in ``check_bounds``."""

    model_config = ConfigDict(extra="forbid", strict=False)

    prompt: str = Field(min_length=1, description="What the images should show.")
    image: str | None = Field(default=None, description="Init image, base64 or a data: URI. Wins over file_url.")
    file_url: str | None = Field(default=None, description="http(s) URL of the init image, fetched by the service.")
    num_inference_steps: int = Field(default=defaults.NUM_INFERENCE_STEPS, ge=1)
    guidance_scale: float = Field(default=defaults.GUIDANCE_SCALE, ge=0.0)
    num_images_per_prompt: int = Field(default=defaults.NUM_IMAGES_PER_PROMPT, ge=1)
    negative_prompt: str = defaults.NEGATIVE_PROMPT
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Same inputs + seed = same images.")
    webhook_endpoint: str | None = Field(default=None, description="If set: answer 202 and POST the result here.")
    strength: float = Field(
        default=defaults.STRENGTH, ge=0.0, le=1.0, description="How far from the init image (0..1)."
    )
    scheduler: str = Field(
        default=defaults.SCHEDULER,
        description="A diffusers scheduler name or alias; empty = model default.",
        examples=SCHEDULER_EXAMPLES,
    )
    output_format: Literal["png", "jpeg", "webp"] = "png"
    # SDXL refiner only (diffusers' names): refused with 400 unsupported_field by any other model. Not
    # given (None) = the model's default. The bounds are the model's; NaN is refused, as it means "not given"
    # on the wire.
    aesthetic_score: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description=f"SDXL refiner only; default {defaults.AESTHETIC_SCORE}. The aesthetic score it is conditioned on.",
    )
    negative_aesthetic_score: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description=(
            f"SDXL refiner only; default {defaults.NEGATIVE_AESTHETIC_SCORE}. The aesthetic score of the"
            " negative conditioning."
        ),
    )
    cancel_after: str | float | None = Field(
        default=None,
        description="Deadline: 90s, 5m, 1h30m or seconds (1 s to 24 h); the Cancel-After header wins.",
    )

    @model_validator(mode="after")
    def _needs_an_image(self) -> PredictBody:
        if not self.image and not self.file_url:
            raise ValueError("one of image (base64) or file_url is required")
        return self


def parse_body(data: Any, settings: Settings) -> PredictBody:
    """Validate, turning pydantic's errors into one 422 naming the field and echoing the value."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"the body must be a JSON object but is {type(data).__name__}")
    try:
        body = PredictBody.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        where = f"{field}: " if field else ""
        value = f" (got {shown})" if field else ""
        raise InvalidRequest(f"{where}{error['msg']}{value}", param=field) from None
    check_bounds(body, settings)
    return body


def check_bounds(body: PredictBody, settings: Settings) -> None:
    limits = [
        ("num_inference_steps", body.num_inference_steps, settings.max_inference_steps),
        ("guidance_scale", body.guidance_scale, settings.max_guidance_scale),
        ("num_images_per_prompt", body.num_images_per_prompt, settings.max_images_per_prompt),
        ("prompt", len(body.prompt), settings.max_prompt_chars),
        ("negative_prompt", len(body.negative_prompt), settings.max_prompt_chars),
    ]
    for name, value, limit in limits:
        if value > limit:
            what = "length" if name in ("prompt", "negative_prompt") else "value"
            raise InvalidRequest(f"{name}: {what} must be at most {limit} but is {value}", param=name)
    if body.seed is not None and body.seed + body.num_images_per_prompt - 1 > MAX_SEED:
        raise InvalidRequest(f"seed: must be at most {MAX_SEED - body.num_images_per_prompt + 1}", param="seed")
    if int(body.num_inference_steps * body.strength) < 1:
        raise InvalidRequest(
            f"num_inference_steps: int(num_inference_steps * strength) must be at least 1 but "
            f"int({body.num_inference_steps} * {body.strength}) is 0",
            param="num_inference_steps",
        )

"""Typed requests and answers of the service's HTTP API."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OutputFormat = Literal["png", "jpeg", "webp"]
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
# ``Cancel-After``'s grammar: ``90s``, ``5m``, ``1h30m``, ``1.5s``, or a bare number of seconds.
_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: float | str) -> float:
    """Seconds in ``value``: a number of seconds, or ``90s``, ``2m``, ``1h30m``, ``1.5s``, ``"120"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        match = _DURATION.fullmatch(text)
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif text and match is not None:
            seconds = sum(float(match[unit] or 0) * scale for unit, scale in (("h", 3600), ("m", 60), ("s", 1)))
        else:
            raise ValueError(f"not a duration: {value!r} (e.g. 90s, 2m, 1h30m, or seconds)")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive: {value!r}")
    return seconds


def format_duration(value: float | str) -> str:
    """``Cancel-After``'s value: seconds as ``90s``/``1.5s``; a duration string is checked and sent as written."""
    seconds = parse_duration(value)
    if isinstance(value, str):
        return value.strip()
    return f"{int(seconds)}s" if seconds.is_integer() else f"{seconds!r}s"


@dataclass(frozen=True)
class Img2ImgRequest:
    """``POST /predict``'s body. Give ``image`` (bytes or a path) or ``file_url``."""

    prompt: str
    image: bytes | Path | None = None
    file_url: str | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    num_images_per_prompt: int = 1
    negative_prompt: str = ""
    seed: int | None = None
    webhook_endpoint: str | None = None
    strength: float = 0.8
    scheduler: str = ""
    output_format: OutputFormat = "png"
    # SDXL refiner only (any other model answers 400 unsupported_field); None: not sent, the model's default
    # (6.0 and 2.5).
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "num_images_per_prompt": self.num_images_per_prompt,
            "negative_prompt": self.negative_prompt,
            "strength": self.strength,
            "scheduler": self.scheduler,
            "output_format": self.output_format,
        }
        if self.image is not None:
            data = self.image.read_bytes() if isinstance(self.image, Path) else self.image
            body["image"] = base64.b64encode(data).decode("ascii")
        if self.file_url is not None:
            body["file_url"] = self.file_url
        if self.seed is not None:
            body["seed"] = self.seed
        if self.webhook_endpoint is not None:
            body["webhook_endpoint"] = self.webhook_endpoint
        # only when given: a service in front of another model refuses the field even at its default
        if self.aesthetic_score is not None:
            body["aesthetic_score"] = self.aesthetic_score
        if self.negative_aesthetic_score is not None:
            body["negative_aesthetic_score"] = self.negative_aesthetic_score
        return body


@dataclass(frozen=True)
class Img2ImgResult:
    """A finished generation: ``images[i]`` was made with ``seeds[i]``."""

    run_id: str
    message: str
    images: list[bytes]
    seeds: list[int]
    run_time_ms: int
    output_format: str = "png"
    width: int | None = None
    height: int | None = None
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Img2ImgResult:
        return cls(
            run_id=data["run_id"],
            message=data["message"],
            images=[base64.b64decode(item) for item in data["result"]],
            seeds=list(data.get("seeds", [])),
            run_time_ms=int(data.get("run_time_ms", 0)),
            output_format=data.get("output_format", "png"),
            width=data.get("width"),
            height=data.get("height"),
            warnings=list(data.get("warnings", [])),
            raw=data,
        )

    def save(self, directory: Path | str) -> list[Path]:
        """Write each image as ``<run_id>_<seed>.<ext>``; returns the paths."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        extension = EXTENSIONS.get(self.output_format, self.output_format)
        paths = []
        for seed, data in zip(self.seeds, self.images, strict=True):
            path = folder / f"{self.run_id}_{seed}.{extension}"
            path.write_bytes(data)
            paths.append(path)
        return paths


@dataclass(frozen=True)
class RunAccepted:
    """The 202 answer when ``webhook_endpoint`` is set (the result will be POSTed there) or to ``submit``."""

    run_id: str
    message: str
    status: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RunStatus:
    """``GET /runs/{run_id}``."""

    run_id: str
    status: str  # queued, processing, then succeeded, failed, canceled or aborted
    result: Img2ImgResult | None
    error: dict[str, Any] | None
    webhook: dict[str, Any] | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def reason(self) -> str:
        """Why a run did not succeed, in words (its error's message when it has one)."""
        error = self.error if isinstance(self.error, dict) else {}
        if error.get("message"):
            return f"run {self.run_id} {self.status}: {error['message']}"
        if self.status == "aborted":
            after = self.raw.get("cancel_after_s")
            when = f" ({after} s)" if after is not None else ""
            return f"run {self.run_id} aborted: its deadline{when} passed before it started"
        if self.status == "canceled" and self.raw.get("cancel_after_s") is not None:
            return f"run {self.run_id} canceled (deadline {self.raw['cancel_after_s']} s, or on request)"
        return f"run {self.run_id} {self.status}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunStatus:
        result = Img2ImgResult.from_json(data) if data.get("status") == "succeeded" else None
        return cls(data["run_id"], data["status"], result, data.get("error"), data.get("webhook"), data)


@dataclass(frozen=True)
class Progress:
    """Where a running generation is: denoising ``step`` of ``total``, and ``preview``, a small JPEG of its
    current estimate (``b""`` until the model made one)."""

    step: int
    total: int
    preview: bytes = b""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        uri = data.get("preview") or ""
        return cls(int(data["step"]), int(data["total"]), base64.b64decode(uri.partition(",")[2]) if uri else b"")


@dataclass(frozen=True)
class RunEvent:
    """One event of ``GET /runs/{run_id}/events``: its ``id``, the ``status`` it announces and the run's view.
    A ``progress`` event (status ``"progress"``, the run processing) carries ``progress``; its ``id`` is the
    last status event's: progress is the run's state now, not history."""

    id: int
    status: str
    run: RunStatus
    progress: Progress | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES or self.run.finished


class Img2ImgError(Exception):
    """An error answer from the service (``{"error": {"code", "message", "param"}}``) or the transport.
    ``run`` is the run's view when the error carries one (``run_canceled``, ``run_aborted``, ``run_finished``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        run: RunStatus | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.param, self.run = message, status, code, param, run

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return (
            f"{self.message}{where}"
            if self.status is None
            else f"HTTP {self.status} {self.code}: {self.message}{where}"
        )

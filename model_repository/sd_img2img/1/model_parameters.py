"""The model's ``config.pbtxt`` ``parameters``, parsed once and checked whole, without Triton, torch or weights.

``ModelParameters.from_config`` reads every knob (an unset, empty or unfilled ``${...}`` value takes its
default) and raises one ``ParameterError`` naming every bad value and echoing it, so a deployment with
three mistakes learns all three from one failed load. ``model.py`` turns it into Triton's exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DETERMINISM_MODES = ("batch_invariant", "per_image", "batched")
BATCHING_MODES = ("step", "request")
DTYPES = ("auto", "float16", "bfloat16", "float32")
SWITCHES = {"auto": None, "true": True, "1": True, "yes": True, "on": True}
SWITCHES |= {"false": False, "0": False, "no": False, "off": False}


class ParameterError(ValueError):
    """Every bad parameter at once: ``problems`` holds one sentence per parameter."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ModelParameters:
    model_name_or_path: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    local_files_only: bool = False
    dtype: str = "auto"  # auto: float16 on a GPU, float32 on a CPU
    default_scheduler: str = ""  # checked against the loaded schedulers after load
    max_image_side: int | None = None  # None ("auto"): the family's (families.Family.max_image_side)
    max_images_per_prompt: int = 8
    max_inference_steps: int = 500
    max_images_per_call: int = 16
    determinism: str = "batch_invariant"
    invariant_modules: str = "auto"  # parsed by batch_invariance.parse_plan, which names its own errors
    batching: str = "step"
    max_rows_in_flight: int = 32
    preview_every_steps: int = 5
    cuda_graphs: bool | None = None  # None: auto (on for GPU instances)
    cuda_graph_sizes: tuple[int, ...] = (512,)
    min_step_ms: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelParameters:
        """From Triton's model config (``args["model_config"]`` parsed); ``ParameterError`` if any is bad."""
        given = {
            name: value["string_value"]
            for name, value in config.get("parameters", {}).items()
            if value.get("string_value") and not value["string_value"].startswith("${")
        }
        problems: list[str] = []
        defaults = cls()

        def read(name: str, parse: Callable[[str], Any], rule: str) -> Any:
            default = getattr(defaults, name)
            if name not in given:
                return default
            try:
                return parse(given[name])
            except (ValueError, KeyError):
                problems.append(f"parameter {name} must be {rule}, but is {given[name]!r}")
                return default

        def whole(least: int) -> Callable[[str], int]:
            def parse(text: str) -> int:
                number = int(text)
                if number < least:
                    raise ValueError(text)
                return number

            return parse

        def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
            def parse(text: str) -> str:
                if text not in choices:
                    raise ValueError(text)
                return text

            return parse

        def sides(text: str) -> tuple[int, ...]:
            found = tuple(int(side) for side in text.split(",") if side.strip())
            if any(side < 8 or side % 8 for side in found):
                raise ValueError(text)
            return found

        parsed = cls(
            model_name_or_path=given.get("model_name_or_path", defaults.model_name_or_path),
            local_files_only=bool(read("local_files_only", lambda t: SWITCHES[t.strip().lower()], "true or false")),
            dtype=read("dtype", one_of(DTYPES), f"one of {', '.join(DTYPES)}"),
            default_scheduler=given.get("default_scheduler", ""),
            max_image_side=read(
                "max_image_side",
                lambda t: None if t == "auto" else whole(8)(t),
                "auto or a whole number of px, at least 8",
            ),
            max_images_per_prompt=read("max_images_per_prompt", whole(1), "a whole number, at least 1"),
            max_inference_steps=read("max_inference_steps", whole(1), "a whole number, at least 1"),
            max_images_per_call=read("max_images_per_call", whole(1), "a whole number, at least 1"),
            determinism=read("determinism", one_of(DETERMINISM_MODES), f"one of {DETERMINISM_MODES}"),
            invariant_modules=given.get("invariant_modules", defaults.invariant_modules),
            batching=read("batching", one_of(BATCHING_MODES), f"one of {BATCHING_MODES}"),
            max_rows_in_flight=read("max_rows_in_flight", whole(1), "a whole number, at least 1"),
            preview_every_steps=read("preview_every_steps", whole(0), "a whole number, at least 0 (0: no previews)"),
            cuda_graphs=read("cuda_graphs", lambda t: SWITCHES[t.strip().lower()], "auto, true or false"),
            cuda_graph_sizes=read("cuda_graph_sizes", sides, "image sides in px (multiples of 8) separated by commas"),
            min_step_ms=read("min_step_ms", whole(0), "a whole number of milliseconds, at least 0"),
        )
        # Rules between parameters, once each is valid on its own.
        if parsed.max_images_per_call < parsed.max_images_per_prompt:
            problems.append(
                f"parameter max_images_per_call ({parsed.max_images_per_call}) must be at least "
                f"max_images_per_prompt ({parsed.max_images_per_prompt})"
            )
        if parsed.max_rows_in_flight < 2 * parsed.max_images_per_prompt:
            problems.append(
                f"parameter max_rows_in_flight must be at least 2 x max_images_per_prompt"
                f" ({2 * parsed.max_images_per_prompt}, a guided request's rows) but is {parsed.max_rows_in_flight}"
            )
        if problems:
            raise ParameterError(problems)
        return parsed

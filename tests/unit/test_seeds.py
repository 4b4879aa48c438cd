"""Seeds, strength and steps, the inputs that fix a request's images: seed 0 is a seed like any other (never
"draw one"), -1 alone draws, image i uses seed + i, and every bound holds at its edge, in the model's checks
(``img2img_requests``), the API's schema and the frontend's hand-over to the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from frontend import errors
from frontend.runs.execute import generation_input
from frontend.schemas import MAX_SEED as API_MAX_SEED
from frontend.schemas import parse_body
from frontend.settings import Settings
from img2img_requests import MAX_SEED, SEED_RANDOM, Defaults, InvalidInput, Limits, check_inputs, effective_steps

SCHEDULERS = {"PNDMScheduler", "euler"}
TOO_FEW = "int(num_inference_steps * strength) must be at least 1 but"
RAISE = "; raise num_inference_steps or strength"
DEFAULT = "(or empty for the default)"


def arrays(**values: Any) -> dict[str, Any]:
    """Inputs shaped as Triton hands them to the model; a value of None leaves the input out."""
    base: dict[str, Any] = {
        "prompt": np.array([[b"a cat"]], dtype=object),
        "image": np.zeros((1, 16, 24, 3), dtype=np.uint8),
        "negative_prompt": np.array([[b"blurry"]], dtype=object),
        "strength": np.array([[0.5]], dtype=np.float32),
        "num_inference_steps": np.array([[4]], dtype=np.int32),
        "guidance_scale": np.array([[7.5]], dtype=np.float32),
        "num_images_per_prompt": np.array([[1]], dtype=np.int32),
        "seed": np.array([[7]], dtype=np.int64),
        "scheduler": np.array([[b"euler"]], dtype=object),
    }
    for name, value in values.items():
        base[name] = None if value is None else np.array([[value]], dtype=base[name].dtype)
    return {name: value for name, value in base.items() if value is not None}


def check(limits: Limits | None = None, defaults: Defaults | None = None, **values: Any) -> Any:
    drawn: list[int] = []

    def draw() -> int:
        drawn.append(4242)
        return 4242

    request = check_inputs(
        5, arrays(**values), defaults=defaults or Defaults(), limits=limits or Limits(), schedulers=SCHEDULERS,
        seed_source=draw,
    )  # fmt: skip
    return request, drawn


def refused(limits: Limits | None = None, **values: Any) -> tuple[str, str]:
    with pytest.raises(InvalidInput) as caught:
        check(limits, **values)
    return caught.value.input_name, caught.value.detail


def test_seed_zero_is_a_seed_and_only_minus_one_draws() -> None:
    for seed in (0, 1, 7):
        request, drawn = check(seed=seed)
        assert (request.seed, request.seeds, drawn) == (seed, [seed], [])
    request, drawn = check(seed=SEED_RANDOM, num_images_per_prompt=2)
    assert (request.seed, request.seeds, drawn) == (4242, [4242, 4243], [4242])
    request, drawn = check(seed=None)  # left out: drawn too
    assert (request.seed, drawn) == (4242, [4242])
    request, drawn = check(seed=0, num_images_per_prompt=3)
    assert request.seeds == [0, 1, 2] and drawn == []


def test_the_seed_range_holds_at_both_ends() -> None:
    request, _ = check(seed=MAX_SEED - 2, num_images_per_prompt=3)
    assert request.seeds == [MAX_SEED - 2, MAX_SEED - 1, MAX_SEED]
    assert refused(seed=MAX_SEED - 1, num_images_per_prompt=3) == (
        "seed", f"must be -1 (random) or in [0, {MAX_SEED - 2}] but is {MAX_SEED - 1}"
    )  # fmt: skip
    assert refused(seed=-2) == ("seed", f"must be -1 (random) or in [0, {MAX_SEED}] but is -2")
    assert check(seed=MAX_SEED)[0].seeds == [MAX_SEED]


def test_every_input_reaches_the_request() -> None:
    request, _ = check(strength=0.75, num_inference_steps=12, guidance_scale=3.5, num_images_per_prompt=2, seed=9)
    assert (request.index, request.prompt, request.negative_prompt, request.scheduler) == (
        5,
        "a cat",
        "blurry",
        "euler",
    )
    assert (request.strength, request.num_inference_steps, request.guidance_scale) == (0.75, 12, 3.5)
    assert (request.num_images_per_prompt, request.seed, request.image.shape) == (2, 9, (16, 24, 3))
    defaults = Defaults(
        strength=0.6, num_inference_steps=20, guidance_scale=5.0, num_images_per_prompt=2, scheduler="euler"
    )
    request, _ = check(
        defaults=defaults, strength=None, num_inference_steps=None, guidance_scale=None, num_images_per_prompt=None,
        scheduler=None, negative_prompt=None,
    )  # fmt: skip
    assert (request.strength, request.num_inference_steps, request.guidance_scale) == (0.6, 20, 5.0)
    assert (request.num_images_per_prompt, request.scheduler, request.negative_prompt) == (2, "euler", "")
    assert check(scheduler="")[0].scheduler == ""  # the checkpoint's own


def test_strength_arrives_as_the_caller_wrote_it() -> None:
    """0.7 travels as FP32 0.69999999; diffusers' int(steps * strength) must still see 0.7 (7 steps of 10)."""
    request, _ = check(strength=0.7, num_inference_steps=10)
    assert request.strength == 0.7 and effective_steps(10, request.strength) == 7


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"strength": 1.0}, None),
        ({"strength": 0.01, "num_inference_steps": 100}, None),
        ({"strength": 1.01}, ("strength", "must be in [0.0, 1.0] but is 1.01")),
        ({"strength": -0.01}, ("strength", "must be in [0.0, 1.0] but is -0.01")),
        ({"strength": 0.0}, ("num_inference_steps", f"{TOO_FEW} int(4 * 0.0) is 0{RAISE}")),
        ({"num_inference_steps": 1, "strength": 1.0}, None),
        ({"num_inference_steps": 500}, None),
        ({"num_inference_steps": 501}, ("num_inference_steps", "must be in [1, 500] but is 501")),
        ({"num_inference_steps": 0}, ("num_inference_steps", "must be in [1, 500] but is 0")),
        ({"num_inference_steps": 2, "strength": 0.5}, None),
        ({"num_inference_steps": 1, "strength": 0.5}, ("num_inference_steps", f"{TOO_FEW} int(1 * 0.5) is 0{RAISE}")),
        ({"guidance_scale": 0.0}, None),
        ({"guidance_scale": 50.0}, None),
        ({"guidance_scale": 50.5}, ("guidance_scale", "must be in [0.0, 50.0] but is 50.5")),
        ({"guidance_scale": -0.5}, ("guidance_scale", "must be in [0.0, 50.0] but is -0.5")),
        ({"num_images_per_prompt": 8}, None),
        ({"num_images_per_prompt": 9}, ("num_images_per_prompt", "must be in [1, 8] but is 9")),
        ({"num_images_per_prompt": 0}, ("num_images_per_prompt", "must be in [1, 8] but is 0")),
        ({"scheduler": "PNDMScheduler"}, None),
        ({"scheduler": "nope"}, ("scheduler", f"must be one of {sorted(SCHEDULERS)} {DEFAULT} but is 'nope'")),
        ({"prompt": b"p" * 4000}, None),
        ({"prompt": b"p" * 4001}, ("prompt", "must be at most 4000 characters but has 4001")),
        ({"negative_prompt": b"n" * 4000}, None),
        ({"negative_prompt": b"n" * 4001}, ("negative_prompt", "must be at most 4000 characters but has 4001")),
    ],
)  # fmt: skip
def test_each_bound_holds_at_its_edge(values: dict[str, Any], expected: tuple[str, str] | None) -> None:
    if expected is None:
        check(**values)
    else:
        assert refused(**values) == expected


def test_the_limits_come_from_the_configuration() -> None:
    limits = Limits(max_inference_steps=10, max_guidance_scale=9.0, max_images_per_prompt=2, max_prompt_chars=3)
    short = {"prompt": b"abc", "negative_prompt": b"ab"}
    assert check(limits, num_inference_steps=10, guidance_scale=9.0, num_images_per_prompt=2, **short)[0]
    assert refused(limits, num_inference_steps=11, **short) == ("num_inference_steps", "must be in [1, 10] but is 11")
    assert refused(limits, guidance_scale=9.5, **short) == ("guidance_scale", "must be in [0.0, 9.0] but is 9.5")
    assert refused(limits, num_images_per_prompt=3, **short) == ("num_images_per_prompt", "must be in [1, 2] but is 3")
    assert refused(limits, prompt=b"abcd") == ("prompt", "must be at most 3 characters but has 4")
    assert refused(limits, prompt=b"abc", negative_prompt=b"abcd") == (
        "negative_prompt", "must be at most 3 characters but has 4"
    )  # fmt: skip


@pytest.mark.parametrize("steps, strength, expected", [(10, 0.7, 7), (10, 1.0, 10), (7, 0.99, 6), (3, 0.3, 0)])
def test_effective_steps_never_exceed_the_steps_asked(steps: int, strength: float, expected: int) -> None:
    assert effective_steps(steps, strength) == expected


def test_effective_steps_cap_at_the_steps_asked() -> None:
    assert effective_steps(10, 1.5) == 10  # a strength over 1 (refused elsewhere) still runs no extra step


# --- the API side: the schema's bounds, and what reaches the model ----------------------------------


def body(**fields: Any) -> dict[str, Any]:
    return {"prompt": "a cat", "image": "AAAA", **fields}


def test_the_api_passes_seed_zero_through_and_none_as_draw() -> None:
    settings = Settings(api_keys=[])  # type: ignore[arg-type]
    image = np.zeros((8, 8, 3), np.uint8)
    for seed, sent in ((0, 0), (1, 1), (None, -1)):
        fields: dict[str, Any] = {"negative_prompt": "blurry", "scheduler": "euler", "strength": 0.6}
        fields.update(num_inference_steps=12, guidance_scale=3.0, num_images_per_prompt=2)  # none the defaults
        job = generation_input(parse_body(body(seed=seed, **fields), settings).model_dump(), image)
        assert job.seed == sent and job.image is image
        assert (job.prompt, job.negative_prompt, job.scheduler) == ("a cat", "blurry", "euler")
        assert (job.strength, job.num_inference_steps, job.guidance_scale, job.num_images_per_prompt) == (
            0.6,
            12,
            3.0,
            2,
        )


def invalid(settings: Settings, **fields: Any) -> tuple[str | None, str]:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse_body(body(**fields), settings)
    return caught.value.param, caught.value.message


def test_the_schemas_bounds_hold_at_their_edges() -> None:
    settings = Settings(
        api_keys=[], max_inference_steps=60, max_guidance_scale=10.0, max_images_per_prompt=3, max_prompt_chars=5
    )  # type: ignore[arg-type]
    parse_body(body(num_inference_steps=60, guidance_scale=10.0, num_images_per_prompt=3, prompt="abcde"), settings)
    parse_body(body(negative_prompt="abcde", seed=API_MAX_SEED - 2, num_images_per_prompt=3), settings)
    assert invalid(settings, num_inference_steps=61) == (
        "num_inference_steps", "num_inference_steps: value must be at most 60 but is 61"
    )  # fmt: skip
    assert invalid(settings, guidance_scale=10.5) == (
        "guidance_scale",
        "guidance_scale: value must be at most 10.0 but is 10.5",
    )
    assert invalid(settings, num_images_per_prompt=4) == (
        "num_images_per_prompt", "num_images_per_prompt: value must be at most 3 but is 4"
    )  # fmt: skip
    assert invalid(settings, prompt="abcdef") == ("prompt", "prompt: length must be at most 5 but is 6")
    assert invalid(settings, negative_prompt="abcdef") == (
        "negative_prompt",
        "negative_prompt: length must be at most 5 but is 6",
    )
    assert invalid(settings, seed=API_MAX_SEED - 1, num_images_per_prompt=3) == (
        "seed", f"seed: must be at most {API_MAX_SEED - 2}"
    )  # fmt: skip
    assert invalid(settings, num_inference_steps=3, strength=0.3) == (
        "num_inference_steps",
        "num_inference_steps: int(num_inference_steps * strength) must be at least 1 but int(3 * 0.3) is 0",
    )
    parse_body(body(num_inference_steps=4, strength=0.25), settings)  # int(1.0): one step
    assert parse_body(body(seed=0), settings).seed == 0

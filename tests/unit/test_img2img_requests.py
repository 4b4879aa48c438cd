"""The model's pure request logic: validation messages, grouping into pipeline calls, splitting back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from families import Family

from img2img_requests import (
    MAX_SEED,
    Defaults,
    Img2ImgRequest,
    InvalidInput,
    Limits,
    PipelineCall,
    UnsupportedInput,
    check_inputs,
    effective_steps,
    plan_calls,
    split_images,
    to_uint8,
)

SCHEDULERS = {"PNDMScheduler", "euler"}


def arrays(**overrides: Any) -> dict[str, Any]:
    """Inputs shaped as Triton hands them to the model (batch dim 1)."""
    base: dict[str, Any] = {
        "prompt": np.array([[b"a cat"]], dtype=object),
        "image": np.zeros((1, 16, 24, 3), dtype=np.uint8),
        "negative_prompt": np.array([[b""]], dtype=object),
        "strength": np.array([[0.5]], dtype=np.float32),
        "num_inference_steps": np.array([[4]], dtype=np.int32),
        "guidance_scale": np.array([[7.5]], dtype=np.float32),
        "num_images_per_prompt": np.array([[1]], dtype=np.int32),
        "seed": np.array([[7]], dtype=np.int64),
        "scheduler": np.array([[b""]], dtype=object),
    }
    base.update(overrides)
    return base


def check(index: int = 0, **overrides: Any) -> Img2ImgRequest:
    return check_inputs(
        index, arrays(**overrides), defaults=Defaults(), limits=Limits(), schedulers=SCHEDULERS, seed_source=lambda: 99
    )


def test_valid_request_is_parsed() -> None:
    request = check(3)
    assert request.index == 3
    assert request.prompt == "a cat"
    assert request.image.shape == (16, 24, 3)
    assert (request.strength, request.num_inference_steps, request.guidance_scale) == (0.5, 4, 7.5)
    assert request.seeds == [7]
    assert request.group_key.height == 16 and request.group_key.width == 24


def test_omitted_optional_inputs_take_diffusers_defaults() -> None:
    only_required = {"prompt": np.array([[b"x"]], dtype=object), "image": np.zeros((1, 8, 8, 3), np.uint8)}
    request = check_inputs(
        0, only_required, defaults=Defaults(), limits=Limits(), schedulers=SCHEDULERS, seed_source=lambda: 1234
    )
    assert (request.strength, request.num_inference_steps, request.guidance_scale) == (0.8, 50, 7.5)
    assert request.num_images_per_prompt == 1 and request.negative_prompt == "" and request.scheduler == ""
    assert request.seed == 1234


def test_seed_minus_one_draws_and_images_use_consecutive_seeds() -> None:
    request = check(seed=np.array([[-1]], np.int64), num_images_per_prompt=np.array([[3]], np.int32))
    assert request.seeds == [99, 100, 101]


@pytest.mark.parametrize(
    ("overrides", "input_name", "fragment"),
    [
        ({"strength": np.array([[1.5]], np.float32)}, "strength", "must be in [0.0, 1.0] but is 1.5"),
        ({"strength": np.array([[np.nan]], np.float32)}, "strength", "finite"),
        ({"num_inference_steps": np.array([[0]], np.int32)}, "num_inference_steps", "but is 0"),
        ({"num_inference_steps": np.array([[501]], np.int32)}, "num_inference_steps", "[1, 500] but is 501"),
        (
            {"num_inference_steps": np.array([[3]], np.int32), "strength": np.array([[0.3]], np.float32)},
            "num_inference_steps",
            "int(3 * 0.3",
        ),
        ({"guidance_scale": np.array([[-1.0]], np.float32)}, "guidance_scale", "but is -1.0"),
        ({"num_images_per_prompt": np.array([[9]], np.int32)}, "num_images_per_prompt", "[1, 8] but is 9"),
        ({"seed": np.array([[-5]], np.int64)}, "seed", "but is -5"),
        ({"seed": np.array([[MAX_SEED]], np.int64), "num_images_per_prompt": np.array([[2]], np.int32)}, "seed", ""),
        ({"scheduler": np.array([[b"nope"]], dtype=object)}, "scheduler", "'nope'"),
        ({"prompt": np.array([[b"\xff\xfe"]], dtype=object)}, "prompt", "UTF-8"),
        ({"prompt": np.array([[b"a" * 4001]], dtype=object)}, "prompt", "at most 4000"),
        ({"prompt": None}, "prompt", "is required"),
        ({"image": None}, "image", "is required"),
        ({"image": np.zeros((1, 0, 0, 3), np.uint8)}, "image", "is empty"),
        ({"image": np.zeros((1, 16, 20, 3), np.uint8)}, "image", "width must be a multiple of 8 but is 20"),
        ({"image": np.zeros((1, 2048, 16, 3), np.uint8)}, "image", "height must be in [8, 1024] but is 2048"),
        ({"image": np.zeros((1, 16, 16, 4), np.uint8)}, "image", "[height, width, 3]"),
        ({"image": np.zeros((1, 16, 16, 3), np.float32)}, "image", "UINT8"),
        ({"strength": np.array([[0.5, 0.6]], np.float32)}, "strength", "one value per request"),
    ],
)
def test_invalid_inputs_name_the_input_and_value(overrides: dict[str, Any], input_name: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check(**overrides)
    assert caught.value.input_name == input_name
    assert str(caught.value).startswith(f"invalid input '{input_name}': ")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(("steps", "strength", "expected"), [(50, 0.8, 40), (4, 0.5, 2), (3, 0.3, 0), (10, 1.0, 10)])
def test_effective_steps_follow_diffusers(steps: int, strength: float, expected: int) -> None:
    assert effective_steps(steps, strength) == expected


def test_plan_calls_groups_compatible_requests_in_first_seen_order() -> None:
    a = check(0)
    b = check(1, image=np.zeros((1, 32, 32, 3), np.uint8))
    c = check(2)
    d = check(3, strength=np.array([[0.75]], np.float32))
    e = check(4, seed=np.array([[1]], np.int64), prompt=np.array([[b"other"]], dtype=object))
    calls = plan_calls([a, b, c, d, e], max_images_per_call=16)
    assert [[r.index for r in call.requests] for call in calls] == [[0, 2, 4], [1], [3]]


def test_plan_calls_cuts_groups_at_whole_requests() -> None:
    requests = [check(i, num_images_per_prompt=np.array([[n]], np.int32)) for i, n in enumerate([3, 3, 2, 1])]
    calls = plan_calls(requests, max_images_per_call=6)
    assert [[r.index for r in call.requests] for call in calls] == [[0, 1], [2, 3]]
    assert [call.num_images for call in calls] == [6, 3]


def test_split_images_returns_each_requests_images_in_order() -> None:
    requests = [check(i, num_images_per_prompt=np.array([[n]], np.int32)) for i, n in enumerate([2, 1, 3])]
    call = PipelineCall(requests[0].group_key, tuple(requests))
    images = np.arange(6).reshape(6, 1, 1, 1) * np.ones((6, 2, 2, 3), np.uint8)
    parts = split_images(call, images.astype(np.uint8))
    assert [p[:, 0, 0, 0].tolist() for p in parts] == [[0, 1], [2], [3, 4, 5]]
    with pytest.raises(ValueError, match="returned 5 images"):
        split_images(call, images[:5])


def test_to_uint8_rounds_and_clips() -> None:
    out = to_uint8(np.array([-0.1, 0.0, 0.5, 1.0, 1.2], dtype=np.float32))
    assert out.tolist() == [0, 0, 128, 255, 255]


def refiner_family() -> Family:
    return Family("sdxl-refiner", "SDXL refiner", True, "epsilon", 1024, refiner=True)


def scored(family: Family | None, **overrides: Any) -> Img2ImgRequest:
    return check_inputs(
        0, arrays(**overrides), defaults=Defaults(), limits=Limits(), schedulers=SCHEDULERS, family=family
    )


def test_a_refiner_takes_aesthetic_scores_and_not_given_is_diffusers_default() -> None:
    nan = np.array([[np.nan]], dtype=np.float32)
    request = scored(refiner_family(), aesthetic_score=nan, negative_aesthetic_score=np.array([[3.5]], np.float32))
    assert (request.aesthetic_score, request.negative_aesthetic_score) == (6.0, 3.5)
    assert scored(refiner_family()).aesthetic_score == 6.0  # absent, as from a client that sends no such input
    with pytest.raises(InvalidInput, match=r"invalid input 'aesthetic_score': must be in \[0.0, 10.0\] but is 11.0"):
        scored(refiner_family(), aesthetic_score=np.array([[11.0]], dtype=np.float32))


@pytest.mark.parametrize("family", [None, Family("sdxl", "SDXL base", True, "epsilon", 1024)], ids=["sd", "sdxl"])
def test_a_family_that_takes_no_aesthetic_score_refuses_one_by_name_and_ignores_not_given(family: Family) -> None:
    request = scored(family, aesthetic_score=np.array([[np.nan]], dtype=np.float32))
    assert request.aesthetic_score is None and request.negative_aesthetic_score is None
    with pytest.raises(UnsupportedInput) as refused:
        scored(family, negative_aesthetic_score=np.array([[2.5]], dtype=np.float32))
    assert str(refused.value).startswith("unsupported input 'negative_aesthetic_score': the served model (")
    assert "only an SDXL refiner does" in str(refused.value)


def test_an_empty_negative_prompt_is_its_own_pipeline_call() -> None:
    """diffusers' negative_prompt=None (zeros for SDXL base) is one call's setting, not a per-prompt string."""
    empty, given = check(0), check(1, negative_prompt=np.array([[b"blurry"]], dtype=object))
    assert len(plan_calls([empty, given], max_images_per_call=8)) == 2

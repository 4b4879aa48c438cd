"""``model.py`` under a fake ``triton_python_backend_utils``, running the real tiny pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import fake_pb_utils as pb
from .support import answer, make_model, request


def own_metrics(name: str) -> list[pb.Metric]:
    """The metrics named ``name`` of the ``model`` fixture's instance (the only one named sd_img2img)."""
    return [m for m in pb.Metric.made if m.name == name and m.labels["model"] == "sd_img2img"]


@pytest.fixture(scope="module")
def request_model(model_module: Any, tiny_model_path: Path, monkeypatch_module: pytest.MonkeyPatch) -> Any:
    monkeypatch_module.setenv("SD_MODEL_PATH", str(tiny_model_path))
    return make_model(model_module, batching="request")


def test_one_response_per_request_in_order_with_right_shapes(model: Any) -> None:
    responses = answer(model, [request(seed=5, n=2), request(size=24, seed=9), request(seed=11)])
    assert len(responses) == 3 and all(r.error() is None for r in responses)
    assert responses[0].output("images").shape == (1, 2, 16, 16, 3)
    assert responses[0].output("seeds").tolist() == [[5, 6]]
    assert responses[1].output("images").shape == (1, 1, 24, 24, 3)
    assert responses[2].output("seeds").tolist() == [[11]]


def test_bad_request_gets_invalid_arg_and_neighbours_succeed(model: Any) -> None:
    responses = answer(model, [request(seed=1), request(strength=1.5), request(seed=2)])
    assert responses[0].error() is None and responses[2].error() is None
    assert responses[1].error().code() == pb.TritonError.INVALID_ARG
    assert responses[1].error().message() == "invalid input 'strength': must be in [0.0, 1.0] but is 1.5"


def test_compatible_requests_share_one_pipeline_call(request_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = request_model
    calls: list[list[int]] = []
    run = model.runner.run

    def counting_run(call: Any, **hooks: Any) -> np.ndarray:
        calls.append([r.index for r in call.requests])
        return run(call, **hooks)

    monkeypatch.setattr(model.runner, "run", counting_run)
    responses = answer(model, [request(seed=1), request(size=24), request(seed=3), request(seed=4, strength=0.75)])
    assert all(r.error() is None for r in responses)
    assert calls == [[0, 2], [1], [3]]


def test_a_failing_call_fails_only_its_own_requests(request_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = request_model
    run = model.runner.run

    def failing_for_24px(call: Any, **hooks: Any) -> np.ndarray:
        if call.key.height == 24:
            raise RuntimeError("out of memory")
        return run(call, **hooks)

    monkeypatch.setattr(model.runner, "run", failing_for_24px)
    responses = answer(model, [request(seed=1), request(size=24), request(seed=3)])
    assert responses[0].error() is None and responses[2].error() is None
    assert responses[1].error().code() == pb.TritonError.INTERNAL
    assert "out of memory" in responses[1].error().message()


def test_every_denoising_step_moves_the_step_metric(model: Any) -> None:
    """Liveness probes tell a busy model from a hung one by this counter (docker/triton_canary.py)."""
    (metric,) = own_metrics("sd_img2img_denoising_steps_total")
    assert metric.labels == {"model": "sd_img2img", "version": "1"}
    before, unet_calls = metric.value, []
    hook = model.runner.pipe.unet.register_forward_hook(lambda *_: unet_calls.append(1))
    try:
        answer(model, [request(seed=1), request(size=24), request(seed=3)])  # two pipeline calls
    finally:
        hook.remove()
    assert len(unet_calls) >= 4  # each call runs at least 2 steps (4 x strength 0.5; PNDM adds one)
    assert metric.value - before == len(unet_calls)  # one UNet pass per denoising step


def test_the_executing_gauge_counts_the_requests_inside_execute_and_is_zero_after(model: Any) -> None:
    """Tests and operators tell an idle model from a busy one by it (Triton's gauge counts queued ones only)."""
    (gauge,) = own_metrics("sd_img2img_requests_executing")
    assert gauge.labels == {"model": "sd_img2img", "version": "1"}
    seen: list[float] = []
    hook = model.runner.pipe.unet.register_forward_hook(lambda *_: seen.append(gauge.value))
    try:
        answer(model, [request(seed=1), request(size=24), request(seed=3)])
    finally:
        hook.remove()
    # Step batching: all three are in the model together; each leaves after its last step.
    assert seen and max(seen) == 3  # the first forward may run before the others are submitted
    assert gauge.value == 0
    answer(model, [request(size=7)])  # answered INVALID_ARG: still back to 0
    assert gauge.value == 0


def test_cancelled_request_is_answered_cancelled_and_others_run(model: Any) -> None:
    responses = answer(model, [request(seed=1, cancelled=True), request(seed=2)])
    assert responses[0].error().code() == pb.TritonError.CANCELLED
    assert responses[1].error() is None


def test_request_batching_stops_a_call_whose_every_request_was_cancelled_mid_call(request_model: Any) -> None:
    """Cancelled after it started (the pre-call check saw it live): the pipeline stops at the next step."""
    full, cancelled = request(seed=21), request(seed=21)
    before = request_model.steps.value
    assert answer(request_model, [full])[0].error() is None
    steps_full = request_model.steps.value - before
    cancelled.cancelled_from_check = 2  # 1: the pre-call check; 2: the first step's
    before = request_model.steps.value
    response = answer(request_model, [cancelled])[0]
    assert response.error().code() == pb.TritonError.CANCELLED
    assert 0 < request_model.steps.value - before < steps_full  # stopped, not run to the end


def test_request_batching_answers_cancelled_a_request_cancelled_while_its_neighbour_ran_on(
    request_model: Any,
) -> None:
    """Its neighbour keeps the call going; the post-call check answers the cancelled one CANCELLED."""
    gone, stays = request(seed=31), request(seed=32)
    gone.cancelled_from_check = 2
    responses = answer(request_model, [gone, stays])
    assert responses[0].error().code() == pb.TritonError.CANCELLED
    assert responses[1].error() is None and responses[1].output("seeds").tolist() == [[32]]


@pytest.mark.parametrize("determinism", ["batch_invariant", "per_image"])
@pytest.mark.parametrize("size", [16, 24, 64])
def test_images_do_not_depend_on_batch_neighbours_or_position(
    model_module: Any, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, determinism: str, size: int
) -> None:
    monkeypatch.setenv("SD_MODEL_PATH", str(tiny_model_path))
    model = make_model(model_module, determinism=determinism)
    probe = {"seed": 42, "size": size, "n": 2}
    alone = answer(model, [request(**probe)])[0].output("images")
    first = answer(model, [request(**probe), request(seed=7, size=size), request(seed=8, n=3, size=size)])
    last = answer(model, [request(seed=3, n=3, size=size), request(seed=4, size=size), request(**probe)])
    assert alone.tobytes() == first[0].output("images").tobytes() == last[2].output("images").tobytes()
    other = answer(model, [request(seed=43, size=size)])[0].output("images")
    assert alone[0, 0].tobytes() != other[0, 0].tobytes()


def test_config_parameters_reach_the_model(
    model_module: Any, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SD_MODEL_PATH", str(tiny_model_path))
    instance = make_model(model_module, max_image_side="32", max_images_per_prompt="2", max_images_per_call="2")
    responses = answer(instance, [request(size=40), request(n=3), request(size=8)])
    assert "height must be in [16, 32] but is 40" in responses[0].error().message()
    assert "[1, 2] but is 3" in responses[1].error().message()
    # The tiny UNet halves an 8x-downscaled latent once: below 16 px its GroupNorms would see 1x1 maps.
    assert "height must be in [16, 32] but is 8" in responses[2].error().message()


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"default_scheduler": "nope"}, "default_scheduler"),
        ({"determinism": "maybe"}, "determinism"),
        ({"dtype": "int8"}, "dtype"),
        ({"max_images_per_call": "2"}, "max_images_per_call"),
        ({"invariant_modules": "conv3d"}, "invariant_modules: unknown kind 'conv3d'"),
        ({"invariant_modules": "linear:0"}, "rows for 'linear' must be 1 to 64 but is 0"),
        ({"min_step_ms": "-5"}, "min_step_ms must be a whole number of milliseconds, at least 0, but is '-5'"),
        ({"min_step_ms": "soon"}, "min_step_ms must be a whole number .* but is 'soon'"),
    ],
)
def test_bad_config_fails_initialize(
    model_module: Any, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, parameters: dict[str, str], named: str
) -> None:
    monkeypatch.setenv("SD_MODEL_PATH", str(tiny_model_path))
    with pytest.raises(pb.TritonModelException, match=named):
        make_model(model_module, **parameters)


def test_a_request_with_an_id_posts_every_step_and_previews_then_its_post_is_removed(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    posts: list[tuple[str, int, int, bytes]] = []
    post = model.board.post

    def recording(request_id: str, progress: Any) -> None:
        posts.append((request_id, progress.step, progress.total, progress.preview))
        post(request_id, progress)

    monkeypatch.setattr(model.board, "post", recording)
    with_id = request(seed=3, strength=1.0, num_inference_steps=np.array([[12]], np.int32))
    with_id.id = "run-progress-1"
    answer(model, [with_id, request(seed=4)])  # the second has no id: it posts nothing
    assert {p[0] for p in posts} == {"run-progress-1"}
    assert [p[1] for p in posts] == list(range(1, 14)) and {p[2] for p in posts} == {13}  # PNDM: 12 + 1
    previews = [p[3] for p in posts]
    assert previews[0][:2] == b"\xff\xd8"  # a JPEG after the first step
    assert previews[4] != previews[3] == previews[0]  # a new one at step 5, the last one re-posted between
    assert model.board.read("run-progress-1") is None  # removed once answered


def test_each_forward_observes_its_rows(model: Any) -> None:
    (histogram,) = own_metrics("sd_img2img_unet_rows")
    before = len(histogram.observed)
    forwards: list[int] = []
    hook = model.runner.pipe.unet.register_forward_hook(lambda _m, args, _out: forwards.append(args[0].shape[0]))
    try:
        # Two requests of one size, 2 images and 1, guided: 4 rows and 2 (together 6 once both are admitted).
        answer(model, [request(seed=1, n=2, strength=1.0), request(seed=5, strength=0.5)])
    finally:
        hook.remove()
    rows = histogram.observed[before:]
    assert rows == forwards and 6 in rows and set(rows) <= {2, 4, 6}


def test_a_folder_of_another_kind_fails_initialize_in_one_line_saying_what_was_found_and_what_is_served(
    model_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text('{"_class_name": "FluxPipeline", "transformer": ["diffusers", "X"]}')
    monkeypatch.setenv("SD_MODEL_PATH", str(flux))
    with pytest.raises(pb.TritonModelException) as failed:
        make_model(model_module)
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"m cannot serve '{flux}': found FluxPipeline")
    assert "serves SD 1.x, SD 2.x (epsilon or v) and SDXL (base or refiner) checkpoints" in message


def test_the_model_card_names_the_family_what_it_takes_and_its_limits(model: Any) -> None:
    """Posted with the load from the start (the frontend checks fields and sizes before it accepts a run)."""
    load = model.board.read_load()
    assert load is not None and load["model"] == {
        "family": "sd1",
        "title": "SD 1.x",
        "schedulers": sorted(model.schedulers),
        "fields": [],
        "native_side": 512,
        "max_image_side": 1024,
    }
    refused = answer(model, [request(aesthetic_score=np.array([[7.0]], np.float32))])[0]
    assert refused.error().message().startswith("unsupported input 'aesthetic_score': the served model (SD 1.x)")

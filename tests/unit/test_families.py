"""Which family a checkpoint folder holds, from its configs alone; a folder of another kind in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from families import UnsupportedCheckpoint, classify, detect

SD15_UNET = {"in_channels": 4, "sample_size": 64, "cross_attention_dim": 768}
SD21_UNET = {"in_channels": 4, "sample_size": 96, "cross_attention_dim": 1024, "use_linear_projection": True}
XL_UNET = {"in_channels": 4, "sample_size": 128, "cross_attention_dim": 2048, "addition_embed_type": "text_time"}
REFINER_INDEX = {"_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": True}


@pytest.mark.parametrize(
    ("index", "unet", "scheduler", "expected"),
    [
        ({"_class_name": "StableDiffusionPipeline"}, SD15_UNET, {}, ("sd1", "SD 1.x", 512)),
        (
            {"_class_name": "StableDiffusionImg2ImgPipeline"},
            SD15_UNET,
            {"prediction_type": "epsilon"},
            ("sd1", "SD 1.x", 512),
        ),
        # SD 2.1 base (512, epsilon) and SD 2.1 (768, v): the class alone does not say 1.x or 2.x.
        ({"_class_name": "StableDiffusionPipeline"}, {**SD21_UNET, "sample_size": 64}, {}, ("sd2", "SD 2.x", 512)),
        (
            {"_class_name": "StableDiffusionPipeline"},
            SD21_UNET,
            {"prediction_type": "v_prediction"},
            ("sd2-v", "SD 2.x (v-prediction)", 768),
        ),
        (
            {"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"]},
            XL_UNET,
            {},
            ("sdxl", "SDXL base", 1024),
        ),
        (REFINER_INDEX, {**XL_UNET, "cross_attention_dim": 1280}, {}, ("sdxl-refiner", "SDXL refiner", 1024)),
        # A refiner saved without the flag: no first text encoder says it.
        (
            {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]},
            XL_UNET,
            {},
            ("sdxl-refiner", "SDXL refiner", 1024),
        ),
    ],
)
def test_the_configs_say_the_family(
    index: dict[str, Any], unet: dict[str, Any], scheduler: dict[str, Any], expected: tuple[str, str, int]
) -> None:
    family = classify(index, unet, scheduler)
    assert (family.name, family.title, family.native_side) == expected
    assert family.max_image_side == 2 * expected[2]
    assert family.fields == (("aesthetic_score", "negative_aesthetic_score") if family.refiner else ())
    assert family.pipeline.endswith("Img2ImgPipeline")


@pytest.mark.parametrize(
    ("index", "unet", "found"),
    [
        (
            {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]},
            None,
            "FluxPipeline (a pipeline)",
        ),
        (
            {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]},
            None,
            "StableDiffusion3Pipeline",
        ),
        ({"_class_name": "ControlNetModel", "in_channels": 4}, None, "ControlNetModel (not a pipeline folder)"),
        (
            {"_class_name": "StableDiffusionInpaintPipeline", "unet": []},
            {"in_channels": 9},
            "StableDiffusionInpaintPipeline",
        ),
        ({"_class_name": "StableDiffusionPipeline"}, {"in_channels": 9}, "takes 9 input channels"),
        ({"_class_name": "StableDiffusionPipeline"}, XL_UNET, "with an SDXL UNet"),
        ({"_class_name": "StableDiffusionXLPipeline"}, SD15_UNET, "no SDXL size conditioning"),
    ],
)
def test_a_folder_of_another_kind_is_refused_in_one_line_naming_what_was_found(
    index: dict[str, Any], unet: dict[str, Any] | None, found: str
) -> None:
    with pytest.raises(UnsupportedCheckpoint) as refused:
        classify(index, unet, {})
    message = str(refused.value)
    assert "\n" not in message and found in message
    assert "serves SD 1.x, SD 2.x (epsilon or v) and SDXL (base or refiner)" in message


def write(folder: Path, files: dict[str, dict[str, Any]]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    return folder


def test_detect_reads_a_folder_s_configs_and_a_lone_model_s_config(tmp_path: Path) -> None:
    sd21 = write(
        tmp_path / "sd21",
        {
            "model_index.json": {"_class_name": "StableDiffusionPipeline"},
            "unet/config.json": {**SD21_UNET, "_class_name": "UNet2DConditionModel"},
            "vae/config.json": {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512]},
            "scheduler/scheduler_config.json": {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
        },
    )
    assert detect(str(sd21), local_files_only=True).name == "sd2-v"
    controlnet = write(tmp_path / "controlnet", {"config.json": {"_class_name": "ControlNetModel"}})
    with pytest.raises(UnsupportedCheckpoint, match="found ControlNetModel"):
        detect(str(controlnet), local_files_only=True)
    with pytest.raises(UnsupportedCheckpoint, match="found neither model_index.json nor config.json"):
        detect(str(tmp_path / "empty"), local_files_only=True)

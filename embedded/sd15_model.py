"""Build a full-size Stable Diffusion 1.5 img2img pipeline with random weights and save it as a diffusers folder.

SD 1.5's exact architecture and scheduler config (its published ``model_index.json`` and component
configs), random weights: no checkpoint can be downloaded here, and none needs to be for what this is
for: the compute, memory and load time of a request are those of the real model, so timeouts, probes
and benchmarks are set against real size. The folder loads through the same
``StableDiffusionImg2ImgPipeline.from_pretrained(path)`` as the real checkpoint.

The tokenizer has CLIP's 49,408-entry vocabulary shape (256 byte symbols, the same as word ends,
48,894 merges, two specials at the end) built from synthetic merges: prompts are padded to 77 tokens
either way, so the work per request is the real model's.

fp32 is 4.3 GB on disk (``--dtype float16``: half). ``make model-sd15`` builds it on the CPU. What the
full-size builders share (the tokenizer, the build and save, the command line) is ``embedded.full_size``.
"""

from __future__ import annotations

import sys
from typing import Any

from embedded import full_size
from embedded.full_size import VOCAB_SIZE, Factories
from embedded.model_folder import ModelFolder

# Where they were before the shared module: the tests and older callers reach them here.
SEED = full_size.SEED
clip_vocabulary = full_size.clip_vocabulary
parameter_counts = full_size.parameter_counts

BUILD_STAMP = "sd15_random_build.json"
BUILD_VERSION = 1
DEFAULT_FOLDER = full_size.MODELS / "sd15-random"

# Parameter counts of the published SD 1.5 components (what a real checkpoint has).
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    # SD 1.5's text_encoder/config.json: eos_token_id 2 selects CLIP's legacy pooling (argmax of the ids).
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def factories() -> Factories:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return [
        ("unet", lambda: UNet2DConditionModel(**UNET_CONFIG)),
        ("vae", lambda: AutoencoderKL(**VAE_CONFIG)),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))),
    ]


def assemble(components: dict[str, Any]) -> Any:
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline(
        **components,
        tokenizer=full_size.clip_tokenizer(),
        scheduler=PNDMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


FOLDER = ModelFolder(BUILD_STAMP, BUILD_VERSION)
MODEL = full_size.RandomModel("SD 1.5", FOLDER, DEFAULT_FOLDER, SD15_PARAMETERS, factories, assemble)


def build_components(device: str = "cpu", dtype_name: str = "float32") -> dict[str, Any]:
    """UNet, VAE and text encoder with SD 1.5's configs, random weights (seeded), on ``device``.

    With ``device="meta"`` nothing is allocated: the parameter-count test uses that.
    """
    return full_size.build_components(factories(), device, dtype_name)


def build_pipeline(device: str = "cpu", dtype_name: str = "float32") -> Any:
    return MODEL.build_pipeline(device, dtype_name)


# The builder's rules are full_size.RandomModel's: these names are what callers and tests import.
is_built = FOLDER.is_built
build = MODEL.build


def main(argv: list[str] | None = None) -> int:
    return MODEL.main(argv, __doc__.splitlines()[0] if __doc__ else None)


if __name__ == "__main__":
    sys.exit(main())

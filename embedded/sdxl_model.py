"""Build a full-size SDXL base 1.0 pipeline with random weights and save it as a diffusers folder.

SDXL base 1.0's exact architecture and scheduler config (stabilityai/stable-diffusion-xl-base-1.0's
published ``model_index.json`` and component configs: the 2.57 B-parameter UNet with its text-and-size
conditioning, CLIP ViT-L and OpenCLIP bigG text encoders, the VAE run in fp32, Euler), random weights:
the compute, memory and load time of a request are the real model's, as for ``sd15_model``. Saved as
the published base is, a ``StableDiffusionXLPipeline`` (text-to-image) folder; diffusers loads it as
``StableDiffusionXLImg2ImgPipeline`` as it does the real one.

Both tokenizers have CLIP's vocabulary shape (``embedded.full_size``); the second pads with ``!`` as
SDXL's does. fp32 is 13.9 GB on disk (``--dtype float16``: half), built one component at a time so the
peak is the UNet's 10.3 GB. ``make model-sdxl`` builds it on the CPU.
"""

from __future__ import annotations

import sys
from typing import Any

from embedded import full_size, sd15_model
from embedded.full_size import Factories
from embedded.model_folder import ModelFolder

BUILD_STAMP = "sdxl_random_build.json"
BUILD_VERSION = 1
DEFAULT_FOLDER = full_size.MODELS / "sdxl-random"

# Parameter counts of the published SDXL base 1.0 components (what the real checkpoint has).
SDXL_PARAMETERS = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    # The two text encoders' penultimate states side by side: 768 + 1280.
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),  # diffusers' legacy name: heads per block, 64 channels each
    "use_linear_projection": True,
    "upcast_attention": False,
    # Size conditioning: 6 time ids x 256 + the pooled 1280-wide text embedding = 2816.
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
# SD's VAE architecture (SDXL base's vae/config.json: the same blocks), its own scaling and fp16 rule.
VAE_CONFIG: dict[str, Any] = {
    **sd15_model.VAE_CONFIG,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    # The published VAE overflows in fp16: the pipelines decode in fp32 when this is set.
    "force_upcast": True,
}
# CLIP ViT-L/14, as in SD 1.5 (SDXL's text_encoder/config.json: the same values).
TEXT_ENCODER_CONFIG: dict[str, Any] = dict(sd15_model.TEXT_ENCODER_CONFIG)
# OpenCLIP ViT-bigG/14 with its text projection (text_encoder_2/config.json).
TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **TEXT_ENCODER_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
}
# scheduler/scheduler_config.json as published, keys Euler ignores included: the runner builds its other
# schedulers from this config, and DDIM, for one, reads clip_sample and set_alpha_to_one from it.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "prediction_type": "epsilon",
    "trained_betas": None,
    "clip_sample": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}


def factories() -> Factories:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return [
        ("unet", lambda: UNet2DConditionModel(**UNET_CONFIG)),
        ("vae", lambda: AutoencoderKL(**VAE_CONFIG)),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))),
        ("text_encoder_2", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2_CONFIG))),
    ]


def assemble(components: dict[str, Any]) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        **components,
        tokenizer=full_size.clip_tokenizer(),
        tokenizer_2=full_size.clip_tokenizer(pad_token="!"),  # noqa: S106 (a token, not a password)
        # from_config keeps the keys Euler does not take in its config, as loading the published one does.
        scheduler=EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,  # not saved: only whether the invisible-watermark package is used at run time
    )


FOLDER = ModelFolder(BUILD_STAMP, BUILD_VERSION)
MODEL = full_size.RandomModel("SDXL base 1.0", FOLDER, DEFAULT_FOLDER, SDXL_PARAMETERS, factories, assemble)


def build_components(device: str = "cpu", dtype_name: str = "float32") -> dict[str, Any]:
    """UNet, VAE and both text encoders with SDXL base's configs, random weights (seeded), on ``device``;
    ``meta`` allocates nothing (the parameter counts)."""
    return full_size.build_components(factories(), device, dtype_name)


# The builder's rules are full_size.RandomModel's: these names are what callers and tests import.
is_built = FOLDER.is_built
build = MODEL.build


def main(argv: list[str] | None = None) -> int:
    return MODEL.main(argv, __doc__.splitlines()[0] if __doc__ else None)


if __name__ == "__main__":
    sys.exit(main())

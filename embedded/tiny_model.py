"""Build a tiny random-weight Stable Diffusion img2img pipeline of one family and save it as a diffusers folder.

No real weights can be downloaded here, so tests and the local stack use pipelines with each family's
*architecture shape* but tiny widths and random weights, the way diffusers' own tests build them:

* ``sd1``: SD 1.5's (CLIP text encoder -> cross-attention UNet -> 4-block VAE with the 8x downscale,
  PNDM with SD 1.5's config);
* ``sd2-v``: SD 2.1 768's (an OpenCLIP-like gelu text encoder, linear projections in the UNet's
  transformers, DDIM predicting v);
* ``sdxl``: SDXL base's (two text encoders, the second with a projection for the pooled embedding, a
  UNet conditioned on it and on six size ids, an fp16-unsafe VAE (``force_upcast``), Euler with SDXL's config);
* ``sdxl-refiner``: the refiner's (the second text encoder only, five ids ending in an aesthetic score).

Each folder's ``model_index.json`` names the class the published checkpoint's does (SD 2.1 and SDXL base are
text-to-image folders, which the model loads as img2img as diffusers allows; the refiner is an img2img one), and
the UNet's ``sample_size`` is the real family's, so its native side (and the served image limits) are too.

Weights are a pure function of ``SEED`` so two builds give the same images for the same request.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from embedded.model_folder import ModelFolder

SEED = 0
# Marker written beside the weights: a folder with it and a matching version is reused.
BUILD_STAMP = "tiny_model_build.json"
BUILD_VERSION = 3
FAMILIES = ("sd1", "sd2-v", "sdxl", "sdxl-refiner")
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_folder(family: str = "sd1") -> Path:
    """``make model FAMILY=...``'s folder: SD 1.x's is the one every test and ``make serve`` use."""
    return REPO_ROOT / ".models" / ("tiny-sd-img2img" if family == "sd1" else f"tiny-{family}")


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet, each symbol alone and as a word end, plus the two specials.

    With no merges, BPE splits every word into single symbols, so this 514-entry vocab covers any text.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    return {token: index for index, token in enumerate(tokens)}


# The schedulers the real checkpoints ship: SD 1.5 (PNDM, PLMS steps only), SD 2.1 768 (DDIM predicting v),
# SDXL base and refiner (Euler, leading spacing).
_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "sd1": ("PNDMScheduler", {**_BETAS, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
    "sd2-v": (
        "DDIMScheduler",
        {
            **_BETAS,
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "prediction_type": "v_prediction",
        },
    ),
    "sdxl": (
        "EulerDiscreteScheduler",
        {**_BETAS, "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear"},
    ),
}
SCHEDULERS["sdxl-refiner"] = SCHEDULERS["sdxl"]
# Saved as text-to-image folders, as the published SD 2.1 and SDXL base are (the others keep the img2img class).
TEXT_TO_IMAGE = {"sd2-v": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
# The real family's UNet sample size (latent px): the native side is 8x it.
SAMPLE_SIZES = {"sd1": 64, "sd2-v": 96, "sdxl": 128, "sdxl-refiner": 128}


def _text_encoder(seed: int, *, gelu: bool, projection: bool = False):  # type: ignore[no-untyped-def]
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(_byte_level_vocab()),
        hidden_size=32,
        intermediate_size=64,  # a multiple of the SIMD width: see img2img_pipeline.make_batch_invariant
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu" if gelu else "quick_gelu",  # OpenCLIP's (SD 2.x, SDXL's second) or CLIP's
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _unet(seed: int, family: str):  # type: ignore[no-untyped-def]
    import torch
    from diffusers import UNet2DConditionModel

    shape: dict[str, Any] = {
        "sample_size": SAMPLE_SIZES[family],
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
    if family == "sd2-v":
        shape |= {"use_linear_projection": True}
    elif family.startswith("sdxl"):
        refiner = family == "sdxl-refiner"
        # diffusers' tiny SDXL test UNet: the pooled embedding (32) and 5 or 6 ids of 8 sinusoidal features each.
        shape |= {
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": (5 if refiner else 6) * 8 + 32,
            "cross_attention_dim": 32 if refiner else 64,  # the refiner: the second encoder's states only
            "transformer_layers_per_block": (1, 2),
        }
    torch.manual_seed(seed)
    return UNet2DConditionModel(**shape)


def build_pipeline(seed: int = SEED, family: str = "sd1"):  # type: ignore[no-untyped-def]  # diffusers is untyped
    """Return the family's tiny img2img pipeline (random weights from ``seed``)."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTokenizer

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} but is {family!r}")
    unet = _unet(seed, family)
    torch.manual_seed(seed + 1)
    # Four blocks keep SD's 8x latent downscale (vae_scale_factor = 2 ** (len(blocks) - 1)).
    xl = family.startswith("sdxl")
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        **({"scaling_factor": 0.13025, "force_upcast": True} if xl else {}),
    )
    name, config = SCHEDULERS[family]
    scheduler = getattr(diffusers, name)(**config)
    tokenizer = CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=77)
    if not xl:
        return StableDiffusionImg2ImgPipeline(
            vae=vae,
            text_encoder=_text_encoder(seed + 2, gelu=family == "sd2-v"),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    refiner = family == "sdxl-refiner"
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None if refiner else _text_encoder(seed + 2, gelu=False),
        text_encoder_2=_text_encoder(seed + 3, gelu=True, projection=True),
        tokenizer=None if refiner else tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=refiner,
        force_zeros_for_empty_prompt=not refiner,  # as the published base and refiner say
        add_watermarker=False,
    )


FOLDER = ModelFolder(BUILD_STAMP, BUILD_VERSION)


def is_built(folder: Path, family: str = "sd1") -> bool:
    stamp = FOLDER.stamp(folder) or {}
    return FOLDER.is_built(folder) and stamp.get("family", "sd1") == family


def build(folder: Path, *, force: bool = False, family: str = "sd1") -> bool:
    """Save the family's tiny pipeline into ``folder``; returns False when an up-to-date build is already there.

    Never into a folder that holds anything else: ``MODEL_DIR`` may name a user's real checkpoint.
    """
    if is_built(folder, family) and not force:
        return False

    def save(staging: Path) -> dict[str, Any]:
        import diffusers

        pipe = build_pipeline(family=family)
        if family in TEXT_TO_IMAGE:
            pipe = getattr(diffusers, TEXT_TO_IMAGE[family]).from_pipe(pipe)
        pipe.save_pretrained(staging, safe_serialization=True)
        return {"seed": SEED, "family": family}

    FOLDER.write(folder, save)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, nargs="?", help="where to save the diffusers folder (default: the family's)"
    )
    parser.add_argument("--family", choices=FAMILIES, default="sd1", help="which Stable Diffusion (default: sd1)")
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    args = parser.parse_args(argv)
    folder = args.folder or default_folder(args.family)
    built = build(folder, force=args.force, family=args.family)
    print(f"{'built' if built else 'up to date'}: {folder} ({args.family})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

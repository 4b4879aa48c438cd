"""Build a tiny random-weight Stable Diffusion img2img pipeline and save it as a diffusers folder.

No real weights can be downloaded here, so tests and the local stack use a pipeline with SD 1.5's
*architecture shape* (CLIP text encoder -> cross-attention UNet -> 4-block VAE with the 8x downscale,
PNDM scheduler with SD 1.5's config) but tiny widths and random weights. The saved folder loads
through the same ``StableDiffusionImg2ImgPipeline.from_pretrained(path)`` as a real checkpoint.

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
BUILD_VERSION = 2


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet, each symbol alone and as a word end, plus the two specials.

    With no merges, BPE splits every word into single symbols, so this 514-entry vocab covers any text.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    return {token: index for index, token in enumerate(tokens)}


def build_pipeline(seed: int = SEED):  # type: ignore[no-untyped-def]  # diffusers is untyped
    """Return the tiny ``StableDiffusionImg2ImgPipeline`` (random weights from ``seed``)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_size = len(_byte_level_vocab())
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    # Four blocks keep SD's 8x latent downscale (vae_scale_factor = 2 ** (len(blocks) - 1)).
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
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,  # a multiple of the SIMD width: see img2img_pipeline.make_batch_invariant
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    # SD 1.5's scheduler config (PNDM with PLMS steps only).
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tokenizer = CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=77)
    return StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


FOLDER = ModelFolder(BUILD_STAMP, BUILD_VERSION)


def is_built(folder: Path) -> bool:
    return FOLDER.is_built(folder)


def build(folder: Path, *, force: bool = False) -> bool:
    """Save the tiny pipeline into ``folder``; returns False when an up-to-date build is already there.

    Never into a folder that holds anything else: ``MODEL_DIR`` may name a user's real checkpoint.
    """
    if FOLDER.is_built(folder) and not force:
        return False

    def save(staging: Path) -> dict[str, Any]:
        build_pipeline().save_pretrained(staging, safe_serialization=True)
        return {"seed": SEED}

    FOLDER.write(folder, save)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to save the diffusers folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    args = parser.parse_args(argv)
    built = build(args.folder, force=args.force)
    print(f"{'built' if built else 'up to date'}: {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

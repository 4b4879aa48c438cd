"""Build a full-size Stable Diffusion 1.5 img2img pipeline with random weights and save it as a diffusers folder.

SD 1.5's exact architecture and scheduler config (its published ``model_index.json`` and component
configs), random weights: no checkpoint can be downloaded here, and none needs to be for what this is
for: the compute, memory and load time of a request are those of the real model, so timeouts, probes
and benchmarks are set against real size. The folder loads through the same
``StableDiffusionImg2ImgPipeline.from_pretrained(path)`` as the real checkpoint.

The tokenizer has CLIP's 49,408-entry vocabulary shape (256 byte symbols, the same as word ends,
48,894 merges, two specials at the end) built from synthetic merges: prompts are padded to 77 tokens
either way, so the work per request is the real model's.

fp32 is 4.3 GB on disk (``--dtype float16``: half). ``make model-sd15`` builds it on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedded.model_folder import ModelFolder

SEED = 0
BUILD_STAMP = "sd15_random_build.json"
BUILD_VERSION = 1
DEFAULT_FOLDER = Path(__file__).resolve().parent.parent / ".models" / "sd15-random"

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
VOCAB_SIZE = 49_408
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


def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary *shape*: byte symbols, their word-end forms, merges, then the two specials."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols)]
    merges: list[tuple[str, str]] = []
    wanted = VOCAB_SIZE - len(tokens) - 2
    # Deterministic synthetic merges: every pair of byte symbols, word-end forms first (a word's last two
    # characters), until the vocabulary has CLIP's size.
    for second_suffix in ("</w>", ""):
        for a in symbols:
            for b in symbols:
                if len(merges) == wanted:
                    break
                merges.append((a, b + second_suffix))
                tokens.append(f"{a}{b}{second_suffix}")
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_components(device: str = "cpu", dtype_name: str = "float32") -> dict[str, Any]:
    """UNet, VAE and text encoder with SD 1.5's configs, random weights (seeded), on ``device``.

    With ``device="meta"`` nothing is allocated: the parameter-count test uses that.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    dtype = getattr(torch, dtype_name)
    factories: list[tuple[str, Callable[[], Any]]] = [
        ("unet", lambda: UNet2DConditionModel(**UNET_CONFIG)),
        ("vae", lambda: AutoencoderKL(**VAE_CONFIG)),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))),
    ]
    components: dict[str, Any] = {}
    for offset, (name, make) in enumerate(factories):
        torch.manual_seed(SEED + offset)
        with torch.device(device):  # built where it will run: a GPU build never crosses the host
            module = make()
        components[name] = (module if dtype == torch.float32 else module.to(dtype)).eval()
    return components


def parameter_counts(components: dict[str, Any]) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}


def build_pipeline(device: str = "cpu", dtype_name: str = "float32"):  # type: ignore[no-untyped-def]  # diffusers is untyped
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    # The tokenizers backend wants merges as pairs (its annotation says strings).
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="<|endoftext|>")  # type: ignore[arg-type]  # noqa: S106
    return StableDiffusionImg2ImgPipeline(
        **build_components(device, dtype_name),
        tokenizer=tokenizer,
        scheduler=PNDMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


FOLDER = ModelFolder(BUILD_STAMP, BUILD_VERSION)


def is_built(folder: Path) -> bool:
    return FOLDER.is_built(folder)


def build(folder: Path, *, device: str = "cpu", dtype_name: str = "float32", force: bool = False) -> dict[str, Any]:
    """Save the pipeline into ``folder`` (ours or empty; never a folder holding anything else)."""
    if FOLDER.is_built(folder) and not force:
        return {"built": False, **(FOLDER.stamp(folder) or {})}

    def save(staging: Path) -> dict[str, Any]:
        started = time.perf_counter()
        pipe = build_pipeline(device, dtype_name)
        built_s = time.perf_counter() - started
        pipe.save_pretrained(staging, safe_serialization=True)
        return {
            "seed": SEED,
            "device": device,
            "dtype": dtype_name,
            "parameters": parameter_counts({n: getattr(pipe, n) for n in SD15_PARAMETERS}),
            "build_s": round(built_s, 1),
            "save_s": round(time.perf_counter() - started - built_s, 1),
        }

    return {"built": True, **FOLDER.write(folder, save)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", type=Path, nargs="?", default=DEFAULT_FOLDER)
    parser.add_argument("--device", default="cpu", help="where to build the weights (cpu, cuda, cuda:1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    args = parser.parse_args(argv)
    record = build(args.folder, device=args.device, dtype_name=args.dtype, force=args.force)
    print(f"{'built' if record.pop('built') else 'up to date'}: {args.folder} {json.dumps(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

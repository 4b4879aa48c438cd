"""What the full-size random-weight builders share (``sd15_model``, ``sdxl_model``).

Each one is a published checkpoint's exact architecture with seeded random weights: no checkpoint can be
downloaded here, and none needs to be for what they are for (compute, memory and load time are the real
model's). They share CLIP's tokenizer shape, the seeded module build, the save and stamp rule, and the
command line; a model module only says what its components are.

A folder is saved one heavy component at a time, each freed before the next is made: SDXL's fp32 UNet
alone is 10.3 GB, and holding the whole pipeline while safetensors writes it would double the peak.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedded.model_folder import ModelFolder

SEED = 0
MODELS = Path(__file__).resolve().parent.parent / ".models"
VOCAB_SIZE = 49_408  # CLIP's, for SD 1.x's tokenizer and both of SDXL's
MAX_LENGTH = 77

# A heavy component: its pipeline name and a constructor (called under ``torch.device``), in seed order.
Factories = list[tuple[str, Callable[[], Any]]]


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


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> Any:  # noqa: S107 (a token, not a password)
    """A CLIP tokenizer of the real one's shape (prompts padded to 77 tokens either way); SDXL's second
    tokenizer pads with ``!`` instead."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    # The tokenizers backend wants merges as pairs (its annotation says strings).
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH, pad_token=pad_token)  # type: ignore[arg-type]


def make_module(make: Callable[[], Any], seed: int, device: str, dtype_name: str) -> Any:
    """One component, random weights from ``seed``, allocated where it will run (a GPU build never crosses
    the host; ``meta`` allocates nothing), cast to ``dtype_name``."""
    import torch

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    with torch.device(device):
        module = make()
    return (module if dtype == torch.float32 else module.to(dtype)).eval()


def build_components(factories: Factories, device: str = "cpu", dtype_name: str = "float32") -> dict[str, Any]:
    """Every heavy component at once (seed ``SEED + position``); the parameter-count tests use ``meta``."""
    return {name: make_module(make, SEED + offset, device, dtype_name) for offset, (name, make) in enumerate(factories)}


def parameter_counts(components: dict[str, Any]) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}


def save_component(component: Any, path: Path) -> None:
    """As ``DiffusionPipeline.save_pretrained`` saves each part: safetensors, no PEFT key prefix."""
    accepted = inspect.signature(component.save_pretrained).parameters
    options = {"safe_serialization": True, "save_peft_format": False}
    component.save_pretrained(path, **{key: value for key, value in options.items() if key in accepted})


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class RandomModel:
    """One full-size model: its heavy components, the pipeline around them, its folder and stamp."""

    title: str  # "SD 1.5", for messages
    folder: ModelFolder
    default_folder: Path
    published: dict[str, int]  # the published checkpoint's parameter count per heavy component
    factories: Callable[[], Factories]
    # The pipeline around the heavy components: tokenizers, scheduler, pipeline options.
    assemble: Callable[[dict[str, Any]], Any]

    def build_pipeline(self, device: str = "cpu", dtype_name: str = "float32") -> Any:
        """The whole pipeline in memory (small enough for SD 1.5; ``build`` never holds SDXL's at once)."""
        return self.assemble(build_components(self.factories(), device, dtype_name))

    def save(self, staging: Path, device: str, dtype_name: str) -> dict[str, Any]:
        """Write the diffusers folder into ``staging``; returns what the stamp records."""
        factories = self.factories()
        counts: dict[str, int] = {}
        build_s = save_s = 0.0
        for offset, (name, make) in enumerate(factories):
            started = time.perf_counter()
            module = make_module(make, SEED + offset, device, dtype_name)
            counts[name] = sum(p.numel() for p in module.parameters())
            saving = time.perf_counter()
            save_component(module, staging / name)
            build_s, save_s = build_s + saving - started, save_s + time.perf_counter() - saving
            del module
            _free(device)
        # The light parts and model_index.json from the pipeline assembled around shape-only stand-ins: the
        # folder diffusers' own save_pretrained would have written, without the weights in memory.
        pipe = self.assemble(build_components(factories, "meta"))
        for name, component in pipe.components.items():
            if name not in counts and component is not None:
                save_component(component, staging / name)
        pipe.save_config(staging)
        return {
            "seed": SEED,
            "device": device,
            "dtype": dtype_name,
            "parameters": counts,
            "published_parameters": self.published,
            "matches_published": counts == self.published,
            "build_s": round(build_s, 1),
            "save_s": round(save_s, 1),
        }

    def build(
        self, folder: Path, *, device: str = "cpu", dtype_name: str = "float32", force: bool = False
    ) -> dict[str, Any]:
        """Save the pipeline into ``folder`` (ours or empty; never a folder holding anything else)."""
        if self.folder.is_built(folder) and not force:
            return {"built": False, **(self.folder.stamp(folder) or {})}
        return {"built": True, **self.folder.write(folder, lambda staging: self.save(staging, device, dtype_name))}

    def main(self, argv: list[str] | None, description: str | None) -> int:
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("folder", type=Path, nargs="?", default=self.default_folder)
        parser.add_argument("--device", default="cpu", help="where to build the weights (cpu, cuda, cuda:1)")
        parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
        parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
        args = parser.parse_args(argv)
        started = time.perf_counter()
        record = self.build(args.folder, device=args.device, dtype_name=args.dtype, force=args.force)
        state = "built" if record.pop("built") else "up to date"
        print(f"{state}: {self.title} in {args.folder} ({time.perf_counter() - started:.0f} s) {json.dumps(record)}")
        return 0

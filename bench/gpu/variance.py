"""The batch-variance map: which module kinds give a sample other bits in a batch than alone.

For every UNet and text-encoder layer of the kinds in ``batch_invariance.LAYER_KINDS``, the inputs
it saw in one batched forward (8 requests: 16 UNet rows with classifier-free guidance) are replayed:

* ``alone``: row ``p`` by itself (1 row) against row ``p`` of the batched output, for every ``p``:
  what a request alone vs. at any position of a batch of 8 sees, one layer at a time;
* ``padded``: row ``p`` at position 0 of a zero-padded batch of the same size: whether a fixed-shape
  (padded) plan would be exact for that kind (the kernel is then the same, only the position moves).

Whole components (text encoders, VAE encode and decode, the UNet) are compared alone vs. batched too.
Inputs are identical in both runs, so a difference is the kernel's, never inherited from upstream.
SD and SDXL alike: ``conditioning`` gives the UNet what the family's pipeline would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def _rows(value: Any, index: torch.Tensor, batch: int) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value.index_select(0, index)
    return value


def _padded(value: Any, position: int, batch: int) -> Any:
    """Row ``position`` first, zeros after: the same shape as the batch."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        out = torch.zeros_like(value)
        out[0] = value[position]
        return out
    return value


def size_ids(unet_config: Any, side: int, pooled_width: int) -> list[float]:
    """SDXL's size conditioning of one row: the base's (original size, crop corner, target size), or the
    refiner's (original size, crop corner, aesthetic score), as the UNet's embedding width says."""
    count = (unet_config.projection_class_embeddings_input_dim - pooled_width) // unet_config.addition_time_embed_dim
    return [side, side, 0, 0, side, side] if count == 6 else [side, side, 0, 0, 6.0]


def conditioning(pipe: Any, tokens: torch.Tensor, side: int) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The UNet's text conditioning for ``tokens`` (one row each): SD's encoder states, or SDXL's two
    encoders' penultimate states side by side with the last one's pooled projection and the size ids."""
    if not hasattr(pipe, "text_encoder_2"):
        return pipe.text_encoder(tokens)[0], None
    encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]  # the refiner: the second
    outputs = [encoder(tokens, output_hidden_states=True) for encoder in encoders]
    pooled = outputs[-1].text_embeds
    ids = size_ids(pipe.unet.config, side, pooled.shape[-1])
    time_ids = torch.tensor([ids] * tokens.shape[0], device=pooled.device, dtype=pooled.dtype)
    context = torch.cat([output.hidden_states[-2] for output in outputs], dim=-1)
    return context, {"text_embeds": pooled, "time_ids": time_ids}


def text_encoder_names(pipe: Any) -> list[str]:
    return [name for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None]


def _first(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _compare(a: torch.Tensor, b: torch.Tensor) -> float:
    """0.0 when bitwise equal, else the largest absolute difference (inf when NaNs disagree)."""
    if torch.equal(a, b):
        return 0.0
    diff = (a.float() - b.float()).abs()
    return float("inf") if bool(torch.isnan(diff).any()) else float(diff.max())


class Capture:
    """Forward hooks that keep each layer's inputs for one forward pass."""

    def __init__(self, models: dict[str, torch.nn.Module], classes: dict[str, tuple[type, ...]]) -> None:
        self.calls: list[tuple[str, str, torch.nn.Module, tuple[Any, ...], dict[str, Any]]] = []
        self.handles = []
        for prefix, model in models.items():
            for name, module in model.named_modules():
                for kind, types in classes.items():
                    if isinstance(module, types) and isinstance(module, torch.nn.Module):
                        self.handles.append(
                            module.register_forward_pre_hook(self._hook(kind, f"{prefix}.{name}"), with_kwargs=True)
                        )

    def _hook(self, kind: str, name: str) -> Callable[..., None]:
        def keep(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.calls.append((kind, name, module, args, dict(kwargs)))

        return keep

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.inference_mode()
def layer_map(pipe: Any, *, requests: int = 8, size: int = 512, deadline: float = float("inf")) -> dict[str, Any]:
    """Per layer kind: layers checked, layers whose output for some row differs alone / padded."""
    from batch_invariance import layer_classes

    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    rows = 2 * requests  # classifier-free guidance: an unconditional and a conditional row per request
    generator = torch.Generator("cpu").manual_seed(0)
    tokenizer = pipe.tokenizer or pipe.tokenizer_2
    tokens = torch.randint(0, tokenizer.vocab_size, (rows, tokenizer.model_max_length), generator=generator)
    latents = torch.randn((rows, unet.config.in_channels, size // 8, size // 8), generator=generator)
    models = {name: getattr(pipe, name) for name in text_encoder_names(pipe)}
    capture = Capture({**models, "unet": unet}, layer_classes())
    try:
        text, added = conditioning(pipe, tokens.to(device), size)
        unet(latents.to(device, dtype), 500, encoder_hidden_states=text, added_cond_kwargs=added)
    finally:
        capture.close()

    kinds: dict[str, dict[str, Any]] = {}
    checked = 0
    for kind, name, module, args, kwargs in capture.calls:
        if time.monotonic() > deadline:
            break
        entry = kinds.setdefault(
            kind,
            {
                "layers": 0,
                "varies_alone": 0,
                "varies_padded": 0,
                "rerun_differs": 0,
                "max_abs_diff": 0.0,
                "first_varying": None,
                "positions_varying": [],
            },
        )
        batch = args[0].shape[0]
        full = _first(module(*args, **kwargs))
        rerun = _first(module(*args, **kwargs))
        alone_diffs, padded_diffs = [], []
        for p in range(batch):
            index = torch.tensor([p], device=args[0].device)
            alone = _first(
                module(
                    *(_rows(a, index, batch) for a in args), **{k: _rows(v, index, batch) for k, v in kwargs.items()}
                )
            )
            padded = _first(
                module(*(_padded(a, p, batch) for a in args), **{k: _padded(v, p, batch) for k, v in kwargs.items()})
            )
            alone_diffs.append(_compare(alone[0], full[p]))
            padded_diffs.append(_compare(padded[0], full[p]))
        entry["layers"] += 1
        entry["rerun_differs"] += int(not torch.equal(full, rerun))
        if any(alone_diffs):
            entry["varies_alone"] += 1
            entry["first_varying"] = entry["first_varying"] or f"{name} {tuple(args[0].shape)}"
            entry["positions_varying"] = sorted(
                set(entry["positions_varying"]) | {p for p, d in enumerate(alone_diffs) if d}
            )
        entry["varies_padded"] += int(any(padded_diffs))
        entry["max_abs_diff"] = max(entry["max_abs_diff"], *alone_diffs)
        checked += 1
    return {"layers_captured": len(capture.calls), "layers_checked": checked, "kinds": kinds}


@torch.inference_mode()
def component_map(pipe: Any, *, requests: int = 8, size: int = 512) -> dict[str, float]:
    """Whole components, request ``i`` alone vs. in a batch of ``requests``: the largest difference."""
    unet, vae, device, dtype = pipe.unet, pipe.vae, pipe.unet.device, pipe.unet.dtype
    generator = torch.Generator("cpu").manual_seed(1)
    tokenizer = pipe.tokenizer or pipe.tokenizer_2
    tokens = torch.randint(0, tokenizer.vocab_size, (requests, tokenizer.model_max_length), generator=generator)
    tokens = tokens.to(device)
    pixels = (torch.rand((requests, 3, size, size), generator=generator) * 2 - 1).to(device, dtype)
    latents = torch.randn((requests, unet.config.in_channels, size // 8, size // 8), generator=generator).to(
        device, dtype
    )

    def worst(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> float:
        together = run(batch)
        return max(_compare(run(batch[i : i + 1])[0], together[i]) for i in range(requests))

    text, added = conditioning(pipe, tokens, size)

    def encoder_states(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: getattr(pipe, name)(t)[0]

    results = {name: worst(encoder_states(name), tokens) for name in text_encoder_names(pipe)}
    # The VAE in the dtype the pipeline runs it in: SDXL's pipelines upcast a force_upcast VAE to fp32.
    upcast = hasattr(pipe, "text_encoder_2") and getattr(vae.config, "force_upcast", False)
    vae_dtype = torch.float32 if upcast else dtype
    vae.to(vae_dtype)
    try:
        results["vae_encode"] = worst(lambda x: vae.encode(x).latent_dist.mean, pixels.to(vae_dtype))
        results["vae_decode"] = worst(lambda z: vae.decode(z, return_dict=False)[0], latents.to(vae_dtype))
    finally:
        vae.to(dtype)
    # The UNet with guidance: request i is rows (i, requests + i) of the batch, rows (0, 1) alone.
    doubled = torch.cat([latents, latents])
    context = torch.cat([text, text])
    extra = {k: torch.cat([v, v]) for k, v in (added or {}).items()}
    together = unet(doubled, 500, encoder_hidden_states=context, added_cond_kwargs=extra or None).sample
    diffs = []
    for i in range(requests):
        index = torch.tensor([i, requests + i], device=device)
        alone = unet(
            doubled.index_select(0, index),
            500,
            encoder_hidden_states=context.index_select(0, index),
            added_cond_kwargs={k: v.index_select(0, index) for k, v in extra.items()} or None,
        ).sample
        diffs.append(_compare(alone, together.index_select(0, index)))
    results["unet"] = max(diffs)
    return results

"""Batch invariance: a sample's result must not depend on the batch it is computed in, bit for bit.

GEMM, convolution and attention kernels pick their algorithm (tiles, split-K, split-KV, vector
tails) from the whole problem, the batch included, so a sample rounds differently at another batch
size or position. ``batch_invariant`` makes chosen module kinds see only shapes that never change:

* ``rows=1``: one sample at a time (what the CPU needs; exact by construction, costs launches);
* ``rows=N``: always exactly ``N`` rows, zero-padded (one kernel plan per module whatever the load;
  exact where the kernel is *position*-invariant at that shape, which the GPU map measures);
* ``conv1x1_gemm`` / ``conv2d_gemm``: the 1x1 (or every) Conv2d computed as one GEMM over output
  pixels (``conv_gemm.py``), the whole batch at once: invariant where the GEMM is row-invariant, which
  pinned cuBLASLt is for every ``Linear``. A ``conv2d`` entry beside them splits only the rest.

On CUDA, ``pin_cuda_kernels`` also takes away the library choices that follow the batch (split-K
reductions, TF32, cuDNN autotuning). What each device kind needs was measured (``bench/gpu`` on an
H200; ``make bench`` and the tests on CPU): ``DEFAULT_PLANS``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Module kinds a plan can name. ``text_encoder`` and ``vae_decode`` wrap a whole component.
LAYER_KINDS = ("conv2d", "linear", "attention", "group_norm", "layer_norm")
# Convolutions rewritten as a GEMM; their rows default to 0, the whole batch in one product.
GEMM_KINDS = ("conv1x1_gemm", "conv2d_gemm")
COMPONENT_KINDS = ("text_encoder", "vae_decode")
KINDS = GEMM_KINDS + LAYER_KINDS + COMPONENT_KINDS


class InvalidPlan(ValueError):
    """An ``invariant_modules`` value that does not parse: the message names the kind and echoes the value."""


@dataclass(frozen=True)
class InvariancePlan:
    """Which module kinds run on fixed row counts (kind -> rows), and whether CUDA kernels are pinned."""

    rows: Mapping[str, int]
    pin_kernels: bool = False

    def spec(self) -> str:
        """The ``invariant_modules`` parameter value that parses back to this plan (without the pin)."""
        return ",".join(f"{kind}:{rows}" if rows else kind for kind, rows in self.rows.items())


# Measured defaults per device kind (the ``invariant_modules`` parameter's "auto").
# cpu (torch 2.13, oneDNN): GEMMs and convolutions vary with batch size and position; so does
#   attention with 2 threads once rows of other timesteps share the batch (step batching: the
#   tiny model's cross-attention moved by 1e-6, 1 thread did not); norms and the per-generator VAE
#   encode do not.
# cuda (H200, torch 2.11 + CUDA 13, cuDNN 9.19, fp16; docs/gpu.md): with kernels pinned, every Linear,
#   attention and norm layer is bit-exact alone vs. at any row of a batch of 16; 37 of 98 Conv2d are
#   not, 20 of them even at a fixed (zero-padded) shape, so padding cannot replace splitting. Byte-
#   identical end to end, and 1.4x the CPU plan's images/s at batch 8.
DEFAULT_PLANS: dict[str, InvariancePlan] = {
    "cpu": InvariancePlan({"conv2d": 1, "linear": 1, "attention": 1, "vae_decode": 1}),
    "cuda": InvariancePlan({"conv2d": 1, "vae_decode": 1}, pin_kernels=True),
}


def parse_plan(value: str, device_type: str) -> InvariancePlan:
    """``auto`` (the device kind's default) or ``kind[:rows],...``, e.g. ``conv2d:16,vae_decode``.

    Rows default to 1 (one sample at a time), or 0 (the whole batch) for the GEMM kinds."""
    value = value.strip()
    if value in ("", "auto"):
        return DEFAULT_PLANS.get(device_type, DEFAULT_PLANS["cpu"])
    rows: dict[str, int] = {}
    for item in value.split(","):
        kind, _, count = item.strip().partition(":")
        if kind not in KINDS:
            raise InvalidPlan(f"invariant_modules: unknown kind {kind!r} in {value!r} (known: {', '.join(KINDS)})")
        if kind in rows:
            raise InvalidPlan(f"invariant_modules: {kind!r} is named twice in {value!r}")
        least = 0 if kind in GEMM_KINDS else 1
        try:
            rows[kind] = int(count) if count else least
        except ValueError:
            raise InvalidPlan(f"invariant_modules: rows for {kind!r} must be an integer but is {count!r}") from None
        if not least <= rows[kind] <= 64:
            raise InvalidPlan(f"invariant_modules: rows for {kind!r} must be {least} to 64 but is {rows[kind]}")
    return InvariancePlan(rows, pin_kernels=device_type == "cuda")


_BLAS_DEFAULT: Any = None


def pin_cuda_kernels(pinned: bool = True) -> dict[str, Any]:
    """Take away (or give back) the CUDA library choices that follow the problem's batch dimension.

    cuDNN autotuning times algorithms per shape; TF32 and reduced-precision (split-K) GEMM reductions
    change the summation order with the shape. Returns what was set, for reports.
    """
    torch.backends.cudnn.benchmark = not pinned and torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = pinned
    torch.backends.cudnn.allow_tf32 = not pinned
    torch.backends.cuda.matmul.allow_tf32 = False
    matmul = torch.backends.cuda.matmul
    split_k = "unsupported"
    global _BLAS_DEFAULT
    if torch.cuda.is_available():
        if _BLAS_DEFAULT is None:
            _BLAS_DEFAULT = torch.backends.cuda.preferred_blas_library()
        # Only cuBLASLt takes the split-K switch (torch refuses it on plain cuBLAS at the first GEMM).
        torch.backends.cuda.preferred_blas_library("cublaslt" if pinned else _BLAS_DEFAULT)
    try:  # torch >= 2.10: (allow reduced precision, allow split-K)
        matmul.allow_fp16_reduced_precision_reduction = (not pinned, not pinned)
        matmul.allow_bf16_reduced_precision_reduction = (not pinned, not pinned)
        split_k = "off" if pinned else "on"
    except (TypeError, RuntimeError):
        matmul.allow_fp16_reduced_precision_reduction = not pinned
        matmul.allow_bf16_reduced_precision_reduction = not pinned
    return {
        "pinned": pinned,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "tf32": torch.backends.cudnn.allow_tf32,
        "reduced_precision_reduction": bool(matmul.allow_fp16_reduced_precision_reduction),
        "split_k": split_k,
        "blas": str(torch.backends.cuda.preferred_blas_library()),
    }


def layer_classes() -> dict[str, tuple[type, ...]]:
    from diffusers.models.attention_processor import Attention

    return {
        "conv2d": (torch.nn.Conv2d,),
        "linear": (torch.nn.Linear,),
        "attention": (Attention,),
        "group_norm": (torch.nn.GroupNorm,),
        "layer_norm": (torch.nn.LayerNorm,),
    }


def _concat(outputs: list[Any]) -> Any:
    """Stack per-chunk outputs back along the batch: tensors, tuples, and ``ModelOutput`` mappings."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, Mapping):
        return type(first)(**{key: _concat([o[key] for o in outputs]) for key in first})
    if isinstance(first, tuple):
        return type(first)(_concat(list(parts)) for parts in zip(*outputs, strict=True))
    return first


def fixed_rows(forward: Callable[..., Any], rows: int) -> Callable[..., Any]:
    """Call ``forward`` on chunks of exactly ``rows`` samples (the last one zero-padded).

    Every tensor argument whose first dimension is the batch is chunked alike (attention's
    ``encoder_hidden_states`` with its ``hidden_states``); the rest pass through.
    """

    @functools.wraps(forward)
    def chunked(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        batch = x.shape[0]
        if batch == rows:
            return forward(x, *args, **kwargs)

        def take(value: Any, start: int) -> Any:
            if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != batch:
                return value
            part = value[start : start + rows]
            if part.shape[0] < rows:
                part = torch.cat([part, part.new_zeros((rows - part.shape[0], *part.shape[1:]))])
            return part

        outputs = []
        for start in range(0, batch, rows):
            out = forward(
                take(x, start), *(take(a, start) for a in args), **{k: take(v, start) for k, v in kwargs.items()}
            )
            real = min(rows, batch - start)
            outputs.append(_trim(out, real) if real < rows else out)
        return _concat(outputs)

    chunked.__wrapped_rows__ = rows  # type: ignore[attr-defined]
    return chunked


def _trim(output: Any, rows: int) -> Any:
    if isinstance(output, torch.Tensor):
        return output[:rows]
    if isinstance(output, Mapping):
        return type(output)(**{key: _trim(value, rows) for key, value in output.items()})
    if isinstance(output, tuple):
        return type(output)(_trim(part, rows) for part in output)
    return output


def text_encoders(pipe: Any) -> list[Any]:
    """The pipeline's text encoders: SD's one, SDXL base's two, the SDXL refiner's second only."""
    return [encoder for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if encoder is not None]


def apply_plan(pipe: Any, plan: InvariancePlan) -> int:
    """Wrap the plan's module kinds in ``pipe`` (instance attributes, so ``remove_plan`` can undo it).

    Returns how many modules were wrapped. ``pin_kernels`` is process-wide and applied by the caller.
    """
    from conv_gemm import gemm_forward, is_gemm, is_pointwise, supported

    wrapped = 0
    classes = layer_classes()
    # GEMM convolutions first: a ``conv2d`` entry then splits only the convolutions they left.
    for kind, rows in sorted(plan.rows.items(), key=lambda item: item[0] not in GEMM_KINDS):
        if kind in GEMM_KINDS:
            convs = [m for m in pipe.unet.modules() if isinstance(m, torch.nn.Conv2d) and supported(m)]
            for module in convs:
                if not is_gemm(module) and (kind == "conv2d_gemm" or is_pointwise(module)):
                    forward: Callable[..., Any] = gemm_forward(module)
                    if rows:
                        forward = fixed_rows(forward, rows)
                        forward.__conv_gemm__ = True  # type: ignore[attr-defined]
                    module.forward = forward  # type: ignore[method-assign]
                    wrapped += 1
        elif kind in classes:
            for model in (pipe.unet, *text_encoders(pipe)):
                for module in model.modules():
                    if isinstance(module, classes[kind]) and not is_gemm(module):
                        module.forward = fixed_rows(module.forward, rows)  # type: ignore[method-assign]
                        wrapped += 1
        elif kind == "text_encoder":
            for encoder in text_encoders(pipe):
                encoder.forward = fixed_rows(encoder.forward, rows)
                wrapped += 1
        elif kind == "vae_decode":
            pipe.vae.decode = fixed_rows(pipe.vae.decode, rows)
            wrapped += 1
    return wrapped


def remove_plan(pipe: Any) -> None:
    """Undo ``apply_plan``: drop every wrapper (they live in instance dicts, the classes are untouched)."""
    for model in (pipe.unet, *text_encoders(pipe), pipe.vae):
        for module in model.modules():
            module.__dict__.pop("forward", None)
    pipe.vae.__dict__.pop("decode", None)

"""Convolution as one matrix product over output pixels: a batched Conv2d whose rows do not see the batch.

A convolution kernel picks its algorithm (tiles, split reductions, Winograd) from the whole problem,
the batch included, so a sample's pixels round differently at another batch size or position; running
every Conv2d one sample at a time (``conv2d:1``) fixes that at half the GPU's throughput. Written as a
GEMM instead, each output pixel is one row: ``cols[N*H*W, kh*kw*C] @ weight[kh*kw*C, K]``, and a GEMM
whose reduction is not split (cuBLASLt with split-K off, ``pin_cuda_kernels``) reduces every row in the
same order whatever the number of rows. That is the property every pinned ``Linear`` already showed
bit-exact on the H200 (docs/gpu.md); whether it holds for these shapes is what the GPU command's design
phase checks by bytes.

* a 1x1 convolution (46 of SD 1.5's 98 UNet convolutions) is that GEMM with no copy at all;
* a k x k one builds its columns from k*k shifted views of the zero-padded channels-last input (one
  copy of k*k times the input, no ``unfold`` transpose), then the same GEMM.

Only ordinary convolutions are taken (groups 1, dilation 1, zero padding); anything else keeps its own
forward. The result is as close to ``F.conv2d`` as another summation order is (tests: fp32 atol 1e-4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own spelling)


def supported(conv: torch.nn.Conv2d) -> bool:
    """An ordinary convolution: one group, no dilation, zero (or no) padding given as numbers."""
    return (
        conv.groups == 1
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def is_pointwise(conv: torch.nn.Conv2d) -> bool:
    return tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (0, 0)


def columns(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """``[N*Ho*Wo, kh*kw*C]``: each output pixel's receptive field, taps outer and channels inner."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    nhwc = x.permute(0, 2, 3, 1)
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return nhwc.reshape(n * h * w, c)
    padded = F.pad(nhwc, (0, 0, pw, pw, ph, ph))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    taps = [
        padded[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return torch.cat(taps, dim=-1).reshape(n * ho * wo, kh * kw * c)


def conv2d_gemm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` as one 2-D GEMM over output pixels (NCHW out)."""
    n, _, h, w = x.shape
    k, c, kh, kw = weight.shape
    stride, padding = tuple(stride), tuple(padding)
    cols = columns(x, (kh, kw), stride, padding)
    # Taps outer, channels inner, as ``columns`` lays them out.
    matrix = weight.permute(0, 2, 3, 1).reshape(k, kh * kw * c).t()
    out = torch.addmm(bias, cols, matrix) if bias is not None else torch.mm(cols, matrix)
    ho, wo = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    # Contiguous NCHW, as F.conv2d gives it: the layers after it see the layout they always saw.
    return out.view(n, ho, wo, k).permute(0, 3, 1, 2).contiguous()


def gemm_forward(conv: torch.nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``forward`` for ``conv`` that computes it as ``conv2d_gemm`` (marked, so plans can see it)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return conv2d_gemm(x, conv.weight, conv.bias, conv.stride, conv.padding)

    forward.__conv_gemm__ = True  # type: ignore[attr-defined]
    return forward


def is_gemm(module: torch.nn.Module) -> bool:
    return bool(getattr(module.__dict__.get("forward"), "__conv_gemm__", False))

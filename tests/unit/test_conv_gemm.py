"""Convolution as a GEMM over output pixels (``conv_gemm.py``) and the plan kinds that use it, on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from batch_invariance import apply_plan, parse_plan, remove_plan
from conv_gemm import columns, conv2d_gemm, is_gemm, supported

SHAPES = [
    # (in, out, kernel, stride, padding, side): SD's 1x1 shortcut/projection, 3x3, stride-2 downsampler,
    # conv_in (4 channels), a non-square padding and an odd side.
    (32, 48, 1, 1, 0, 16),
    (32, 32, 3, 1, 1, 16),
    (32, 32, 3, 2, 1, 15),
    (4, 32, 3, 1, 1, 8),
    (8, 16, 3, 1, 0, 9),
]


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "padding", "side"), SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_convolution_matches_conv2d(
    c_in: int, c_out: int, kernel: int, stride: int, padding: int, side: int, bias: bool
) -> None:
    generator = torch.Generator().manual_seed(c_in * kernel + side)
    x = torch.randn(3, c_in, side, side, generator=generator)
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=generator)
    b = torch.randn(c_out, generator=generator) if bias else None
    got = conv2d_gemm(x, weight, b, (stride, stride), (padding, padding))
    expected = F.conv2d(x, weight, b, stride, padding)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_columns_lay_taps_outer_and_channels_inner() -> None:
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    cols = columns(x, (3, 3), (1, 1), (1, 1))
    assert cols.shape == (9, 18)
    centre = cols[4].reshape(9, 2)  # the middle pixel sees the whole image: tap (i, j) is pixel (i, j)
    assert torch.equal(centre[:, 0], x[0, 0].flatten()) and torch.equal(centre[:, 1], x[0, 1].flatten())
    assert torch.equal(cols[0].reshape(9, 2)[0], torch.zeros(2))  # the corner's first tap is padding


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "padding", "side"), SHAPES[:3])
def test_a_sample_gives_the_same_bits_alone_and_at_every_position_of_a_batch(
    c_in: int, c_out: int, kernel: int, stride: int, padding: int, side: int
) -> None:
    """What the GEMM form is for: the GPU's design phase checks it there; on this CPU it holds too."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, c_in, side, side, generator=generator)
    weight, b = torch.randn(c_out, c_in, kernel, kernel, generator=generator), torch.randn(c_out, generator=generator)
    batched = conv2d_gemm(x, weight, b, (stride, stride), (padding, padding))
    for i in range(8):
        assert torch.equal(conv2d_gemm(x[i : i + 1], weight, b, (stride, stride), (padding, padding))[0], batched[i])


def test_gemm_kinds_parse_to_the_whole_batch_and_round_trip() -> None:
    plan = parse_plan("conv1x1_gemm,conv2d:1,vae_decode", "cuda")
    assert dict(plan.rows) == {"conv1x1_gemm": 0, "conv2d": 1, "vae_decode": 1} and plan.pin_kernels
    assert parse_plan(plan.spec(), "cuda") == plan
    assert parse_plan("conv2d_gemm:16", "cpu").rows == {"conv2d_gemm": 16}
    with pytest.raises(ValueError, match="rows for 'conv2d' must be 1 to 64 but is 0"):
        parse_plan("conv2d:0", "cpu")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pointwise = torch.nn.Conv2d(4, 8, 1)
        self.spatial = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)  # not an ordinary convolution: left alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grouped(self.spatial(self.pointwise(x)))


def _pipe() -> SimpleNamespace:
    return SimpleNamespace(unet=_Net(), text_encoder=torch.nn.Sequential(), vae=torch.nn.Sequential())


def test_gemm_1x1_leaves_the_rest_to_the_per_sample_split_and_remove_plan_undoes_both() -> None:
    pipe = _pipe()
    x = torch.randn(3, 4, 6, 6)
    expected = pipe.unet(x)
    wrapped = apply_plan(pipe, parse_plan("conv1x1_gemm,conv2d:1", "cpu"))
    assert wrapped == 3  # the 1x1 as a GEMM; the 3x3 and the grouped one split per sample
    assert is_gemm(pipe.unet.pointwise) and not is_gemm(pipe.unet.spatial)
    assert pipe.unet.spatial.forward.__wrapped_rows__ == 1
    torch.testing.assert_close(pipe.unet(x), expected, atol=1e-5, rtol=1e-5)
    remove_plan(pipe)
    assert "forward" not in pipe.unet.pointwise.__dict__ and "forward" not in pipe.unet.spatial.__dict__


def test_gemm_conv_takes_every_ordinary_convolution() -> None:
    pipe = _pipe()
    assert not supported(pipe.unet.grouped)
    assert apply_plan(pipe, parse_plan("conv2d_gemm", "cpu")) == 2
    assert is_gemm(pipe.unet.pointwise) and is_gemm(pipe.unet.spatial) and not is_gemm(pipe.unet.grouped)


def test_rectangular_kernels_strides_and_paddings_keep_height_and_width_apart() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 11, 7, generator=generator)
    weight = torch.randn(5, 6, 3, 1, generator=generator)
    got = conv2d_gemm(x, weight, None, (2, 1), (1, 0))
    torch.testing.assert_close(got, F.conv2d(x, weight, None, (2, 1), (1, 0)), atol=1e-4, rtol=1e-4)

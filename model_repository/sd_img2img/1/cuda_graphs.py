"""CUDA graphs for the UNet: one captured graph per input shape, replayed instead of ~1,500 launches.

Eager SD 1.5 on a fast GPU is launch-bound: Python and the dispatcher spend longer issuing a step's
kernels than the GPU spends running them (measured on an H200: docs/gpu.md). A graph replays the
kernels it captured, the same ones eager would launch for that shape, so results are the same bits;
batch-invariance wrappers inside are captured too, which makes their extra launches nearly free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    sample: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    output: torch.Tensor


class GraphedUNet:
    """Stands in for ``unet.forward``; anything but the plain (sample, t, context) call runs eagerly."""

    def __init__(self, forward: Callable[..., Any], warmup_runs: int = 2) -> None:
        self.forward = forward
        self.warmup_runs = warmup_runs
        self.graphs: dict[tuple[Any, ...], _Captured] = {}

    def __call__(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        return_dict = kwargs.pop("return_dict", True)
        if args or any(value is not None for value in kwargs.values()) or not sample.is_cuda:
            return self.forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        timestep = torch.as_tensor(timestep, device=sample.device)
        key = (tuple(sample.shape), tuple(encoder_hidden_states.shape), sample.dtype, timestep.dtype, timestep.ndim)
        captured = self.graphs.get(key) or self.capture(key, sample, timestep, encoder_hidden_states)
        captured.sample.copy_(sample)
        captured.timestep.copy_(timestep)
        captured.context.copy_(encoder_hidden_states)
        captured.graph.replay()
        output = captured.output.clone()  # the static output is overwritten by the next replay
        if not return_dict:
            return (output,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=output)

    def capture(
        self, key: tuple[Any, ...], sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> _Captured:
        static = (sample.clone(), timestep.clone(), context.clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture: lazy initialisations, workspaces
            for _ in range(self.warmup_runs):
                self.forward(*static, return_dict=False)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.forward(*static, return_dict=False)[0]
        captured = _Captured(graph, *static, output)
        self.graphs[key] = captured
        return captured

"""CUDA graphs for the UNet: a few captured graphs, replayed instead of ~1,500 launches per forward.

Eager SD 1.5 on a fast GPU is launch-bound: Python and the dispatcher spend longer issuing a step's
kernels than the GPU spends running them (measured on an H200: docs/gpu.md). A graph replays the
kernels it captured, the same ones eager would launch for that shape, so results are the same bits;
batch-invariance wrappers inside are captured too, which makes their extra launches nearly free.

What keeps it safe in a server:

* **the instance's own device**: capture, its side stream and replay run on the device of the
  tensors (``torch.cuda.device``), never on the process's default one (a second GPU's instance
  would otherwise capture on ``cuda:0``);
* **a bounded cache**: row counts are padded up to a bucket (``row_buckets``: 1, 2, 3, 4, 6, 8, ...
  up to the rows in flight, so a forward pads by at most half), zero rows that the batch-invariant
  plan keeps from touching the real ones, so a handful of graphs, sharing one memory pool, serve
  every load; at most ``max_graphs``, least recently used out;
* **captured at load** (``capture``) for the shapes the model will see, not inside a live request;
* **eager on failure**: a shape whose capture fails runs eagerly from then on, with one log line.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Rows per UNet forward that get their own graph (model.py derives them from max_rows_in_flight).
DEFAULT_ROW_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # row_buckets(32)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    sample: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    output: torch.Tensor


def row_buckets(max_rows: int) -> tuple[int, ...]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ...: every row count pads by at most half, up to ``max_rows``."""
    buckets = sorted({b for i in range(12) for b in (2**i, 3 * 2**i // 2) if b >= 1})
    return tuple(b for b in buckets if b < max_rows) + (max_rows,)


def bucket_rows(rows: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds ``rows``; None above the largest (that forward runs eagerly)."""
    at = bisect.bisect_left(buckets, rows)
    return buckets[at] if at < len(buckets) else None


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))])


class GraphedUNet:
    """Stands in for ``unet.forward``; anything but the plain (sample, t, context) call runs eagerly."""

    def __init__(
        self,
        forward: Callable[..., Any],
        *,
        row_buckets: Sequence[int] = DEFAULT_ROW_BUCKETS,
        max_graphs: int = 16,
        warmup_runs: int = 2,
        log: Callable[[str], None] = print,
    ) -> None:
        self.forward = forward
        self.row_buckets = tuple(sorted(row_buckets))
        self.max_graphs = max_graphs
        self.warmup_runs = warmup_runs
        self.log = log
        self.graphs: OrderedDict[tuple[Any, ...], _Captured] = OrderedDict()
        self.failed: set[tuple[Any, ...]] = set()
        # One memory pool for every graph: they replay one at a time and each output is cloned at once.
        self.pools: dict[torch.device, Any] = {}

    @staticmethod
    def key(sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, rows: int) -> tuple[Any, ...]:
        return (rows, *sample.shape[1:], *context.shape[1:], sample.dtype, timestep.dtype, timestep.ndim, sample.device)

    def __call__(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        return_dict = kwargs.pop("return_dict", True)
        timestep = torch.as_tensor(timestep, device=sample.device)
        rows = bucket_rows(sample.shape[0], self.row_buckets)
        eager = args or any(value is not None for value in kwargs.values()) or not sample.is_cuda
        if eager or rows is None or (timestep.ndim == 1 and timestep.shape[0] != sample.shape[0]):
            return self.forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        key = self.key(sample, timestep, encoder_hidden_states, rows)
        captured = self.graphs.get(key)
        if captured is None and key not in self.failed:
            captured = self._capture(key, sample, timestep, encoder_hidden_states, rows)
        if captured is None:
            return self.forward(sample, timestep, encoder_hidden_states, return_dict=return_dict)
        self.graphs.move_to_end(key)
        output = self._replay(captured, sample, timestep, encoder_hidden_states)
        if not return_dict:
            return (output,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=output)

    def _replay(
        self, captured: _Captured, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        rows, real = captured.sample.shape[0], sample.shape[0]
        with torch.cuda.device(sample.device):
            captured.sample.copy_(pad_rows(sample, rows))
            captured.timestep.copy_(pad_rows(timestep, rows) if timestep.ndim == 1 else timestep)
            captured.context.copy_(pad_rows(context, rows))
            captured.graph.replay()
            return captured.output[:real].clone()  # the static output is overwritten by the next replay

    def capture(self, shapes: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> int:
        """At load: capture a graph per bucket for each example (sample, timestep, context) given, on
        the examples' device. Returns how many were captured (a failure logs and stays eager)."""
        done = 0
        for sample, timestep, context in shapes:
            for rows in self.row_buckets:  # _capture pads the example to each bucket
                key = self.key(sample, timestep, context, rows)
                if key not in self.graphs and key not in self.failed:
                    done += self._capture(key, sample, timestep, context, rows) is not None
        return done

    def _capture(
        self, key: tuple[Any, ...], sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, rows: int
    ) -> _Captured | None:
        device = sample.device
        try:
            with torch.cuda.device(device):
                static = (
                    pad_rows(sample, rows).clone(),
                    (pad_rows(timestep, rows) if timestep.ndim == 1 else timestep).clone(),
                    pad_rows(context, rows).clone(),
                )
                side = torch.cuda.Stream(device=device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):  # warm-up outside capture: lazy initialisations, workspaces
                    for _ in range(self.warmup_runs):
                        self.forward(*static, return_dict=False)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                pool = self.pools.setdefault(device, torch.cuda.graph_pool_handle())
                with torch.cuda.graph(graph, pool=pool):
                    output = self.forward(*static, return_dict=False)[0]
        except Exception as exc:  # noqa: BLE001 (any capture failure: this shape runs eagerly)
            self.failed.add(key)
            self.log(
                f"cuda_graphs: capture of {rows} rows {tuple(sample.shape[1:])} on {device} failed, eager: {exc!r}"
            )
            return None
        captured = _Captured(graph, *static, output)
        self.graphs[key] = captured
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return captured

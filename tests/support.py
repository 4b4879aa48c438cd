"""Shared test helpers: free ports, images, starting tritonserver and the frontend as real processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedded.frontend_process import API_KEYS, WEBHOOK_SECRET, Frontend
from embedded.triton_server import EmbeddedTriton, free_port

__all__ = ["API_KEYS", "WEBHOOK_SECRET", "Frontend", "free_port", "random_image", "start_triton"]


def random_image(size: tuple[int, int] = (64, 64), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def start_triton(model_repository: Path, model_path: Path) -> EmbeddedTriton:
    return EmbeddedTriton.on_free_ports(model_repository, model_path, ready_timeout_s=240).start()

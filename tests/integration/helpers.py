"""Helpers for tests against the real tritonserver."""

from __future__ import annotations

import socket

import numpy as np

from embedded.triton_calls import Answer, Caller, Img2Img

__all__ = ["Answer", "Caller", "Img2Img", "free_port", "random_image"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def random_image(size: tuple[int, int] = (64, 64), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)

"""What each output encoding costs per image: encode time (the frontend's own ``encode_images``) and size.

Measured on two kinds of image at the benchmark size and at 512x512: a smooth photo-like image (what a
real checkpoint returns) and noise (what the tiny random-weight model returns; the worst case for PNG).
The shipped PNG level is the one with the least encode time + time to send at ``LINK_MBIT_S``.
"""

from __future__ import annotations

import base64
import statistics
import time
from typing import Any

import numpy as np

from bench.workload import Workload
from frontend.images import encode_images

LINK_MBIT_S = 100.0  # a client's link to us; on a LAN (1 Gbit/s+) the fastest encoder wins outright
FORMATS = [("png", 0), ("png", 1), ("png", 3), ("png", 6), ("png", 9), ("jpeg", 90), ("webp", 90)]


def _sample_images(size: int) -> dict[str, np.ndarray]:
    smooth = Workload(size=size, variants=1).images()[0]
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"smooth": smooth, "noise": noise}


def _time_ms(action: Any, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure(sizes: tuple[int, ...] = (64, 512)) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        repeats = 30 if size <= 128 else 7
        for kind, array in _sample_images(size).items():
            batch = array[np.newaxis]
            for fmt, quality in FORMATS:
                level = quality if fmt == "png" else 1
                options = {"png_level": level, "jpeg_quality": quality, "webp_quality": quality}
                encoded = encode_images(batch, fmt, **options)[0]
                kib = len(base64.b64decode(encoded)) / 1024
                encode_ms = _time_ms(
                    lambda batch=batch, fmt=fmt, options=options: encode_images(batch, fmt, **options), repeats
                )
                send_ms = len(encoded) * 8 / (LINK_MBIT_S * 1e6) * 1000  # base64 bytes on the wire
                rows.append(
                    {
                        "size": size,
                        "image": kind,
                        "format": f"{fmt} {'level' if fmt == 'png' else 'q'}{quality}",
                        "png_level": quality if fmt == "png" else None,
                        "encode_ms": encode_ms,
                        "kib": kib,
                        "send_ms": send_ms,
                    }
                )
    return rows


def best_png_level(rows: list[dict[str, Any]], size: int = 512, image: str = "smooth") -> int:
    """The PNG level with the least encode + send time for a real-looking output at ``size``."""
    candidates = [r for r in rows if r["png_level"] is not None and r["size"] == size and r["image"] == image]
    return int(min(candidates, key=lambda r: r["encode_ms"] + r["send_ms"])["png_level"])


if __name__ == "__main__":
    measured = measure()
    for row in measured:
        print(row)
    print("best PNG level:", best_png_level(measured))

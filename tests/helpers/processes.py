"""Helpers for tests that run ``make`` targets as a user would: wait until ready, then Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp


async def wait_ready(http: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            async with http.get(f"{url}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"make serve did not become ready:\n{log.read_text(errors='replace')[-3000:]}")


def interrupt(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Ctrl-C to make's whole session, as a terminal sends it; SIGKILL if it does not stop in time."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

"""Helpers for the backend-fault and soak groups: ``make serve``'s stack as a process, timed requests,
the Triton processes (server and Python stub) found with psutil."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from embedded.triton_server import REPO_ROOT, free_port, stub_model

from ..helpers.support import Frontend, request_body

STUB_NAME = "triton_python_backend_stub"


@dataclass
class Outcome:
    started: float  # time.monotonic()
    latency_s: float
    status: int  # -1: no HTTP answer (client timeout or connection error)
    code: str | None = None  # error.code of an error answer
    retry_after: str | None = None
    clean: bool = False  # 200/202 with the expected body, or a JSON error answer with a code
    detail: str = ""


async def post_predict(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float, *, accepted: int = 200
) -> Outcome:
    started = time.monotonic()
    try:
        async with http.post(
            f"{url}/predict", data=request_body(json.dumps(body)), timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            text = await response.text()
            status, retry_after = response.status, response.headers.get("Retry-After")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Outcome(started, time.monotonic() - started, -1, detail=f"{type(exc).__name__}: {exc}")
    latency = time.monotonic() - started
    try:
        answer = json.loads(text)
    except ValueError:
        return Outcome(started, latency, status, retry_after=retry_after, detail=text[:200])
    if status == accepted:
        clean = "result" in answer if accepted == 200 else answer.get("status") == "queued"
        return Outcome(started, latency, status, clean=clean, detail="" if clean else text[:200])
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    # A clean refusal: a JSON error with a code; 503s also say when to come back.
    clean = code is not None and status in (503, 504) and (status != 503 or retry_after is not None)
    return Outcome(started, latency, status, code, retry_after, clean, text[:200])


def by_status(outcomes: list[Outcome]) -> dict[str, int]:
    counts = Counter("no answer" if o.status == -1 else str(o.status) for o in outcomes)
    return dict(sorted(counts.items()))


async def get_status(http: aiohttp.ClientSession, url: str, timeout_s: float = 10) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            await response.read()
            return response.status
    except (TimeoutError, aiohttp.ClientError):
        return -1


async def wait_status(http: aiohttp.ClientSession, url: str, status: int, timeout_s: float) -> float:
    """Seconds until ``GET url`` answers ``status`` (polled every 0.2 s); raises TimeoutError."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await get_status(http, url) == status:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s} s")


@dataclass
class Stack:
    """``python -m embedded.stack`` (what ``make serve`` runs: tritonserver, its supervisor, the frontend)."""

    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.frontend = Frontend(self.workdir / "data", f"127.0.0.1:{self.grpc_port}", self.settings)

    @property
    def url(self) -> str:
        return self.frontend.url

    @property
    def triton_http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "stack.log"

    def start(self) -> Stack:
        env = self.frontend.environment()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "embedded.stack",
                    f"--triton-http-port={self.http_port}",
                    f"--triton-grpc-port={self.grpc_port}",
                    f"--triton-metrics-port={self.metrics_port}",
                    *self.extra_args,
                ],
                cwd=self.workdir,  # its .build/triton.log goes there
                env=env,
                stdout=log,
                stderr=log,
            )
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def model_stubs(self) -> list[psutil.Process]:
        """The Python stubs of sd_img2img under this stack (one per tritonserver)."""
        return [p for p in self.children(STUB_NAME) if stub_model(p.cmdline()) == "sd_img2img"]

    def children(self, name: str) -> list[psutil.Process]:
        assert self.process is not None
        try:
            return [p for p in psutil.Process(self.process.pid).children(recursive=True) if p.name() == name]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for child in self.children("tritonserver"):
                    child.kill()
                self.process.kill()
                self.process.wait()


def triton_processes(server_pid: int) -> dict[str, psutil.Process]:
    """tritonserver and the Python stub of sd_img2img (sd_img2img_progress has one of its own)."""
    server = psutil.Process(server_pid)
    found = {"tritonserver": server}
    for child in server.children(recursive=True):
        if stub_model(child.cmdline()) == "sd_img2img":
            found["stub"] = child
    return found

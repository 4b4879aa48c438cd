"""Shared test helpers: free ports, images, starting tritonserver and the frontend as real processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedded.triton_server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, EmbeddedTriton


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def random_image(size: tuple[int, int] = (64, 64), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def start_triton(model_repository: Path, model_path: Path) -> EmbeddedTriton:
    return EmbeddedTriton(
        model_repository=model_repository,
        model_path=model_path,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        ready_timeout_s=240,
    ).start()


def copy_repository(destination: Path, replacements: dict[str, str]) -> Path:
    """The shipped model repository with some config.pbtxt lines changed (tests of other settings)."""
    repository = destination / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repository, ignore=shutil.ignore_patterns("__pycache__"))
    config = repository / "sd_img2img" / "config.pbtxt"
    text = config.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return repository


WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
API_KEYS = ("sk-test-alpha-0123456789", "sk-test-beta-9876543210")


@dataclass
class Frontend:
    """``python -m frontend`` as a child process with ``SD_*`` settings, on a free port."""

    data_dir: Path
    triton_grpc_url: str
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SD_")}
        env.update(
            SD_PORT=str(self.port),
            SD_DATA_DIR=str(self.data_dir),
            SD_TRITON_URL=self.triton_grpc_url,
            SD_API_KEYS=",".join(API_KEYS),
            SD_WEBHOOK_SECRET=WEBHOOK_SECRET,
            SD_ALLOW_PRIVATE_NETWORKS="127.0.0.1/32",
            SD_WEBHOOK_RETRY_BASE_S="0.2",
            SD_WEBHOOK_POLL_S="0.2",
            SD_ASYNC_RETRY_WINDOW_S="0",
        )
        env.update(self.settings)
        return env

    def start(self, timeout_s: float = 60) -> Frontend:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"frontend-{self.port}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "frontend"], cwd=REPO_ROOT, env=self.environment(), stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"frontend exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"frontend did not start:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

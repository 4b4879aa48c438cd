"""The frontend (``python -m frontend``) as a child process: one launcher for tests, benchmarks and
``make serve-replicas`` (``start_all`` / ``stop_all`` start and stop several side by side)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from embedded.lifecycle import spawn_server
from embedded.triton_server import REPO_ROOT, free_port

# Fixed test credentials (never used outside tests and benchmarks).
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105
API_KEYS = ("sk-test-alpha-0123456789", "sk-test-beta-9876543210")
# What a test or benchmark frontend runs with unless it says otherwise: the fixed credentials, loopback
# webhooks and file_urls allowed (the tests' receivers listen there), fast webhook retries, no async retry.
TEST_SETTINGS: Mapping[str, str] = {
    "SD_API_KEYS": ",".join(API_KEYS),
    "SD_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "SD_ALLOW_PRIVATE_NETWORKS": "127.0.0.1/32",
    "SD_WEBHOOK_RETRY_BASE_S": "0.2",
    "SD_WEBHOOK_POLL_S": "0.2",
    "SD_ASYNC_RETRY_WINDOW_S": "0",
}


class FrontendStartError(RuntimeError):
    """The frontend exited or did not answer /healthz in time; the message carries its log."""


def own_settings() -> dict[str, str]:
    """This process's ``SD_*`` environment: the base of a frontend a person runs (``make serve-replicas``)."""
    return {name: value for name, value in os.environ.items() if name.startswith("SD_")}


@dataclass
class Frontend:
    """``python -m frontend`` as a child process on ``port`` (a free one by default).

    Its ``SD_*`` environment is ``base`` (the test settings unless given), then ``settings``; nothing else
    of ours leaks in. It logs to ``log_path`` (default: ``data_dir/frontend-PORT.log``).
    """

    data_dir: Path
    triton_grpc_url: str
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    base: Mapping[str, str] = field(default_factory=lambda: TEST_SETTINGS)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SD_")}
        env.update(self.base)
        env.update(SD_PORT=str(self.port), SD_DATA_DIR=str(self.data_dir), SD_TRITON_URL=self.triton_grpc_url)
        env.update(self.settings)
        return env

    def start(self, timeout_s: float = 60) -> Frontend:
        return self.launch().wait_ready(timeout_s)

    def launch(self) -> Frontend:
        """Start the process without waiting (several replicas start side by side)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path is None:
            self.log_path = self.data_dir / f"frontend-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = spawn_server(
                [sys.executable, "-m", "frontend"], cwd=REPO_ROOT, env=self.environment(), stdout=log, stderr=log
            )
        return self

    def wait_ready(self, timeout_s: float = 60) -> Frontend:
        assert self.process is not None and self.log_path is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise FrontendStartError(f"frontend exited with {code}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:  # noqa: S310 - http://127.0.0.1
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise FrontendStartError(f"frontend did not start:\n{self.log_path.read_text()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        stop_all([self], sig, timeout_s)

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


def start_all(frontends: Iterable[Frontend], timeout_s: float = 60) -> list[Frontend]:
    """Launch every frontend, then wait for each: replicas start side by side, not one after another."""
    launched = [frontend.launch() for frontend in frontends]
    try:
        return [frontend.wait_ready(timeout_s) for frontend in launched]
    except BaseException:
        stop_all(launched)
        raise


def stop_all(frontends: Iterable[Frontend], sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    """``sig`` to every running frontend (a stopped one is continued first, so it can act on it), then wait
    for each: they drain side by side. SIGKILL any still running after ``timeout_s``."""
    running = [frontend for frontend in frontends if frontend.running]
    for frontend in running:
        assert frontend.process is not None
        frontend.process.send_signal(sig)
        if sig != signal.SIGKILL:
            frontend.process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + timeout_s
    for frontend in running:
        assert frontend.process is not None
        try:
            frontend.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            frontend.process.kill()
            frontend.process.wait()

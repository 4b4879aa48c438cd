"""The frontend (``python -m frontend``) as a child process on a free port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from embedded.lifecycle import spawn_server
from embedded.triton_server import REPO_ROOT, free_port

# Fixed test credentials (never used outside tests and benchmarks).
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105
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
        return self.launch().wait_ready(timeout_s)

    def launch(self) -> Frontend:
        """Start the process without waiting (several replicas start side by side)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"frontend-{self.port}.log"
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
                raise RuntimeError(f"frontend exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:  # noqa: S310 - http://127.0.0.1
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

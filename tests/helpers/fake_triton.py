"""A stand-in for ``EmbeddedTriton`` as the supervisor uses it: a process to poll, stop and start, a log."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeProcess:
    pid: int = 4242
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class FakeTriton:
    """Records ``stop <timeout>`` and ``start``; a start gives a new, running process and a fresh log."""

    http_url: str = "127.0.0.1:1"
    host: str = "127.0.0.1"
    metrics_port: int = 2
    process: FakeProcess = field(default_factory=FakeProcess)
    events: list[str] = field(default_factory=list)
    log: str = ""

    def log_tail(self) -> str:
        return self.log

    def stop(self, timeout_s: float = 30.0) -> None:
        self.events.append(f"stop {timeout_s:g}")

    def start(self) -> FakeTriton:
        self.process = FakeProcess(pid=self.process.pid + 1)
        self.log = "ready again\n"
        self.events.append("start")
        return self

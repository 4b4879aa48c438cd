"""Keep the embedded tritonserver serving: restart it on evidence of death, never because it is busy.

Triton 2.51 never restarts a crashed Python-backend stub and keeps ``/v2/health/{live,ready}`` at 200
while every inference fails. In production the orchestrator restarts the container on the liveness
probe (``docker/triton_canary.py``); ``make serve`` has no orchestrator, so this thread applies the same
rules (``triton_canary.Liveness``, imported from that stdlib-only file) and restarts ``tritonserver``
on the same ports:

- at once when the process has exited or its Python stub is gone (checked every ``exit_poll_s``), or
  a canary gets the stub's "not healthy" error;
- after ``failures_to_restart`` failed probes in a row (one every ``interval_s``) when the server does
  not answer, or when work has waited ``stall_s`` with no progress at all (no denoising step, no
  finished batch). A canary that waits behind a long batch is not a failure: a full-size model on a
  CPU holds the stub for minutes per batch, and the stub answers nothing else meanwhile.

Restarts in a row that do not bring a passing probe wait ``backoff_s``, doubling up to ``max_backoff_s``.
A restart instead of a model reload through the repository API (explicit model control): both take the
model's load time (measured with the tiny model: 6.7 s reload vs 6.8 s restart), but only a restart also
covers a dead server, and it needs no change of model-control mode.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from embedded.triton_server import REPO_ROOT, EmbeddedTriton, TritonStartError

log = logging.getLogger("embedded.supervisor")


def load_canary() -> ModuleType:
    """docker/triton_canary.py (stdlib only, copied into the Triton image): one set of rules for both places."""
    spec = importlib.util.spec_from_file_location("triton_canary", REPO_ROOT / "docker" / "triton_canary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


canary = load_canary()


@dataclass
class Restart:
    reason: str
    at: float  # time.monotonic() when the fault was seen
    ready_after_s: float | None = None  # None: this attempt failed


@dataclass
class Supervisor:
    triton: EmbeddedTriton
    interval_s: float = 5.0
    probe_timeout_s: float = 15.0  # how long one canary waits; no answer in time is "busy", not a failure
    stall_s: float = 600.0  # longest wait without any progress while work is queued
    failures_to_restart: int = 3
    stop_grace_s: float = 5.0
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    exit_poll_s: float = 0.5  # how soon a dead process or stub is seen
    model: str = "sd_img2img"
    report: Callable[[str], None] = log.warning
    # Called with the reason just before a restart, while the dead server's log is still the last one.
    before_restart: Callable[[str], None] = lambda reason: None
    restarts: list[Restart] = field(default_factory=list)
    verdicts: list[Any] = field(default_factory=list)  # every probe's canary.Verdict, for tests and logs
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _liveness: Any = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def liveness(self) -> Any:
        """The rules for the server as it runs now (a restart gives it a new pid and a fresh memory)."""
        pid = None if self.triton.process is None else self.triton.process.pid
        if self._liveness is None or self._liveness.server_pid != pid:
            self._liveness = canary.Liveness(
                self.triton.http_url,
                f"{self.triton.host}:{self.triton.metrics_port}",
                self.model,
                canary_timeout_s=self.probe_timeout_s,
                stall_s=self.stall_s,
                server_pid=pid,
            )
        return self._liveness

    def died(self) -> str | None:
        """Why the server is dead beyond doubt (process exited, stub gone), or None; cheap, so checked often."""
        process = self.triton.process
        if process is None or process.poll() is not None:
            return f"tritonserver exited (code {None if process is None else process.returncode})"
        if canary.stub_state(self.model, process.pid) == "gone":
            return f"the Python stub of {self.model} is gone"
        return None

    def check(self) -> tuple[str | None, bool]:
        """(failure or None, fatal): one probe by the liveness rules, cut short when the server dies meanwhile."""
        result: list[Any] = []
        probe = threading.Thread(
            target=lambda: result.append(self.liveness().judge()), name="triton-probe", daemon=True
        )
        probe.start()
        while probe.is_alive():
            probe.join(self.exit_poll_s)
            died = self.died()
            if died:
                return died, True
        if not result:
            return "the probe raised", False
        verdict = result[0]
        self.verdicts.append(verdict)
        return (None, False) if verdict.alive else (verdict.reason, verdict.fatal)

    def _run(self) -> None:
        failures = 0
        attempts = 0  # restarts since the last passing probe
        next_probe = time.monotonic() + self.interval_s
        while not self._stopping.wait(self.exit_poll_s):
            # A dead process or stub is seen within exit_poll_s; a probe runs every interval_s (1 s after a failure).
            died = self.died()
            if died is None and time.monotonic() < next_probe:
                continue
            failure, fatal = (died, True) if died else self.check()
            next_probe = time.monotonic() + (self.interval_s if failure is None else min(self.interval_s, 1.0))
            if failure is None:
                failures = attempts = 0
                continue
            failures += 1
            if not fatal and failures < self.failures_to_restart:
                self.report(f"tritonserver probe failed ({failures}/{self.failures_to_restart}): {failure}")
                continue
            if attempts:
                delay = min(self.backoff_s * 2 ** (attempts - 1), self.max_backoff_s)
                self.report(f"restart {attempts} did not bring it back; next one in {delay:.0f} s")
                if self._stopping.wait(delay):
                    return
            attempts += 1
            failures = 0
            self._restart(failure, graceful=not fatal)
            next_probe = time.monotonic() + self.interval_s

    def _restart(self, reason: str, *, graceful: bool) -> None:
        seen = time.monotonic()
        record = Restart(reason, seen)
        self.restarts.append(record)
        self.report(f"restarting tritonserver: {reason[:300]}")
        self.before_restart(reason)
        # A server with a dead stub never finishes a graceful stop (it waits for the stub): kill it.
        self.triton.stop(timeout_s=self.stop_grace_s if graceful else 0)
        if self._stopping.is_set():
            return
        try:
            self.triton.start()
        except TritonStartError as exc:
            self.report(f"tritonserver restart failed: {exc}")
            return
        record.ready_after_s = time.monotonic() - seen
        self.report(f"tritonserver is back after {record.ready_after_s:.1f} s")

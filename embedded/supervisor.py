"""Keep the embedded tritonserver serving: probe it with a canary inference, restart it when it is not.

Triton 2.51 never restarts a crashed Python-backend stub and keeps ``/v2/health/{live,ready}`` at 200
while every inference fails, so only a real inference tells. In production the orchestrator does this
(``docker/triton_canary.py`` is the liveness probe); ``make serve`` has no orchestrator, so this thread
runs the same canary every ``interval_s`` and restarts ``tritonserver`` on the same ports:

- at once when the process has exited or the canary says the stub is not healthy;
- after ``failures_to_restart`` failed probes in a row for anything else (a timeout, a refused
  connection), since one slow canary under load is no proof of death. A full queue counts as alive,
  and so does a timed-out canary while the model's execution count moves (a cold restart under load).

Restarts in a row that do not bring a passing canary wait ``backoff_s``, doubling up to ``max_backoff_s``.
A restart instead of a model reload through the repository API (explicit model control): both take the
model's load time (measured with the tiny model: 6.7 s reload vs 6.8 s restart), but only a restart also
covers a dead server, and it needs no change of model-control mode.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from embedded.triton_server import REPO_ROOT, EmbeddedTriton, TritonStartError

log = logging.getLogger("embedded.supervisor")
# Failures that prove the model cannot serve until tritonserver restarts.
FATAL_MARKERS = ("is not healthy", "Stub process")
# Failures that prove it is alive, only busy.
BUSY_MARKERS = ("maximum queue size",)


def _load_canary() -> ModuleType:
    """docker/triton_canary.py (stdlib only, copied into the Triton image): one canary for both places."""
    spec = importlib.util.spec_from_file_location("triton_canary", REPO_ROOT / "docker" / "triton_canary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Restart:
    reason: str
    at: float  # time.monotonic() when the fault was seen
    ready_after_s: float | None = None  # None: this attempt failed


@dataclass
class Supervisor:
    triton: EmbeddedTriton
    interval_s: float = 5.0
    probe_timeout_s: float = 15.0
    failures_to_restart: int = 3
    stop_grace_s: float = 5.0
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    exit_poll_s: float = 0.5  # how soon a dead process is seen
    model: str = "sd_img2img"
    _executions: int | None = None
    report: Callable[[str], None] = log.warning
    restarts: list[Restart] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _probe: Callable[..., str | None] = field(default_factory=lambda: _load_canary().probe)

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def check(self) -> tuple[str | None, bool]:
        """(failure or None, fatal): one canary, cut short when the process exits meanwhile."""
        exited = self._exited()
        if exited:
            return exited, True
        result: list[str | None] = []
        probe = threading.Thread(
            target=lambda: result.append(self._probe(self.triton.http_url, timeout=self.probe_timeout_s)),
            name="triton-canary",
            daemon=True,
        )
        probe.start()
        while probe.is_alive():
            probe.join(self.exit_poll_s)
            exited = self._exited()
            if exited:
                return exited, True
        failure = result[0] if result else "the canary raised"
        executions, self._executions = self._executions, self._execution_count()
        if failure is None or any(marker in failure for marker in BUSY_MARKERS):
            return None, False
        fatal = any(marker in failure for marker in FATAL_MARKERS)
        if not fatal and executions is not None and self._executions is not None and self._executions > executions:
            return None, False  # a slow canary, but the model is executing batches: busy (a cold restart under load)
        return failure, fatal

    def _execution_count(self) -> int | None:
        """The model's batch executions so far (Triton's statistics), None when unknown."""
        url = f"http://{self.triton.http_url}/v2/models/{self.model}/stats"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - our own server
                return int(json.load(answer)["model_stats"][0]["execution_count"])
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def _exited(self) -> str | None:
        process = self.triton.process
        if process is None or process.poll() is not None:
            return f"tritonserver exited (code {None if process is None else process.returncode})"
        return None

    def _run(self) -> None:
        failures = 0
        attempts = 0  # restarts since the last passing probe
        next_probe = time.monotonic() + self.interval_s
        while not self._stopping.wait(self.exit_poll_s):
            # A dead process is seen within exit_poll_s; the canary runs every interval_s (1 s after a failure).
            exited = self._exited()
            if exited is None and time.monotonic() < next_probe:
                continue
            failure, fatal = (exited, True) if exited else self.check()
            next_probe = time.monotonic() + (self.interval_s if failure is None else min(self.interval_s, 1.0))
            if failure is None:
                failures = attempts = 0
                continue
            failures += 1
            if not fatal and failures < self.failures_to_restart:
                self.report(f"tritonserver canary failed ({failures}/{self.failures_to_restart}): {failure}")
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

"""The session's shared tritonservers, supervised as ``make serve`` supervises its own.

Hundreds of tests share one tritonserver; should it die (its process or its model's stub), every test
after would fail on a 503 that says nothing about them. Tritonserver 2.51 has a known crash when a gRPC
call is cancelled as its answer completes (triton-inference-server/server#7368, fixed in 24.12; we
cancel calls on purpose: run cancels, replica kills, deadlines). So each shared server runs under the
production supervisor (``embedded/supervisor.py``), acting on death only (no periodic canary: tests
count the model's executions): a dead server is restarted on its ports at once, as in production, and
background runs retry into it. Once per server per session: a second death fails the next test that
uses it. Every restart is reported in the session's summary with the dead server's log tail. A test
running when its server died is not retried; it fails or passes on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from embedded.supervisor import Supervisor

# No periodic canary: a probe is an inference, and tests count the model's executions. A death (exit, or
# the stub gone) is seen within EXIT_POLL_S without one.
NO_PROBES_S = 1e9
EXIT_POLL_S = 1.0


@dataclass(frozen=True)
class Revival:
    server: str  # the fixture's name
    during: str  # the test running (or about to run) when the death was seen
    why: str
    log_tail: str


@dataclass
class Watchdog:
    max_revivals: int = 1
    revivals: list[Revival] = field(default_factory=list)
    current_test: str = "(session set-up)"
    supervisors: dict[str, Supervisor] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def supervise(self, name: str, server: object) -> Supervisor:
        """The production supervisor on ``server``, restarting it at once when it dies; started."""
        tail: Callable[[], str] = server.log_tail  # type: ignore[attr-defined]
        self.supervisors[name] = Supervisor(
            server,  # type: ignore[arg-type]
            interval_s=NO_PROBES_S,
            exit_poll_s=EXIT_POLL_S,
            report=lambda message: None,  # restarts are recorded below and reported in the summary
            before_restart=lambda why: self.record(name, why, tail()),
        ).start()
        return self.supervisors[name]

    def record(self, name: str, why: str, log_tail: str) -> None:
        with self._lock:
            self.revivals.append(Revival(name, self.current_test, why, log_tail))

    def check(
        self, name: str, test_id: str, died: Callable[[], str | None] | None = None, wait_s: float = 240.0
    ) -> None:
        """Before a test that uses ``name``: AssertionError when it died more than ``max_revivals`` times,
        or is dead and does not come back within ``wait_s`` (its supervisor restarts it meanwhile).
        ``died``: why it is dead, or None (default: its supervisor's rule)."""
        self.current_test = test_id
        died = died or self.supervisors[name].died
        with self._lock:
            own = [r for r in self.revivals if r.server == name]
        if len(own) > self.max_revivals:
            raise AssertionError(
                f"the session's {name} died {len(own)} times (during {', '.join(r.during for r in own)}); "
                f"the last one's log tail:\n{own[-1].log_tail}"
            )
        deadline = time.monotonic() + wait_s
        while (why := died()) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the session's {name} is dead ({why}) and did not come back in {wait_s:g} s")
            time.sleep(0.5)

    def report(self) -> list[str]:
        """Lines for the session's summary: every restart, with the log tail of the server that died."""
        lines = []
        for revival in self.revivals:
            lines += [
                f"{revival.server} died ({revival.why}) during {revival.during}; restarted. Its log tail:",
                *revival.log_tail.splitlines(),
                "",
            ]
        return lines

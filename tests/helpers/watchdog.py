"""The session's shared tritonservers, revived once each if one died between tests.

Hundreds of tests share one tritonserver; should it die (its process or its model's stub), every test
after would fail on a 503 that says nothing about them. Tritonserver 2.51 has a known crash when a gRPC
call is cancelled as its answer completes (triton-inference-server/server#7368, fixed in 24.12; we
cancel calls on purpose: run cancels, replica kills, deadlines). So before each test that uses one, a
dead server is restarted on its ports, once per server per session, and the session's summary reports
it with the dead server's log tail. A second death fails the test: that is no rare race. The test
that was running when the server died is not retried; it fails or passes on its own. Production
has the same answer: the supervisor (``embedded/supervisor.py``) and the container's liveness probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Server(Protocol):
    def log_tail(self) -> str: ...

    def stop(self, timeout_s: float = ...) -> int | None: ...

    def start(self) -> object: ...


@dataclass(frozen=True)
class Revival:
    server: str  # the fixture's name
    before: str  # the test about to run when the death was seen
    why: str
    log_tail: str


@dataclass
class Watchdog:
    """``check`` before a test; ``died`` says why a server is dead, or None (``Supervisor.died`` in tests)."""

    max_revivals: int = 1
    revivals: list[Revival] = field(default_factory=list)

    def check(self, name: str, server: Server, why_dead: str | None, test_id: str) -> Revival | None:
        """Restart ``server`` if ``why_dead``; AssertionError when it already died ``max_revivals`` times."""
        if why_dead is None:
            return None
        before = [r for r in self.revivals if r.server == name]
        if len(before) >= self.max_revivals:
            raise AssertionError(
                f"the session's {name} died again before {test_id} ({why_dead}); it was revived before "
                f"{', '.join(r.before for r in before)}. Its log tail:\n{server.log_tail()}"
            )
        revival = Revival(name, test_id, why_dead, server.log_tail())
        server.stop()
        server.start()
        self.revivals.append(revival)
        return revival

    def report(self) -> list[str]:
        """Lines for the session's summary: every revival, with the log tail of the server that died."""
        lines = []
        for revival in self.revivals:
            lines += [
                f"{revival.server} died ({revival.why}); restarted before {revival.before}. Its log tail:",
                *revival.log_tail.splitlines(),
                "",
            ]
        return lines

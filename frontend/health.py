"""What calls to one model server (a pod) have shown about its health: the newest evidence of life, death,
a full queue, or a probe that found it unable to serve."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BackendHealth:
    ok_at: float = -math.inf  # time.monotonic() of the last answered generation
    dead_at: float = -math.inf  # of the last failure that proves the model cannot serve (dead stub, no server)
    dead_reason: str = ""
    full_at: float = -math.inf  # of the last "queue full" refusal
    in_flight: int = 0  # calls waiting for an answer now
    # The last readiness probe's verdict, when it said this pod cannot serve (model not loaded, its canary
    # failed or stalled): what keeps a pod out of placement until a probe or a call shows it serving again.
    unready_at: float = -math.inf
    unready_reason: str = ""

    def unready(self, now: float, window_s: float) -> str | None:
        """Why the newest evidence says "do not send work here", or None."""
        if self.dead_at > self.ok_at:
            return f"the model cannot serve: {self.dead_reason}"
        if self.full_at > self.ok_at and now - self.full_at <= window_s:
            return "the model's queue is full"
        return None

    def out(self) -> str | None:
        """Why this pod is out of placement (dead, or found unable to serve by its probe), or None. A full
        queue is busy, not out: placement weighs it, as it does every pod's load."""
        if self.dead_at > self.ok_at:
            return f"the model cannot serve: {self.dead_reason}"
        if self.unready_at > self.ok_at:
            return self.unready_reason
        return None

    def probed(self, now: float, cannot_serve: str | None) -> None:
        """Record a readiness probe's finding on this pod: why it cannot serve, or None (serving, or busy)."""
        if cannot_serve is None:
            self.unready_at, self.unready_reason = -math.inf, ""
        else:
            self.unready_at, self.unready_reason = now, cannot_serve

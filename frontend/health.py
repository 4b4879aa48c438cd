"""What calls to the model have shown about its health: the newest evidence of life, death or a full queue."""

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

    def unready(self, now: float, window_s: float) -> str | None:
        """Why the newest evidence says "do not send work here", or None."""
        if self.dead_at > self.ok_at:
            return f"the model cannot serve: {self.dead_reason}"
        if self.full_at > self.ok_at and now - self.full_at <= window_s:
            return "the model's queue is full"
        return None

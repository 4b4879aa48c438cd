"""A floor on the time of one denoising step (the ``min_step_ms`` parameter; 0, off, in production).

Tests of cancel, deadlines and disconnects need a run that is still in the model seconds later, on any
machine: the tiny model's step takes milliseconds here and less on a faster CPU. With a floor, a run of
N steps lasts at least N times it by construction; the computation, and so every byte, is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StepPace:
    def __init__(
        self,
        min_step_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if min_step_s < 0:
            raise ValueError(f"min_step_s must be at least 0 but is {min_step_s!r}")
        self.min_step_s = min_step_s
        self._clock, self._sleep = clock, sleep
        self._last = clock()

    def start(self) -> None:
        """At the start of a pipeline call: its first step is timed from here."""
        self._last = self._clock()

    def step(self) -> None:
        """After each step: wait out what is left of the floor."""
        if self.min_step_s <= 0:
            return
        left = self._last + self.min_step_s - self._clock()
        if left > 0:
            self._sleep(left)
        self._last = self._clock()

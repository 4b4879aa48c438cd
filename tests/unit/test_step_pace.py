"""The model's step floor (``min_step_ms``) on an injected clock: each step lasts at least the floor."""

from __future__ import annotations

import pytest
from step_pace import StepPace


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_a_step_faster_than_the_floor_waits_out_the_rest_and_a_slower_one_does_not_wait() -> None:
    time = FakeTime()
    pace = StepPace(0.04, clock=time.clock, sleep=time.sleep)
    pace.start()
    time.now += 0.01  # a 10 ms step
    pace.step()
    time.now += 0.05  # a 50 ms step: already past the floor
    pace.step()
    time.now += 0.03
    pace.step()
    assert time.slept == [0.03, 0.01]


def test_the_first_step_is_timed_from_the_start_of_the_call_not_from_the_last_call() -> None:
    time = FakeTime()
    pace = StepPace(0.04, clock=time.clock, sleep=time.sleep)
    time.now += 5  # idle between calls
    pace.start()
    time.now += 0.01
    pace.step()
    assert time.slept == [0.03]


def test_zero_is_off_and_a_negative_floor_is_refused() -> None:
    time = FakeTime()
    pace = StepPace(0, clock=time.clock, sleep=time.sleep)
    pace.start()
    pace.step()
    assert time.slept == []
    with pytest.raises(ValueError, match="min_step_s must be at least 0 but is -1"):
        StepPace(-1)

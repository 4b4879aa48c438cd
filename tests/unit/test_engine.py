"""The step scheduler on a fake denoiser: admission, fairness between sizes, cancel and failure per request."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from engine import Callbacks, StepEngine, StepPlanner


@dataclass(frozen=True)
class Req:
    name: str
    steps: int
    rows: int = 2
    size: int = 64


@dataclass(eq=False)
class FakeFlight:
    req: Req
    done: int = 0


@dataclass
class FakeDenoiser:
    """Records every forward; a step of size ``cost`` costs that much of the fake clock."""

    clock: list[float]
    cost: dict[int, float] = field(default_factory=dict)
    forwards: list[list[str]] = field(default_factory=list)
    fail_on: str | None = None

    def rows(self, request: Req) -> int:
        return request.rows

    def group(self, request: Req) -> Hashable:
        return request.size

    def admit(self, requests: Sequence[Req]) -> list[FakeFlight]:
        return [FakeFlight(r) for r in requests]

    def step(self, flights: Sequence[FakeFlight]) -> None:
        names = [f.req.name for f in flights]
        self.forwards.append(names)
        self.clock[0] += self.cost.get(flights[0].req.size, 1.0)
        if self.fail_on in names:
            raise RuntimeError("out of memory")
        for f in flights:
            f.done += 1

    def done(self, flight: FakeFlight) -> bool:
        return flight.done >= flight.req.steps

    def progress(self, flight: FakeFlight) -> tuple[int, int]:
        return flight.done, flight.req.steps

    def decode(self, flights: Sequence[FakeFlight]) -> list[Any]:
        return [f"image of {f.req.name}" for f in flights]


class Harness:
    def __init__(self, max_rows: int = 8, **denoiser: Any) -> None:
        self.clock = [0.0]
        self.denoiser = FakeDenoiser(self.clock, **denoiser)
        self.answers: dict[str, Any] = {}
        self.finished_at: dict[str, int] = {}
        self.cancel: set[str] = set()
        self.progress: list[tuple[str, int, int]] = []
        self.ticks = 0

        def record(name: str, value: Any) -> None:
            self.answers[name] = value
            self.finished_at[name] = self.ticks

        self.engine = StepEngine(
            self.denoiser,
            max_rows,
            Callbacks(
                answer=lambda job, images: record(job.handle, images),
                fail=lambda job, message: record(job.handle, f"failed: {message}"),
                cancelled=lambda job: record(job.handle, "cancelled"),
                is_cancelled=lambda job: job.handle in self.cancel,
                on_progress=lambda job, done, total: self.progress.append((job.handle, done, total)),
            ),
            clock=lambda: self.clock[0],
        )

    def submit(self, *reqs: Req) -> None:
        for r in reqs:
            self.engine.submit(r, r.name)

    def run(self, ticks: int | None = None) -> None:
        n = 0
        while self.engine.planner.jobs and (ticks is None or n < ticks):
            self.ticks += 1
            self.engine.tick()
            n += 1


def test_requests_of_one_size_share_every_forward_and_leave_after_their_own_last_step() -> None:
    h = Harness()
    h.submit(Req("long", 5), Req("short", 2))
    h.run(1)
    h.submit(Req("late", 2))  # joins at the next step boundary
    h.run()
    assert h.denoiser.forwards == [
        ["long", "short"],
        ["long", "short", "late"],
        ["long", "late"],
        ["long"],
        ["long"],
    ]
    assert h.finished_at == {"short": 2, "late": 3, "long": 5}
    assert h.answers["late"] == "image of late"
    assert ("late", 2, 2) in h.progress and ("long", 5, 5) in h.progress


def test_admission_is_first_come_first_served_under_the_row_cap() -> None:
    h = Harness(max_rows=4)
    h.submit(Req("a", 3), Req("big", 2, rows=4), Req("small", 1, rows=2))
    h.run(1)
    # "big" does not fit beside "a"; "small" would, but never overtakes the head of the line.
    assert h.denoiser.forwards == [["a"]]
    assert h.engine.stats() == {"jobs": 3, "rows_active": 2, "rows_waiting": 6}
    h.run()
    # "big" fills the cap on its own, so "small" waits for it to leave.
    assert h.denoiser.forwards == [["a"], ["a"], ["a"], ["big"], ["big"], ["small"]]


def test_a_request_larger_than_the_cap_runs_alone_rather_than_never() -> None:
    h = Harness(max_rows=4)
    h.submit(Req("huge", 2, rows=16), Req("next", 1))
    h.run()
    assert h.denoiser.forwards == [["huge"], ["huge"], ["next"]]


def test_sizes_share_the_model_time_equally_so_a_small_request_is_not_stuck_behind_a_large_one() -> None:
    # A 128 px step costs 4x a 64 px step: while both are active, the 64 px request gets 4 forwards per
    # 128 px forward (equal model time), so it finishes in about twice its time alone, not after "large".
    h = Harness(cost={64: 1.0, 128: 4.0})
    h.submit(Req("large", 20, size=128))
    h.run(3)
    h.submit(Req("small", 8, size=64))
    h.run()
    after = [names[0] for names in h.denoiser.forwards[3:]]
    last_small = len(after) - after[::-1].index("small")
    window = after[:last_small]
    assert window.count("small") == 8 and window.count("large") == 2
    assert h.finished_at["small"] < h.finished_at["large"]


def test_neither_size_starves_a_stream_of_small_requests() -> None:
    h = Harness(cost={64: 1.0, 128: 4.0})
    h.submit(Req("large", 4, size=128))
    for i in range(12):  # a new small request whenever one leaves
        h.submit(Req(f"s{i}", 4, size=64))
        h.run(5)
    h.run()
    assert h.finished_at["large"] < h.finished_at["s11"]


def test_a_cancelled_request_leaves_at_the_next_step_and_the_others_go_on() -> None:
    h = Harness()
    h.submit(Req("stay", 4), Req("go", 4))
    h.run(2)
    h.cancel.add("go")
    h.run()
    assert h.answers == {"go": "cancelled", "stay": "image of stay"}
    assert h.denoiser.forwards == [["stay", "go"], ["stay", "go"], ["stay"], ["stay"]]


def test_a_failing_forward_fails_only_the_requests_in_it() -> None:
    h = Harness(cost={64: 1.0, 128: 1.0}, fail_on="bad")
    h.submit(Req("bad", 3, size=128), Req("fine", 3, size=64))
    h.run()
    assert h.answers["bad"].startswith("failed: generation failed: RuntimeError: out of memory")
    assert h.answers["fine"] == "image of fine"


def test_wait_for_room_holds_only_while_waiting_requests_do_not_fit() -> None:
    h = Harness(max_rows=2)
    h.submit(Req("a", 3))
    assert h.engine.wait_for_room(timeout_s=0)  # waiting, but it fits at the next tick
    h.run(1)
    assert h.engine.wait_for_room(timeout_s=0)
    h.submit(Req("b", 1))  # no room beside "a" until it leaves
    h.run(1)
    assert h.engine.stats()["rows_waiting"] == 2 and not h.engine.wait_for_room(timeout_s=0)
    h.run()
    assert h.engine.wait_for_room(timeout_s=0)


def test_stop_hands_back_every_job_it_held() -> None:
    h = Harness(max_rows=2)
    h.submit(Req("a", 5), Req("b", 5))
    h.run(1)
    assert sorted(job.handle for job in h.engine.stop()) == ["a", "b"]
    assert h.engine.planner.jobs == 0


def test_the_planner_refuses_a_cap_below_one_row() -> None:
    with pytest.raises(ValueError, match="max_rows must be at least 1 but is 0"):
        StepPlanner(0)

"""The step scheduler on a fake denoiser: admission, fairness between sizes, cancel and failure per request,
waiting requests under the queue policy, and a stopped or dead engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from engine import Callbacks, EngineStopped, Job, StepEngine, StepPlanner


@dataclass(frozen=True)
class Req:
    name: str
    steps: int
    rows: int = 2
    size: int | None = 64


@dataclass(eq=False)
class FakeFlight:
    req: Req
    done: int = 0


@dataclass
class FakeDenoiser:
    """Records every forward; a step of size ``cost`` costs that much of the fake clock."""

    clock: list[float]
    cost: dict[int | None, float] = field(default_factory=dict)
    forwards: list[list[str]] = field(default_factory=list)
    fail_on: str | None = None  # the shared forward raises when this request is in it
    own_step_fails: str | None = None  # this request's own scheduler step raises (at its second step)
    # "admit"/"progress"/"done"/"decode" -> the request it raises for (admit and decode: every request with it)
    broken: dict[str, str] = field(default_factory=dict)
    short: set[str] = field(default_factory=set)  # "admit"/"step"/"decode": answers one result too few

    def rows(self, request: Req) -> int:
        return request.rows

    def group(self, request: Req) -> Hashable:
        return request.size

    def admit(self, requests: Sequence[Req]) -> list[FakeFlight]:
        for r in requests:
            breaks(self.broken, "admit", r.name)
        return self._shortened("admit", [FakeFlight(r) for r in requests])

    def _shortened(self, method: str, results: list[Any]) -> list[Any]:
        return results[:-1] if method in self.short else results

    def step(self, flights: Sequence[FakeFlight]) -> list[Exception | None]:
        names = [f.req.name for f in flights]
        self.forwards.append(names)
        self.clock[0] += self.cost.get(flights[0].req.size, 1.0)
        if self.fail_on in names:
            raise RuntimeError("out of memory")
        failures: list[Exception | None] = []
        for f in flights:
            if f.req.name == self.own_step_fails and f.done == 1:
                failures.append(IndexError("index 11 is out of bounds for dimension 0 with size 11"))
                continue
            f.done += 1
            failures.append(None)
        return self._shortened("step", failures)

    def done(self, flight: FakeFlight) -> bool:
        breaks(self.broken, "done", flight.req.name)
        return flight.done >= flight.req.steps

    def progress(self, flight: FakeFlight) -> tuple[int, int]:
        breaks(self.broken, "progress", flight.req.name)
        return flight.done, flight.req.steps

    def decode(self, flights: Sequence[FakeFlight]) -> list[Any]:
        for f in flights:
            breaks(self.broken, "decode", f.req.name)
        return self._shortened("decode", [f"image of {f.req.name}" for f in flights])


def breaks(broken: dict[str, str], where: str, name: str) -> None:
    if broken.get(where) == name:
        raise RuntimeError(f"{where} broke")


class Harness:
    def __init__(
        self,
        max_rows: int = 8,
        broken: dict[str, str] | None = None,
        recheck_waiting_s: float | None = None,  # None: the engine's default
        clock: Callable[[], float] | None = None,
        **denoiser: Any,
    ) -> None:
        self.clock = [0.0]
        # Callback (or denoiser method) -> the request it raises for.
        self.broken = broken or {}
        self.denoiser = FakeDenoiser(self.clock, broken=self.broken, **denoiser)
        self.answers: dict[str, Any] = {}
        self.said: list[tuple[str, Any]] = []  # every answer, in order: each request must appear once
        self.attempts: list[tuple[str, str]] = []  # every answer tried (callback, request), raising or not
        self.forward_rows: list[int] = []  # on_tick's rows, one per forward
        self.finished_at: dict[str, int] = {}
        self.cancel: set[str] = set()
        self.asked: list[str] = []  # is_cancelled calls
        self.progress: list[tuple[str, int, int]] = []
        self.logged: list[str] = []
        self.ticks = 0

        def record(name: str, value: Any, where: str) -> None:
            self.attempts.append((where, name))
            breaks(self.broken, where, name)
            self.said.append((name, value))
            self.answers[name] = value
            self.finished_at[name] = self.ticks

        def is_cancelled(name: str) -> bool:
            breaks(self.broken, "is_cancelled", name)
            self.asked.append(name)
            return name in self.cancel

        def on_progress(name: str, done: int, total: int) -> None:
            breaks(self.broken, "on_progress", name)
            self.progress.append((name, done, total))

        def on_tick(jobs: Sequence[Any], rows: int) -> None:
            self.forward_rows.append(rows)
            breaks(self.broken, "on_tick", jobs[0].handle)

        self.engine = StepEngine(
            self.denoiser,
            max_rows,
            Callbacks(
                answer=lambda job, images: record(job.handle, images, "answer"),
                fail=lambda job, message: record(job.handle, f"failed: {message}", "fail"),
                cancelled=lambda job: record(job.handle, "cancelled", "cancelled"),
                timed_out=lambda job: record(job.handle, "timed out", "timed_out"),
                is_cancelled=lambda job: is_cancelled(job.handle),
                on_tick=on_tick,
                on_progress=lambda job, done, total: on_progress(job.handle, done, total),
                log_error=self.logged.append,
            ),
            clock=clock or (lambda: self.clock[0]),
            **({} if recheck_waiting_s is None else {"recheck_waiting_s": recheck_waiting_s}),
        )

    def submit(self, *reqs: Req, timeout_s: float | None = None) -> None:
        for r in reqs:
            self.engine.submit(r, r.name, timeout_s)

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


def test_one_requests_own_scheduler_step_failing_fails_only_it() -> None:
    h = Harness(own_step_fails="bad")
    h.submit(Req("left", 4), Req("bad", 4), Req("right", 4))
    h.run()
    assert h.answers == {
        "left": "image of left",
        "bad": "failed: generation failed: IndexError: index 11 is out of bounds for dimension 0 with size 11",
        "right": "image of right",
    }
    assert h.finished_at["bad"] == 2  # failed at its second step; the others shared it and went on
    for name in ("left", "right"):  # and went on from it: "right" too, after "bad" in that step
        assert [p for p in h.progress if p[0] == name] == [(name, done, 4) for done in range(1, 5)]
    assert h.denoiser.forwards == [["left", "bad", "right"]] * 2 + [["left", "right"]] * 2


@pytest.mark.parametrize("where", ["is_cancelled", "on_progress", "progress", "done", "answer"])
def test_a_raising_callback_fails_only_its_own_request_and_the_engine_goes_on(where: str) -> None:
    h = Harness(broken={where: "bad"})
    h.submit(Req("left", 3), Req("bad", 3), Req("right", 3))
    h.run(1)
    h.submit(Req("late", 2))  # joins after the failure: the engine still runs
    h.run()
    assert h.answers.pop("bad") == f"failed: generation failed: RuntimeError: {where} broke"
    assert h.answers == {name: f"image of {name}" for name in ("left", "right", "late")}
    assert sorted(name for name, _ in h.said) == ["bad", "late", "left", "right"]  # each answered once


def test_a_raising_on_tick_is_logged_and_fails_nobody() -> None:
    h = Harness(broken={"on_tick": "a"})
    h.submit(Req("a", 2), Req("b", 2))
    h.run()
    assert h.answers == {"a": "image of a", "b": "image of b"}
    assert h.logged == ["step engine: on_tick failed: RuntimeError('on_tick broke')"] * 2


def test_a_request_that_cannot_be_answered_even_with_an_error_is_logged_and_dropped() -> None:
    h = Harness(broken={"answer": "bad", "fail": "bad"})
    h.submit(Req("bad", 2), Req("good", 3))
    h.run()
    assert h.answers == {"good": "image of good"}
    assert len(h.logged) == 1 and "could not answer a request" in h.logged[0] and "fail broke" in h.logged[0]
    assert h.engine.planner.jobs == 0  # its rows are free


def test_a_cancelled_waiting_request_leaves_at_the_next_step_and_frees_its_rows() -> None:
    h = Harness(max_rows=4)
    h.submit(Req("running", 6), Req("big", 2, rows=4))  # "big" does not fit beside "running"
    h.run(1)
    held = threading.Event()
    # Triton's execute(): blocked while "big" waits.
    execute = threading.Thread(target=lambda: h.engine.wait_for_room() and held.set(), daemon=True)
    execute.start()
    assert not held.wait(0.05)
    h.cancel.add("big")
    h.run(1)
    assert h.said == [("big", "cancelled")] and h.finished_at["big"] == 2  # not when it reached the head (tick 7)
    assert held.wait(5) and h.engine.stats()["rows_waiting"] == 0
    h.run()
    assert h.answers["running"] == "image of running"


def test_a_waiting_request_past_its_timeout_leaves_timed_out_and_a_running_one_never_does() -> None:
    h = Harness(max_rows=4)
    h.submit(Req("running", 6), timeout_s=0.5)  # admitted at once: a queue timeout bounds waiting only
    h.submit(Req("big", 2, rows=4), timeout_s=2.5)  # each step costs 1.0 of the fake clock
    h.run()
    assert h.said == [("big", "timed out"), ("running", "image of running")]
    assert h.finished_at["big"] == 4  # the first tick at or past its deadline (clock 3.0)


def test_a_timed_out_request_is_failed_when_no_timed_out_callback_is_given() -> None:
    h = Harness(max_rows=4)
    h.engine.callbacks.timed_out = None
    h.submit(Req("running", 3))
    h.submit(Req("big", 1, rows=4), timeout_s=0.5)
    h.run()
    assert h.answers["big"] == "failed: timed out while waiting for rows"


def test_waiting_requests_are_asked_whether_cancelled_at_most_every_recheck_interval() -> None:
    h = Harness(max_rows=2, cost={64: 0.01})
    h.submit(Req("running", 20), Req("waiting", 1))
    h.run(20)
    # Each ask is an IPC to Triton: 20 ticks of 10 ms, asked every 50 ms (the running one: every tick).
    assert h.asked.count("waiting") == 4


@contextmanager
def tick_held_in(h: Harness, method: str) -> Iterator[None]:
    """One tick on its own thread (the engine's), held inside the denoiser's ``method`` while the block runs:
    what another thread (finalize, execute) sees meanwhile. Then the tick goes on to its end."""
    inside, release = threading.Event(), threading.Event()
    original = getattr(h.denoiser, method)

    def held(*args: Any) -> Any:
        inside.set()
        release.wait(5)
        return original(*args)

    setattr(h.denoiser, method, held)
    engine_thread = threading.Thread(target=h.engine.tick, daemon=True)
    engine_thread.start()
    assert inside.wait(5)
    try:
        yield
    finally:
        release.set()
        engine_thread.join(5)


def test_stop_during_a_tick_answers_each_job_once_and_posts_no_progress_after() -> None:
    """finalize: stop() from Triton's thread while the engine thread is inside a forward."""
    h = Harness()
    h.submit(Req("ends", 2), Req("goes_on", 5))
    h.run(1)
    with tick_held_in(h, "step"):
        handed_back = h.engine.stop()
        posts = len(h.progress)
    assert sorted(job.handle for job in handed_back) == ["ends", "goes_on"]
    assert h.said == [] and len(h.progress) == posts  # the engine thread let them go: no answer, no post
    assert h.engine.stop() == []  # nothing is handed back twice


def test_stop_hands_back_the_jobs_being_admitted() -> None:
    h = Harness()
    h.submit(Req("a", 2))
    with tick_held_in(h, "admit"):
        handed_back = h.engine.stop()
    assert [job.handle for job in handed_back] == ["a"] and h.said == []
    assert h.engine.planner.jobs == 0


def test_wait_for_room_counts_the_rows_of_jobs_being_admitted() -> None:
    """Off the waiting line, not yet active: execute() must still hold Triton's next batch meanwhile."""
    h = Harness(max_rows=2)
    h.submit(Req("a", 2), Req("b", 2))
    with tick_held_in(h, "admit"):
        assert not h.engine.wait_for_room(timeout_s=0)


def test_a_dead_engine_refuses_new_work_at_once_and_hands_back_what_it_held() -> None:
    h = Harness(max_rows=2)

    def broken_tick() -> bool:
        raise RuntimeError("planner corrupted")

    h.submit(Req("a", 3), Req("b", 3))  # "b" waits for rows: execute() would be blocked
    h.engine.tick = broken_tick  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="planner corrupted"):
        h.engine.run()
    assert isinstance(h.engine.failure, RuntimeError) and h.engine.stopped
    assert h.engine.wait_for_room() is False  # returns at once: execute() does not hold Triton's queue
    with pytest.raises(EngineStopped, match="planner corrupted"):
        h.submit(Req("late", 1))
    assert sorted(job.handle for job in h.engine.stop()) == ["a", "b"]


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


# -- admission at the row cap -----------------------------------------------------------------------------


def test_admission_fills_the_cap_exactly_and_leaves_the_next_row_waiting() -> None:
    h = Harness(max_rows=4)
    h.submit(Req("a", 2, rows=1), Req("b", 2, rows=2), Req("c", 2, rows=1), Req("d", 1, rows=1))
    h.run(1)
    # 1 + 2 + 1 rows is exactly the cap: all three run; "d" is one row over, so it waits for them.
    assert h.denoiser.forwards == [["a", "b", "c"]] and h.forward_rows == [4]
    assert h.engine.stats() == {"jobs": 4, "rows_active": 4, "rows_waiting": 1}
    h.run()
    assert h.denoiser.forwards == [["a", "b", "c"], ["a", "b", "c"], ["d"]] and h.forward_rows == [4, 4, 1]


def test_a_cap_of_one_row_runs_one_row_at_a_time() -> None:
    h = Harness(max_rows=1)
    h.submit(Req("a", 2, rows=1), Req("b", 1, rows=1))
    h.run()
    assert h.denoiser.forwards == [["a"], ["a"], ["b"]]
    assert h.answers == {"a": "image of a", "b": "image of b"}


def test_a_group_may_be_any_hashable_none_included() -> None:
    h = Harness()
    h.submit(Req("a", 2, size=None), Req("b", 1, size=None))
    h.run(5)
    assert h.denoiser.forwards == [["a", "b"], ["a"]]
    assert h.answers == {"a": "image of a", "b": "image of b"}


def test_each_group_is_charged_its_own_model_time_and_forgets_it_when_it_leaves() -> None:
    planner = StepPlanner(8)
    small, large = Job("small", "small", 2, 64), Job("large", "large", 2, 128)
    planner.activate(small)
    assert planner.served_s == {64: 0.0}  # alone: it starts from nothing
    planner.charge(64, 3.0)
    planner.charge(64, 0.5)
    planner.activate(large)
    assert planner.served_s == {64: 3.5, 128: 3.5}  # level with the least-served group, not at 0
    planner.charge(128, 1.0)
    assert planner.next_group() == 64
    planner.remove(small)
    assert planner.active == {128: [large]} and planner.served_s == {128: 4.5}
    planner.charge(64, 2.0)  # a forward of a group that left meanwhile (it failed): nothing to account
    assert planner.served_s == {128: 4.5} and planner.next_group() == 128


# -- what each job is answered, once ----------------------------------------------------------------------


def test_a_failing_admission_fails_the_requests_admitted_with_it_and_the_engine_goes_on() -> None:
    h = Harness(broken={"admit": "bad"})
    h.submit(Req("a", 2), Req("bad", 2))  # admitted together: their prompts are encoded together
    h.run(1)
    h.submit(Req("late", 1))
    h.run()
    message = "failed: generation failed: RuntimeError: admit broke"
    assert h.said == [("a", message), ("bad", message), ("late", "image of late")]
    assert h.denoiser.forwards == [["late"]]


def test_a_failing_decode_fails_the_requests_decoded_together_and_the_engine_goes_on() -> None:
    h = Harness(broken={"decode": "bad"})
    h.submit(Req("a", 2), Req("bad", 2), Req("longer", 3))
    h.run()
    message = "failed: generation failed: RuntimeError: decode broke"
    assert h.said == [("a", message), ("bad", message), ("longer", "image of longer")]


def test_an_admission_short_of_a_flight_fails_every_request_in_it_rather_than_losing_one() -> None:
    h = Harness(short={"admit"})
    h.submit(Req("a", 2), Req("b", 2))
    h.run(3)
    message = "failed: generation failed: ValueError: zip() argument 2 is shorter than argument 1"
    assert h.said == [("a", message), ("b", message)]
    assert h.engine.planner.jobs == 0 and h.denoiser.forwards == []


@pytest.mark.parametrize("short", ["step", "decode"])
def test_a_denoiser_short_of_a_result_stops_the_engine_with_every_job_handed_back(short: str) -> None:
    h = Harness(short={short})
    h.submit(Req("a", 1), Req("b", 1))
    with pytest.raises(ValueError, match="zip"):  # the engine's own failure: run() records it
        h.engine.tick()
    assert h.said == []  # no answer guessed for a request whose result is missing
    assert sorted(job.handle for job in h.engine.stop()) == ["a", "b"]


def test_a_raising_is_cancelled_of_a_running_request_fails_it_and_the_others_still_share_that_step() -> None:
    h = Harness()
    h.submit(Req("left", 3), Req("bad", 3), Req("right", 3))
    h.run(1)
    h.broken["is_cancelled"] = "bad"
    h.run(1)
    assert h.said == [("bad", "failed: generation failed: RuntimeError: is_cancelled broke")]
    assert h.denoiser.forwards == [["left", "bad", "right"], ["left", "right"]]


def test_a_shared_forward_whose_fail_raises_drops_that_request_once_and_fails_the_others() -> None:
    h = Harness(fail_on="a", broken={"fail": "a"})
    h.submit(Req("a", 2), Req("b", 2), Req("c", 2))
    h.run()
    # "a"'s fail raised: it is logged and dropped, not failed a second time; "b" and "c" are still failed.
    assert h.attempts == [("fail", "a"), ("fail", "b"), ("fail", "c")]
    assert h.said == [(name, "failed: generation failed: RuntimeError: out of memory") for name in ("b", "c")]
    assert h.logged == ["step engine: could not answer a request, dropped: RuntimeError('fail broke')"]
    assert h.engine.planner.jobs == 0


def test_a_raising_log_does_not_stop_the_engine() -> None:
    h = Harness(broken={"on_tick": "a"})

    def log_error(message: str) -> None:
        raise OSError("stderr closed")

    h.engine.callbacks.log_error = log_error
    h.submit(Req("a", 2))
    h.run()
    assert h.answers == {"a": "image of a"}


def test_every_job_gets_exactly_one_answer_of_its_own_kind() -> None:
    h = Harness(max_rows=4, fail_on="oom")
    h.submit(Req("done", 3), Req("oom", 3, size=128), Req("gone", 3, size=32))
    h.submit(Req("late", 1, rows=4), timeout_s=1.0)
    h.cancel.add("gone")
    h.run()
    assert sorted(h.said) == [
        ("done", "image of done"),
        ("gone", "cancelled"),
        ("late", "timed out"),
        ("oom", "failed: generation failed: RuntimeError: out of memory"),
    ]
    assert h.engine.planner.jobs == 0 and h.engine.stats() == {"jobs": 0, "rows_active": 0, "rows_waiting": 0}


# -- tick's answer, and the engine thread ----------------------------------------------------------------


def test_tick_says_whether_work_remains() -> None:
    h = Harness(max_rows=2, fail_on="oom")
    assert h.engine.tick() is False  # nothing at all
    h.submit(Req("a", 1), Req("b", 1))
    assert h.engine.tick() is True  # "a" stepped and left; "b" waits
    h.cancel.add("b")
    assert h.engine.tick() is False  # "b" left cancelled: idle again
    h.submit(Req("c", 5), Req("d", 1))
    assert h.engine.tick() is True
    h.cancel.add("c")
    assert h.engine.tick() is True  # "c" left without a step, but "d" still waits for rows
    h.submit(Req("oom", 1))
    assert h.engine.tick() is True  # "d"
    assert h.engine.tick() is True  # the forward of "oom" failed: a tick all the same
    assert h.said[-1] == ("oom", "failed: generation failed: RuntimeError: out of memory")
    assert h.engine.tick() is False


def test_the_engine_thread_sleeps_while_idle_wakes_on_submit_and_returns_on_stop() -> None:
    h = Harness()
    ticks: list[bool] = []
    tick = h.engine.tick

    def counted() -> bool:
        ticks.append(True)
        return tick()

    h.engine.tick = counted  # type: ignore[method-assign]
    engine_thread = threading.Thread(target=h.engine.run, daemon=True)
    engine_thread.start()
    h.submit(Req("a", 2))
    deadline = time.monotonic() + 5
    while "a" not in h.answers and time.monotonic() < deadline:
        time.sleep(0.001)
    assert h.answers == {"a": "image of a"}
    idle_from = len(ticks)
    time.sleep(0.05)
    assert len(ticks) == idle_from <= 3  # no tick without work
    assert h.engine.stop() == []
    engine_thread.join(5)
    assert not engine_thread.is_alive() and h.engine.failure is None


def test_a_stopped_engine_refuses_work_as_unloading_and_wakes_whoever_waits_for_room() -> None:
    h = Harness(max_rows=2)
    assert h.engine.stopped is False and h.engine.failure is None
    h.submit(Req("a", 3), Req("b", 3))
    h.run(1)
    result: list[bool] = []
    execute = threading.Thread(target=lambda: result.append(h.engine.wait_for_room()), daemon=True)
    execute.start()
    execute.join(0.02)
    assert result == []  # "b" waits for rows: execute() is held
    assert sorted(job.handle for job in h.engine.stop()) == ["a", "b"]
    execute.join(5)
    assert result == [False]
    assert h.engine.stopped is True and h.engine.failure is None  # stopped, not dead: the model is unloading
    with pytest.raises(EngineStopped) as refused:
        h.submit(Req("late", 1))
    assert str(refused.value) == "unloading"
    assert h.engine.wait_for_room() is False and h.engine.planner.jobs == 0


def test_wait_for_room_with_a_timeout_returns_true_once_rows_free_up_in_time() -> None:
    h = Harness(max_rows=4)
    h.submit(Req("running", 6), Req("big", 2, rows=4))
    h.run(1)
    result: list[bool] = []
    execute = threading.Thread(target=lambda: result.append(h.engine.wait_for_room(timeout_s=0.5)), daemon=True)
    execute.start()
    execute.join(0.02)
    assert result == []
    h.cancel.add("big")
    h.run(1)
    execute.join(5)
    assert result == [True]


def test_wait_for_room_gives_up_after_its_timeout() -> None:
    now = [0.0]

    def moving_clock() -> float:  # each reading is 20 ms later
        now[0] += 0.02
        return now[0]

    h = Harness(max_rows=2, clock=moving_clock)
    h.submit(Req("a", 3), Req("b", 3))
    h.run(1)
    result: list[bool] = []
    execute = threading.Thread(target=lambda: result.append(h.engine.wait_for_room(timeout_s=0.05)), daemon=True)
    execute.start()
    execute.join(5)
    assert result == [False]


# -- waiting requests under the queue policy, at their edges ----------------------------------------------


def test_a_waiting_request_times_out_at_the_first_tick_at_its_deadline_exactly() -> None:
    h = Harness(max_rows=4)
    h.submit(Req("running", 6))
    h.submit(Req("big", 2, rows=4), timeout_s=2.0)  # ticks at clock 0, 1, 2, ...
    h.run()
    assert h.said[0] == ("big", "timed out") and h.finished_at["big"] == 3  # at clock 2.0, not 3.0


def test_waiting_requests_are_asked_again_once_the_recheck_interval_has_passed_exactly() -> None:
    h = Harness(max_rows=2, recheck_waiting_s=2.0)
    h.submit(Req("running", 20), Req("waiting", 1))
    h.run(10)  # ticks at clock 0, 1, ..., 9: asked at 0, 2, 4, 6 and 8
    assert h.asked.count("waiting") == 5


def test_the_groups_held_are_reported_active_first_and_forgotten_once_they_leave() -> None:
    h = Harness(max_rows=2)
    h.submit(Req("a", 2, size=64))
    assert h.engine.groups() == [64]  # waiting
    h.run(1)
    h.submit(Req("b", 1, size=128), Req("c", 1, size=64))  # wait behind "a", which fills the cap
    assert h.engine.groups() == [64, 128]
    h.run()
    assert h.engine.groups() == []

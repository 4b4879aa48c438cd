"""Step-level continuous batching: which requests run the next denoising step together (no torch, no Triton).

The unit of work is one *tick*: one UNet forward over the rows of every active request of one latent
size, whatever their steps, strength, guidance, scheduler or prompts. A request is admitted at a tick
boundary when its rows fit under ``max_rows`` (first come, first served: the head of the queue is never
overtaken, so a large request cannot starve), and leaves after its own last step.

Several sizes can be active at once; they cannot share a forward (a UNet batch needs one latent
shape). The rule: each tick goes to the size group that has had the least model time so far (a new
group starts level with the least-served one), so every active size gets an equal share of the model's
time and none starves, whatever the ratio of their step costs.

``StepEngine`` runs ticks on a ``Denoiser`` (``denoiser.py`` in the model, a fake in the unit tests) and
reports through callbacks; ``model.py`` drives it from one thread and turns the callbacks into Triton
responses.

Failures stay with the request they belong to: a failing shared forward fails the requests in it, a
request's own scheduler step or callback fails that request, and the engine goes on. Only a failure of
the engine itself (a bug in this file) stops it; then ``failure`` says why and ``submit`` refuses, so the
caller can answer at once instead of queueing work nobody will run.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

Flight = TypeVar("Flight")
T = TypeVar("T")
_log = logging.getLogger(__name__)


class Denoiser(Protocol[Flight]):
    """The torch side: what a tick needs from the model (``denoiser.StepDenoiser``)."""

    def rows(self, request: Any) -> int:
        """UNet rows the request holds while active (images, doubled under classifier-free guidance)."""
        ...

    def group(self, request: Any) -> Hashable:
        """Requests of one group can share a UNet forward (the latent size)."""
        ...

    def admit(self, requests: Sequence[Any]) -> list[Flight]:
        """Encode prompts and images, draw the initial noise: one in-flight state per request."""
        ...

    def step(self, flights: Sequence[Flight]) -> Sequence[Exception | None]:
        """One UNet forward over every flight's rows, then each request's own scheduler step. Raises when
        the shared forward fails (every flight in it fails); else, per flight, the exception its own step
        raised, or None."""
        ...

    def done(self, flight: Flight) -> bool: ...

    def progress(self, flight: Flight) -> tuple[int, int]:
        """(steps done, steps in all) of the request."""
        ...

    def decode(self, flights: Sequence[Flight]) -> list[Any]:
        """VAE-decode finished flights: one ``[n, H, W, 3]`` uint8 array per flight."""
        ...


class EngineStopped(RuntimeError):
    """``submit`` after the engine stopped: unloading, or dead (``StepEngine.failure`` says why)."""


@dataclass(eq=False)
class Job(Generic[Flight]):
    """One request in the engine. ``handle`` is the caller's (model.py: the Triton request)."""

    request: Any
    handle: Any
    rows: int
    group: Hashable
    flight: Flight | None = None
    deadline: float | None = None  # engine clock: still waiting for rows then, it leaves (Triton's queue timeout)
    # Answering a job is claimed once under ``lock`` (the engine thread and ``stop``, from another thread, can
    # race for it), and progress is posted under it only while unclaimed, so none lands after the answer.
    settled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class Callbacks:
    """How the engine reports. Every job gets exactly one of ``answer``, ``fail``, ``cancelled`` or
    ``timed_out``, unless ``stop`` hands it back to its caller. Any callback may raise: that fails its
    own job (with ``fail``, once; a ``fail`` that raises too is logged and the job dropped), never the
    engine or the other jobs; a raising ``on_tick`` is logged."""

    answer: Callable[[Job[Any], Any], None]
    fail: Callable[[Job[Any], str], None]
    cancelled: Callable[[Job[Any]], None]
    # A job whose ``deadline`` passed while it waited for rows; None: ``fail`` with a message saying so.
    timed_out: Callable[[Job[Any]], None] | None = None
    is_cancelled: Callable[[Job[Any]], bool] = lambda job: False
    # After every UNet forward: (the tick's jobs, rows in that forward); for metrics and the step pace.
    on_tick: Callable[[Sequence[Job[Any]], int], None] = lambda jobs, rows: None
    # After every step of a job: (job, steps done, steps in all); progress.
    on_progress: Callable[[Job[Any], int, int], None] = lambda job, done, total: None
    log_error: Callable[[str], None] = _log.error


@dataclass
class StepPlanner:
    """The pure scheduling state: a FIFO of waiting jobs, the active ones by group, each group's model time."""

    max_rows: int
    waiting: deque[Job[Any]] = field(default_factory=deque)
    active: dict[Hashable, list[Job[Any]]] = field(default_factory=dict)
    served_s: dict[Hashable, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1 but is {self.max_rows}")

    @property
    def rows_active(self) -> int:
        return sum(job.rows for jobs in self.active.values() for job in jobs)

    @property
    def rows_waiting(self) -> int:
        return sum(job.rows for job in self.waiting)

    @property
    def jobs(self) -> int:
        return len(self.waiting) + sum(len(jobs) for jobs in self.active.values())

    def offer(self, job: Job[Any]) -> None:
        self.waiting.append(job)

    def admissible(self) -> list[Job[Any]]:
        """Pop the waiting jobs that fit now, in arrival order; the head is never overtaken. A job larger
        than ``max_rows`` runs when nothing else does (it could never fit otherwise)."""
        taken: list[Job[Any]] = []
        rows = self.rows_active
        while self.waiting:
            head = self.waiting[0]
            if rows + head.rows > self.max_rows and (rows or taken):
                break
            taken.append(self.waiting.popleft())
            rows += head.rows
        return taken

    def activate(self, job: Job[Any]) -> None:
        if job.group not in self.active:
            # A group that (re)joins starts level with the least-served active group: it gets its share
            # from now on, not a catch-up burst for the time it was absent.
            self.served_s[job.group] = min((self.served_s[g] for g in self.active), default=0.0)
        self.active.setdefault(job.group, []).append(job)

    def next_group(self) -> Hashable | None:
        """The active group with the least model time (ties: the one that became active first)."""
        if not self.active:
            return None
        return min(self.active, key=lambda group: self.served_s[group])

    def charge(self, group: Hashable, seconds: float) -> None:
        if group in self.active:  # a group that left during its forward (it failed) keeps no account
            self.served_s[group] += seconds

    def remove(self, job: Job[Any]) -> None:
        jobs = self.active.get(job.group, [])
        if job in jobs:
            jobs.remove(job)
            if not jobs:
                del self.active[job.group]
                self.served_s.pop(job.group, None)
        elif job in self.waiting:
            self.waiting.remove(job)


# What a job past its deadline gets when the caller gave no ``timed_out`` callback.
TIMED_OUT = "timed out while waiting for rows"


class StepEngine:
    """Runs ticks; thread-safe ``submit`` from Triton's ``execute``, ``tick``/``run`` from one engine thread."""

    def __init__(
        self,
        denoiser: Denoiser[Any],
        max_rows: int,
        callbacks: Callbacks,
        clock: Callable[[], float] = time.perf_counter,
        recheck_waiting_s: float = 0.05,
    ) -> None:
        self.denoiser = denoiser
        self.planner = StepPlanner(max_rows)
        self.callbacks = callbacks
        self._clock = clock
        self._lock = threading.Condition()
        self._stopping = False
        self.failure: BaseException | None = None  # what stopped ``run`` for good, if anything did
        # Jobs taken off the waiting line and not yet active (admission runs outside the lock): ``stop``
        # must hand them back too.
        self._admitting: list[Job[Any]] = []
        # Asking Triton whether a waiting request was cancelled is an IPC (40-90 us): at most this often.
        self._recheck_waiting_s = recheck_waiting_s
        self._waiting_checked_at = -float("inf")

    # -- the caller's side (any thread) --------------------------------------------------------------

    def submit(self, request: Any, handle: Any, timeout_s: float | None = None) -> Job[Any]:
        """Queue a request. ``timeout_s``: how long it may wait for rows (not run); raises ``EngineStopped``
        once the engine has stopped, so the caller answers at once."""
        job: Job[Any] = Job(request, handle, self.denoiser.rows(request), self.denoiser.group(request))
        with self._lock:
            if self._stopping:
                raise EngineStopped(f"the step engine stopped: {self.failure!r}" if self.failure else "unloading")
            if timeout_s is not None:
                job.deadline = self._clock() + timeout_s
            self.planner.offer(job)
            self._lock.notify_all()
        return job

    @property
    def stopped(self) -> bool:
        return self._stopping

    def full(self) -> bool:
        """Jobs wait that will not fit at the next tick (those that will fit are only waiting for it). The
        rows of jobs being admitted count: they are off the waiting line and not yet active."""
        planner = self.planner
        rows = planner.rows_active + sum(job.rows for job in self._admitting) + planner.rows_waiting
        return bool(planner.waiting) and rows > planner.max_rows

    def wait_for_room(self, timeout_s: float | None = None) -> bool:
        """Block while jobs wait for rows (so further requests stay in Triton's queue, where its queue
        policy, timeouts and cancellation apply). True when there is room, False on timeout or stop."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        with self._lock:
            while self.full() and not self._stopping:
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
            return not self._stopping

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "jobs": self.planner.jobs,
                "rows_active": self.planner.rows_active,
                "rows_waiting": self.planner.rows_waiting,
            }

    def groups(self) -> list[Hashable]:
        """The groups (latent sizes) of the jobs it holds, active ones first: what a placer weighs, since a
        request of a group already here shares its forward and one of another group adds a forward."""
        with self._lock:
            held = [group for group, jobs in self.planner.active.items() if jobs]
            return list(dict.fromkeys([*held, *(job.group for job in self.planner.waiting)]))

    def stop(self) -> list[Job[Any]]:
        """Stop the loop; returns the jobs it still held, each claimed for the caller to answer (one the
        engine thread is answering right now is not among them: it is answered once, by that thread)."""
        with self._lock:
            self._stopping = True
            held = [*self._admitting, *self.planner.waiting]
            held += [job for jobs in self.planner.active.values() for job in jobs]
            self.planner.waiting.clear()
            self.planner.active.clear()
            self._lock.notify_all()
        return [job for job in held if self._settle(job)]

    # -- the engine thread ---------------------------------------------------------------------------

    def run(self) -> None:
        """Tick until ``stop``; sleeps while there is nothing to do. Whatever escapes a tick is the engine's
        own failure (each request's is caught inside it): recorded in ``failure``, and the engine refuses
        new work from then on; the caller answers the jobs ``stop`` hands back."""
        try:
            while True:
                with self._lock:
                    while not self._stopping and not self.planner.jobs:
                        self._lock.wait()
                    if self._stopping:
                        return
                self.tick()
        except BaseException as exc:
            with self._lock:
                self.failure = exc
                self._stopping = True
                self._lock.notify_all()  # wait_for_room returns: nothing will make room any more
            raise

    def tick(self) -> bool:
        """Drop waiting jobs that were cancelled or timed out, admit what fits, run one step of one group,
        retire who finished. False when idle."""
        self._drop_waiting()
        self._admit()
        with self._lock:
            group = self.planner.next_group()
            jobs = list(self.planner.active.get(group, []))  # None is a group too (any Hashable)
        jobs = self._drop_cancelled(jobs)
        if not jobs:
            return bool(self.planner.jobs)
        started = self._clock()
        try:
            failures = self.denoiser.step([job.flight for job in jobs])
        except Exception as exc:  # the shared forward: it fails the requests in it; the others go on
            self._fail(jobs, exc)
            return True
        finally:
            with self._lock:
                self.planner.charge(group, self._clock() - started)
        try:
            self.callbacks.on_tick(jobs, sum(job.rows for job in jobs))
        except Exception as exc:  # metrics and pace: not any one request's, so nobody fails
            self._log(f"on_tick failed: {exc!r}")
        finished = []
        for job, failure in zip(jobs, failures, strict=True):
            if failure is not None:  # its own guidance combine or scheduler step: only it fails
                self._fail([job], failure)
                continue
            try:
                done, total = self.denoiser.progress(job.flight)
                with job.lock:
                    if not job.settled:  # stop() may have claimed it meanwhile: its post would outlive it
                        self.callbacks.on_progress(job, done, total)
                if self.denoiser.done(job.flight):
                    finished.append(job)
            except Exception as exc:
                self._fail([job], exc)
        self._retire(finished)
        return True

    def _drop_waiting(self) -> None:
        """Waiting jobs obey Triton's queue policy here too: one past its deadline or cancelled leaves now
        and frees its rows (``wait_for_room`` wakes), instead of holding its place until it reaches the head."""
        now = self._clock()
        with self._lock:
            waiting = list(self.planner.waiting)
        if not waiting:
            return
        expired = [job for job in waiting if job.deadline is not None and now >= job.deadline]
        self._finish(expired, self._timed_out)
        if now - self._waiting_checked_at >= self._recheck_waiting_s:
            self._waiting_checked_at = now
            self._drop_cancelled([job for job in waiting if job not in expired])

    def _admit(self) -> None:
        with self._lock:
            taken = self.planner.admissible()
            if taken:
                self._admitting = taken
                self._lock.notify_all()  # wait_for_room: the waiting line moved
        try:
            live = self._drop_cancelled(taken)
            if not live:
                return
            try:
                flights = self.denoiser.admit([job.request for job in live])
                # One flight per request, or they all fail: one left without a flight would be in no list.
                admitted = list(zip(live, flights, strict=True))
            except Exception as exc:
                self._fail(live, exc)
                return
            with self._lock:
                for job, flight in admitted:
                    if not job.settled:  # stop() claimed it while it was being admitted
                        job.flight = flight
                        self.planner.activate(job)
        finally:
            with self._lock:
                self._admitting = []

    def _drop_cancelled(self, jobs: list[Job[Any]]) -> list[Job[Any]]:
        live = []
        for job in jobs:
            try:
                cancelled = self.callbacks.is_cancelled(job)
            except Exception as exc:
                self._fail([job], exc)
                continue
            if cancelled:
                self._finish([job], self.callbacks.cancelled)
            else:
                live.append(job)
        return live

    def _retire(self, finished: list[Job[Any]]) -> None:
        if not finished:
            return
        try:
            images = self.denoiser.decode([job.flight for job in finished])
        except Exception as exc:
            self._fail(finished, exc)
            return
        answers = dict(zip(finished, images, strict=True))
        self._finish(finished, lambda job: self.callbacks.answer(job, answers[job]))

    def _timed_out(self, job: Job[Any]) -> None:
        if self.callbacks.timed_out is None:
            self.callbacks.fail(job, TIMED_OUT)
        else:
            self.callbacks.timed_out(job)

    def _fail(self, jobs: list[Job[Any]], exc: Exception) -> None:
        message = f"generation failed: {type(exc).__name__}: {exc}"
        self._finish(jobs, lambda job: self.callbacks.fail(job, message), fallback=False)

    def _finish(self, jobs: list[Job[Any]], report: Callable[[Job[Any]], None], fallback: bool = True) -> None:
        """Answer each job once through ``report``; if that raises, ``fail`` it instead (``fallback``),
        and if that raises too, log and drop it: one request's answer never stops the engine."""
        for job in jobs:
            if not self._settle(job):
                continue
            try:
                report(job)
            except Exception as exc:
                if not fallback:
                    self._log(f"could not answer a request, dropped: {exc!r}")
                    continue
                try:
                    self.callbacks.fail(job, f"generation failed: {type(exc).__name__}: {exc}")
                except Exception as again:
                    self._log(f"could not answer a request ({exc!r}) nor fail it, dropped: {again!r}")

    def _settle(self, job: Job[Any]) -> bool:
        """Claim the right to answer ``job``: True exactly once, whichever thread asks first."""
        with job.lock:
            if job.settled:
                return False
            job.settled = True
        with self._lock:
            self.planner.remove(job)
            self._lock.notify_all()  # wait_for_room: its rows are free
        return True

    def _log(self, message: str) -> None:
        with contextlib.suppress(Exception):  # nowhere left to say it; the engine must go on
            self.callbacks.log_error(f"step engine: {message}")


class OwnerThread:
    """One daemon thread that runs the work handed to it, in order: the thread that owns torch.

    Not a ``ThreadPoolExecutor``: its workers are joined at interpreter exit, and the engine's loop never
    returns unless stopped, so a process whose model was never finalized would never exit.
    """

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], T]) -> Future[T]:
        done: Future[T] = Future()
        self._work.put((work, done))
        return done

    def _serve(self) -> None:
        while True:
            work, done = self._work.get()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(work())
            except BaseException as exc:  # handed to whoever waits on it
                done.set_exception(exc)

"""``model.py``'s failure paths, each injected, under the fake ``pb_utils`` on the real tiny pipeline: a raising
callback, a dead step engine, a request cancelled or timed out while it waits for rows, ``finalize`` racing
the engine thread. Every request is answered exactly once, and no failure hangs one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from embedded.supervisor import canary
from frontend.errors import BackendUnavailable
from frontend.triton_backend import is_death, map_error

from . import fake_pb_utils as pb
from .support import MODEL_DIR, answer, make_model, request

# Room for one guided image: a second request waits for rows while the first runs, at least 50 ms a step.
NARROW = {"max_rows_in_flight": "2", "max_images_per_prompt": "1", "min_step_ms": "50"}
# config.pbtxt's queue policy as Triton writes it into the model config's JSON (uint64 as a string).
QUEUE_POLICY = {
    "default_queue_policy": {
        "timeout_action": "REJECT",
        "default_timeout_microseconds": "3600000000",
        "allow_timeout_override": True,
        "max_queue_size": 32,
    }
}


def steps(n: int) -> np.ndarray:
    return np.array([[n]], np.int32)


def broken(what: str) -> Callable[..., Any]:
    def raise_(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"{what} broke")

    return raise_


@pytest.fixture
def fresh(model_module: Any, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Models of their own (a test that kills or unloads one), finalized after the test."""
    monkeypatch.setenv("SD_MODEL_PATH", str(tiny_model_path))
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        made.append(make_model(model_module, **kwargs))
        return made[-1]

    yield make
    for instance in made:
        instance.finalize()


@pytest.fixture(scope="module")
def narrow(model_module: Any, tiny_model_path: Path, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch_module.setenv("SD_MODEL_PATH", str(tiny_model_path))
    instance = make_model(model_module, dynamic_batching=QUEUE_POLICY, **NARROW)
    yield instance
    instance.finalize()


# -- one request's callback fails: that request fails, the engine and its neighbours go on -------------------
def inject(where: str, model: Any, bad: pb.InferenceRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if where == "is_cancelled":  # Triton IPC
        bad.is_cancelled = broken("is_cancelled")  # type: ignore[method-assign]
    elif where == "progress":  # the progress post (on_progress)
        bad.id = "bad"
        post = model.board.post
        monkeypatch.setattr(model.board, "post", lambda rid, p: broken("progress")() if rid == "bad" else post(rid, p))
    elif where == "answer":  # building the answer (_images, under answer)
        images = model._images
        monkeypatch.setattr(model, "_images", lambda r, i: broken("answer")() if r.seed == 13 else images(r, i))


@pytest.mark.parametrize("where", ["is_cancelled", "answer"])
def test_a_raising_callback_fails_only_its_own_request_and_the_engine_goes_on(
    model: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    bad = request(seed=13, strength=1.0)
    inject(where, model, bad, monkeypatch)
    responses = answer(model, [request(seed=12), bad, request(seed=14)], timeout_s=30)
    assert responses[0].error() is None and responses[2].error() is None
    assert responses[1].error().code() == pb.TritonError.INTERNAL
    assert responses[1].error().message() == f"generation failed: RuntimeError: {where} broke"
    assert answer(model, [request(seed=15)], timeout_s=30)[0].error() is None  # still running


def test_progress_that_cannot_be_posted_costs_the_request_its_progress_not_its_images(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = answer(model, [request(seed=13, strength=1.0)], timeout_s=30)[0]
    bad = request(seed=13, strength=1.0)
    inject("progress", model, bad, monkeypatch)
    before = len(pb.Logger.lines)
    responses = answer(model, [request(seed=12), bad, request(seed=14)], timeout_s=30)
    assert all(r.error() is None for r in responses)
    assert np.array_equal(responses[1].output("images"), alone.output("images"))
    assert any(
        "could not post progress for bad: RuntimeError('progress broke')" in line for line in pb.Logger.lines[before:]
    )


def test_failing_metrics_fail_no_request(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """on_tick (the step counter, the rows histogram, the pace) belongs to no request: logged, nobody fails."""
    monkeypatch.setattr(model.steps, "increment", broken("metrics"))
    before = len(pb.Logger.lines)
    responses = answer(model, [request(seed=1), request(seed=2)], timeout_s=30)
    assert all(r.error() is None for r in responses)
    assert any("on_tick failed: RuntimeError('metrics broke')" in line for line in pb.Logger.lines[before:])


# -- the engine cannot go on: fail fast, and say so in words the frontend and the canary call death ----------
def test_a_model_whose_engine_died_answers_a_new_request_at_once_and_the_canary_reports_it(
    fresh: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fresh()
    model.engine.tick = broken("the engine's own tick")  # what escapes a tick is the engine's own failure
    held = request(seed=1)
    (dying,) = answer(model, [held], timeout_s=10)  # the request it held when it died is answered too
    late = request(seed=2)
    started = time.monotonic()
    assert model.execute([late]) is None
    assert late.sender.final.wait(5), "a dead engine's model left a new request waiting"
    assert time.monotonic() - started < 5
    (refused,) = late.sender.responses
    message = refused.error().message()
    assert refused.error().code() == dying.error().code() == pb.TritonError.UNAVAILABLE
    assert message == dying.error().message()
    assert message.startswith("m is not healthy: its step engine stopped (RuntimeError(")
    # The liveness canary, shown this answer (as Triton's HTTP endpoint renders a model's error): dead, fatal.
    monkeypatch.setattr(canary, "stub_state", lambda *_: "alive")
    monkeypatch.setattr(canary, "is_reachable", lambda *_: None)
    monkeypatch.setattr(canary, "read_progress", lambda *_: ([1, 1, 1], 0))
    monkeypatch.setattr(canary, "probe", lambda *_: f"HTTP 503: {json.dumps({'error': message})}")
    verdict = canary.Liveness("127.0.0.1:1", "127.0.0.1:2").judge(now=100)
    assert (verdict.alive, verdict.fatal) == (False, True), verdict
    # The frontend, shown it over gRPC: a death (/readyz unready), and a 503 for the caller.
    failure = InferenceServerException(message, status="StatusCode.UNAVAILABLE")
    assert is_death(failure) and isinstance(map_error(failure), BackendUnavailable)


# -- waiting for rows obeys the queue policy: cancelled or timed out, a request leaves at once ---------------
def start_long(model: Any) -> pb.InferenceRequest:
    """A request that holds every row for seconds (41 forwards of at least 50 ms)."""
    long = request(seed=1, strength=1.0, num_inference_steps=steps(40))
    assert model.execute([long]) is None
    return long


def execute_in_background(model: Any, waiting: pb.InferenceRequest) -> threading.Thread:
    """Triton's execute() for a request that does not fit: it blocks while the request waits for rows."""
    thread = threading.Thread(target=model.execute, args=([waiting],), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while model.engine.stats() != {"jobs": 2, "rows_active": 2, "rows_waiting": 2}:
        assert time.monotonic() < deadline, model.engine.stats()
        time.sleep(0.01)
    assert thread.is_alive()
    return thread


def end(long: pb.InferenceRequest) -> None:
    long.cancelled = True
    assert long.sender.final.wait(10)


def test_a_request_cancelled_while_waiting_for_rows_is_answered_at_once_and_frees_execute(narrow: Any) -> None:
    long = start_long(narrow)
    waiting = request(seed=2)
    execute = execute_in_background(narrow, waiting)
    waiting.cancelled = True
    assert waiting.sender.final.wait(10)
    assert not long.sender.final.is_set(), "answered only when it reached the head of the line"
    assert waiting.sender.responses[0].error().code() == pb.TritonError.CANCELLED
    execute.join(10)
    assert not execute.is_alive()  # Triton's next batch moves again
    assert narrow.engine.stats()["rows_waiting"] == 0
    end(long)


def test_a_request_past_its_timeout_while_waiting_for_rows_is_answered_as_tritons_queue_would(narrow: Any) -> None:
    long = start_long(narrow)
    waiting = request(seed=3)
    waiting.timeout_us = 300_000  # the frontend's Cancel-After, sent as the request's Triton timeout
    started = time.monotonic()
    execute = execute_in_background(narrow, waiting)
    assert waiting.sender.final.wait(10)
    assert not long.sender.final.is_set(), "answered only when it reached the head of the line"
    assert time.monotonic() - started >= 0.3
    error = waiting.sender.responses[0].error()
    # Triton's own words and code for a queue timeout: the frontend maps them to QueueDeadlineExpired (aborted).
    assert (error.code(), error.message()) == (pb.TritonError.UNAVAILABLE, "Request timeout expired")
    execute.join(10)
    assert not execute.is_alive()
    end(long)


def test_the_wait_for_rows_is_bounded_as_tritons_queue_policy_bounds_its_queue(model_module: Any) -> None:
    shipped = (MODEL_DIR / "config.pbtxt").read_text()
    assert re.search(r"default_timeout_microseconds: 3600000000\s+allow_timeout_override: true", shipped)
    policy = model_module.QueuePolicy.from_config({"dynamic_batching": QUEUE_POLICY})
    assert policy.timeout_s(0) == 3600  # no timeout of its own: the default
    assert policy.timeout_s(500_000) == 0.5  # a shorter one of its own overrides it
    assert policy.timeout_s(7_200_000_000) == 3600  # a longer one does not
    assert model_module.QueuePolicy(3_600_000_000, False).timeout_s(500_000) == 3600  # no override allowed
    assert model_module.QueuePolicy.from_config({}).timeout_s(500_000) is None  # Triton: no default, no timeout


# -- finalize while the engine thread is inside a step: each request answered once, no post after ----------
def test_finalize_answers_each_request_once_while_the_engine_thread_is_mid_step(fresh: Callable[..., Any]) -> None:
    model = fresh()
    inside, release = threading.Event(), threading.Event()

    def hold(*_: Any) -> None:
        inside.set()
        release.wait(10)

    hook = model.runner.pipe.unet.register_forward_hook(hold)
    # Euler, 1 step: its only forward is its last, so the engine thread answers it right after (unless it
    # was already answered), and posts its progress first (unless it was already answered).
    last = request(seed=5, strength=1.0, num_inference_steps=steps(1), scheduler=np.array([[b"euler"]], object))
    last.id = "run-finalized-mid-step"
    model.execute([last])
    assert inside.wait(30)
    before = len(pb.Logger.lines)
    threading.Timer(0.3, release.set).start()  # after stop() has answered it, while finalize waits for the thread
    model.finalize()
    hook.remove()
    (unloading,) = last.sender.responses
    assert unloading.error().code() == pb.TritonError.UNAVAILABLE
    assert unloading.error().message() == "the model is unloading"
    assert not any("could not answer" in line for line in pb.Logger.lines[before:]), pb.Logger.lines[before:]
    assert model.board.read("run-finalized-mid-step") is None  # no post landed after its answer

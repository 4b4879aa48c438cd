"""Run control's pure parts: durations, Idempotency-Key checks, fingerprints, events, per-key fairness."""

from __future__ import annotations

import pytest

from frontend.errors import InvalidRequest
from frontend.quota import Quota, decide, headers
from frontend.runs.control import cancel_after, events_so_far, fingerprint, idempotency_key, parse_duration
from frontend.store import Run, RunStatus


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), ("45", 45), (120, 120)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text, "Cancel-After") == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [("soon", "duration such as"), ("0.5s", "between 1 s"), ("25h", "but is 90000 s"), ("", "duration")],
)
def test_bad_durations_name_the_parameter_and_echo_the_value(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_duration(text, "Cancel-After")
    assert caught.value.param == "Cancel-After"


def test_the_header_wins_over_the_body_field() -> None:
    assert cancel_after("2m", {"cancel_after": "5s"}) == 120
    assert cancel_after(None, {"cancel_after": "5s"}) == 5
    assert cancel_after(None, {}) is None


def test_idempotency_keys_are_printable_ascii_up_to_255() -> None:
    assert idempotency_key('"abc-1"') == "abc-1" and idempotency_key(None) is None
    for bad in ("", "x" * 256, "caf\u00e9", "tab\tin"):
        with pytest.raises(InvalidRequest, match="Idempotency-Key"):
            idempotency_key(bad)


def test_fingerprints_ignore_key_order_but_not_values_or_the_answer_mode() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}, False) == fingerprint({"b": [1, 2], "a": 1}, False)
    assert fingerprint({"a": 1}, False) != fingerprint({"a": 2}, False)
    assert fingerprint({"a": 1}, False) != fingerprint({"a": 1}, True)


def run(status: RunStatus, started_at: float | None, created_at: float = 100.0) -> Run:
    return Run("r", "k", status, created_at, started_at, None, {}, None, None, None)


def test_events_follow_the_record() -> None:
    assert [(e.id, e.status) for e in events_so_far(run(RunStatus.QUEUED, None))] == [(1, "queued")]
    assert [e.id for e in events_so_far(run(RunStatus.SUCCEEDED, 101.0))] == [1, 2, 3]
    assert [e.status for e in events_so_far(run(RunStatus.PROCESSING, 100.0))] == ["processing"]  # synchronous
    assert [e.status for e in events_so_far(run(RunStatus.ABORTED, None))] == ["queued", "aborted"]


def test_fairness_caps_runs_in_flight_and_refills_tokens() -> None:
    """``quota.decide`` as a store calls it: the key's slots in flight and its bucket as stored, the clock."""
    quota = Quota(max_in_flight=3, rate_per_s=1.0, burst=2)
    first = decide(quota, 0, None, None, now=0.0)  # a key never seen: a full bucket
    assert (first.refused, first.in_flight, first.tokens) == (None, 1, 1.0)
    assert headers(quota, first)["RateLimit"] == '"runs";r=1;t=1, "inflight";r=2'
    second = decide(quota, 1, first.tokens, 0.0, now=0.0)
    limited = decide(quota, 2, second.tokens, 0.0, now=0.0)
    assert (limited.refused, limited.retry_after_s, limited.in_flight) == ("rate", 1, 2)
    assert headers(quota, limited)["RateLimit-Policy"] == '"runs";q=2;w=2, "inflight";q=3'
    assert decide(quota, 0, None, None, now=0.0).refused is None  # another key has its own bucket
    refilled = decide(quota, 2, limited.tokens, 0.0, now=1.0)  # one token back after a second
    assert refilled.refused is None and refilled.in_flight == 3
    capped = decide(quota, 3, refilled.tokens, 1.0, now=5.0)
    assert capped.refused == "in_flight" and capped.tokens == 2.0  # refused by the cap: no token taken
    assert headers(quota, capped)["RateLimit"].endswith('"inflight";r=0')
    assert decide(quota, 2, capped.tokens, 5.0, now=5.0).refused is None  # one run ended
    assert headers(Quota(0, 0.0, 1), capped) == {}
    assert not Quota(0, 0.0, 1).active and Quota(1, 0.0, 1).active and Quota(0, 0.5, 1).active


def test_progress_events_only_move_forward() -> None:
    """The store's progress may lag the feed's: a stream that reads either never shows a step twice or back."""
    from frontend.runs.events import moved_on

    assert moved_on({"step": 1, "preview": None}, None)
    assert moved_on({"step": 5, "preview": None}, (4, "data:a"))
    assert not moved_on({"step": 4, "preview": "data:b"}, (4, "data:a"))  # the same step again
    assert not moved_on({"step": 3, "preview": "data:c"}, (4, None))  # a lagging copy
    assert moved_on({"step": 4, "preview": "data:a"}, (4, None))  # the step's preview, once

"""API-key matching is constant time by construction: every check goes through ``hmac.compare_digest``,
against every known key (no early exit), over two equal-length digests whatever was presented."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from frontend import auth

KEYS = ("sk-first-key-0123456789", "sk-second-key-9876543210", "sk-third")


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    seen: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    return seen


@pytest.mark.parametrize(
    "presented, expected",
    [
        (KEYS[0], 0),  # the first key: no early exit either
        (KEYS[2], 2),
        ("x", None),
        (KEYS[1][:-1], None),  # all but the last character
        ("k" * 10_000, None),
        ("clé\udcff", None),  # not UTF-8 in the header: surrogates
    ],
)
def test_every_key_is_compared_with_compare_digest_over_equal_length_digests(
    comparisons: list[tuple[Any, Any]], presented: str, expected: int | None
) -> None:
    hashes = tuple(auth.key_hash(key) for key in KEYS)
    assert auth.match_key(presented, hashes) == (None if expected is None else hashes[expected])
    assert len(comparisons) == len(hashes)  # every known key, whatever matched
    assert {b for _, b in comparisons} == set(hashes)
    assert all(isinstance(a, str) and len(a) == len(b) == 64 for a, b in comparisons)
    assert {a for a, _ in comparisons} == {auth.key_hash(presented)}  # the digest, never the raw key


def test_presented_key_takes_the_bare_key_or_a_bearer_token() -> None:
    assert auth.presented_key("sk-1") == auth.presented_key("Bearer sk-1") == auth.presented_key(" bearer  sk-1 ")
    assert auth.presented_key("sk-1") == "sk-1"
    assert auth.presented_key("") is None and auth.presented_key("   ") is None and auth.presented_key(None) is None


def test_only_a_whole_configured_key_matches_and_it_names_its_hash() -> None:
    """(Was half of test_frontend_units' "constant time" test, which asserted nothing about time: the
    constant-time property is test_every_key_is_compared_with_compare_digest_over_equal_length_digests.)"""
    hashes = (auth.key_hash("alpha"), auth.key_hash("beta"))
    assert auth.match_key("beta", hashes) == hashes[1]
    assert auth.match_key("gamma", hashes) is None and auth.match_key("alph", hashes) is None
    assert auth.match_key("alpha ", hashes) is None

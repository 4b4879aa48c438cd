"""Per-key fairness: a cap on runs in flight and a token bucket per API key, so one tenant's burst
cannot fill the model's queue ahead of everyone else. Per replica (each replica enforces its share).

Past either limit: 429 with ``Retry-After`` and the IETF ratelimit headers (``RateLimit-Policy``,
``RateLimit``: draft-ietf-httpapi-ratelimit-headers), which answers within the limits carry too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import RateLimited

POLICY = "runs"  # the token bucket
IN_FLIGHT_POLICY = "inflight"  # the cap on runs in flight (a quota of concurrent runs, no window)


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class Slot:
    """One admitted run's place in its key's in-flight count: given back once, by whoever holds it last
    (the request handler if the run never started, the run's task otherwise)."""

    fairness: Fairness
    key_hash: str
    headers: dict[str, str]
    held: bool = True
    started: bool = False  # a run holds it now: the run gives it back when it ends

    def release(self) -> None:
        if self.held:
            self.held = False
            self.fairness.done(self.key_hash)


@dataclass
class Fairness:
    rate_per_s: float  # tokens a key earns per second (0: no rate limit)
    burst: int  # the bucket's size
    max_in_flight: int  # runs of one key accepted and not finished (0: no cap)
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)

    def admit(self, key_hash: str) -> dict[str, str]:
        """Take one token and one in-flight slot for ``key_hash``; returns the headers to answer with.
        Raises RateLimited (429) when the key is past either; nothing is taken then."""
        if self.max_in_flight and self._in_flight.get(key_hash, 0) >= self.max_in_flight:
            raise RateLimited(
                f"this API key has {self.max_in_flight} runs in flight, the most allowed"
                " (SD_MAX_RUNS_IN_FLIGHT_PER_KEY); retry when one finishes",
                headers={"Retry-After": "1", **self.headers(key_hash)},
            )
        if self.rate_per_s > 0:
            bucket = self._refill(key_hash)
            if bucket.tokens < 1:
                wait_s = math.ceil((1 - bucket.tokens) / self.rate_per_s)
                raise RateLimited(
                    f"this API key is past {self.rate_per_s:g} runs/s (burst {self.burst}) (SD_RATE_PER_KEY_PER_S);"
                    f" retry in {wait_s} s",
                    headers={"Retry-After": str(wait_s), **self.headers(key_hash, reset_s=wait_s)},
                )
            bucket.tokens -= 1
        self._in_flight[key_hash] = self._in_flight.get(key_hash, 0) + 1
        return self.headers(key_hash)

    def acquire(self, key_hash: str) -> Slot:
        """``admit`` as a ``Slot`` to release exactly once."""
        return Slot(self, key_hash, self.admit(key_hash))

    def done(self, key_hash: str) -> None:
        """A run admitted for ``key_hash`` finished (or was never started)."""
        left = self._in_flight.get(key_hash, 0) - 1
        if left > 0:
            self._in_flight[key_hash] = left
        else:
            self._in_flight.pop(key_hash, None)

    def in_flight(self, key_hash: str) -> int:
        return self._in_flight.get(key_hash, 0)

    def _refill(self, key_hash: str) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.setdefault(key_hash, _Bucket(float(self.burst), now))
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        return bucket

    def headers(self, key_hash: str, reset_s: int | None = None) -> dict[str, str]:
        """One list item per policy in force: the bucket (``runs``) and the in-flight cap (``inflight``)."""
        policies, states = [], []
        if self.rate_per_s > 0:
            bucket = self._refill(key_hash)
            remaining = max(0, math.floor(bucket.tokens))
            if reset_s is None:
                full = bucket.tokens >= self.burst
                reset_s = 0 if full else math.ceil((self.burst - bucket.tokens) / self.rate_per_s)
            policies.append(f'"{POLICY}";q={self.burst};w={math.ceil(self.burst / self.rate_per_s)}')
            states.append(f'"{POLICY}";r={remaining};t={reset_s}')
        if self.max_in_flight:
            policies.append(f'"{IN_FLIGHT_POLICY}";q={self.max_in_flight}')
            states.append(f'"{IN_FLIGHT_POLICY}";r={max(0, self.max_in_flight - self.in_flight(key_hash))}')
        if not policies:
            return {}
        return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)}

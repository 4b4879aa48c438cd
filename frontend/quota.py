"""Per-key limits as one rule: a cap on runs in flight and a token bucket, decided from a key's state
wherever that state lives. The run store keeps it (``RunStore.take_quota``), so on PostgreSQL the limits
hold for a key across every replica, and each engine decides with this one function inside its own
transaction. No I/O here."""

from __future__ import annotations

import math
from dataclasses import dataclass

POLICY = "runs"  # the token bucket
IN_FLIGHT_POLICY = "inflight"  # the cap on runs in flight (a quota of concurrent runs, no window)


@dataclass(frozen=True)
class Quota:
    max_in_flight: int  # runs of one key accepted and not finished (0: no cap)
    rate_per_s: float  # tokens a key earns per second (0: no rate limit)
    burst: int  # the bucket's size

    @property
    def active(self) -> bool:
        return self.max_in_flight > 0 or self.rate_per_s > 0


@dataclass(frozen=True)
class Decision:
    """One request's admission: ``refused`` is None (admitted), ``"in_flight"`` or ``"rate"``."""

    refused: str | None
    in_flight: int  # the key's runs in flight after it (this one included when admitted)
    tokens: float  # the key's bucket after it
    retry_after_s: int = 0  # refused: when to try again


def refill(quota: Quota, tokens: float | None, updated_at: float | None, now: float) -> float:
    """The bucket now: ``burst`` for a key never seen, else what it had plus what it earned since."""
    if tokens is None or updated_at is None:
        return float(quota.burst)
    return min(float(quota.burst), tokens + max(0.0, now - updated_at) * quota.rate_per_s)


def decide(quota: Quota, in_flight: int, tokens: float | None, updated_at: float | None, now: float) -> Decision:
    """Admit one more run of a key that has ``in_flight`` runs and the bucket (``tokens``, ``updated_at``),
    or say which limit refuses it. The in-flight cap is checked first, so a refused run costs no token."""
    bucket = refill(quota, tokens, updated_at, now)
    if quota.max_in_flight and in_flight >= quota.max_in_flight:
        return Decision("in_flight", in_flight, bucket, retry_after_s=1)
    if quota.rate_per_s > 0:
        if bucket < 1:
            return Decision("rate", in_flight, bucket, retry_after_s=math.ceil((1 - bucket) / quota.rate_per_s))
        bucket -= 1
    return Decision(None, in_flight + 1, bucket)


def headers(quota: Quota, decision: Decision) -> dict[str, str]:
    """The IETF ratelimit headers (draft-ietf-httpapi-ratelimit-headers): one list item per policy in force."""
    policies, states = [], []
    if quota.rate_per_s > 0:
        remaining = max(0, math.floor(decision.tokens))
        if decision.refused == "rate":
            reset_s = decision.retry_after_s
        else:
            full = decision.tokens >= quota.burst
            reset_s = 0 if full else math.ceil((quota.burst - decision.tokens) / quota.rate_per_s)
        policies.append(f'"{POLICY}";q={quota.burst};w={math.ceil(quota.burst / quota.rate_per_s)}')
        states.append(f'"{POLICY}";r={remaining};t={reset_s}')
    if quota.max_in_flight:
        policies.append(f'"{IN_FLIGHT_POLICY}";q={quota.max_in_flight}')
        states.append(f'"{IN_FLIGHT_POLICY}";r={max(0, quota.max_in_flight - decision.in_flight)}')
    if not policies:
        return {}
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)}

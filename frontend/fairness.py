"""Per-key fairness: a cap on runs in flight and a token bucket per API key, so one tenant's burst
cannot fill the model's queue ahead of everyone else. The state lives in the run store, so on PostgreSQL
a key's limits hold across every replica (not a share per replica); the rule is ``quota.decide``.

Each admitted run holds a slot in the store, under a lease like its run's: given back when the run ends
(or never starts), renewed by the heartbeat while it runs, and lapsing within ``SD_LEASE_S`` when its
replica dies, so a key is never capped by runs nobody runs.

Past either limit: 429 with ``Retry-After`` and the IETF ratelimit headers (``RateLimit-Policy``,
``RateLimit``: draft-ietf-httpapi-ratelimit-headers), which answers within the limits carry too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from .errors import RateLimited
from .quota import Quota, headers
from .store import RunStore

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One admitted run's place in its key's in-flight count: given back once, by whoever holds it last
    (the request handler if the run never started, the run's task otherwise)."""

    fairness: Fairness
    id: str  # "" when no limit is in force: nothing was taken
    headers: dict[str, str]
    held: bool = True
    started: bool = False  # a run holds it now: the run gives it back when it ends

    def release(self) -> None:
        if self.held:
            self.held = False
            self.fairness.give_back(self.id)


@dataclass
class Fairness:
    quota: Quota
    store: RunStore
    owner: str  # this replica: the holder of its slots' leases
    lease_s: float
    _held: set[str] = field(default_factory=set)
    _returns: set[asyncio.Task[None]] = field(default_factory=set)

    async def acquire(self, key_hash: str) -> Slot:
        """One slot (and one token) for ``key_hash``, with the headers to answer with. Raises RateLimited
        (429) when the key is past either limit; nothing is taken then."""
        if not self.quota.active:
            return Slot(self, "", {})
        slot_id = str(uuid.uuid4())
        decision = await self.store.take_quota(key_hash, slot_id, self.owner, self.quota, self.lease_s)
        said = headers(self.quota, decision)
        if decision.refused == "in_flight":
            raise RateLimited(
                f"this API key has {self.quota.max_in_flight} runs in flight, the most allowed"
                " (SD_MAX_RUNS_IN_FLIGHT_PER_KEY); retry when one finishes",
                headers={"Retry-After": str(decision.retry_after_s), **said},
            )
        if decision.refused == "rate":
            raise RateLimited(
                f"this API key is past {self.quota.rate_per_s:g} runs/s (burst {self.quota.burst})"
                f" (SD_RATE_PER_KEY_PER_S); retry in {decision.retry_after_s} s",
                headers={"Retry-After": str(decision.retry_after_s), **said},
            )
        self._held.add(slot_id)
        return Slot(self, slot_id, said)

    def give_back(self, slot_id: str) -> None:
        """The run finished (or never started): its slot goes back in the background. If the store cannot
        be reached, the slot is no longer renewed and lapses within ``lease_s``."""
        if slot_id not in self._held:
            return
        self._held.discard(slot_id)
        task = asyncio.get_running_loop().create_task(self._give_back(slot_id), name=f"give-back-{slot_id}")
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    async def _give_back(self, slot_id: str) -> None:
        try:
            await self.store.release_quota(slot_id)
        except Exception as exc:  # it lapses instead
            log.warning("could not give back fairness slot %s (it lapses): %s", slot_id, exc)

    def held(self) -> list[str]:
        """The slots this replica holds now: the heartbeat renews them."""
        return list(self._held)

    async def drain(self) -> None:
        """Wait for the slots being given back (shutdown)."""
        if self._returns:
            await asyncio.gather(*self._returns, return_exceptions=True)

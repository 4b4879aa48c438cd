"""A fault-injecting proxy of the real run store: one layer mocked, everything under it real.

``FaultyStore(store).inject("finish_run", ...)`` makes the next matching calls fail: before the call
(nothing written), or after it (``landed``: the write committed, its answer lost with the connection,
as a database that drops connections does). Every other call goes to the real store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from frontend.errors import StoreUnavailable
from frontend.store import RunStore


@dataclass
class Fault:
    times: int
    landed: bool
    error: Callable[[], Exception]
    when: Callable[..., bool]


@dataclass
class FaultyStore:
    inner: RunStore
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # the calls that failed, by method

    def inject(
        self,
        method: str,
        *,
        times: int = 1,
        landed: bool = False,
        error: Callable[[], Exception] = StoreUnavailable,
        when: Callable[..., bool] = lambda *args, **kwargs: True,
    ) -> None:
        """The next ``times`` calls of ``method`` whose arguments satisfy ``when`` raise ``error()``."""
        self.faults.setdefault(method, []).append(Fault(times, landed, error, when))

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.inner, name)
        if name not in self.faults:
            return real

        async def faulty(*args: Any, **kwargs: Any) -> Any:
            fault = next((f for f in self.faults[name] if f.times > 0 and f.when(*args, **kwargs)), None)
            if fault is None:
                return await real(*args, **kwargs)
            fault.times -= 1
            self.failed.append(name)
            if fault.landed:
                await real(*args, **kwargs)
            raise fault.error()

        return faulty

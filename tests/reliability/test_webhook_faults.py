"""Group 3, webhook faults: receivers that are down, slow, failing, throttling, gone; frontends restarted.

Every request a receiver gets is verified with ``standardwebhooks`` and the test secret. Expected: each
run delivered at least once and exactly as signed, duplicates share their ``webhook-id`` (and body),
``Retry-After`` honoured (capped by ``SD_WEBHOOK_RETRY_MAX_S``), 410 stops, nothing lost across
SIGKILL/SIGTERM restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from ..helpers.http import post, seed_body
from ..helpers.servers import Listener
from ..helpers.support import WEBHOOK_SECRET, Frontend, free_port
from .conftest import Scale
from .figures import Figures

pytestmark = pytest.mark.integration
GROUP = "webhook_faults"
TIMEOUT_S = 0.5  # SD_WEBHOOK_TIMEOUT_S: the slow receiver answers after SLOW_S
SLOW_S = 1.5
RETRY_MAX_S = 1.5  # SD_WEBHOOK_RETRY_MAX_S: caps backoff and Retry-After
RETRY_AFTER_S = 1.0
DOWN_FOR_S = 1.5
FAST_SETTINGS = {
    "SD_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S),
    "SD_WEBHOOK_RETRY_MAX_S": str(RETRY_MAX_S),
    "SD_WEBHOOK_MAX_ATTEMPTS": "30",
}


@dataclass
class Received:
    at: float
    kind: str
    webhook_id: str
    status: int
    body: bytes
    payload: dict[str, Any] | None  # None: the signature did not verify


@dataclass
class FaultReceiver:
    """One app for every fault kind (the path names it); the answer depends on the attempt number per id."""

    accepting: bool = True  # False: 500 for everyone (the restart tests)
    received: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def answer(self, kind: str, attempt: int) -> tuple[float, int, dict[str, str]]:
        """(delay before answering, status, headers) for ``attempt`` (1-based) of one webhook-id."""
        if not self.accepting:
            return 0.0, 500, {}
        if kind == "500" and attempt <= 2:
            return 0.0, 500, {}
        if kind == "429" and attempt == 1:
            return 0.0, 429, {"Retry-After": f"{RETRY_AFTER_S:g}"}
        if kind == "503" and attempt == 1:
            return 0.0, 503, {"Retry-After": f"{RETRY_AFTER_S:g}"}
        if kind == "429-huge" and attempt == 1:
            return 0.0, 429, {"Retry-After": "3600"}
        if kind == "slow" and attempt == 1:
            return SLOW_S, 200, {}
        if kind == "410":
            return 0.0, 410, {}
        return 0.0, 200, {}

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            webhook_id = request.headers.get("webhook-id", "")
            kind = request.match_info["kind"]
            attempt = 1 + sum(1 for r in self.received if r.webhook_id == webhook_id)
            delay, status, headers = self.answer(kind, attempt)
            try:
                payload = Webhook(WEBHOOK_SECRET).verify(body, dict(request.headers))
            except Exception:  # noqa: BLE001 - any verification failure counts
                payload = None
            self.received.append(Received(time.monotonic(), kind, webhook_id, status, body, payload))
            self.changed.set()
            if delay:
                await asyncio.sleep(delay)
            return web.Response(status=status, headers=headers)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook/{kind}", hook)
        return app

    def by_id(self) -> dict[str, list[Received]]:
        grouped: dict[str, list[Received]] = defaultdict(list)
        for item in self.received:
            grouped[item.webhook_id].append(item)
        return grouped

    def delivered_ids(self) -> set[str]:
        """Ids acknowledged in time with a 2xx (a slow 200 after the frontend gave up does not count)."""
        return {
            r.webhook_id
            for r in self.received
            if 200 <= r.status < 300 and r.payload is not None and not (r.kind == "slow" and self._first(r))
        }

    def _first(self, item: Received) -> bool:
        return next(r for r in self.received if r.webhook_id == item.webhook_id) is item

    async def wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
        return True


async def run_views(http: aiohttp.ClientSession, frontend: Frontend, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    views = {}
    for run_id in run_ids:
        async with http.get(f"{frontend.url}/runs/{run_id}") as response:
            views[run_id] = await response.json()
    return views


def check_deliveries(
    receiver: FaultReceiver, expected: dict[str, str], views: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Figures common to every test: ``expected`` maps webhook-id -> run id for runs that must arrive."""
    grouped = receiver.by_id()
    delivered = receiver.delivered_ids()
    bad_signatures = sum(1 for r in receiver.received if r.payload is None)
    mismatched = []
    for webhook_id, items in grouped.items():
        if len({r.body for r in items}) != 1:
            mismatched.append(f"{webhook_id}: bodies differ between attempts")
        for item in items:
            if item.payload is not None and f"msg_{item.payload['run_id']}" != webhook_id:
                mismatched.append(f"{webhook_id}: payload of run {item.payload['run_id']}")
    for webhook_id, run_id in expected.items():
        items = [r for r in grouped.get(webhook_id, []) if r.payload is not None]
        view = views.get(run_id, {})
        if items and (items[-1].payload or {}).get("result") != view.get("result"):
            mismatched.append(f"{webhook_id}: delivered result differs from GET /runs")
    oks = Counter(r.webhook_id for r in receiver.received if 200 <= r.status < 300)
    return {
        "expected": len(expected),
        "made": len(delivered & set(expected)),
        "attempts": len(receiver.received),
        "duplicates": sum(n - 1 for n in oks.values() if n > 1),
        "retries": len(receiver.received) - len(grouped),
        "bad_signatures": bad_signatures,
        "lost": len(set(expected) - delivered),
        "mismatched": mismatched,
    }


def record(figures: Figures, prefix: str, numbers: dict[str, Any]) -> None:
    figures.add(GROUP, f"{prefix}: deliveries expected", numbers["expected"])
    figures.add(
        GROUP,
        f"{prefix}: deliveries made (distinct webhook-ids, verified 2xx)",
        numbers["made"],
        expected=f"= {numbers['expected']}",
        met=numbers["made"] == numbers["expected"],
    )
    figures.add(GROUP, f"{prefix}: attempts received", numbers["attempts"])
    figures.add(GROUP, f"{prefix}: retries received (same webhook-id)", numbers["retries"])
    figures.add(
        GROUP,
        f"{prefix}: duplicate 2xx deliveries",
        numbers["duplicates"],
        note="at-least-once: a receiver that answered after the timeout sees its delivery again, same webhook-id",
    )
    figures.add(
        GROUP,
        f"{prefix}: duplicates with the same webhook-id and body",
        not numbers["mismatched"],
        expected="True",
        met=not numbers["mismatched"],
        note="; ".join(numbers["mismatched"]),
    )
    figures.add(
        GROUP,
        f"{prefix}: signature failures",
        numbers["bad_signatures"],
        expected="0",
        met=numbers["bad_signatures"] == 0,
    )
    figures.add(GROUP, f"{prefix}: lost", numbers["lost"], expected="0", met=numbers["lost"] == 0)


async def test_receiver_faults_deliver_every_run_once_signed_and_410_stops(
    http: aiohttp.ClientSession,
    make_frontend: Callable[..., Frontend],
    image_b64: str,
    scale: Scale,
    figures: Figures,
) -> None:
    frontend = make_frontend(**FAST_SETTINGS)
    receiver = FaultReceiver()
    main = await Listener(receiver.app()).start()
    down_port = free_port()  # nothing listens here until DOWN_FOR_S after the runs are accepted
    down: Listener | None = None
    per_kind = scale.count(1, 4)
    kinds = ["500", "429", "503", "429-huge", "slow", "410", "down"]
    runs: dict[str, str] = {}  # run id -> kind
    try:
        for kind in kinds * per_kind:
            base = f"http://127.0.0.1:{down_port}" if kind == "down" else main.base
            body = seed_body(image_b64, num_inference_steps=4, webhook_endpoint=f"{base}/hook/{kind}")
            status, accepted, _ = await post(http, frontend, body)
            assert status == 202, accepted
            runs[accepted["run_id"]] = kind
        await asyncio.sleep(DOWN_FOR_S)
        down = await Listener(receiver.app(), port=down_port).start()
        expected = {f"msg_{run_id}": run_id for run_id, kind in runs.items() if kind != "410"}
        gone = {f"msg_{run_id}" for run_id, kind in runs.items() if kind == "410"}
        finished = await receiver.wait(
            lambda: set(expected) <= receiver.delivered_ids() and gone <= set(receiver.by_id()), timeout_s=60
        )
        await asyncio.sleep(2 * RETRY_MAX_S)  # room for anything that should not come: more 410 attempts, say
    finally:
        await main.stop()
        if down is not None:
            await down.stop()
    views = await run_views(http, frontend, list(runs))
    numbers = check_deliveries(receiver, expected, views)
    record(figures, "receiver faults", numbers)
    figures.add(GROUP, "receiver faults: runs per fault kind", {kind: per_kind for kind in kinds})

    grouped = receiver.by_id()
    after_410 = sum(len(grouped.get(webhook_id, [])) - 1 for webhook_id in gone)
    gone_states = Counter(views[run_id]["webhook"]["status"] for run_id, kind in runs.items() if kind == "410")
    delivered_states = Counter(views[run_id]["webhook"]["status"] for run_id, kind in runs.items() if kind != "410")
    figures.add(GROUP, "410: attempts after the 410", after_410, expected="0", met=after_410 == 0)
    figures.add(
        GROUP,
        "410: run's webhook state",
        dict(gone_states),
        expected="gone",
        met=set(gone_states) == {"gone"},
    )
    figures.add(
        GROUP,
        "other runs' webhook state",
        dict(delivered_states),
        expected="delivered",
        met=set(delivered_states) == {"delivered"},
    )

    def gaps(kind: str) -> list[float]:
        return [
            items[1].at - items[0].at
            for webhook_id, items in grouped.items()
            if items[0].kind == kind and len(items) >= 2
        ]

    honoured = gaps("429") + gaps("503")
    capped = gaps("429-huge")
    figures.add(
        GROUP,
        f"Retry-After: {RETRY_AFTER_S:g} s (429, 503): shortest gap to the next attempt s",
        round(min(honoured), 2) if honoured else None,
        expected=f">= {RETRY_AFTER_S:g}",
        met=bool(honoured) and min(honoured) >= RETRY_AFTER_S - 0.05,
        note=f"without it the first retry comes after {0.2 * 0.5:g}..{0.2 * 1.5:g} s (SD_WEBHOOK_RETRY_BASE_S=0.2)",
    )
    figures.add(
        GROUP,
        f"Retry-After: 3600 with SD_WEBHOOK_RETRY_MAX_S={RETRY_MAX_S:g}: longest gap s",
        round(max(capped), 2) if capped else None,
        expected=f"{RETRY_MAX_S:g} .. {1.5 * RETRY_MAX_S + 0.5:g}",
        met=bool(capped) and min(capped) >= RETRY_MAX_S - 0.05 and max(capped) <= 1.5 * RETRY_MAX_S + 0.5,
    )
    slow_retried = sum(1 for g in gaps("slow") if g >= TIMEOUT_S - 0.05)
    figures.add(
        GROUP,
        f"slow receiver (answers after {SLOW_S:g} s, timeout {TIMEOUT_S:g} s): ids retried after the timeout",
        slow_retried,
        expected=f"= {per_kind}",
        met=slow_retried == per_kind,
    )
    down_delivered = sum(1 for webhook_id in receiver.delivered_ids() if grouped[webhook_id][0].kind == "down")
    figures.add(
        GROUP,
        f"receiver down {DOWN_FOR_S:g} s then up on the same port: delivered",
        down_delivered,
        expected=f"= {per_kind}",
        met=down_delivered == per_kind,
    )

    assert finished, "not every delivery arrived within 60 s"
    figures.require(context=f"honoured: {honoured}; capped: {capped}; gone states: {gone_states}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_frontend_restarted_mid_retry_loses_nothing(
    http: aiohttp.ClientSession,
    make_frontend: Callable[..., Frontend],
    image_b64: str,
    tmp_path: Path,
    scale: Scale,
    figures: Figures,
    sig: signal.Signals,
) -> None:
    data_dir = tmp_path / f"restart-{sig.name}"
    receiver = FaultReceiver(accepting=False)  # 500 to everyone until the frontend has been restarted
    listener = await Listener(receiver.app()).start()
    count = scale.count(2, 6)
    try:
        first = make_frontend(data_dir=data_dir, **FAST_SETTINGS)
        run_ids = []
        for _ in range(count):
            body = seed_body(image_b64, num_inference_steps=4, webhook_endpoint=f"{listener.base}/hook/restart")
            status, accepted, _ = await post(http, first, body)
            assert status == 202, accepted
            run_ids.append(accepted["run_id"])
        expected = {f"msg_{run_id}": run_id for run_id in run_ids}
        assert await receiver.wait(lambda: set(expected) <= set(receiver.by_id()), timeout_s=30)
        attempts_before = len(receiver.received)
        first.stop(sig)  # mid-retry: every delivery has failed at least once and is pending
        receiver.accepting = True
        second = make_frontend(data_dir=data_dir, **FAST_SETTINGS)
        finished = await receiver.wait(lambda: set(expected) <= receiver.delivered_ids(), timeout_s=30)
        await asyncio.sleep(1.0)
    finally:
        await listener.stop()
    views = await run_views(http, second, run_ids)
    numbers = check_deliveries(receiver, expected, views)
    prefix = f"restart ({sig.name}) mid-retry"
    record(figures, prefix, numbers)
    figures.add(GROUP, f"{prefix}: attempts before the restart", attempts_before)
    states = Counter(view.get("webhook", {}).get("status") for view in views.values())
    figures.add(
        GROUP, f"{prefix}: webhook state after", dict(states), expected="delivered", met=set(states) == {"delivered"}
    )
    assert finished, "not every delivery arrived after the restart"
    figures.require(context=str(views))

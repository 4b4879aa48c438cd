"""Group 8, run control: per-key fairness under one tenant's burst, and a storm of cancels racing the
runs' own completions (no 5xx, one final state per run, no webhook delivered with two states)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from bench.stats import percentile
from frontend.store.records import TERMINAL

from ..helpers.http import post, seed_body, wait_for_run
from ..helpers.servers import Listener, WebhookReceiver
from ..helpers.support import API_KEYS, Frontend
from .conftest import Scale
from .figures import Figures

pytestmark = pytest.mark.integration
GROUP = "run_control"
FINAL = {status.value for status in TERMINAL}
# The fairness measurement's setting: the burst's key may hold this many runs in flight. Measured here
# (8 s, 64 clients): key B's p95 ratio 1.7x at 1, 1.9x at 2, 4.9x at 4 (2.45x at 2 over 30 s): a waiting
# request sits behind the batch in progress, whose size the cap bounds (Triton does not preempt it).
IN_FLIGHT_CAP = 1


def p95(values: list[float]) -> float:
    return percentile(values, 0.95)


async def one_at_a_time(http: aiohttp.ClientSession, frontend: Frontend, body: dict[str, Any], until: float) -> list:
    latencies, statuses = [], []
    while time.monotonic() < until:
        started = time.monotonic()
        status, _, _ = await post(http, frontend, body)
        latencies.append(time.monotonic() - started)
        statuses.append(status)
    return [latencies, statuses]


@pytest.mark.timeout(900)
async def test_a_second_key_keeps_its_latency_while_another_bursts(
    make_frontend: Callable[..., Frontend], image_b64: str, scale: Scale, figures: Figures
) -> None:
    fair = make_frontend(SD_MAX_RUNS_IN_FLIGHT_PER_KEY=str(IN_FLIGHT_CAP), SD_RATE_PER_KEY_PER_S="0")
    seconds, clients = scale.pick(8.0, 30.0), 64
    quiet = seed_body(image_b64, num_inference_steps=8, seed=5)
    burst = seed_body(image_b64, num_inference_steps=8, seed=6)
    async with (
        aiohttp.ClientSession(headers={"Authorization": API_KEYS[1]}) as second,
        aiohttp.ClientSession(
            headers={"Authorization": API_KEYS[0]}, connector=aiohttp.TCPConnector(limit=clients)
        ) as bursting,
    ):
        alone, alone_statuses = await one_at_a_time(second, fair, quiet, time.monotonic() + seconds / 2)
        burst_statuses: list[int] = []

        async def client(until: float) -> None:
            while time.monotonic() < until:
                status, _, headers = await post(bursting, fair, burst)
                burst_statuses.append(status)
                if status == 429:  # as our client does: honour Retry-After, with jitter
                    await asyncio.sleep(float(headers["Retry-After"]) * (0.5 + random.random()))  # noqa: S311

        until = time.monotonic() + seconds
        clients_done = asyncio.gather(*(client(until) for _ in range(clients)))
        await asyncio.sleep(1.0)  # the burst is on
        during, during_statuses = await one_at_a_time(second, fair, quiet, until)
        await clients_done
    ratio = p95(during) / p95(alone)
    errors = [s for s in [*alone_statuses, *during_statuses, *burst_statuses] if s >= 500]
    figures.add(
        GROUP,
        "burst: clients on key A / its runs-in-flight cap / seconds",
        f"{clients} / {IN_FLIGHT_CAP} / {seconds:g}",
    )
    figures.add(GROUP, "key B p95 alone / during the burst (ms)", f"{1000 * p95(alone):.0f} / {1000 * p95(during):.0f}")
    figures.add(
        GROUP,
        "key B p95 during / alone",
        round(ratio, 2),
        expected="≤ 2 (goal)",
        met=ratio <= 2 if scale.full else None,
        note="" if scale.full else "small scale: informational",
    )
    figures.add(GROUP, "key A answers: 200 / 429", f"{burst_statuses.count(200)} / {burst_statuses.count(429)}")
    figures.add(GROUP, "5xx answers", len(errors), expected="0", met=not errors)
    assert not errors and all(s == 200 for s in during_statuses)
    assert burst_statuses.count(429) > 0  # the cap held the burst back
    if scale.full:
        assert ratio <= 2, f"key B's p95 under the burst is {ratio:.2f}x its p95 alone"


@pytest.mark.timeout(900)
async def test_a_cancel_storm_racing_completions_ends_each_run_once(
    make_frontend: Callable[..., Frontend], image_b64: str, scale: Scale, figures: Figures
) -> None:
    # Webhook runs wait out Triton's full queue (as they do by default), so every run ends by itself.
    storm = make_frontend(SD_MAX_RUNS_IN_FLIGHT_PER_KEY="0", SD_RATE_PER_KEY_PER_S="0", SD_ASYNC_RETRY_WINDOW_S="600")
    runs, spread_s = scale.count(40, 300), scale.pick(4.0, 30.0)
    receiver = WebhookReceiver()
    listener = await Listener(receiver.app()).start()
    rng = random.Random(7)  # noqa: S311 - test timing, not security
    answers: dict[str, int] = {}
    statuses: list[int] = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:

            async def one(i: int) -> None:
                body = seed_body(image_b64, num_inference_steps=rng.choice([4, 8, 16, 40]), seed=1000 + i)
                body["webhook_endpoint"] = f"{listener.base}/hook"
                status, answer, _ = await post(http, storm, body)
                statuses.append(status)
                if status != 202:
                    return
                if i % 4 == 0:  # surely after it ran (on a slow or loaded machine none might be, by chance)
                    await wait_for_run(http, storm, answer["run_id"], FINAL, timeout_s=300)
                else:
                    await asyncio.sleep(rng.random() * spread_s)  # before, during or after it runs
                async with http.post(f"{storm.url}/runs/{answer['run_id']}/cancel") as response:
                    answers[answer["run_id"]] = response.status

            await asyncio.gather(*(one(i) for i in range(runs)))
            finals: dict[str, str] = {}
            deadline = time.monotonic() + scale.pick(120, 400)
            last: dict[str, Any] = {}
            while len(finals) < len(answers) and time.monotonic() < deadline:
                for run_id in answers.keys() - finals.keys():
                    async with http.get(f"{storm.url}/runs/{run_id}") as response:
                        last[run_id] = view = await response.json()
                    if view["status"] in FINAL and view.get("webhook", {}).get("status") == "delivered":
                        finals[run_id] = view["status"]
                await asyncio.sleep(0.2)
    finally:
        await listener.stop()
    delivered: dict[str, set[str]] = defaultdict(set)
    for _headers, body, _status in receiver.received:
        payload = json.loads(body)
        delivered[payload["run_id"]].add(payload["status"])
    canceled = [r for r, s in answers.items() if s == 200]
    mismatched = [r for r in answers if delivered.get(r) != {finals.get(r)}]
    wrong_answer = [r for r, s in answers.items() if (s == 200) != (finals.get(r) == "canceled") or s not in (200, 409)]
    five_xx = [s for s in [*statuses, *answers.values()] if s >= 500]
    figures.add(GROUP, "cancel storm: runs / cancels that stopped one / that found it finished",
                f"{len(answers)} / {len(canceled)} / {sum(1 for s in answers.values() if s == 409)}")  # fmt: skip
    exact = f"{len(answers) - len(mismatched)} of {len(answers)}"
    figures.add(GROUP, "runs ending in one final state, delivered with it", exact, expected="all", met=not mismatched)
    twice = sum(len(s) > 1 for s in delivered.values())
    figures.add(GROUP, "webhooks delivered twice with different states", twice, expected="0", met=not twice)
    figures.add(GROUP, "5xx answers", len(five_xx), expected="0", met=not five_xx)
    assert len(answers) == runs and not five_xx
    assert not mismatched, {r: (finals.get(r), delivered.get(r), last.get(r), answers[r]) for r in mismatched[:5]}
    assert not wrong_answer, {r: (answers[r], finals.get(r)) for r in wrong_answer[:5]}
    assert 0 < len(canceled) < runs  # the storm really raced: some stopped, some had finished

"""Group 4, backend faults: the Python stub or the whole tritonserver killed under load, and Triton slow
to become ready. ``make serve``'s stack (``embedded/stack.py``) runs as a real process: its supervisor
must bring Triton back by itself. Figures: requests during the fault by status, max latency, how soon
``/readyz`` turns unready, recovery time (fault -> first successful /predict), async runs completed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from embedded.triton_server import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, SHM_DIR, EmbeddedTriton, free_port

from ..helpers.servers import Listener, WebhookReceiver
from ..helpers.support import API_KEYS, Frontend
from .backend_faults_support import Outcome, Stack, by_status, get_status, post_predict, wait_status
from .conftest import Scale
from .figures import Figures

pytestmark = pytest.mark.integration
GROUP = "backend_faults"
CLIENT_TIMEOUT_S = 60.0  # what our load clients wait; "no hang" = every request answered within it
REFUSAL_WITHIN_S = 5.0  # a 503/504 during the fault comes at once, not after a wait
READYZ_WITHIN_S = 5.0
RECOVERY_WITHIN_S = 60.0
CANARY = REPO_ROOT / "docker" / "triton_canary.py"


def request(image_b64: str, seed: int, **extra: Any) -> dict[str, Any]:
    # 64 px, 8 steps: about a tenth of a second each for the tiny model, so a batch is always in flight.
    return {"prompt": "fault", "image": image_b64, "num_inference_steps": 8, "strength": 1.0, "seed": seed, **extra}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[Stack]:
    """``make serve``'s stack with its defaults (supervisor, SD_READYZ_CACHE_S); async runs retry for 90 s."""
    server = Stack(tmp_path_factory.mktemp("stack"), {"SD_ASYNC_RETRY_WINDOW_S": "90"}).start()
    deadline = time.monotonic() + 240
    import urllib.request

    while True:
        assert server.process is not None
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"the stack did not start:\n{server.logs()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/readyz", timeout=5) as answer:  # noqa: S310 - 127.0.0.1
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    yield server
    server.stop()


def shm_regions(stack: Stack) -> int:
    assert stack.process is not None
    return len(list(SHM_DIR.glob(f"triton_sd_{stack.process.pid}_*")))


@pytest.mark.parametrize("fault", ["stub", "tritonserver"])
async def test_killed_backend_under_load_recovers_by_itself(
    fault: str, stack: Stack, image_b64: str, scale: Scale, figures: Figures
) -> None:
    clients = scale.count(8, 24)
    async_runs = scale.count(3, 10)
    what = "Python stub" if fault == "stub" else "tritonserver"
    receiver = WebhookReceiver()
    listener = await Listener(receiver.app()).start()
    outcomes: list[Outcome] = []
    readyz: list[tuple[float, int]] = []  # (answered at, status)
    stop = asyncio.Event()
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        await wait_status(http, f"{stack.url}/readyz", 200, 120)
        (server,) = stack.children("tritonserver")
        (stub,) = stack.model_stubs()
        regions_before = shm_regions(stack)

        async def client(index: int) -> None:
            seed = index * 10_000
            while not stop.is_set():
                seed += 1
                outcome = await post_predict(http, stack.url, request(image_b64, seed), CLIENT_TIMEOUT_S)
                outcomes.append(outcome)
                if outcome.status != 200:
                    await asyncio.sleep(0.2)

        async def poll_readyz() -> None:
            while not stop.is_set():
                status = await get_status(http, f"{stack.url}/readyz")
                readyz.append((time.monotonic(), status))
                await asyncio.sleep(0.25)

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        tasks.append(asyncio.create_task(poll_readyz()))
        await asyncio.sleep(2)  # the load is on: batches in flight
        fault_at = time.monotonic()
        (stub if fault == "stub" else server).kill()  # SIGKILL
        canary_rc = None
        if fault == "stub":
            # The production liveness probe (what the kubelet / compose runs) on the dead stub.
            canary = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, str(CANARY), "--url", stack.triton_http_url],
                capture_output=True,
                check=False,
                timeout=60,
            )
            canary_rc = canary.returncode
        await asyncio.sleep(1)
        accepted = []
        for index in range(async_runs):  # accepted during the outage: must complete after recovery
            hook = {"webhook_endpoint": f"{listener.base}/hook"}
            outcome = await post_predict(
                http, stack.url, request(image_b64, 900 + index, **hook), CLIENT_TIMEOUT_S, accepted=202
            )
            accepted.append(outcome)

        def recovered_at() -> float | None:
            ends = [o.started + o.latency_s for o in outcomes if o.status == 200 and o.started > fault_at]
            return min(ends) if ends else None

        deadline = fault_at + 150
        while recovered_at() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)  # and some load after recovery
        stop.set()
        await asyncio.gather(*tasks)
        completed = 0
        done_by = time.monotonic() + 90
        while time.monotonic() < done_by:
            completed = sum(1 for _, body, status in receiver.received if json.loads(body)["status"] == "succeeded")
            if completed >= async_runs:
                break
            await asyncio.sleep(0.2)
    await listener.stop()
    await asyncio.sleep(1)
    orphans = [p for p in (stub, server) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    regions_after = shm_regions(stack)

    recovery = recovered_at()
    during = [o for o in outcomes if o.started + o.latency_s >= fault_at and (recovery is None or o.started < recovery)]
    unclean = [o for o in outcomes if not (o.clean or o.status == 200)]
    max_latency = max(o.latency_s for o in outcomes)
    refusals = sorted((o for o in outcomes if o.status != 200), key=lambda o: o.latency_s)
    max_refusal = refusals[-1].latency_s if refusals else 0.0
    slowest_refusal = ""
    if refusals:
        worst = refusals[-1]
        slowest_refusal = f"sent {worst.started - fault_at:+.1f} s after the kill: {worst.status} {worst.detail[:90]}"
    unready = [t for t, status in readyz if t >= fault_at and status == 503]
    unready_after = min(unready) - fault_at if unready else None
    recovery_s = None if recovery is None else recovery - fault_at
    restarts = stack.logs().count("supervisor: restarting tritonserver")

    name = f"{what} killed (SIGKILL) under {clients} concurrent /predict clients"
    figures.add(
        GROUP,
        f"{name}: requests during the fault",
        len(during),
        note="finished after the kill, started before recovery",
    )
    figures.add(GROUP, f"{name}: outcomes during the fault", by_status(during))
    figures.add(
        GROUP,
        f"{name}: answers that were not 200 or a clean 503/504 JSON error",
        len(unclean),
        expected="0",
        met=not unclean,
        note="; ".join(f"{o.status}: {o.detail}" for o in unclean[:3]),
    )
    figures.add(
        GROUP,
        f"{name}: max request latency (s)",
        round(max_latency, 2),
        expected=f"< {CLIENT_TIMEOUT_S:.0f} (client timeout: no hang)",
        met=max_latency < CLIENT_TIMEOUT_S,
        note="the slowest are 200s queued behind the restarted model's first (cold) batches",
    )
    figures.add(
        GROUP,
        f"{name}: max latency of a 503/504 answer (s)",
        round(max_refusal, 2),
        expected=f"< {REFUSAL_WITHIN_S:.0f} (fails fast)",
        met=max_refusal < REFUSAL_WITHIN_S,
        note=slowest_refusal,
    )
    figures.add(
        GROUP,
        f"{name}: /readyz unready after (s)",
        None if unready_after is None else round(unready_after, 2),
        expected=f"<= {READYZ_WITHIN_S:.0f} (default SD_READYZ_CACHE_S, polled every 0.25 s)",
        met=unready_after is not None and unready_after <= READYZ_WITHIN_S,
    )
    figures.add(
        GROUP,
        f"{name}: recovery, fault -> first successful /predict (s)",
        None if recovery_s is None else round(recovery_s, 1),
        expected=f"<= {RECOVERY_WITHIN_S:.0f}, by itself (make serve's supervisor)",
        met=recovery_s is not None and recovery_s <= RECOVERY_WITHIN_S,
        note=f"supervisor restarts so far in this stack: {restarts}",
    )
    accepted_ok = sum(1 for o in accepted if o.status == 202)
    figures.add(
        GROUP,
        f"{name}: async runs accepted during the outage / completed and delivered",
        f"{accepted_ok} / {completed}",
        expected=f"{async_runs} / {async_runs}",
        met=accepted_ok == async_runs and completed == async_runs,
        note="SD_ASYNC_RETRY_WINDOW_S=90: accepted runs retry while Triton is down",
    )
    figures.add(
        GROUP,
        f"{name}: killed-side processes left running / stack shm regions before -> after",
        f"{len(orphans)} / {regions_before} -> {regions_after}",
        expected=f"0 / {regions_before} -> {regions_before}",
        met=not orphans and regions_after == regions_before,
    )
    if fault == "stub":
        figures.add(
            GROUP,
            "production liveness probe (docker/triton_canary.py) on a dead stub: exit code",
            canary_rc,
            expected="1 (the orchestrator restarts the container)",
            met=canary_rc == 1,
        )
    figures.require(context=f"readyz polls: {readyz[-20:]}\nstack log:\n{stack.logs()[-3000:]}")


async def test_triton_slow_to_become_ready(
    tmp_path: Path, tiny_model_path: Path, image_b64: str, scale: Scale, figures: Figures
) -> None:
    """The frontend starts first; Triton comes up later on its gRPC port: 503 + Retry-After meanwhile, fast."""
    grpc_port = free_port()
    frontend = Frontend(tmp_path / "fe", f"127.0.0.1:{grpc_port}").start()
    triton = EmbeddedTriton.on_free_ports(DEFAULT_MODEL_REPOSITORY, tiny_model_path, ready_timeout_s=240)
    triton.grpc_port = grpc_port
    outcomes: list[Outcome] = []
    readyz: list[tuple[float, int]] = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
            starting = asyncio.create_task(asyncio.to_thread(triton.start))
            while not starting.done():
                outcomes.append(await post_predict(http, frontend.url, request(image_b64, 1), CLIENT_TIMEOUT_S))
                readyz.append((time.monotonic(), await get_status(http, f"{frontend.url}/readyz")))
                await asyncio.sleep(0.3)
            await starting  # raises if Triton failed to start
            triton_ready_at = time.monotonic()
            readyz_after = await wait_status(http, f"{frontend.url}/readyz", 200, 60)
            first_ok = None
            while time.monotonic() - triton_ready_at < 60:
                outcome = await post_predict(http, frontend.url, request(image_b64, 2), CLIENT_TIMEOUT_S)
                if outcome.status == 200:  # when it was sent: the reconnect, not the cold first batch
                    first_ok = outcome.started - triton_ready_at
                    break
                await asyncio.sleep(0.2)
    finally:
        frontend.stop()
        triton.stop()

    before = [o for o in outcomes if o.started < triton_ready_at]
    refused_cleanly = [o for o in before if o.status == 503 and o.clean and o.retry_after]
    # Triton is ready a little before start() returns: a request in that window may rightly succeed.
    served = [o for o in before if o.status == 200]
    max_latency = max(o.latency_s for o in before)
    unready = [status for _, status in readyz[:-1]]  # the last poll may race the readiness the same way
    figures.add(GROUP, "Triton starting late: /predict requests while it was not up", len(before))
    figures.add(
        GROUP,
        "Triton starting late: of those, 503 backend_unavailable with Retry-After",
        len(refused_cleanly),
        expected=f"all {len(before)} (a 200 allowed once Triton is up)",
        met=len(refused_cleanly) + len(served) == len(before) and len(refused_cleanly) > 0,
        note=f"outcomes: {by_status(before)}",
    )
    figures.add(
        GROUP,
        "Triton starting late: max /predict latency meanwhile (s)",
        round(max_latency, 3),
        expected="< 2 (refused at once, no hang)",
        met=max_latency < 2,
    )
    figures.add(
        GROUP,
        "Triton starting late: /readyz while it was not up",
        sorted(set(unready)),
        expected="503 only",
        met=set(unready) == {503},
    )
    figures.add(
        GROUP,
        "Triton starting late: Triton ready -> /readyz 200 (s)",
        round(readyz_after, 2),
        expected=f"<= {READYZ_WITHIN_S:.0f}",
        met=readyz_after <= READYZ_WITHIN_S,
    )
    figures.add(
        GROUP,
        "Triton starting late: Triton ready -> first /predict sent that gets a 200 (s)",
        None if first_ok is None else round(first_ok, 2),
        expected=f"<= {READYZ_WITHIN_S:.0f}",
        met=first_ok is not None and first_ok <= READYZ_WITHIN_S,
    )
    figures.require(context=str([(o.status, o.detail) for o in before]))

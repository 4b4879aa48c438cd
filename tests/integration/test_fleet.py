"""The fleet (frontend/fleet.py) on two real tritonservers: placement, affinity, ejection and failover.

Two pods as ``make serve-fleet`` runs them (embedded/pods.py): 127.0.0.2 and 127.0.0.3, each with its own
copy of the model repository and so its own progress folder, the tiny model paced at ``STEP_MS`` a step.
Where each run went is asked of the pods themselves (their progress models), not of the frontend.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from embedded.pods import fleet_url, kill_pod, make_pods, model_stub, start_pods, stop_pods
from embedded.triton_server import EmbeddedTriton
from frontend.fleet import Fleet, Targets
from frontend.generation import GenerationInput
from frontend.triton_backend import TritonPod

from ..helpers.http import post, seed_body, wait_for_run
from ..helpers.servers import png_bytes
from ..helpers.support import TEST_LOG_DIR, Frontend, random_image

pytestmark = pytest.mark.integration
STEP_MS = 100
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # two pods on two cores: no barrier waits


@pytest.fixture(scope="module")
def two_pods(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EmbeddedTriton]]:
    pods = make_pods(
        2, tmp_path_factory.mktemp("fleet"), tiny_model_path, pace_ms=STEP_MS, env=ONE_THREAD, log_dir=TEST_LOG_DIR
    )
    yield start_pods(pods)
    stop_pods(pods)


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


def job(size: int, steps: int, seed: int) -> GenerationInput:
    return GenerationInput(
        prompt="fleet", image=random_image((size, size), seed), strength=1.0, num_inference_steps=steps, seed=seed
    )


async def test_runs_of_one_size_gather_apart_from_another_size_and_progress_is_read_where_each_runs(
    two_pods: list[EmbeddedTriton],
) -> None:
    addresses = tuple(pod.grpc_url for pod in two_pods)
    fleet = Fleet(Targets(addresses=addresses), lambda address: TritonPod(address, "sd_img2img", 120))
    direct = {address: TritonPod(address, "sd_img2img", 120) for address in addresses}  # asks one pod only

    async def pods_running(request_id: str) -> list[str]:
        return [address for address, pod in direct.items() if await pod.progress(request_id) is not None]

    try:
        long = asyncio.create_task(fleet.generate(job(128, 40, 1), request_id="long"))
        await until(lambda: _has_progress(fleet, "long"), 60, "the long run posts progress")
        shorts = [asyncio.create_task(fleet.generate(job(64, 25, seed), request_id=f"short{seed}")) for seed in (2, 3)]
        await until(lambda: _has_progress(fleet, "short2", "short3"), 60, "both short runs post progress")
        where = {run: await pods_running(run) for run in ("long", "short2", "short3")}
        # The second 64 px run shares the first one's forward; round robin would put it beside the 128 px run.
        assert len(where["long"]) == 1 and where["short2"] == where["short3"] != where["long"], where
        # Every progress read goes to the pod running the run: none comes back empty while it runs.
        steps = [await fleet.progress("long") for _ in range(10)]
        assert all(step is not None for step in steps), steps
        done = [step.step for step in steps if step is not None]
        assert done == sorted(done) and done[-1] < 40
        await asyncio.gather(long, *shorts)
        assert await fleet.progress("long") is None
    finally:
        await fleet.close()
        for pod in direct.values():
            await pod.close()


async def _has_progress(fleet: Fleet, *request_ids: str) -> bool:
    return all([await fleet.progress(request_id) is not None for request_id in request_ids])


@pytest.fixture
def fleet_frontend(two_pods: list[EmbeddedTriton], tmp_path: Path) -> Iterator[Frontend]:
    settings = {"SD_POD_CHECK_S": "0.5", "SD_READYZ_CACHE_S": "0.2", "SD_CANARY_TIMEOUT_S": "2"}
    frontend = Frontend(tmp_path / "frontend", fleet_url(two_pods), settings).start()
    yield frontend
    frontend.stop()


async def readyz(http: aiohttp.ClientSession, frontend: Frontend) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{frontend.url}/readyz") as response:
        return response.status, await response.json()


async def test_a_pod_whose_stub_died_is_routed_around_and_comes_back_once_restarted(
    two_pods: list[EmbeddedTriton], fleet_frontend: Frontend, http: aiohttp.ClientSession
) -> None:
    image = base64.b64encode(png_bytes()).decode()
    body = seed_body(image, num_inference_steps=4, seed=5)
    status, reference, _ = await post(http, fleet_frontend, body)
    assert status == 200, reference
    broken = two_pods[0]
    model_stub(broken).kill()  # Triton 2.51 stays up and healthy by its own endpoints; every inference fails
    # Two at once: one is placed on each pod, so one meets the dead stub before anything else says so.
    answers = list(await asyncio.gather(*(post(http, fleet_frontend, body) for _ in range(2))))
    probes = []
    for _ in range(2):
        probes.append(await readyz(http, fleet_frontend))
        answers.append(await post(http, fleet_frontend, body))
    assert [status for status, _, _ in answers] == [200] * 4, answers
    assert all(answer["result"] == reference["result"] for _, answer, _ in answers)  # the same bytes
    assert [status for status, _ in probes] == [200] * 2, probes
    assert "not healthy" in probes[-1][1]["pods_out"][broken.grpc_url], probes[-1]
    async with http.get(f"{fleet_frontend.url}/metrics") as response:
        metrics = await response.text()
    assert f'sd_pod_runs_total{{outcome="failover",pod="{broken.grpc_url}"}} 1.0' in metrics, metrics
    assert f'sd_pod_out{{pod="{broken.grpc_url}"}} 1.0' in metrics

    kill_pod(broken)
    await asyncio.to_thread(broken.start)
    await until(lambda: _none_out(http, fleet_frontend), 30, "the restarted pod comes back")


async def _none_out(http: aiohttp.ClientSession, frontend: Frontend) -> bool:
    status, body = await readyz(http, frontend)
    return status == 200 and body["pods_out"] == {}


async def test_runs_in_flight_on_a_pod_that_is_killed_end_succeeded_with_the_bytes_they_would_have_had(
    two_pods: list[EmbeddedTriton], fleet_frontend: Frontend, http: aiohttp.ClientSession
) -> None:
    image = base64.b64encode(png_bytes()).decode()
    bodies = [seed_body(image, num_inference_steps=30, strength=1.0, seed=seed) for seed in (11, 12, 13)]
    references = await asyncio.gather(*(post(http, fleet_frontend, body) for body in bodies))
    assert [status for status, _, _ in references] == [200] * 3, references

    sync = [asyncio.create_task(post(http, fleet_frontend, body)) for body in bodies[:2]]
    status, accepted, _ = await post(http, fleet_frontend, bodies[2], headers={"Prefer": "respond-async"})
    assert status == 202, accepted
    await wait_for_run(http, fleet_frontend, accepted["run_id"], "processing")
    await asyncio.sleep(1.0)  # every run is mid-way (30 steps take 3 s at least)
    assert not any(task.done() for task in sync)
    victim = two_pods[1]
    kill_pod(victim)  # a node lost: at least one of the three runs was on it
    answers = await asyncio.gather(*sync)
    view = await wait_for_run(http, fleet_frontend, accepted["run_id"], ("succeeded", "failed"), timeout_s=60)
    assert [status for status, _, _ in answers] == [200, 200], answers
    assert [answer["result"] for _, answer, _ in answers] == [ref["result"] for _, ref, _ in references[:2]]
    assert view["status"] == "succeeded", view
    assert view["result"] == references[2][1]["result"]
    async with http.get(f"{fleet_frontend.url}/metrics") as response:
        assert f'sd_pod_runs_total{{outcome="failover",pod="{victim.grpc_url}"}}' in await response.text()

"""Run control through the real stack: cancel (before Triton, in its queue, mid-denoise), deadlines,
Idempotency-Key, disconnected synchronous clients, per-key 429s, status events, the CLI's Ctrl-C.

Every test here runs on the paced model (``paced_triton``: each step at least ``PACE_MS``), so a long
run is long by construction, whatever the machine's speed; and each starts with that model idle, so the
steps a test sees move are its own run's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from frontend.store.records import TERMINAL

from ..helpers.http import post, seed_body
from ..helpers.servers import Listener, WebhookReceiver
from ..helpers.support import API_KEYS, PACE_S, EmbeddedTriton, Frontend, free_port

pytestmark = pytest.mark.integration

# 150 steps at strength 1.0: at least 150 * PACE_S (6 s) in the paced model.
LONG = {"num_inference_steps": 150, "strength": 1.0}
LONG_S = 150 * PACE_S
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def triton(paced_triton: EmbeddedTriton) -> EmbeddedTriton:
    return paced_triton


@pytest.fixture
def frontend(paced_frontend: Frontend) -> Frontend:
    return paced_frontend


@pytest.fixture(autouse=True)
async def idle_model(paced_triton: EmbeddedTriton) -> None:
    """A run an earlier test canceled may still be finishing its step: wait until the model is idle, by
    the model's and Triton's own gauges (no request inside execute(), none queued), not by a quiet time
    that a loaded machine's slow step would outlast."""
    await until_idle(paced_triton)


async def until_idle(triton: EmbeddedTriton, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while executing(triton) or queued(triton):
        assert time.monotonic() < deadline, f"the model was still busy after {timeout_s:.0f} s"
        await asyncio.sleep(0.05)


def metric(triton: EmbeddedTriton, prefix: str) -> float | None:
    """The value of the first line of Triton's Prometheus text that starts with ``prefix``."""
    url = f"http://127.0.0.1:{triton.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - 127.0.0.1
        for line in answer.read().decode().splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
    return None


def steps(triton: EmbeddedTriton) -> float:
    """Denoising steps the model has run (its own counter, moving inside a pipeline call)."""
    return metric(triton, "sd_img2img_denoising_steps_total{") or 0.0


def model_stats(triton: EmbeddedTriton) -> dict[str, Any]:
    url = f"http://{triton.http_url}/v2/models/sd_img2img/stats"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - 127.0.0.1
        return dict(json.load(answer)["model_stats"][0])


def inference_count(triton: EmbeddedTriton) -> int:
    return int(model_stats(triton)["inference_count"])


def execution_count(triton: EmbeddedTriton) -> int:
    return int(model_stats(triton)["execution_count"])


def executing(triton: EmbeddedTriton) -> float:
    """Requests inside the model's execute() now (the model's own gauge)."""
    count = metric(triton, 'sd_img2img_requests_executing{model="sd_img2img"')
    assert count is not None, "the model reports no sd_img2img_requests_executing"
    return count


def queued(triton: EmbeddedTriton) -> float:
    """Requests in Triton's queue, not yet in the model (its pending-request gauge)."""
    count = metric(triton, 'nv_inference_pending_request_count{model="sd_img2img"')
    assert count is not None, "Triton reports no nv_inference_pending_request_count for sd_img2img"
    return count


async def until_queued(triton: EmbeddedTriton, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while queued(triton) < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests ever waited in Triton's queue"
        await asyncio.sleep(0.02)


async def settled_steps(triton: EmbeddedTriton) -> tuple[float, float]:
    """(steps, when the model was seen idle): waits until no request is in the model or its queue."""
    await until_idle(triton)
    return steps(triton), time.monotonic()


async def start_async(http: aiohttp.ClientSession, frontend: Frontend, body: dict[str, Any], **headers: str) -> str:
    status, answer, _ = await post(http, frontend, body, headers={**ASYNC, **headers})
    assert status == 202, answer
    return str(answer["run_id"])


async def view(http: aiohttp.ClientSession, frontend: Frontend, run_id: str) -> dict[str, Any]:
    async with http.get(f"{frontend.url}/runs/{run_id}") as response:
        return dict(await response.json())


async def until_status(
    http: aiohttp.ClientSession, frontend: Frontend, run_id: str, wanted: set[str], timeout_s: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = await view(http, frontend, run_id)
        if current["status"] in wanted:
            return current
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {wanted}: {current}")


async def until_steps_move(triton: EmbeddedTriton, before: float, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while steps(triton) <= before + 2:
        assert time.monotonic() < deadline, "the model never started"
        await asyncio.sleep(0.02)


async def cancel(http: aiohttp.ClientSession, frontend: Frontend, run_id: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{frontend.url}/runs/{run_id}/cancel") as response:
        return response.status, dict(await response.json())


async def test_cancel_mid_denoise_ends_the_models_call_at_the_next_step(
    http: aiohttp.ClientSession, frontend: Frontend, triton: EmbeddedTriton, image_b64: str
) -> None:
    before = steps(triton)
    run_id = await start_async(http, frontend, seed_body(image_b64, **LONG))
    await until_steps_move(triton, before)
    asked = time.monotonic()
    status, answer = await cancel(http, frontend, run_id)
    at_cancel = steps(triton)
    assert status == 200 and answer["status"] == "canceled", f"the {LONG_S:.0f} s run was not running: {answer}"
    total, ended = await settled_steps(triton)
    ran, after_cancel = total - before, total - at_cancel
    print(f"cancel mid-denoise: {ran:.0f} of 150 steps ran, {after_cancel:.0f} after the cancel, "
          f"call ended {1000 * (ended - asked):.0f} ms after it")  # fmt: skip
    # The next step boundary: a few steps of PACE_S cover the cancel's way from the frontend to the stub.
    assert ran < 150 and after_cancel <= 5, (ran, after_cancel)
    status, again = await cancel(http, frontend, run_id)
    assert status == 409 and again["error"]["code"] == "run_finished" and again["error"]["run"]["status"] == "canceled"


async def test_cancel_in_tritons_queue_never_runs_it_and_its_neighbour_finishes(
    http: aiohttp.ClientSession, frontend: Frontend, triton: EmbeddedTriton, image_b64: str
) -> None:
    before = steps(triton)
    first = await start_async(http, frontend, seed_body(image_b64, num_inference_steps=60, strength=1.0))
    await until_steps_move(triton, before)  # the first call holds the model for at least 2.4 s
    waiting = await start_async(http, frontend, seed_body(image_b64, **LONG, seed=7))
    await until_queued(triton, 1)  # sent to Triton, waiting behind the first call
    status, answer = await cancel(http, frontend, waiting)
    assert status == 200 and answer["status"] == "canceled"
    assert (await until_status(http, frontend, first, {"succeeded"}))["status"] == "succeeded"
    total, _ = await settled_steps(triton)
    # PNDM runs 61 steps for 60 here; the canceled request would have added about 150 more.
    assert total - before <= 61  # only the first run's steps: the canceled one never reached the model


async def test_cancel_before_triton_is_never_sent_and_its_webhook_says_canceled(
    make_frontend: Any, triton: EmbeddedTriton, image_b64: str
) -> None:
    down = make_frontend(triton_url=f"127.0.0.1:{free_port()}", SD_ASYNC_RETRY_WINDOW_S="120")
    receiver = WebhookReceiver()
    listener = await Listener(receiver.app()).start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
            count = inference_count(triton)
            body = seed_body(image_b64, webhook_endpoint=f"{listener.base}/hook")
            status, answer, _ = await post(http, down, body)
            assert status == 202
            run_id = answer["run_id"]
            await asyncio.sleep(0.5)  # retrying a Triton that is not there
            status, stopped = await cancel(http, down, run_id)
            assert status == 200 and stopped["status"] == "canceled"
            await receiver.wait_delivered()
            delivered = json.loads(receiver.received[-1][1])
            assert delivered["status"] == "canceled" and delivered["run_id"] == run_id
            assert len(receiver.received) == 1 and inference_count(triton) == count
    finally:
        await listener.stop()


@pytest.mark.timeout(600)  # two 60-step runs: on a loaded machine, minutes
async def test_a_canceled_requests_batch_neighbour_is_byte_identical_to_it_alone(
    http: aiohttp.ClientSession, frontend: Frontend, triton: EmbeddedTriton, image_b64: str
) -> None:
    neighbour = seed_body(image_b64, num_inference_steps=60, strength=1.0, seed=31)  # >= 2.4 s
    status, alone, _ = await post(http, frontend, neighbour)
    assert status == 200
    await until_idle(triton)
    before, executions = steps(triton), execution_count(triton)
    # Sent together, so Triton batches them into one pipeline call (its batcher waits 200 ms here);
    # then one is canceled mid-call.
    together = asyncio.create_task(post(http, frontend, neighbour))
    doomed = await start_async(http, frontend, seed_body(image_b64, num_inference_steps=60, strength=1.0, seed=32))
    await until_steps_move(triton, before)
    assert (await cancel(http, frontend, doomed))[0] == 200
    status, amid, _ = await together
    assert execution_count(triton) - executions == 1, "the two were not batched: the test needs them in one call"
    assert status == 200 and amid["result"] == alone["result"]


async def test_a_disconnected_synchronous_client_cancels_its_run(
    frontend: Frontend, triton: EmbeddedTriton, image_b64: str
) -> None:
    before = steps(triton)
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        request = asyncio.create_task(post(http, frontend, seed_body(image_b64, **LONG, seed=41)))
        await until_steps_move(triton, before)
        request.cancel()  # the client hangs up
        hung_up, at_hang_up = time.monotonic(), steps(triton)
    total, ended = await settled_steps(triton)
    print(f"client gone: {total - before:.0f} of 150 steps ran, {total - at_hang_up:.0f} after the hang-up, "
          f"the model's call ended {1000 * (ended - hung_up):.0f} ms after it")  # fmt: skip
    assert total - before < 150 and total - at_hang_up <= 15
    canceled = [line for line in frontend.logs().splitlines() if "the client disconnected" in line]
    assert canceled, frontend.logs()[-2000:]


async def test_with_an_idempotency_key_a_disconnected_run_finishes_and_the_retry_gets_it(
    frontend: Frontend, triton: EmbeddedTriton, image_b64: str
) -> None:
    body = seed_body(image_b64, num_inference_steps=30, strength=1.0, seed=51)  # >= 1.2 s
    key = {"Idempotency-Key": f"retry-{time.time_ns()}"}
    count = inference_count(triton)
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        before = steps(triton)
        request = asyncio.create_task(post(http, frontend, body, headers=key))
        await until_steps_move(triton, before)
        request.cancel()
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        deadline = time.monotonic() + 240  # the run finishes meanwhile, however loaded the machine
        while True:
            status, answer, headers = await post(http, frontend, body, headers=key)
            if status != 409 or time.monotonic() > deadline:
                break
            assert answer["error"]["code"] == "idempotency_key_in_use" and headers["Retry-After"]
            await asyncio.sleep(float(headers["Retry-After"]) / 4)
    assert status == 200 and answer["result"] and headers["Idempotent-Replayed"] == "true"
    assert inference_count(triton) == count + 1


async def test_idempotent_replay_generates_once_and_a_changed_body_is_refused(
    http: aiohttp.ClientSession, frontend: Frontend, triton: EmbeddedTriton, image_b64: str
) -> None:
    key = {"Idempotency-Key": f"once-{time.time_ns()}"}
    body = seed_body(image_b64, num_inference_steps=8, seed=61)
    count = inference_count(triton)
    first = await post(http, frontend, body, headers=key)
    second = await post(http, frontend, body, headers=key)
    assert first[0] == second[0] == 200 and first[1] == second[1]
    assert second[2]["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first[2]
    assert inference_count(triton) == count + 1
    status, refused, _ = await post(http, frontend, {**body, "seed": 62}, headers=key)
    assert status == 422 and refused["error"]["code"] == "idempotency_key_reused"
    other_key = aiohttp.ClientSession(headers={"Authorization": API_KEYS[1]})
    async with other_key:  # keys are scoped per API key: another key's same Idempotency-Key is a new request
        assert (await post(other_key, frontend, {**body, "seed": 63}, headers=key))[0] == 200


async def test_a_retry_while_the_first_runs_answers_409_with_retry_after(
    http: aiohttp.ClientSession, frontend: Frontend, triton: EmbeddedTriton, image_b64: str
) -> None:
    key = {"Idempotency-Key": f"busy-{time.time_ns()}"}
    body = seed_body(image_b64, num_inference_steps=60, strength=1.0, seed=71)
    before = steps(triton)
    first = asyncio.create_task(post(http, frontend, body, headers=key))
    await until_steps_move(triton, before)  # the first is in the model, for at least 2.4 s
    status, answer, headers = await post(http, frontend, body, headers=key)
    assert status == 409 and answer["error"]["code"] == "idempotency_key_in_use" and int(headers["Retry-After"]) >= 1
    assert (await first)[0] == 200


async def test_deadline_while_running_cancels_it_early(
    http: aiohttp.ClientSession, frontend: Frontend, triton: EmbeddedTriton, image_b64: str
) -> None:
    before = steps(triton)
    running = await start_async(http, frontend, seed_body(image_b64, **LONG, seed=81), **{"Cancel-After": "2s"})
    ended = await until_status(http, frontend, running, {status.value for status in TERMINAL})
    assert ended["status"] != "succeeded", f"a run of at least {LONG_S:.0f} s finished before its 2 s deadline"
    assert ended["status"] == "canceled" and ended["reason"] == "its Cancel-After passed", ended
    total, _ = await settled_steps(triton)
    assert 0 < total - before < 150  # it ran, and stopped early
    status, answer, _ = await post(http, frontend, seed_body(image_b64, seed=83), headers={"Cancel-After": "soon"})
    assert status == 422 and answer["error"]["param"] == "Cancel-After"


async def test_deadline_before_it_reaches_the_model_aborts_it(
    make_frontend: Any, triton: EmbeddedTriton, image_b64: str
) -> None:
    down = make_frontend(triton_url=f"127.0.0.1:{free_port()}", SD_ASYNC_RETRY_WINDOW_S="120")
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        count = inference_count(triton)
        run_id = await start_async(http, down, seed_body(image_b64, seed=84, cancel_after="1s"))
        ended = await until_status(http, down, run_id, {status.value for status in TERMINAL})
        assert ended["status"] == "aborted", ended
        assert inference_count(triton) == count


async def test_a_synchronous_run_past_its_deadline_answers_409_run_canceled(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    status, answer, _ = await post(http, frontend, seed_body(image_b64, **LONG, seed=91, cancel_after="1s"))
    assert status == 409 and answer["error"]["code"] in {"run_canceled", "run_aborted"}
    assert answer["error"]["run"]["status"] in {"canceled", "aborted"}


async def test_past_the_keys_rate_a_429_with_retry_after_and_ratelimit_headers(
    make_frontend: Any, image_b64: str
) -> None:
    # One run per 100 s: the second request comes well within that, however long the first one took.
    limited = make_frontend(SD_RATE_PER_KEY_PER_S="0.01", SD_RATE_BURST_PER_KEY="1")
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        status, _, headers = await post(http, limited, seed_body(image_b64, num_inference_steps=4))
        assert status == 200 and headers["RateLimit-Policy"].startswith('"runs";q=1;w=100, "inflight";q=')
        status, answer, headers = await post(http, limited, seed_body(image_b64, num_inference_steps=4))
        assert status == 429 and answer["error"]["code"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1 and headers["RateLimit"].startswith('"runs";r=0;t=')
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[1]}) as other:  # its own bucket
        assert (await post(other, limited, seed_body(image_b64, num_inference_steps=4)))[0] == 200


async def test_a_keys_in_flight_cap_holds_across_three_replicas_sharing_postgresql(
    make_frontend: Any, postgres_url: str, image_b64: str
) -> None:
    settings = {"SD_DATABASE_URL": postgres_url, "SD_MAX_RUNS_IN_FLIGHT_PER_KEY": "2", "SD_RATE_PER_KEY_PER_S": "0"}
    replicas = [make_frontend(**settings) for _ in range(3)]
    body = seed_body(image_b64, **LONG, seed=5)
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        # Six at once, two on each replica: each replica alone would take two, three times the cap.
        answers = await asyncio.gather(*(post(http, replicas[i % 3], body, headers=ASYNC) for i in range(6)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [202, 202, 429, 429, 429, 429], answers
        refused = next(answer for status, answer, _ in answers if status == 429)
        assert "SD_MAX_RUNS_IN_FLIGHT_PER_KEY" in refused["error"]["message"]
        async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[1]}) as other:  # its own cap
            status, theirs, _ = await post(other, replicas[2], body, headers=ASYNC)
            assert status == 202
            await other.post(f"{replicas[2].url}/runs/{theirs['run_id']}/cancel")
        for _, accepted, _ in answers:
            if "run_id" in accepted:
                async with http.post(f"{replicas[0].url}/runs/{accepted['run_id']}/cancel") as response:
                    assert response.status in (200, 202), await response.text()
        # Their slots come back as the runs end, whichever replica ran them.
        deadline = time.monotonic() + 30
        while (again := await post(http, replicas[1], body, headers=ASYNC))[0] == 429:
            assert time.monotonic() < deadline, "a canceled run's slot never came back"
            await asyncio.sleep(0.2)
        assert again[0] == 202
        await http.post(f"{replicas[1].url}/runs/{again[1]['run_id']}/cancel")


async def read_events(http: aiohttp.ClientSession, url: str, **headers: str) -> list[dict[str, Any]]:
    events, current = [], {}
    async with http.get(url, headers=headers) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                current[name] = value
    return events


async def test_events_in_order_then_resumed_with_last_event_id(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    run_id = await start_async(http, frontend, seed_body(image_b64, num_inference_steps=30, strength=1.0, seed=95))
    events = await read_events(http, f"{frontend.url}/runs/{run_id}/events")
    # Status events have ids; progress events (the run's step now, while it is in the model) have none
    # and come between processing and the final one, their steps in order.
    statuses = [e for e in events if e["event"] != "progress"]
    assert [e["event"] for e in statuses] == ["queued", "processing", "succeeded"]
    assert [e["id"] for e in statuses] == ["1", "2", "3"]
    assert json.loads(statuses[-1]["data"])["result"]
    kinds = [e["event"] for e in events]
    steps = [json.loads(e["data"])["step"] for e in events if e["event"] == "progress"]
    assert steps and steps == sorted(steps) and all("id" not in e for e in events if e["event"] == "progress")
    assert kinds.index("processing") < kinds.index("progress") and kinds[-1] == "succeeded"
    resumed = await read_events(http, f"{frontend.url}/runs/{run_id}/events", **{"Last-Event-ID": "1"})
    assert [e["event"] for e in resumed] == ["processing", "succeeded"]  # finished: no progress to show
    other = aiohttp.ClientSession(headers={"Authorization": API_KEYS[1]})
    async with other, other.get(f"{frontend.url}/runs/{run_id}/events") as response:
        assert response.status == 404


def test_cli_ctrl_c_cancels_the_run_and_says_so(
    frontend: Frontend, triton: EmbeddedTriton, tmp_path: Path, image_b64: str
) -> None:
    import base64

    source = tmp_path / "in.png"
    source.write_bytes(base64.b64decode(image_b64))
    env = {**os.environ, "IMG2IMG_API_KEY": API_KEYS[0]}
    command = [sys.executable, "-m", "sd_img2img_client.cli", str(source), "-p", "a lighthouse", "--steps", "150",
               "--strength", "1.0", "--url", frontend.url, "-o", str(tmp_path)]  # fmt: skip
    before = steps(triton)
    cli = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while steps(triton) <= before + 2:  # the CLI's run is in the model (which was idle), for >= 6 s
            assert cli.poll() is None, cli.communicate()
            assert time.monotonic() < deadline, "the CLI's run never reached the model"
            time.sleep(0.05)
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 130, err
    assert "canceled run" in err and "canceled" in err

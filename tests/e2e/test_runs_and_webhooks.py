"""Webhooks (signed, retried, durable across restarts), GET /runs/{id}, and the operations endpoints."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks import Webhook

from ..helpers.http import post, seed_body, wait_for_run
from ..helpers.servers import Listener, WebhookReceiver
from ..helpers.support import API_KEYS, WEBHOOK_SECRET, EmbeddedTriton, Frontend, free_port

pytestmark = pytest.mark.integration


async def accepted_run_id(frontend: Frontend, timeout_s: float = 30) -> str:
    """The id of the run the frontend just accepted, from its JSON log (a synchronous run's id reaches the
    client only with the answer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in frontend.logs().splitlines():
            if '"run accepted"' in line:
                return str(json.loads(line)["run_id"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"no run accepted within {timeout_s} s:\n{frontend.logs()[-2000:]}")


async def test_webhook_is_signed_and_retried_until_the_receiver_takes_it(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    receiver = WebhookReceiver(fail_statuses=[500, 503])
    listener = await Listener(receiver.app()).start()
    try:
        body = seed_body(image_b64, num_inference_steps=4, webhook_endpoint=f"{listener.base}/hook")
        status, accepted, headers = await post(http, frontend, body)
        assert status == 202, accepted
        assert accepted["status"] == "queued" and headers["Location"] == f"/runs/{accepted['run_id']}"
        await receiver.wait_delivered()
    finally:
        await listener.stop()

    assert [s for _, _, s in receiver.received] == [500, 503, 200]
    ids = {headers["webhook-id"] for headers, _, _ in receiver.received}
    assert ids == {f"msg_{accepted['run_id']}"}  # stable across retries
    headers, raw, _ = receiver.received[-1]
    payload = Webhook(WEBHOOK_SECRET).verify(raw, headers)  # raises unless the signature is valid
    assert payload["run_id"] == accepted["run_id"] and payload["status"] == "succeeded"
    assert payload["message"] == "Successfully generated image" and len(payload["result"]) == 1
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 32).verify(raw, headers)

    view = await wait_for_run(http, frontend, accepted["run_id"], "succeeded")
    assert view["result"] == payload["result"] and view["seeds"] == [120]
    assert view["webhook"] == {"status": "delivered", "attempts": 3, "last_status": 200}


async def test_webhook_410_stops_retrying(http: aiohttp.ClientSession, frontend: Frontend, image_b64: str) -> None:
    receiver = WebhookReceiver(fail_statuses=[410, 410, 410])
    listener = await Listener(receiver.app()).start()
    try:
        body = seed_body(image_b64, num_inference_steps=4, webhook_endpoint=f"{listener.base}/hook")
        _, accepted, _ = await post(http, frontend, body)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            async with http.get(f"{frontend.url}/runs/{accepted['run_id']}") as response:
                view = await response.json()
            if view.get("webhook", {}).get("status") == "gone":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # several retry periods: nothing more may arrive
    finally:
        await listener.stop()
    assert view["webhook"]["status"] == "gone"
    assert len(receiver.received) == 1


async def test_failed_run_is_delivered_with_its_error(
    http: aiohttp.ClientSession, make_frontend: Callable[..., Frontend], paced_triton: EmbeddedTriton, image_b64: str
) -> None:
    impatient = make_frontend(triton_url=paced_triton.grpc_url, SD_TRITON_TIMEOUT_S="0.05")  # the run takes >= 6 s
    receiver = WebhookReceiver()
    listener = await Listener(receiver.app()).start()
    try:
        body = seed_body(image_b64, num_inference_steps=150, strength=1.0, webhook_endpoint=f"{listener.base}/hook")
        status, accepted, _ = await post(http, impatient, body)
        assert status == 202
        await receiver.wait_delivered()
    finally:
        await listener.stop()
    headers, raw, _ = receiver.received[-1]
    payload = Webhook(WEBHOOK_SECRET).verify(raw, headers)
    assert payload["status"] == "failed" and payload["error"]["code"] == "backend_timeout"


async def test_restart_with_an_undelivered_webhook_still_delivers_it(
    http: aiohttp.ClientSession, make_frontend: Callable[..., Frontend], image_b64: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "durable"
    hook_port = free_port()  # nothing listens yet: the receiver is down
    first = make_frontend(data_dir=data_dir)
    body = seed_body(image_b64, num_inference_steps=4, webhook_endpoint=f"http://127.0.0.1:{hook_port}/hook")
    status, accepted, _ = await post(http, first, body)
    assert status == 202
    view = await wait_for_run(http, first, accepted["run_id"], "succeeded")
    deadline = time.monotonic() + 30
    while view["webhook"]["attempts"] < 1 and time.monotonic() < deadline:  # its first delivery was refused
        await asyncio.sleep(0.1)
        async with http.get(f"{first.url}/runs/{accepted['run_id']}") as response:
            view = await response.json()
    assert view["webhook"]["status"] == "pending" and view["webhook"]["attempts"] >= 1
    first.stop(signal.SIGKILL)  # no goodbye: only the store remembers

    receiver = WebhookReceiver()
    listener = await Listener(receiver.app(), port=hook_port).start()
    try:
        second = make_frontend(data_dir=data_dir)
        await receiver.wait_delivered()
    finally:
        await listener.stop()
    headers, raw, _ = receiver.received[-1]
    payload = Webhook(WEBHOOK_SECRET).verify(raw, headers)
    assert payload["run_id"] == accepted["run_id"] and payload["result"] == view["result"]
    assert headers["webhook-id"] == f"msg_{accepted['run_id']}"
    await wait_for_run(http, second, accepted["run_id"], "succeeded")


async def test_runs_are_readable_only_by_the_key_that_created_them(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    _, answer, _ = await post(http, frontend, seed_body(image_b64, num_inference_steps=4))
    view = await wait_for_run(http, frontend, answer["run_id"], "succeeded")
    assert view["result"] == answer["result"]
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[1]}) as other:
        async with other.get(f"{frontend.url}/runs/{answer['run_id']}") as response:
            assert response.status == 404
        async with other.get(f"{frontend.url}/runs/00000000-0000-0000-0000-000000000000") as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"


async def test_operations_endpoints(http: aiohttp.ClientSession, frontend: Frontend, image_b64: str) -> None:
    await post(http, frontend, seed_body(image_b64, num_inference_steps=4))
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{frontend.url}/healthz") as response:
            assert response.status == 200
        async with anonymous.get(f"{frontend.url}/readyz") as response:
            assert response.status == 200, await response.text()
        async with anonymous.get(f"{frontend.url}/metrics") as response:
            text = await response.text()
        assert 'sd_http_requests_total{route="/predict",status="200"}' in text
        assert "sd_images_generated_total" in text and "sd_webhook_deliveries_total" in text
        async with anonymous.get(f"{frontend.url}/openapi.json") as response:
            document = await response.json()
    assert set(document["paths"]) >= {"/predict", "/runs/{run_id}", "/healthz", "/readyz", "/metrics"}
    assert document["components"]["schemas"]["PredictBody"]["properties"]["num_inference_steps"]["default"] == 50
    logs = [json.loads(line) for line in frontend.logs().splitlines() if line.startswith("{")]
    assert any(entry.get("run_id") for entry in logs), "structured logs carry the run id"


async def test_run_interrupted_by_a_crash_is_resumed_after_restart(
    http: aiohttp.ClientSession,
    make_frontend: Callable[..., Frontend],
    paced_triton: EmbeddedTriton,
    image_b64: str,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "crash"
    receiver = WebhookReceiver()
    listener = await Listener(receiver.app()).start()
    try:
        first = make_frontend(data_dir=data_dir, triton_url=paced_triton.grpc_url)  # the run takes >= 6 s
        body = seed_body(image_b64, num_inference_steps=150, strength=1.0, webhook_endpoint=f"{listener.base}/hook")
        status, accepted, _ = await post(http, first, body)
        assert status == 202
        await wait_for_run(http, first, accepted["run_id"], "processing")
        first.stop(signal.SIGKILL)
        assert not receiver.received
        second = make_frontend(data_dir=data_dir, triton_url=paced_triton.grpc_url)
        await receiver.wait_delivered(timeout_s=60)
        view = await wait_for_run(http, second, accepted["run_id"], "succeeded")
    finally:
        await listener.stop()
    headers, raw, _ = receiver.received[-1]
    assert Webhook(WEBHOOK_SECRET).verify(raw, headers)["result"] == view["result"]


async def test_synchronous_run_cut_by_a_crash_is_marked_failed_not_left_processing(
    http: aiohttp.ClientSession,
    make_frontend: Callable[..., Frontend],
    paced_triton: EmbeddedTriton,
    image_b64: str,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "crash-sync"
    first = make_frontend(data_dir=data_dir, triton_url=paced_triton.grpc_url)  # the run takes >= 6 s
    request = asyncio.create_task(post(http, first, seed_body(image_b64, num_inference_steps=150, strength=1.0)))
    run_id = await accepted_run_id(first)  # recorded before it runs
    async with http.get(f"{first.url}/runs/{run_id}") as response:
        assert (await response.json())["status"] == "processing"  # synchronous runs start as processing
    first.stop(signal.SIGKILL)
    with pytest.raises(aiohttp.ClientError):
        await request
    second = make_frontend(data_dir=data_dir)
    view = await wait_for_run(http, second, run_id, "failed")
    assert view["error"]["code"] == "backend_unavailable"
    assert "stopped before it finished" in view["error"]["message"]


async def test_graceful_shutdown_finishes_in_flight_requests(
    http: aiohttp.ClientSession, make_frontend: Callable[..., Frontend], paced_triton: EmbeddedTriton, image_b64: str
) -> None:
    server = make_frontend(triton_url=paced_triton.grpc_url)  # the run takes >= 6 s
    request = asyncio.create_task(post(http, server, seed_body(image_b64, num_inference_steps=150, strength=1.0)))
    run_id = await accepted_run_id(server)
    async with http.get(f"{server.url}/runs/{run_id}") as response:
        in_flight = (await response.json())["status"]
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)  # the signal reaches it while the run is generating
    assert in_flight == "processing" and not request.done()
    status, answer, _ = await request
    assert status == 200 and answer["message"] == "Successfully generated image" and answer["run_id"] == run_id
    assert await asyncio.to_thread(server.process.wait, 30) == 0


async def test_graceful_shutdown_waits_for_a_background_run_and_records_it(
    http: aiohttp.ClientSession,
    make_frontend: Callable[..., Frontend],
    paced_triton: EmbeddedTriton,
    image_b64: str,
    tmp_path: Path,
) -> None:
    """Only the service's drain waits for a background run (aiohttp waits for handlers, and this one has
    answered 202): without it the run is cut off, handed back 'processing', and resumed from scratch."""
    data_dir = tmp_path / "drained"
    server = make_frontend(data_dir=data_dir, triton_url=paced_triton.grpc_url)
    body = seed_body(image_b64, num_inference_steps=75, strength=1.0)  # >= 3 s in the paced model
    status, accepted, _ = await post(http, server, body, headers={"Prefer": "respond-async"})
    assert status == 202, accepted
    await wait_for_run(http, server, accepted["run_id"], "processing")
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.process.wait, 60) == 0
    again = make_frontend(data_dir=data_dir, triton_url=paced_triton.grpc_url)  # the same store
    async with http.get(f"{again.url}/runs/{accepted['run_id']}") as response:
        view = await response.json()
    assert view["status"] == "succeeded", view

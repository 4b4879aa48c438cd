"""The Python client and the ``img2img`` CLI against the real stack (frontend + Triton)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image
from standardwebhooks import Webhook

from embedded.triton_server import EmbeddedTriton
from sd_img2img_client import (
    AsyncImg2ImgClient,
    Img2ImgClient,
    Img2ImgError,
    Img2ImgRequest,
    Img2ImgResult,
    RunAccepted,
    WebhookVerificationError,
    verify_webhook,
)

from ..helpers.servers import Listener, WebhookReceiver, png_bytes
from ..helpers.support import API_KEYS, WEBHOOK_SECRET, Frontend

pytestmark = pytest.mark.integration
IMG2IMG = str(Path(sys.executable).with_name("img2img"))


@pytest.fixture
def input_png(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    path.write_bytes(png_bytes((64, 96), seed=4))
    return path


def cli(frontend: Frontend, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"IMG2IMG_URL": frontend.url, "IMG2IMG_API_KEY": API_KEYS[0], "PATH": "/usr/bin:/bin"}
    return subprocess.run([IMG2IMG, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_cli_turns_an_input_png_into_output_pngs(frontend: Frontend, input_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = cli(
        frontend,
        str(input_png),
        "-p",
        "a watercolor",
        "--steps",
        "8",
        "--num-images",
        "2",
        "--seed",
        "5",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.split()]
    assert len(paths) == 2 and [p.name.split("_")[1] for p in paths] == ["5.png", "6.png"]
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (96, 64))
    assert done.stderr == ""  # no spinner when not on a terminal


def test_cli_json_prints_the_raw_answer(frontend: Frontend, input_png: Path, tmp_path: Path) -> None:
    done = cli(frontend, str(input_png), "-p", "x", "--steps", "4", "--seed", "9", "--json", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["message"] == "Successfully generated image" and answer["seeds"] == [9]
    assert (tmp_path / f"{answer['run_id']}_9.png").read_bytes() == base64.b64decode(answer["result"][0])


def test_cli_shows_the_servers_message_and_fails_on_bad_input(
    frontend: Frontend, input_png: Path, tmp_path: Path
) -> None:
    done = cli(frontend, str(input_png), "-p", "x", "--strength", "1.5", "-o", str(tmp_path))
    assert done.returncode == 1
    assert "422 invalid_request" in done.stderr and "strength" in done.stderr and "1.5" in done.stderr
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    done = cli(frontend, str(not_an_image), "-p", "x")
    assert done.returncode == 1 and "415 unsupported_image" in done.stderr
    done = cli(frontend, str(tmp_path / "missing.png"), "-p", "x")
    assert done.returncode == 1 and "No such file" in done.stderr
    assert [p.name for p in tmp_path.glob("*.png")] == ["input.png"]  # nothing written on failure


def test_cli_bad_usage_exits_2(frontend: Frontend) -> None:
    done = cli(frontend, "input.png")  # no --prompt
    assert done.returncode == 2 and "--prompt" in done.stderr


def test_cli_direct_to_triton(triton: EmbeddedTriton, frontend: Frontend, input_png: Path, tmp_path: Path) -> None:
    done = cli(
        frontend,
        str(input_png),
        "-p",
        "x",
        "--steps",
        "4",
        "--seed",
        "3",
        "--triton",
        triton.grpc_url,
        "-o",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == tmp_path / "triton_3.png"
    via_frontend = cli(
        frontend, str(input_png), "-p", "x", "--steps", "4", "--seed", "3", "--json", "-o", str(tmp_path / "fe")
    )
    same = base64.b64decode(json.loads(via_frontend.stdout)["result"][0])
    with Image.open(tmp_path / "triton_3.png") as a, Image.open(io.BytesIO(same)) as b:
        assert a.tobytes() == b.tobytes()  # same model, same seed: same pixels either way


def test_sync_client_generates_and_reads_the_run(frontend: Frontend, input_png: Path) -> None:
    with Img2ImgClient(frontend.url, API_KEYS[0]) as client:
        result = client.generate(Img2ImgRequest("x", image=input_png, num_inference_steps=4, seed=11))
        assert isinstance(result, Img2ImgResult) and result.seeds == [11]
        run = client.get_run(result.run_id)
        assert run.status == "succeeded" and run.result is not None and run.result.images == result.images
        with pytest.raises(Img2ImgError) as caught:
            client.generate(Img2ImgRequest("x", image=input_png, guidance_scale=99))
        assert (caught.value.status, caught.value.param) == (422, "guidance_scale")


async def test_async_client_with_webhook_and_wait(frontend: Frontend, input_png: Path) -> None:
    receiver = WebhookReceiver()
    listener = await Listener(receiver.app()).start()
    try:
        async with AsyncImg2ImgClient(frontend.url, API_KEYS[1]) as client:
            request = Img2ImgRequest(
                "x",
                image=input_png.read_bytes(),
                num_inference_steps=4,
                seed=21,
                webhook_endpoint=f"{listener.base}/hook",
            )
            accepted = await client.generate(request)
            assert isinstance(accepted, RunAccepted)
            status = await client.wait_for_run(accepted.run_id, poll_s=0.1, timeout_s=30)
            await receiver.wait_delivered()
    finally:
        await listener.stop()
    assert status.status == "succeeded" and status.result is not None and status.result.seeds == [21]
    headers, raw, _ = receiver.received[-1]
    assert verify_webhook(WEBHOOK_SECRET, raw, headers)["run_id"] == accepted.run_id


def test_verify_webhook_rejects_tampering() -> None:
    body = '{"run_id":"r1","status":"succeeded"}'
    now = datetime.now(tz=UTC)
    headers = {
        "webhook-id": "msg_r1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(WEBHOOK_SECRET).sign("msg_r1", now, body),
    }
    assert verify_webhook(WEBHOOK_SECRET, body, headers)["run_id"] == "r1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(WEBHOOK_SECRET, body.replace("r1", "r2"), headers)


async def test_client_retries_honouring_retry_after() -> None:
    calls: list[float] = []

    async def predict(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return web.json_response(
                {"error": {"code": "backend_unavailable", "message": "busy", "param": None}},
                status=503,
                headers={"Retry-After": "1"},
            )
        return web.json_response(
            {
                "run_id": "r",
                "message": "Successfully generated image",
                "result": [base64.b64encode(b"img").decode()],
                "seeds": [1],
                "run_time_ms": 5,
            }
        )

    app = web.Application()
    app.router.add_post("/predict", predict)
    service = await Listener(app).start()
    try:
        async with AsyncImg2ImgClient(service.base, "k", backoff_s=0.01) as client:
            result = await client.generate(Img2ImgRequest("x", image=b"png"))
    finally:
        await service.stop()
    assert isinstance(result, Img2ImgResult) and result.images == [b"img"]
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.95  # waited as told, not its own 10 ms backoff

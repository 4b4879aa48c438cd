"""POST /predict end to end: the hosted API's example, determinism, file_url, errors."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from ..helpers.http import post, seed_body
from ..helpers.servers import Listener, file_server_app, png_bytes
from ..helpers.support import SEED_CURL_BODY, EmbeddedTriton, Frontend

pytestmark = pytest.mark.integration


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_seed_example_answers_in_the_seed_shape(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    status, answer, _ = await post(http, frontend, seed_body(image_b64))
    assert status == 200, answer
    assert re.fullmatch(r"[0-9a-f-]{36}", answer["run_id"])
    assert answer["message"] == "Successfully generated image"
    assert len(answer["result"]) == 1 and answer["seeds"] == [120]
    assert isinstance(answer["run_time_ms"], int)
    image = decode(answer["result"][0])
    assert (image.format, image.size, image.mode) == ("PNG", (64, 64), "RGB")


async def test_seed_example_with_both_image_and_file_url_uses_image_and_says_so(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    files = await Listener(file_server_app({"/image.png": png_bytes(seed=9)})).start()
    try:
        body = seed_body(image_b64, num_inference_steps=4, file_url=f"{files.base}/image.png")
        status, answer, _ = await post(http, frontend, body)
    finally:
        await files.stop()
    assert status == 200, answer
    assert answer["image_source"] == "image"
    assert "file_url was not fetched" in answer["warnings"][0]
    assert files.connections == 0


async def test_seed_curl_body_with_missing_commas_gets_400_saying_where(
    http: aiohttp.ClientSession, frontend: Frontend
) -> None:
    status, answer, _ = await post(http, frontend, SEED_CURL_BODY, headers={"Content-Type": "application/json"})
    assert status == 400
    assert answer["error"]["code"] == "invalid_json"
    assert "Expecting ',' delimiter at line 4, column 1" in answer["error"]["message"]


async def test_seeded_requests_reproduce_byte_identical_base64(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    body = seed_body(image_b64, num_inference_steps=8, num_images_per_prompt=2, seed=777)
    first = (await post(http, frontend, body))[1]
    second = (await post(http, frontend, body))[1]
    other = (await post(http, frontend, {**body, "seed": 778}))[1]
    assert first["seeds"] == second["seeds"] == [777, 778]
    assert first["result"] == second["result"]
    assert other["result"][0] == first["result"][1]  # image i uses seed + i: seed 778 alone is image 1
    assert other["result"][0] != first["result"][0]


async def test_no_seed_draws_one_and_echoes_it_so_the_image_can_be_reproduced(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    body = seed_body(image_b64, num_inference_steps=4)
    del body["seed"]
    drawn = (await post(http, frontend, body))[1]
    again = (await post(http, frontend, {**body, "seed": drawn["seeds"][0]}))[1]
    assert again["result"] == drawn["result"]


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_output_formats(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str, fmt: str, pil_format: str
) -> None:
    status, answer, _ = await post(http, frontend, seed_body(image_b64, num_inference_steps=4, output_format=fmt))
    assert status == 200 and decode(answer["result"][0]).format == pil_format


async def test_data_uri_images_are_accepted_and_resized_to_multiples_of_8(
    http: aiohttp.ClientSession, frontend: Frontend
) -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (70, 45), (255, 0, 0, 128)).save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    status, answer, _ = await post(http, frontend, seed_body(uri, num_inference_steps=4))
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == (64, 40)
    assert decode(answer["result"][0]).size == (64, 40)


async def test_file_url_on_an_allowed_address_is_fetched(http: aiohttp.ClientSession, frontend: Frontend) -> None:
    files = await Listener(file_server_app({"/image.png": png_bytes((48, 32), seed=3)})).start()
    try:
        body = seed_body("", num_inference_steps=4, file_url=f"{files.base}/image.png")
        del body["image"]
        status, answer, _ = await post(http, frontend, body)
    finally:
        await files.stop()
    assert status == 200, answer
    assert answer["image_source"] == "file_url" and decode(answer["result"][0]).size == (
        32,
        48,
    )  # random_image is (height, width)
    assert files.connections == 1


async def test_file_url_redirect_to_a_denied_address_never_connects(
    http: aiohttp.ClientSession, frontend: Frontend
) -> None:
    # 127.0.0.1 is allowed for this frontend; 127.0.0.2 (loopback too) is not.
    denied = await Listener(file_server_app({"/secret": png_bytes()}), host="127.0.0.2").start()
    files = await Listener(file_server_app({"/hop": web.HTTPFound(f"{denied.base}/secret")}), host="127.0.0.1").start()
    try:
        body = {"prompt": "x", "file_url": f"{files.base}/hop", "num_inference_steps": 4}
        status, answer, _ = await post(http, frontend, body)
    finally:
        await files.stop()
        await denied.stop()
    assert status == 422, answer
    assert answer["error"]["code"] == "file_url_failed" and answer["error"]["param"] == "file_url"
    assert "refused" in answer["error"]["message"]
    assert files.connections == 1 and denied.connections == 0


@pytest.mark.parametrize(
    "target",
    [
        "{loopback}",
        "http://localhost:{port}/image.png",
        "http://[::1]:{port}/image.png",
        "http://[::ffff:127.0.0.1]:{port}/image.png",
        "http://10.1.2.3/image.png",
        "http://192.168.0.10/image.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/image.png",
        "http://[64:ff9b::7f00:1]:{port}/image.png",
        "http://0.0.0.0:{port}/image.png",
        "file:///etc/passwd",
        "ftp://example.com/image.png",
    ],
)
async def test_file_url_to_non_public_addresses_is_refused_without_connecting(
    http: aiohttp.ClientSession, make_frontend: Callable[..., Frontend], target: str
) -> None:
    strict = make_frontend(SD_ALLOW_PRIVATE_NETWORKS="")
    files = await Listener(file_server_app({"/image.png": png_bytes()})).start()
    try:
        url = target.format(loopback=f"{files.base}/image.png", port=files.port)
        status, answer, _ = await post(http, strict, {"prompt": "x", "file_url": url, "num_inference_steps": 4})
    finally:
        await files.stop()
    assert status == 422, answer
    assert answer["error"]["code"] == "file_url_failed" and answer["error"]["param"] == "file_url"
    assert files.connections == 0


# One test per row of the error table.


async def test_validation_error_is_422_naming_the_field_and_value(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    status, answer, _ = await post(http, frontend, seed_body(image_b64, strength=1.5))
    assert status == 422
    assert answer["error"]["param"] == "strength"
    assert "1.5" in answer["error"]["message"]
    status, answer, _ = await post(http, frontend, {"image": image_b64})
    assert (status, answer["error"]["param"]) == (422, "prompt")
    status, answer, _ = await post(http, frontend, seed_body(image_b64, num_inference_steps=3, strength=0.3))
    assert (status, answer["error"]["param"]) == (422, "num_inference_steps")
    status, answer, _ = await post(http, frontend, seed_body(image_b64, num_inference_steps=4, scheduler="nope"))
    assert (status, answer["error"]["param"]) == (422, "scheduler"), answer  # refused by the model itself
    status, answer, _ = await post(http, frontend, seed_body(image_b64, steps=4))
    assert (status, answer["error"]["param"]) == (422, "steps")


async def newest_run(http: aiohttp.ClientSession, frontend: Frontend) -> str | None:
    async with http.get(f"{frontend.url}/runs", params={"limit": "1"}) as response:
        runs = (await response.json())["runs"]
    return runs[0]["run_id"] if runs else None


async def test_the_served_models_card_is_read_from_it_and_a_field_it_does_not_take_is_400_before_a_run(
    http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    async with http.get(f"{frontend.url}/openapi.json") as response:
        schema = (await response.json())["components"]["schemas"]["PredictBody"]
    card = schema["x-model"]  # from the model's load report: the tiny model is an SD 1.x
    assert (card["family"], card["title"], card["fields"]) == ("sd1", "SD 1.x", [])
    assert "euler_a" in card["schedulers"] and schema["x-limits"]["max_image_side"] == card["max_image_side"]
    before = await newest_run(http, frontend)
    for name in ("aesthetic_score", "negative_aesthetic_score"):
        status, answer, _ = await post(http, frontend, seed_body(image_b64, num_inference_steps=4, **{name: 7.0}))
        assert (status, answer["error"]["code"], answer["error"]["param"]) == (400, "unsupported_field", name), answer
        assert answer["error"]["message"].startswith(f"{name}: the served model (SD 1.x) does not take it")
    assert await newest_run(http, frontend) == before  # refused before it became a run
    status, answer, _ = await post(http, frontend, seed_body(image_b64, num_inference_steps=4, aesthetic_score=None))
    assert status == 200, answer  # null: not given (sent to the model as NaN)


async def test_triton_down_is_503_with_retry_after(
    http: aiohttp.ClientSession, make_frontend: Callable[..., Frontend], image_b64: str
) -> None:
    orphan = make_frontend(triton_url="127.0.0.1:9")  # nothing listens there
    status, answer, headers = await post(http, orphan, seed_body(image_b64, num_inference_steps=4))
    assert (status, answer["error"]["code"]) == (503, "backend_unavailable")
    assert int(headers["Retry-After"]) > 0
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{orphan.url}/readyz") as response:
        assert response.status == 503 and "Retry-After" in response.headers


async def test_triton_too_slow_is_504(
    http: aiohttp.ClientSession, make_frontend: Callable[..., Frontend], paced_triton: EmbeddedTriton, image_b64: str
) -> None:
    impatient = make_frontend(triton_url=paced_triton.grpc_url, SD_TRITON_TIMEOUT_S="0.05")  # the run takes >= 6 s
    body = seed_body(image_b64, num_inference_steps=150, strength=1.0)
    status, answer, _ = await post(http, impatient, body)
    assert (status, answer["error"]["code"]) == (504, "backend_timeout")

"""Every family through the real stack (a tritonserver serving its tiny pipeline, a frontend in front): the
seed's request answers in the seed's shape, a request's bytes are the same alone and joined at a middle step
of a running neighbour with other settings, and the neighbour's events stream its steps with previews.

SD 1.x is checked so by the session's servers (``test_predict``, ``test_progress``, ``test_run_control``);
here the three others, each on a server of its own. Each model is paced (``PACE_MS`` a step), so a run is in
the model long enough for another to join it on any machine.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from embedded.pods import paced
from embedded.tiny_model import build
from embedded.triton_server import copy_model_repository

from ..helpers.http import seed_body
from ..helpers.servers import png_bytes
from ..helpers.support import API_KEYS, TEST_LOG_DIR, Frontend, start_triton

pytestmark = pytest.mark.integration

PACE_MS = 40
FAMILIES = ["sd2-v", "sdxl", "sdxl-refiner"]
HEADERS = {"Authorization": API_KEYS[0]}


@pytest.fixture(scope="module", params=FAMILIES)
def family_frontend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    family = request.param
    root = tmp_path_factory.mktemp(family)
    build(root / "model", family=family)
    repository = copy_model_repository(root, paced(PACE_MS))
    triton = start_triton(repository, root / "model", log_name=f"triton-{family}")
    frontend = Frontend(root / "frontend", triton.grpc_url, settings={"SD_PROGRESS_POLL_S": "0.01"}).start()
    try:
        yield frontend
    finally:
        frontend.stop()
        triton.stop()


def image_b64() -> str:
    return base64.b64encode(png_bytes()).decode()


def predict(frontend: Frontend, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(f"{frontend.url}/predict", json=body, headers={**HEADERS, **headers}, timeout=120)


def test_the_seed_s_request_answers_alike_alone_and_joined_mid_run_and_a_run_streams_steps_with_previews(
    family_frontend: Frontend,
) -> None:
    # The seed's request, in the seed's shape.
    probe = seed_body(image_b64(), num_inference_steps=8, num_images_per_prompt=2, seed=77)
    alone = predict(family_frontend, probe)
    assert alone.status_code == 200, alone.text
    body = alone.json()
    assert set(body) >= {"run_id", "message", "result"} and body["message"] == "Successfully generated image"
    sent = Image.open(io.BytesIO(png_bytes())).size
    images = [Image.open(io.BytesIO(base64.b64decode(item))) for item in body["result"]]
    assert [image.size for image in images] == [sent, sent]
    assert np.asarray(images[0]).tobytes() != np.asarray(images[1]).tobytes()  # seed and seed + 1

    # A long neighbour of other settings, followed on its event stream; the probe joins at its 5th step.
    neighbour = seed_body(image_b64(), num_inference_steps=40, guidance_scale=3.0, scheduler="euler_a", seed=5)
    started = predict(family_frontend, neighbour, Prefer="respond-async")
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    progress: list[dict[str, Any]] = []
    joined: requests.Response | None = None
    mid_run = 0
    with requests.get(f"{family_frontend.url}/runs/{run_id}/events", headers=HEADERS, stream=True, timeout=120) as s:
        event = ""
        for line in s.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "progress":
                progress.append(json.loads(line.split(":", 1)[1]))
                if joined is None and progress[-1]["step"] >= 3:
                    joined = predict(family_frontend, probe)  # the neighbour is mid-run: it is in the model
                    mid_run = progress[-1]["step"]
    assert joined is not None and joined.status_code == 200, None if joined is None else joined.text
    assert joined.json()["result"] == alone.json()["result"]
    # It joined a running batch: the neighbour went on well past the step the probe was sent at. (Progress is
    # polled: the last step or two may end before a poll sees them; the run's end is its final event.)
    steps = [item["step"] for item in progress]
    assert steps == sorted(steps) and steps[-1] <= progress[-1]["total"] and steps[-1] > mid_run + 6
    previews = [item["preview"] for item in progress if item.get("preview")]
    assert previews, "no preview in the progress events"
    jpeg = base64.b64decode(previews[-1].split(",", 1)[1])
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_the_folder_s_family_is_logged(family_frontend: Frontend, request: pytest.FixtureRequest) -> None:
    family = request.node.callspec.params["family_frontend"]
    logs = sorted(TEST_LOG_DIR.glob(f"{os.getpid()}-triton-{family}-*.log"))
    assert logs and f"({family}," in logs[-1].read_text(errors="replace")


def test_aesthetic_scores_are_the_refiner_s_alone(family_frontend: Frontend, request: pytest.FixtureRequest) -> None:
    """The refiner takes them (and they move its image); any other family answers 400 naming the field, before a
    run is accepted (its card says what it takes)."""
    family = request.node.callspec.params["family_frontend"]
    body = seed_body(image_b64(), num_inference_steps=4, seed=3)
    scored = predict(family_frontend, {**body, "aesthetic_score": 9.0}, Prefer="respond-async")
    if family != "sdxl-refiner":
        assert scored.status_code == 400, scored.text
        error = scored.json()["error"]
        assert (error["code"], error["param"]) == ("unsupported_field", "aesthetic_score")
        assert "only an SDXL refiner" in error["message"]
        return
    assert scored.status_code == 202, scored.text
    default = predict(family_frontend, body)
    assert default.status_code == 200, default.text
    view: dict[str, Any] = {}
    for _ in range(600):
        view = requests.get(f"{family_frontend.url}/runs/{scored.json()['run_id']}", headers=HEADERS, timeout=30).json()
        if view["status"] not in ("queued", "processing"):
            break
        time.sleep(0.1)
    assert view["status"] == "succeeded", view
    assert view["result"] != default.json()["result"]

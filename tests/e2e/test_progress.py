"""Progress through the real stack: the paced model's steps reach ``GET /runs/{id}/events`` while the run is
in the model, with live previews, on the replica running it and (bounded) on another replica."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as http

from ..helpers.servers import png_bytes
from ..helpers.support import API_KEYS, PACE_S, EmbeddedTriton, Frontend

pytestmark = pytest.mark.integration

STEPS = 40  # strength 1: PNDM runs 41 steps, at least 41 x PACE_S in the model


@pytest.fixture(scope="module")
def replicas(paced_triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Frontend]]:
    """Two frontends on one run store (SQLite file) and the paced Triton; the first polls progress fast."""
    data = tmp_path_factory.mktemp("progress")
    shared = {"SD_DATABASE_URL": f"sqlite:///{data / 'runs.sqlite3'}", "SD_EVENTS_POLL_S": "0.05"}
    servers = [
        Frontend(data / "a", paced_triton.grpc_url, settings={**shared, "SD_PROGRESS_POLL_S": "0.01"}).start(),
        Frontend(data / "b", paced_triton.grpc_url, settings={**shared, "SD_PROGRESS_STORE_S": "0.5"}).start(),
    ]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def submit(frontend: Frontend, seed: int) -> str:
    body = {"prompt": "watch", "image": base64.b64encode(png_bytes()).decode(), "seed": seed, "strength": 1.0}
    answer = requests.post(
        f"{frontend.url}/predict",
        json={**body, "num_inference_steps": STEPS},
        headers={"Authorization": API_KEYS[0], "Prefer": "respond-async"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["run_id"])


def events(frontend: Frontend, run_id: str, out: list[tuple[str, dict[str, Any], float]]) -> None:
    """Every event of the run's stream, with when it arrived, until the stream ends."""
    with requests.get(
        f"{frontend.url}/runs/{run_id}/events", headers={"Authorization": API_KEYS[0]}, stream=True, timeout=120
    ) as stream:
        event = ""
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:]), time.monotonic()))


def test_the_steps_reach_the_stream_while_the_run_is_in_the_model(replicas: list[Frontend]) -> None:
    here, elsewhere = replicas
    run_id = submit(here, seed=21)
    local: list[tuple[str, dict[str, Any], float]] = []
    remote: list[tuple[str, dict[str, Any], float]] = []
    threads = [
        threading.Thread(target=events, args=(here, run_id, local)),
        threading.Thread(target=events, args=(elsewhere, run_id, remote)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    finished_at = next(at for event, _, at in local if event == "succeeded")
    steps = [(data["step"], at) for event, data, at in local if event == "progress"]
    # The replica running it polls every 10 ms against steps of at least 40 ms: it sees (nearly) every step,
    # each once, in order.
    seen = [step for step, _ in steps]
    assert seen == sorted(set(seen)) and len(seen) >= 0.8 * (STEPS + 1), seen
    assert all(data["total"] == STEPS + 1 for event, data, _ in local if event == "progress")
    assert steps[0][1] < finished_at - 10 * PACE_S  # progress came while it ran, not with the result
    previews = {data["preview"] for event, data, _ in local if event == "progress"} - {None}
    assert len(previews) >= 3 and all(p.startswith("data:image/jpeg;base64,/9j/") for p in previews)
    # Another replica sees it through the store: fewer, still in order, before the end.
    far = [data["step"] for event, data, _ in remote if event == "progress"]
    assert far and far == sorted(far) and len(far) < len(steps)
    assert [event for event, _, _ in remote if event != "progress"][-1] == "succeeded"


def test_the_model_has_no_progress_for_a_run_that_is_not_running(paced_triton: EmbeddedTriton) -> None:
    client = http.InferenceServerClient(paced_triton.http_url)
    tensor = http.InferInput("request_id", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"no-such-run"], dtype=np.object_))
    result = client.infer("sd_img2img_progress", [tensor])
    assert int(result.as_numpy("step")[0]) == -1 and int(result.as_numpy("total")[0]) == -1
    assert result.as_numpy("preview")[0] == b""

"""``make serve MODEL_DIR=<your diffusers folder>`` (the README's way to use your weights): served, never written.

It used to build the tiny random model into that folder (the tiny-model stamp was a prerequisite of
``serve``), replacing a real checkpoint's weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from embedded.tiny_model import build_pipeline
from embedded.triton_server import REPO_ROOT, free_port

from ..helpers.http import post, seed_body
from ..helpers.processes import interrupt, wait_ready
from ..helpers.support import API_KEYS, WEBHOOK_SECRET, Frontend

pytestmark = pytest.mark.integration


def fingerprint(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


async def test_make_serve_serves_your_model_dir_and_leaves_it_byte_identical(
    tmp_path: Path, http: aiohttp.ClientSession, frontend: Frontend, image_b64: str
) -> None:
    # "Your" checkpoint: a diffusers folder with other weights than the tiny model, and no builder stamp.
    checkpoint = tmp_path / "my-sd-checkpoint"
    build_pipeline(seed=7).save_pretrained(checkpoint, safe_serialization=True)
    (checkpoint / "NOTES.txt").write_text("fine-tuned on my photos\n")
    before = fingerprint(checkpoint)

    port = free_port()
    ports = f"--triton-http-port={free_port()} --triton-grpc-port={free_port()} --triton-metrics-port={free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "MAKE"))}
    env |= {"SD_PORT": str(port), "SD_DATA_DIR": str(tmp_path / "data"), "SD_API_KEYS": API_KEYS[0]}
    env |= {"SD_WEBHOOK_SECRET": WEBHOOK_SECRET}
    log = tmp_path / "make-serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "serve", f"MODEL_DIR={checkpoint}", f"SERVE_ARGS={ports}"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches make and the stack, as in a terminal
        )
    try:
        served = Frontend(tmp_path / "unused", "", port=port)
        await wait_ready(http, served.url, process, log)
        status, mine, _ = await post(http, served, seed_body(image_b64, num_inference_steps=8, strength=0.5))
        assert status == 200, mine
    finally:
        interrupt(process, timeout_s=60)

    assert fingerprint(checkpoint) == before, "make serve wrote into MODEL_DIR"
    assert "tiny_model" not in log.read_text(errors="replace")
    # It served those weights, not the tiny model's: the same request differs from the tiny model's answer.
    status, tiny, _ = await post(http, frontend, seed_body(image_b64, num_inference_steps=8, strength=0.5))
    assert status == 200 and tiny["result"] != mine["result"], json.dumps(tiny)[:200]

"""``make serve-replicas`` as the README runs it (on free ports): a local PostgreSQL, one tritonserver and
three frontends sharing one key and webhook secret; any replica answers for any run, only to its key;
Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import aiohttp
import psutil
import pytest

from embedded.postgres import EmbeddedPostgres
from embedded.triton_server import REPO_ROOT, free_port

from ..helpers.http import post, seed_body
from ..helpers.processes import interrupt, wait_ready
from ..helpers.support import API_KEYS, WEBHOOK_SECRET, Frontend

pytestmark = pytest.mark.integration


async def test_make_serve_replicas_serves_one_store_from_three_frontends_and_ctrl_c_stops_all(
    tmp_path: Path, http: aiohttp.ClientSession, image_b64: str
) -> None:
    ports = [free_port() for _ in range(3)]
    triton_ports = (
        f"--triton-http-port={free_port()} --triton-grpc-port={free_port()} --triton-metrics-port={free_port()}"
    )
    args = f"--ports={','.join(map(str, ports))} --pg-port={free_port()} --pg-data={tmp_path / 'pg'} {triton_ports}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "MAKE"))}
    env |= {"SD_API_KEYS": ",".join(API_KEYS), "SD_WEBHOOK_SECRET": WEBHOOK_SECRET}
    log = tmp_path / "make-serve-replicas.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "serve-replicas", f"SERVE_ARGS={args}"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches make and the stack, as in a terminal
        )
    started: list[psutil.Process] = []
    try:
        replicas = [Frontend(tmp_path / "unused", "", port=port) for port in ports]
        for replica in replicas:
            await wait_ready(http, replica.url, process, log)
        started = psutil.Process(process.pid).children(recursive=True)
        commands = [" ".join(command_line(p)) for p in started]
        status, answer, _ = await post(http, replicas[0], seed_body(image_b64, num_inference_steps=4))
        assert status == 200, answer
        for replica in replicas[1:]:  # the run was stored once, where every replica reads
            async with http.get(f"{replica.url}/runs/{answer['run_id']}") as response:
                assert response.status == 200 and (await response.json())["result"] == answer["result"]
            async with http.get(
                f"{replica.url}/runs/{answer['run_id']}", headers={"Authorization": API_KEYS[1]}
            ) as response:
                assert response.status == 404  # another key's run does not exist for it
    finally:
        interrupt(process, timeout_s=120)
    cluster_stopped = not (tmp_path / "pg" / "postmaster.pid").exists()
    EmbeddedPostgres(tmp_path / "pg").destroy()  # as root it may live in postgres's home: remove it there too
    text = log.read_text(errors="replace")
    assert "PostgreSQL ready" in text, text[-2000:]
    assert sum(command.endswith("-m frontend") for command in commands) == 3, commands
    assert any("tritonserver" in command for command in commands), commands
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"still running after Ctrl-C: {[command_line(p) for p in alive]}"
    # PostgreSQL runs in a session of its own (only the launcher stops it): stopped when its pid file is gone.
    assert cluster_stopped


def command_line(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # exited meanwhile
        return []

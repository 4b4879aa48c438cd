"""``make serve``, ``make serve-replicas`` and ``make serve-fleet`` stop everything they started on SIGTERM,
SIGINT and SIGHUP sent to make's process group (what a process manager, ``timeout``, a CI time-out, Ctrl-C
or a closed terminal sends).

Every process the launcher starts inherits a marker in its environment, so one that left its session
(tritonserver and its stub, PostgreSQL, the frontends) is still found. Nothing may be left, and every
port free, *when make exits*: the launcher waits for what it stops, it does not leave it to die later.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psutil
import pytest

from embedded.postgres import EmbeddedPostgres
from embedded.triton_server import REPO_ROOT, free_port

from ..helpers.processes import wait_ready
from ..helpers.support import API_KEYS, WEBHOOK_SECRET, Frontend

pytestmark = pytest.mark.integration

MARK = "SD_LAUNCHER_TEST_MARK"
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def marked(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``mark`` (zombies hold no port and are skipped)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(MARK) == mark:
                found.append(process)
        except psutil.Error:  # exited meanwhile, or not ours to read
            continue
    return found


def describe(processes: list[psutil.Process]) -> list[str]:
    out = []
    for process in processes:
        try:
            out.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.Error:
            out.append(f"{process.pid} (exited)")
    return out


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# make serve: every signal (the stack hands them to the frontend's own handlers while it serves). serve-fleet runs
# serve-replicas' launcher (embedded/replicas.py) with pods besides, and that launcher's one handler
# (lifecycle.stop_on_signals, tests/unit/test_stop_signals.py) takes all three alike: SIGTERM, Kubernetes', once.
# (make serve-replicas' own Ctrl-C is tests/e2e/test_make_serve_replicas.py's.)
LAUNCHES = [("serve", signum) for signum in SIGNALS] + [("serve-fleet", signal.SIGTERM)]


@pytest.mark.parametrize(("target", "signum"), LAUNCHES, ids=[f"{t}-{signal.Signals(s).name}" for t, s in LAUNCHES])
async def test_a_signal_to_makes_group_stops_every_process_and_frees_every_port(
    target: str, signum: int, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    triton_ports = [free_port() for _ in range(3)]
    args = " ".join(
        f"--triton-{kind}-port={port}" for kind, port in zip(("http", "grpc", "metrics"), triton_ports, strict=True)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "MAKE"))}
    env |= {"SD_API_KEYS": API_KEYS[0], "SD_WEBHOOK_SECRET": WEBHOOK_SECRET, MARK: secrets.token_hex(8)}
    if target == "serve":
        frontend_ports = [free_port()]
        env |= {"SD_PORT": str(frontend_ports[0]), "SD_DATA_DIR": str(tmp_path / "data")}
        store_ports = []
    else:
        frontend_ports = [free_port() for _ in range(3)]
        store_ports = [free_port()]
        args += f" --ports={','.join(map(str, frontend_ports))} --pg-port={store_ports[0]} --pg-data={tmp_path / 'pg'}"
    # The Triton ports, on each address its servers listen on (serve-fleet: one pod per loopback address).
    triton_hosts = ["127.0.0.2", "127.0.0.3"] if target == "serve-fleet" else ["127.0.0.1"]
    pods = ["PODS=2"] if target == "serve-fleet" else []
    ports = [(port, "127.0.0.1") for port in frontend_ports + store_ports]
    ports += [(port, host) for port in triton_ports for host in triton_hosts]
    log = tmp_path / "make.log"
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", target, f"SERVE_ARGS={args}", *pods],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make's own process group, as a terminal or a process manager gives it
        )
    try:
        for port in frontend_ports:
            await wait_ready(http, f"http://127.0.0.1:{port}", make, log)
        running = describe(marked(env[MARK]))
        expected = ["tritonserver", "triton_python_backend_stub"] + (["postgres -D"] if store_ports else [])
        for name in expected:  # the marker reaches what left make's session: else this test could not fail
            assert any(name in line for line in running), (name, running)
        servers = sum("bin/tritonserver" in line for line in running)
        assert servers == len(triton_hosts), running
        assert all(port_in_use(port, host) for port, host in ports), (ports, running)
        os.killpg(make.pid, signum)
        code = make.wait(timeout=150)
        left = describe(marked(env[MARK]))  # at make's exit, not some time later
        busy = [(port, host) for port, host in ports if port_in_use(port, host)]
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        for process in marked(env[MARK]):  # never leak into the next test, whatever failed
            process.kill()
        if store_ports:
            EmbeddedPostgres(tmp_path / "pg").destroy()
    text = log.read_text(errors="replace")
    assert not left, f"still running after {signal.Signals(signum).name}: {left}\n{text[-2000:]}"
    assert not busy, f"ports still in use after {signal.Signals(signum).name}: {busy}\n{text[-2000:]}"
    # make waits for its recipe, then ends itself by the signal it got (GNU make's fatal_error_signal).
    assert code in (0, -signum) and "Traceback" not in text, f"make exited {code}:\n{text[-2000:]}"


def test_a_frontend_drains_and_exits_0_on_sighup_as_on_sigterm(make_frontend: Callable[..., Frontend]) -> None:
    """Not killed by SIGHUP's default action (a closed terminal, some process managers) with runs in flight."""
    server = make_frontend()
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    assert server.process.wait(timeout=60) == 0, server.logs()[-2000:]

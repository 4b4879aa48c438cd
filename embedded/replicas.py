"""``make serve-replicas``: a local PostgreSQL, one tritonserver, and three frontends sharing them.

The frontends listen on 8080, 8081 and 8082 (``--ports``), share one run store (PostgreSQL, data in
``.pgdata/``, or your ``SD_DATABASE_URL``), one API key and one webhook secret (``SD_API_KEYS`` and
``SD_WEBHOOK_SECRET`` honoured as in ``make serve``; generated and printed when unset). Any replica
answers for any run; kill one and the others finish its work. Ctrl-C, SIGTERM or SIGHUP stops all of it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from embedded.lifecycle import ignore_stop_signals, spawn_server, stop_on_signals
from embedded.postgres import EmbeddedPostgres, PostgresError
from embedded.stack import add_triton_arguments, fill_dev_credentials, start_triton, stop_triton
from embedded.triton_server import REPO_ROOT, TritonStartError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_triton_arguments(parser)
    parser.add_argument("--ports", default="8080,8081,8082", help="one frontend per port")
    parser.add_argument("--pg-data", default=".pgdata", help="the local PostgreSQL's folder (kept across runs)")
    parser.add_argument("--pg-port", type=int, default=55432)
    args = parser.parse_args(argv)
    ports = [int(port) for port in args.ports.split(",")]

    stop_on_signals()
    # Stopped in the reverse order of their start: the frontends drain into the store, then Triton, then the store.
    with contextlib.ExitStack() as started:
        try:
            if not os.environ.get("SD_DATABASE_URL"):
                postgres = EmbeddedPostgres(Path(args.pg_data), args.pg_port)
                started.callback(postgres.stop)
                postgres.start()
                os.environ["SD_DATABASE_URL"] = postgres.url
                print(f"PostgreSQL ready on 127.0.0.1:{args.pg_port} (data: {args.pg_data}/)", flush=True)
            triton, supervisor = start_triton(args)
            started.callback(stop_triton, triton, supervisor)
            os.environ.setdefault("SD_TRITON_URL", triton.grpc_url)
            for note in fill_dev_credentials():
                print(note, flush=True)
            frontends: list[subprocess.Popen[bytes]] = []
            started.callback(stop_frontends, frontends)
            for port in ports:
                frontends.append(start_frontend(port))
            print("Ctrl-C stops everything.", flush=True)
            watch(ports, frontends)
            print("every frontend exited; stopping", file=sys.stderr)
            return 1
        except (PostgresError, TritonStartError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # SIGINT, SIGTERM or SIGHUP
            return 0
        finally:
            ignore_stop_signals()


def start_frontend(port: int) -> subprocess.Popen[bytes]:
    log = Path(".build") / f"frontend-{port}.log"
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        process = spawn_server(
            [sys.executable, "-m", "frontend"],
            cwd=REPO_ROOT,
            env={**os.environ, "SD_PORT": str(port), "SD_DATA_DIR": f"data/replica-{port}"},
            stdout=out,
            stderr=out,
        )
    print(f"frontend: http://127.0.0.1:{port}  (log: {log})", flush=True)
    return process


def watch(ports: list[int], frontends: list[subprocess.Popen[bytes]]) -> None:
    """Until every frontend has exited: one may die, and the others take over its work."""
    reported: set[int] = set()
    while any(process.poll() is None for process in frontends):
        for port, process in zip(ports, frontends, strict=True):
            if process.poll() is not None and port not in reported:
                reported.add(port)
                print(f"frontend :{port} exited ({process.returncode}); the others take over its work", flush=True)
        time.sleep(0.5)


def stop_frontends(frontends: list[subprocess.Popen[bytes]], timeout_s: float = 90) -> None:
    """SIGTERM to each (they drain side by side), then SIGKILL any still running after ``timeout_s``."""
    for process in frontends:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in frontends:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())

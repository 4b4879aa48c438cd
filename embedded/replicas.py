"""``make serve-replicas``: a local PostgreSQL, one tritonserver, and three frontends sharing them.
``make serve-fleet``: the same with ``--pods N`` tritonservers, one per loopback address (127.0.0.2 and up,
each its own copy of the model repository, as separate pods; ``--pace-ms``: a fixed time per denoising
step, as a GPU would take), every frontend placing runs on all of them (``SD_TRITON_URL=ipv4:...``).

The frontends listen on 8080, 8081 and 8082 (``--ports``), share one run store (PostgreSQL, data in
``.pgdata/``, or your ``SD_DATABASE_URL``), one API key and one webhook secret (``SD_API_KEYS`` and
``SD_WEBHOOK_SECRET`` honoured as in ``make serve``; generated and printed when unset). Any replica
answers for any run; kill one and the others finish its work. Ctrl-C, SIGTERM or SIGHUP stops all of it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from embedded.frontend_process import Frontend, FrontendStartError, own_settings, start_all, stop_all
from embedded.lifecycle import ignore_stop_signals, stop_on_signals
from embedded.pods import fleet_url, make_pods, start_pods, stop_pods
from embedded.postgres import EmbeddedPostgres, PostgresError
from embedded.stack import add_triton_arguments, fill_dev_credentials, start_triton, stop_triton
from embedded.tiny_model import build
from embedded.triton_server import DEFAULT_MODEL_PATH, REPO_ROOT, EmbeddedTriton, TritonStartError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_triton_arguments(parser)
    parser.add_argument("--ports", default="8080,8081,8082", help="one frontend per port")
    parser.add_argument("--pg-data", default=".pgdata", help="the local PostgreSQL's folder (kept across runs)")
    parser.add_argument("--pg-port", type=int, default=55432)
    parser.add_argument("--pods", type=int, default=0, help="tritonservers on 127.0.0.2 and up (0: one on 127.0.0.1)")
    parser.add_argument("--pace-ms", type=int, default=0, help="each pod's time per denoising step, at least")
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
            if args.pods:
                pods = start_fleet(args)
                started.callback(stop_pods, pods)
                triton_url = fleet_url(pods)
            else:
                triton, supervisor = start_triton(args)
                started.callback(stop_triton, triton, supervisor)
                triton_url = triton.grpc_url
            for note in fill_dev_credentials():
                print(note, flush=True)
            base = own_settings()
            frontends = [
                Frontend(
                    REPO_ROOT / "data" / f"replica-{port}",
                    base.get("SD_TRITON_URL", triton_url),
                    port=port,
                    log_path=REPO_ROOT / ".build" / f"frontend-{port}.log",
                    base=base,
                )
                for port in ports
            ]
            started.callback(stop_all, frontends, timeout_s=90)
            for frontend in start_all(frontends, timeout_s=120):
                print(f"frontend: {frontend.url}  (log: {frontend.log_path})", flush=True)
            print("Ctrl-C stops everything.", flush=True)
            watch(frontends)
            print("every frontend exited; stopping", file=sys.stderr)
            return 1
        except (PostgresError, TritonStartError, FrontendStartError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # SIGINT, SIGTERM or SIGHUP
            return 0
        finally:
            ignore_stop_signals()


def start_fleet(args: argparse.Namespace) -> list[EmbeddedTriton]:
    """``args.pods`` pods on the Triton ports given, one per loopback address; no supervisor: a broken pod
    is what the frontends route around (in Kubernetes, its liveness probe restarts it)."""
    if Path(args.model_path).resolve() == DEFAULT_MODEL_PATH:
        build(DEFAULT_MODEL_PATH)
    pods = make_pods(
        args.pods,
        REPO_ROOT / ".build" / "fleet",
        args.model_path,
        pace_ms=args.pace_ms,
        ports=(args.triton_http_port, args.triton_grpc_port, args.triton_metrics_port),
        log_dir=REPO_ROOT / ".build" / "fleet",
    )
    for pod in pods:
        pod.ready_timeout_s = args.ready_timeout
    print(f"starting {len(pods)} tritonservers (logs: .build/fleet/) ...", flush=True)
    start_pods(pods)
    for pod in pods:
        print(f"pod ready: gRPC {pod.grpc_url}  HTTP {pod.http_url}  (log: {pod.log_file})", flush=True)
    return pods


def watch(frontends: list[Frontend]) -> None:
    """Until every frontend has exited: one may die, and the others take over its work."""
    reported: set[int] = set()
    while any(frontend.running for frontend in frontends):
        for frontend in frontends:
            if not frontend.running and frontend.port not in reported:
                reported.add(frontend.port)
                code = frontend.process.returncode if frontend.process else None
                print(f"frontend :{frontend.port} exited ({code}); the others take over its work", flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())

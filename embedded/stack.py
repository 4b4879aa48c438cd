"""``make serve``: the embedded Triton (tiny model, or any diffusers folder) and the frontend, in one command.

A supervisor thread (``embedded/supervisor.py``) restarts Triton when it died, its Python stub did
(Triton 2.51 restarts neither by itself), or it stopped making progress; never because it is busy.
Only the default tiny-model folder is ever built; ``--model-path`` to anything else is served as it is.

Settings come from ``SD_*`` variables as in production; what a dev machine lacks is filled in and
printed: an API key (``SD_API_KEYS``), a webhook secret (``SD_WEBHOOK_SECRET``) and the Triton URL.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

from embedded.lifecycle import ignore_stop_signals, stop_on_signals
from embedded.supervisor import Supervisor
from embedded.tiny_model import build
from embedded.triton_server import DEFAULT_MODEL_PATH, EmbeddedTriton, TritonStartError


def add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--triton-http-port", type=int, default=8000)
    parser.add_argument("--triton-grpc-port", type=int, default=8001)
    parser.add_argument("--triton-metrics-port", type=int, default=8002)
    parser.add_argument(
        "--supervise-interval", type=float, default=5.0, help="seconds between Triton probes (0: no supervisor)"
    )
    parser.add_argument("--canary-timeout", type=float, default=15.0, help="how long a probe's canary waits")
    parser.add_argument(
        "--stall", type=float, default=600.0, help="restart after this long without progress while work waits"
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="how long Triton may take to load")


def start_triton(args: argparse.Namespace) -> tuple[EmbeddedTriton, Supervisor | None]:
    """Triton (building only the default tiny model) and its supervisor; raises TritonStartError."""
    if Path(args.model_path).resolve() == DEFAULT_MODEL_PATH:
        build(DEFAULT_MODEL_PATH)
    log_path = Path(".build") / "triton.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    triton = EmbeddedTriton(
        model_path=args.model_path,
        http_port=args.triton_http_port,
        grpc_port=args.triton_grpc_port,
        metrics_port=args.triton_metrics_port,
        log_file=log_path,
        ready_timeout_s=args.ready_timeout,
    )
    print(f"starting tritonserver (log: {log_path}) ...", flush=True)
    supervisor = None
    try:
        triton.start()
        if args.supervise_interval > 0:
            supervisor = Supervisor(
                triton,
                interval_s=args.supervise_interval,
                probe_timeout_s=args.canary_timeout,
                stall_s=args.stall,
                report=lambda m: print(f"supervisor: {m}", flush=True),
            ).start()
    except BaseException:  # a failed start, or a stop signal while it loads: nothing may be left running
        stop_triton(triton, supervisor)
        raise
    print(f"tritonserver ready: HTTP {triton.http_url}  gRPC {triton.grpc_url}", flush=True)
    return triton, supervisor


def stop_triton(triton: EmbeddedTriton, supervisor: Supervisor | None) -> None:
    if supervisor is not None:
        supervisor.stop(timeout_s=2)
    triton.stop()


def fill_dev_credentials() -> list[str]:
    """What a dev machine lacks: an API key and a webhook secret, generated into the environment; notes to print."""
    notes = []
    if not os.environ.get("SD_API_KEYS"):
        os.environ["SD_API_KEYS"] = "sk-dev-" + secrets.token_urlsafe(24)
        notes.append(f"API key (dev, generated):     {os.environ['SD_API_KEYS']}")
    if not os.environ.get("SD_WEBHOOK_SECRET"):
        os.environ["SD_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        notes.append(f"webhook secret (dev, generated): {os.environ['SD_WEBHOOK_SECRET']}")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_triton_arguments(parser)
    args = parser.parse_args(argv)
    stop_on_signals()  # the frontend's own handlers take over while it serves (SIGHUP included)
    try:
        triton, supervisor = start_triton(args)
    except TritonStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # stopped while Triton loaded
        return 0
    try:
        os.environ.setdefault("SD_TRITON_URL", triton.grpc_url)
        notes = fill_dev_credentials()

        from frontend.__main__ import main as frontend_main
        from frontend.settings import Settings

        settings = Settings()
        for note in notes:
            print(note, flush=True)
        print(
            f"frontend: http://{settings.host}:{settings.port}  (POST /predict, GET /runs/ID, /readyz, /metrics)",
            f"playground: http://{settings.host}:{settings.port}/  (paste the API key there)",
            sep="\n",
            flush=True,
        )
        frontend_main()
    except KeyboardInterrupt:  # a stop signal before the frontend's own handlers were in place
        pass
    finally:
        ignore_stop_signals()
        stop_triton(triton, supervisor)
    return 0


if __name__ == "__main__":
    sys.exit(main())

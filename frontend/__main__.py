"""``python -m frontend``: serve the API with settings from ``SD_*`` environment variables."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from .app import create_app
from .logs import setup_logging
from .settings import Settings


def _graceful_exit() -> None:
    raise GracefulExit


def main() -> None:
    settings = Settings()
    setup_logging(settings.log_level)
    # aiohttp drains on SIGINT and SIGTERM; SIGHUP (a closed terminal, some process managers) does the same
    # here rather than killing the process with runs in flight.
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGHUP, _graceful_exit)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()

"""``python -m frontend``: serve the API with settings from ``SD_*`` environment variables."""

from __future__ import annotations

from aiohttp import web

from .app import create_app
from .logs import setup_logging
from .settings import Settings


def main() -> None:
    settings = Settings()
    setup_logging(settings.log_level)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()

"""The in-process app of every API test: ``create_app(settings)`` with the scripted backend (``test_api.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from frontend.app import create_app
from frontend.settings import Settings

from ..helpers.api import ScriptedBackend
from ..helpers.support import API_KEYS, WEBHOOK_SECRET


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api_keys=",".join(API_KEYS),  # type: ignore[arg-type]
        webhook_secret=WEBHOOK_SECRET,  # type: ignore[arg-type]
        allow_private_networks="127.0.0.1/32",  # type: ignore[arg-type]
        webhook_retry_base_s=0.05,
        webhook_poll_s=0.05,
        async_retry_window_s=0,
        max_body_bytes=2_000_000,
    )


@pytest.fixture
async def api(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]],
    settings: Settings,
    backend: ScriptedBackend,
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(create_app(settings, backend=backend))

"""End-to-end: a real frontend process in front of the session's real tritonserver."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from embedded.triton_server import EmbeddedTriton

from ..support import API_KEYS, Frontend
from .servers import png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def frontend(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    """The default frontend: 127.0.0.1 allowed for file_url and webhooks (our test servers live there)."""
    server = Frontend(tmp_path_factory.mktemp("frontend"), triton.grpc_url).start()
    yield server
    server.stop()


@pytest.fixture
def make_frontend(triton: EmbeddedTriton, tmp_path: Path) -> Iterator[Callable[..., Frontend]]:
    """Frontends with other settings; stopped after the test."""
    started: list[Frontend] = []

    def make(data_dir: Path | None = None, triton_url: str | None = None, **settings: str) -> Frontend:
        server = Frontend(data_dir or tmp_path / f"fe{len(started)}", triton_url or triton.grpc_url, settings)
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as session:
        yield session


@pytest.fixture(scope="session")
def image_b64() -> str:
    return base64.b64encode(png_bytes()).decode()

"""Real HTTP servers on 127.0.0.1 for the end-to-end tests: a file server and a webhook receiver."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from .support import random_image


def png_bytes(size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(random_image(size, seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Listener:
    """An aiohttp app served on ``host`` that counts every TCP connection accepted (a refused SSRF makes none)."""

    app: web.Application
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0
    runner: web.AppRunner | None = None
    server: asyncio.AbstractServer | None = None

    async def start(self) -> Listener:
        self.runner = web.AppRunner(self.app, handle_signals=False)
        await self.runner.setup()
        protocol_factory = self.runner.server
        assert protocol_factory is not None

        def counting_factory() -> Any:
            self.connections += 1
            return protocol_factory()

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(counting_factory, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.runner is not None:
            await self.runner.cleanup()


def file_server_app(routes: dict[str, web.StreamResponse | bytes]) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        item = routes.get(request.path)
        if item is None:
            return web.Response(status=404)
        if isinstance(item, bytes):
            return web.Response(body=item, content_type="image/png")
        if isinstance(item, web.HTTPRedirection):  # raised, not returned; a fresh one per request
            raise type(item)(item.location)
        return item

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    return app


@dataclass
class WebhookReceiver:
    """Answers ``fail_statuses`` in turn, then 200; records every request it gets."""

    fail_statuses: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            status = self.fail_statuses.pop(0) if self.fail_statuses else 200
            self.received.append((dict(request.headers), body, status))
            if status == 200:
                self.event.set()
            return web.Response(status=status, headers=self.headers)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", hook)
        return app

    async def wait_delivered(self, timeout_s: float = 30) -> None:
        await asyncio.wait_for(self.event.wait(), timeout_s)

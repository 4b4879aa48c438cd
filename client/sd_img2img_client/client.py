"""Sync and async clients for the HTTP API, with retries that honour ``Retry-After``."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from .models import Img2ImgError, Img2ImgRequest, Img2ImgResult, RunAccepted, RunStatus

DEFAULT_URL = "http://127.0.0.1:8080"
RETRY_STATUSES = {429, 503}  # the service says "not now": safe to resend


def _parse(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise Img2ImgError(f"HTTP {response.status_code}: not a JSON answer", status=response.status_code) from None
    if response.status_code >= 400:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        raise Img2ImgError(
            error.get("message", response.reason_phrase),
            status=response.status_code,
            code=error.get("code"),
            param=error.get("param"),
        )
    if not isinstance(data, dict):
        raise Img2ImgError(f"HTTP {response.status_code}: unexpected answer", status=response.status_code)
    return data


def _generated(data: dict[str, Any], status: int) -> Img2ImgResult | RunAccepted:
    if status == 202:
        return RunAccepted(data["run_id"], data["message"], data.get("status", "queued"), data)
    return Img2ImgResult.from_json(data)


def _delay(attempt: int, response: httpx.Response | None, backoff_s: float) -> float:
    """``Retry-After`` when the service gives one, else exponential backoff with jitter."""
    if response is not None:
        try:
            return max(0.0, float(response.headers.get("Retry-After", "")))
        except ValueError:
            pass
    return float(backoff_s * 2**attempt * (0.5 + random.random()))  # noqa: S311 - jitter


class _Base:
    def __init__(self, base_url: str, api_key: str, timeout_s: float, max_retries: int, backoff_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": api_key}
        self.timeout = httpx.Timeout(timeout_s, connect=10.0)
        self.max_retries, self.backoff_s = max_retries, backoff_s


class Img2ImgClient(_Base):
    """``with Img2ImgClient(url, key) as client: result = client.generate(Img2ImgRequest(...))``"""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str = "",
        *,
        timeout_s: float = 600.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout_s, max_retries, backoff_s)
        self._http = httpx.Client(headers=self.headers, timeout=self.timeout, transport=transport)

    def __enter__(self) -> Img2ImgClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, f"{self.base_url}{path}", **kwargs)
                if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                    return response
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise Img2ImgError(f"could not reach {self.base_url}: {exc}") from None
            time.sleep(_delay(attempt, response, self.backoff_s))
        raise AssertionError("unreachable")

    def generate(self, request: Img2ImgRequest) -> Img2ImgResult | RunAccepted:
        response = self._send("POST", "/predict", json=request.to_json())
        return _generated(_parse(response), response.status_code)

    def get_run(self, run_id: str) -> RunStatus:
        return RunStatus.from_json(_parse(self._send("GET", f"/runs/{run_id}")))

    def wait_for_run(self, run_id: str, *, poll_s: float = 1.0, timeout_s: float = 600.0) -> RunStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get_run(run_id)
            if status.finished or time.monotonic() > deadline:
                return status
            time.sleep(poll_s)


class AsyncImg2ImgClient(_Base):
    """``async with AsyncImg2ImgClient(url, key) as client: result = await client.generate(...)``"""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str = "",
        *,
        timeout_s: float = 600.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout_s, max_retries, backoff_s)
        self._http = httpx.AsyncClient(headers=self.headers, timeout=self.timeout, transport=transport)

    async def __aenter__(self) -> AsyncImg2ImgClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = await self._http.request(method, f"{self.base_url}{path}", **kwargs)
                if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                    return response
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise Img2ImgError(f"could not reach {self.base_url}: {exc}") from None
            await asyncio.sleep(_delay(attempt, response, self.backoff_s))
        raise AssertionError("unreachable")

    async def generate(self, request: Img2ImgRequest) -> Img2ImgResult | RunAccepted:
        response = await self._send("POST", "/predict", json=request.to_json())
        return _generated(_parse(response), response.status_code)

    async def get_run(self, run_id: str) -> RunStatus:
        return RunStatus.from_json(_parse(await self._send("GET", f"/runs/{run_id}")))

    async def wait_for_run(self, run_id: str, *, poll_s: float = 1.0, timeout_s: float = 600.0) -> RunStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = await self.get_run(run_id)
            if status.finished or time.monotonic() > deadline:
                return status
            await asyncio.sleep(poll_s)

"""Sync and async clients for the HTTP API, with retries that honour ``Retry-After``."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from .models import (
    Img2ImgError,
    Img2ImgRequest,
    Img2ImgResult,
    Progress,
    RunAccepted,
    RunEvent,
    RunStatus,
    format_duration,
)

DEFAULT_URL = "http://127.0.0.1:8080"
RETRY_STATUSES = {429, 503}  # the service says "not now": safe to resend
# 409 codes that also mean "not now" for POST /predict: the same Idempotency-Key is still running.
PREDICT_RETRY_CODES = frozenset({"idempotency_key_in_use"})
# The event stream sends a keep-alive comment every 15 s: a read waits longer than that.
EVENTS_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def _parse(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise Img2ImgError(f"HTTP {response.status_code}: not a JSON answer", status=response.status_code) from None
    if response.status_code >= 400:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        error = error if isinstance(error, dict) else {}
        run = error.get("run")
        raise Img2ImgError(
            error.get("message", response.reason_phrase),
            status=response.status_code,
            code=error.get("code"),
            param=error.get("param"),
            run=RunStatus.from_json(run) if isinstance(run, dict) and "run_id" in run else None,
        )
    if not isinstance(data, dict):
        raise Img2ImgError(f"HTTP {response.status_code}: unexpected answer", status=response.status_code)
    return data


def _generated(data: dict[str, Any], status: int) -> Img2ImgResult | RunAccepted:
    if status == 202:
        return RunAccepted(data["run_id"], data["message"], data.get("status", "queued"), data)
    return Img2ImgResult.from_json(data)


def _accepted(data: dict[str, Any], status: int) -> RunAccepted:
    if status != 202:
        raise Img2ImgError(f"HTTP {status}: expected 202 to Prefer: respond-async", status=status)
    return RunAccepted(data["run_id"], data["message"], data.get("status", "queued"), data)


def _error_code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _retryable(response: httpx.Response, codes: frozenset[str]) -> bool:
    if response.status_code in RETRY_STATUSES:
        return True
    return bool(codes) and response.status_code == 409 and _error_code(response) in codes


def _run_headers(cancel_after: float | str | None, idempotency_key: str | None, respond_async: bool) -> dict[str, str]:
    """Headers of one logical POST /predict; its retries resend them as they are (the same Idempotency-Key)."""
    headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    if cancel_after is not None:
        headers["Cancel-After"] = format_duration(cancel_after)
    if respond_async:
        headers["Prefer"] = "respond-async"
    return headers


@dataclass
class _SseParser:
    """Server-Sent Events (the WHATWG wire format), fed one line at a time."""

    last_id: str = ""  # the id of the last complete event: what a reconnection sends as Last-Event-ID
    _id: str = ""
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def reset(self) -> None:
        """Forget a half-received event (after a drop); keep ``last_id``."""
        self._id, self._event, self._data = self.last_id, "", []

    def feed(self, line: str) -> RunEvent | None:
        """The event a blank line completes, else ``None``."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: ": keep-alive"
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # "retry" and unknown fields are ignored

    def _dispatch(self) -> RunEvent | None:
        self.last_id = self._id
        event, data = self._event, "\n".join(self._data)
        self.reset()
        if not data:
            return None
        try:
            number = int(self.last_id)
        except ValueError:
            number = 0
        try:
            view = json.loads(data)
            if event == "progress":
                run = RunStatus(view["run_id"], "processing", None, None, None, view)
                return RunEvent(number, event, run, Progress.from_json(view))
            run = RunStatus.from_json(view)
        except (ValueError, KeyError, TypeError) as exc:
            raise Img2ImgError(f"malformed run event {data[:200]!r}: {exc}") from None
        return RunEvent(number, event or run.status, run)


def _events_request(last_id: str) -> dict[str, Any]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    return {"headers": headers, "timeout": EVENTS_TIMEOUT}


def _stream_ended(run_id: str) -> Img2ImgError:
    return Img2ImgError(f"the event stream of run {run_id} kept ending before a final status")


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

    def _send(
        self, method: str, path: str, *, retry_codes: frozenset[str] = frozenset(), **kwargs: Any
    ) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, f"{self.base_url}{path}", **kwargs)
                if not _retryable(response, retry_codes) or attempt == self.max_retries:
                    return response
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise Img2ImgError(f"could not reach {self.base_url}: {exc}") from None
            time.sleep(_delay(attempt, response, self.backoff_s))
        raise AssertionError("unreachable")

    def _predict(self, request: Img2ImgRequest, headers: dict[str, str]) -> httpx.Response:
        return self._send("POST", "/predict", json=request.to_json(), headers=headers, retry_codes=PREDICT_RETRY_CODES)

    def generate(
        self,
        request: Img2ImgRequest,
        *,
        cancel_after: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> Img2ImgResult | RunAccepted:
        """Run ``request``; ``cancel_after`` (seconds, or ``"90s"``, ``"2m"``, ``"1h30m"``) is its deadline.
        Every retry resends the same ``Idempotency-Key`` (a fresh one unless given), so nothing runs twice."""
        response = self._predict(request, _run_headers(cancel_after, idempotency_key, respond_async=False))
        return _generated(_parse(response), response.status_code)

    def submit(
        self,
        request: Img2ImgRequest,
        *,
        cancel_after: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> RunAccepted:
        """Start ``request`` and return at once (``Prefer: respond-async``); follow it with ``events``."""
        response = self._predict(request, _run_headers(cancel_after, idempotency_key, respond_async=True))
        return _accepted(_parse(response), response.status_code)

    def get_run(self, run_id: str) -> RunStatus:
        return RunStatus.from_json(_parse(self._send("GET", f"/runs/{run_id}")))

    def cancel(self, run_id: str) -> RunStatus:
        """Cancel a run; returns its view. A run that had already finished is returned as it ended."""
        try:
            return RunStatus.from_json(_parse(self._send("POST", f"/runs/{run_id}/cancel")))
        except Img2ImgError as exc:
            if exc.code == "run_finished" and exc.run is not None:
                return exc.run
            raise

    def events(self, run_id: str, last_event_id: int | str | None = None) -> Generator[RunEvent, None, None]:
        """The run's status changes as they happen, until its final one; a dropped stream is resumed
        (``Last-Event-ID``) up to ``max_retries`` times in a row."""
        parser = _SseParser(last_id="" if last_event_id is None else str(last_event_id))
        attempt = 0
        while True:
            response: httpx.Response | None = None
            parser.reset()  # an event cut short by a drop is discarded; the last id is kept
            try:
                with self._http.stream(
                    "GET", f"{self.base_url}/runs/{run_id}/events", **_events_request(parser.last_id)
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        if not (_retryable(response, frozenset()) and attempt < self.max_retries):
                            _parse(response)
                    else:
                        for line in response.iter_lines():
                            event = parser.feed(line)
                            if event is not None:
                                attempt = 0
                                yield event
                                if event.final:
                                    return
                        response = None  # ended cleanly but early: resume with the usual backoff
            except httpx.TransportError:
                response = None
            if attempt >= self.max_retries:
                raise _stream_ended(run_id)
            time.sleep(_delay(attempt, response, self.backoff_s))
            attempt += 1

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

    async def _send(
        self, method: str, path: str, *, retry_codes: frozenset[str] = frozenset(), **kwargs: Any
    ) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = await self._http.request(method, f"{self.base_url}{path}", **kwargs)
                if not _retryable(response, retry_codes) or attempt == self.max_retries:
                    return response
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise Img2ImgError(f"could not reach {self.base_url}: {exc}") from None
            await asyncio.sleep(_delay(attempt, response, self.backoff_s))
        raise AssertionError("unreachable")

    async def _predict(self, request: Img2ImgRequest, headers: dict[str, str]) -> httpx.Response:
        return await self._send(
            "POST", "/predict", json=request.to_json(), headers=headers, retry_codes=PREDICT_RETRY_CODES
        )

    async def generate(
        self,
        request: Img2ImgRequest,
        *,
        cancel_after: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> Img2ImgResult | RunAccepted:
        """As ``Img2ImgClient.generate``."""
        response = await self._predict(request, _run_headers(cancel_after, idempotency_key, respond_async=False))
        return _generated(_parse(response), response.status_code)

    async def submit(
        self,
        request: Img2ImgRequest,
        *,
        cancel_after: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> RunAccepted:
        """As ``Img2ImgClient.submit``."""
        response = await self._predict(request, _run_headers(cancel_after, idempotency_key, respond_async=True))
        return _accepted(_parse(response), response.status_code)

    async def get_run(self, run_id: str) -> RunStatus:
        return RunStatus.from_json(_parse(await self._send("GET", f"/runs/{run_id}")))

    async def cancel(self, run_id: str) -> RunStatus:
        """As ``Img2ImgClient.cancel``."""
        try:
            return RunStatus.from_json(_parse(await self._send("POST", f"/runs/{run_id}/cancel")))
        except Img2ImgError as exc:
            if exc.code == "run_finished" and exc.run is not None:
                return exc.run
            raise

    async def events(self, run_id: str, last_event_id: int | str | None = None) -> AsyncGenerator[RunEvent, None]:
        """As ``Img2ImgClient.events``."""
        parser = _SseParser(last_id="" if last_event_id is None else str(last_event_id))
        attempt = 0
        while True:
            response: httpx.Response | None = None
            parser.reset()  # an event cut short by a drop is discarded; the last id is kept
            try:
                async with self._http.stream(
                    "GET", f"{self.base_url}/runs/{run_id}/events", **_events_request(parser.last_id)
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        if not (_retryable(response, frozenset()) and attempt < self.max_retries):
                            _parse(response)
                    else:
                        async for line in response.aiter_lines():
                            event = parser.feed(line)
                            if event is not None:
                                attempt = 0
                                yield event
                                if event.final:
                                    return
                        response = None
            except httpx.TransportError:
                response = None
            if attempt >= self.max_retries:
                raise _stream_ended(run_id)
            await asyncio.sleep(_delay(attempt, response, self.backoff_s))
            attempt += 1

    async def wait_for_run(self, run_id: str, *, poll_s: float = 1.0, timeout_s: float = 600.0) -> RunStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = await self.get_run(run_id)
            if status.finished or time.monotonic() > deadline:
                return status
            await asyncio.sleep(poll_s)

"""Fetching ``file_url`` through the guarded session: http(s) only, byte cap, timeouts, few redirects."""

from __future__ import annotations

import aiohttp
from yarl import URL

from .errors import ApiError, FileUrlFailed, PayloadTooLarge
from .netguard import AddressDenied

ALLOWED_SCHEMES = {"http", "https"}


def check_url(url: str, param: str, error: type[ApiError] = FileUrlFailed) -> URL:
    """Parse and check the scheme and host early, for a clear 4xx (``error``) before any connection."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise error(f"{param} is not a valid URL: {exc}", param=param) from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise error(f"{param} must use http or https but uses {parsed.scheme or 'no scheme'!r}", param=param)
    if not parsed.host:
        raise error(f"{param} has no host: {url!r}", param=param)
    return parsed


async def fetch_file_url(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    max_redirects: int,
    connect_timeout_s: float,
    total_timeout_s: float,
) -> bytes:
    """Download ``url`` (redirects re-checked at connect time) into memory, at most ``max_bytes``."""
    target = check_url(url, "file_url")
    timeout = aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=connect_timeout_s)
    try:
        # aiohttp raises on its max_redirects-th redirect (and 0 is no limit there): + 1 follows exactly ours.
        async with session.get(target, timeout=timeout, max_redirects=max_redirects + 1) as response:
            if response.status != 200:
                raise FileUrlFailed(f"file_url answered HTTP {response.status}", param="file_url")
            if response.content_length is not None and response.content_length > max_bytes:
                raise PayloadTooLarge(
                    f"file_url is {response.content_length} bytes; the limit is {max_bytes}", param="file_url"
                )
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > max_bytes:
                    raise PayloadTooLarge(f"file_url is larger than the limit of {max_bytes} bytes", param="file_url")
            return bytes(data)
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressDenied):
            raise FileUrlFailed(f"file_url was refused: {exc.os_error}", param="file_url") from None
        raise FileUrlFailed(f"file_url could not be reached: {exc.os_error}", param="file_url") from None
    except aiohttp.TooManyRedirects:
        raise FileUrlFailed(f"file_url redirected more than {max_redirects} times", param="file_url") from None
    except TimeoutError:
        raise FileUrlFailed(f"file_url did not answer within {total_timeout_s:g} s", param="file_url") from None
    except aiohttp.ClientError as exc:
        raise FileUrlFailed(f"file_url could not be fetched: {type(exc).__name__}", param="file_url") from None

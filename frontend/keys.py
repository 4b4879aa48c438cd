"""Application state keys (``web.AppKey``) and API-key checking."""

from __future__ import annotations

import hashlib
import hmac

import aiohttp
from aiohttp import web

from .metrics import Metrics
from .readiness import Readiness
from .runs import RunService
from .settings import Settings
from .store import RunStore
from .triton_backend import TritonBackend
from .webhooks import WebhookDeliverer

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", RunStore)
BACKEND = web.AppKey("backend", TritonBackend)
SESSION = web.AppKey("session", aiohttp.ClientSession)
DELIVERER = web.AppKey("deliverer", WebhookDeliverer)
RUNS = web.AppKey("runs", RunService)
KEY_HASHES = web.AppKey("key_hashes", tuple[str, ...])
READINESS = web.AppKey("readiness", Readiness)


def key_hash(key: str) -> str:
    """Runs are owned by the SHA-256 of the key that created them; keys themselves are never stored."""
    # surrogatepass: header bytes that are not UTF-8 reach us as surrogates (a wrong key, not a 500).
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def match_key(presented: str, known_hashes: tuple[str, ...]) -> str | None:
    """The matching key's hash, comparing against every known key in constant time (no early exit)."""
    candidate = key_hash(presented)
    match = None
    for known in known_hashes:
        if hmac.compare_digest(candidate, known):
            match = known
    return match


def presented_key(header: str | None) -> str | None:
    """``Authorization: <key>`` as in the hosted API, or ``Authorization: Bearer <key>``."""
    if not header:
        return None
    value = header.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value or None

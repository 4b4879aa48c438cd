"""The typed application state (``web.AppKey``s): what ``create_app`` opens and the handlers use."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .backend import Backend
from .metrics import Metrics
from .readiness import Readiness
from .runs.history import RunHistory
from .runs.service import RunService
from .settings import Settings
from .store import RunStore
from .webhooks import WebhookDeliverer

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", RunStore)
BACKEND = web.AppKey("backend", Backend)
SESSION = web.AppKey("session", aiohttp.ClientSession)
DELIVERER = web.AppKey("deliverer", WebhookDeliverer)
RUNS = web.AppKey("runs", RunService)
HISTORY = web.AppKey("history", RunHistory)
KEY_HASHES = web.AppKey("key_hashes", tuple[str, ...])
READINESS = web.AppKey("readiness", Readiness)

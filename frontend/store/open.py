"""The store for a ``SD_DATABASE_URL``: the engine is the URL's scheme (one line per engine)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .base import RunStore


def open_store(url: str) -> RunStore:
    """``sqlite:///relative/path.sqlite3`` or ``sqlite:////absolute/path.sqlite3``; not yet connected."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SqliteRunStore

        return SqliteRunStore(Path(url.removeprefix("sqlite:///")))
    raise ValueError(f"SD_DATABASE_URL: unsupported database {scheme!r} in {url!r} (supported: sqlite)")

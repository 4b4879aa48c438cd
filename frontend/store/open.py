"""The store for a ``SD_DATABASE_URL``: the engine is the URL's scheme (one line per engine)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .base import RunStore


def open_store(url: str, *, pool_size: int = 10) -> RunStore:
    """``sqlite:///relative/path.sqlite3``, ``sqlite:////absolute/path.sqlite3``, or
    ``postgresql://user:password@host:5432/database`` (libpq's URL form); not yet connected."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SqliteRunStore

        return SqliteRunStore(Path(url.removeprefix("sqlite:///")))
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresRunStore

        return PostgresRunStore(url, pool_size=pool_size)
    raise ValueError(
        f"SD_DATABASE_URL: unsupported database {scheme!r} in {redacted(url)!r} (supported: sqlite, postgresql)"
    )


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()

"""The run store: every accepted run and every webhook delivery, in embedded SQLite.

A run is written before we answer, and its webhook delivery is written in the same transaction as its
result (an outbox), so a restart loses neither: unfinished runs are resumed, pending deliveries re-sent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    params TEXT NOT NULL,
    image_png BLOB,
    webhook_endpoint TEXT,
    body TEXT
);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (status) WHERE status IN ('queued', 'processing');
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
"""

UNFINISHED = ("queued", "processing")


@dataclass(frozen=True)
class Run:
    id: str
    key_hash: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    params: dict[str, Any]
    image_png: bytes | None
    webhook_endpoint: str | None
    body: dict[str, Any] | None  # the answer (succeeded) or the error body (failed)


@dataclass(frozen=True)
class Delivery:
    id: str
    run_id: str
    url: str
    payload: str
    status: str
    attempts: int
    next_attempt_at: float


class RunStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.executescript(SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "RunStore.open() first"
        return self._db

    async def create_run(
        self,
        run_id: str,
        key_hash: str,
        params: dict[str, Any],
        image_png: bytes | None,
        webhook_endpoint: str | None,
        status: str = "queued",
    ) -> None:
        now = time.time()
        await self.db.execute(
            "INSERT INTO runs (id, key_hash, status, created_at, started_at, params, image_png, webhook_endpoint)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, key_hash, status, now, now if status == "processing" else None, json.dumps(params), image_png,
             webhook_endpoint),
        )  # fmt: skip
        await self.db.commit()

    async def mark_processing(self, run_id: str) -> None:
        await self.db.execute(
            "UPDATE runs SET status = 'processing', started_at = ? WHERE id = ?", (time.time(), run_id)
        )
        await self.db.commit()

    async def finish_run(self, run_id: str, status: str, body: dict[str, Any], delivery: Delivery | None) -> None:
        """Store the outcome and (same transaction) the webhook delivery that announces it."""
        now = time.time()
        await self.db.execute(
            "UPDATE runs SET status = ?, finished_at = ?, body = ?, image_png = NULL WHERE id = ?",
            (status, now, json.dumps(body), run_id),
        )
        if delivery is not None:
            await self.db.execute(
                "INSERT OR IGNORE INTO deliveries (id, run_id, url, payload, status, attempts, next_attempt_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
                (delivery.id, delivery.run_id, delivery.url, delivery.payload, delivery.next_attempt_at, now),
            )
        await self.db.commit()

    async def get_run(self, run_id: str) -> Run | None:
        async with self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _run(row)

    async def unfinished_runs(self) -> list[Run]:
        async with self.db.execute(
            "SELECT * FROM runs WHERE status IN ('queued', 'processing') ORDER BY created_at"
        ) as cursor:
            return [_run(row) for row in await cursor.fetchall()]

    async def due_deliveries(self, now: float, limit: int = 32) -> list[Delivery]:
        async with self.db.execute(
            "SELECT id, run_id, url, payload, status, attempts, next_attempt_at FROM deliveries"
            " WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (now, limit),
        ) as cursor:
            return [Delivery(*row) for row in await cursor.fetchall()]

    async def next_delivery_at(self) -> float | None:
        async with self.db.execute("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'") as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        next_attempt_at: float,
        http_status: int | None,
        error: str | None,
    ) -> None:
        await self.db.execute(
            "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_status = ?, last_error = ?,"
            " updated_at = ? WHERE id = ?",
            (status, attempts, next_attempt_at, http_status, error, time.time(), delivery_id),
        )
        await self.db.commit()

    async def delivery_for_run(self, run_id: str) -> dict[str, Any] | None:
        async with self.db.execute(
            "SELECT status, attempts, last_status FROM deliveries WHERE run_id = ?", (run_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else {"status": row[0], "attempts": row[1], "last_status": row[2]}


def _run(row: aiosqlite.Row) -> Run:
    return Run(
        id=row["id"],
        key_hash=row["key_hash"],
        status=row["status"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        params=json.loads(row["params"]),
        image_png=row["image_png"],
        webhook_endpoint=row["webhook_endpoint"],
        body=None if row["body"] is None else json.loads(row["body"]),
    )

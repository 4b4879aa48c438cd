"""The run store in embedded SQLite (the default): the only module that imports ``aiosqlite``.

A run is written before we answer, and its webhook delivery is written in the same transaction as its
result (an outbox), so a restart loses neither: unfinished runs are resumed, pending deliveries re-sent.
One process owns the file, so leases need no bookkeeping here: claims hand out all eligible work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiosqlite

from .records import Delivery, DeliveryState, DeliveryStatus, Run, RunStatus

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


class SqliteRunStore:
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
    def _conn(self) -> aiosqlite.Connection:
        assert self._db is not None, "open() first"
        return self._db

    async def create_run(
        self,
        run_id: str,
        key_hash: str,
        params: dict[str, Any],
        image_png: bytes | None,
        webhook_endpoint: str | None,
        status: RunStatus = RunStatus.QUEUED,
    ) -> None:
        now = time.time()
        await self._conn.execute(
            "INSERT INTO runs (id, key_hash, status, created_at, started_at, params, image_png, webhook_endpoint)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, key_hash, str(status), now, now if status == RunStatus.PROCESSING else None, json.dumps(params),
             image_png, webhook_endpoint),
        )  # fmt: skip
        await self._conn.commit()

    async def mark_processing(self, run_id: str) -> None:
        await self._conn.execute(
            "UPDATE runs SET status = 'processing', started_at = ? WHERE id = ?", (time.time(), run_id)
        )
        await self._conn.commit()

    async def finish_run(self, run_id: str, status: RunStatus, body: dict[str, Any], delivery: Delivery | None) -> None:
        now = time.time()
        await self._conn.execute(
            "UPDATE runs SET status = ?, finished_at = ?, body = ?, image_png = NULL WHERE id = ?",
            (str(status), now, json.dumps(body), run_id),
        )
        if delivery is not None:
            await self._conn.execute(
                "INSERT OR IGNORE INTO deliveries (id, run_id, url, payload, status, attempts, next_attempt_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
                (delivery.id, delivery.run_id, delivery.url, delivery.payload, delivery.next_attempt_at, now),
            )
        await self._conn.commit()

    async def get_run(self, run_id: str, key_hash: str | None = None) -> Run | None:
        async with self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None or (key_hash is not None and row["key_hash"] != key_hash):
            return None
        return _run(row)

    async def claim_unfinished_runs(self, owner: str, lease_s: float) -> list[Run]:
        async with self._conn.execute(
            "SELECT * FROM runs WHERE status IN ('queued', 'processing') ORDER BY created_at"
        ) as cursor:
            return [_run(row) for row in await cursor.fetchall()]

    async def claim_due_deliveries(self, owner: str, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        async with self._conn.execute(
            "SELECT id, run_id, url, payload, status, attempts, next_attempt_at FROM deliveries"
            " WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (now, limit),
        ) as cursor:
            return [
                Delivery(id, run_id, url, payload, DeliveryStatus(status), attempts, next_attempt_at)
                for id, run_id, url, payload, status, attempts, next_attempt_at in await cursor.fetchall()
            ]

    async def next_delivery_at(self) -> float | None:
        async with self._conn.execute("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'") as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: float,
        http_status: int | None,
        error: str | None,
    ) -> None:
        await self._conn.execute(
            "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_status = ?, last_error = ?,"
            " updated_at = ? WHERE id = ?",
            (str(status), attempts, next_attempt_at, http_status, error, time.time(), delivery_id),
        )
        await self._conn.commit()

    async def delivery_for_run(self, run_id: str) -> DeliveryState | None:
        async with self._conn.execute(
            "SELECT status, attempts, last_status FROM deliveries WHERE run_id = ?", (run_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else DeliveryState(DeliveryStatus(row[0]), row[1], row[2])

    async def renew_leases(self, owner: str, lease_s: float) -> None:
        return None  # a single owner: nothing to renew

    async def release_leases(self, owner: str) -> None:
        return None  # a single owner: nothing to hand over


def _run(row: aiosqlite.Row) -> Run:
    return Run(
        id=row["id"],
        key_hash=row["key_hash"],
        status=RunStatus(row["status"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        params=json.loads(row["params"]),
        image_png=row["image_png"],
        webhook_endpoint=row["webhook_endpoint"],
        body=None if row["body"] is None else json.loads(row["body"]),
    )

"""The run store in embedded SQLite (the default): the only module that imports ``aiosqlite``.

A run is written before we answer, and its webhook delivery is written in the same transaction as its
result (an outbox), so a restart loses neither: unfinished runs are resumed, pending deliveries re-sent.
Leases and fencing work as in PostgreSQL (one unit of work at a time on the one connection makes each
claim atomic), so the same contract holds; but one file on one volume means one replica: several
replicas need PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from ..quota import Decision, Quota, decide
from .records import (
    RETENTION_BATCH,
    Delivery,
    DeliveryState,
    DeliveryStatus,
    Expired,
    IdempotencyRecord,
    Lease,
    LeaseLost,
    Run,
    RunState,
    RunStatus,
    Usage,
    created_before,
    delivery_id,
)
from .sql import (
    FINISHED_SQL,
    LIST_RUNS_SQL,
    NEXT_DELIVERY_SQL,
    NO_CURSOR,
    NO_PENDING_DELIVERY_SQL,
    QUOTA_BUCKET_SQL,
    QUOTA_IN_FLIGHT_SQL,
    QUOTA_LAPSED_SQL,
    QUOTA_SAVE_BUCKET_SQL,
    QUOTA_SCHEMA,
    RUN_STATE_SQL,
    SET_PROGRESS_SQL,
    UNFINISHED_SQL,
)

# Versioned: migration N runs once, when PRAGMA user_version < N. Version 1 is the first schema
# (IF NOT EXISTS, so files made before versioning adopt it).
MIGRATIONS = [
    """
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
    """,
    # 2: leases with fencing tokens; retention; the webhook payload is built from the run's answer.
    """
    ALTER TABLE runs ADD COLUMN result_expired_at REAL;
    ALTER TABLE runs ADD COLUMN lease_owner TEXT;
    ALTER TABLE runs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN lease_expires_at REAL;
    ALTER TABLE deliveries DROP COLUMN payload;
    ALTER TABLE deliveries ADD COLUMN lease_owner TEXT;
    ALTER TABLE deliveries ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN lease_expires_at REAL;
    CREATE INDEX runs_results ON runs (finished_at) WHERE status = 'succeeded' AND result_expired_at IS NULL;
    CREATE INDEX runs_created ON runs (created_at);
    CREATE INDEX deliveries_run ON deliveries (run_id);
    """,
    # 3: Idempotency-Key records, per API key.
    """
    CREATE TABLE idempotency (
        key_hash TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        run_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        response_status INTEGER,
        response_body TEXT,
        PRIMARY KEY (key_hash, key)
    );
    CREATE INDEX idempotency_created ON idempotency (created_at);
    """,
    # 4: a key's runs newest first (GET /runs).
    """
    CREATE INDEX runs_by_key ON runs (key_hash, created_at, id);
    """,
    # 5: a processing run's progress (step, total, preview), for every replica's event streams.
    """
    ALTER TABLE runs ADD COLUMN progress TEXT;
    """,
    # 6: per-key fairness: each admitted run's slot (leased) and each key's token bucket.
    QUOTA_SCHEMA,
]


class SqliteRunStore:
    """One connection, one unit of work at a time: every call holds ``_lock`` from its first statement to
    its COMMIT (or ROLLBACK), so no coroutine's commit, rollback or read lands inside another's transaction
    on the shared connection. Reads take it too: on one connection they would see a writer's uncommitted
    rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await when_unlocked(lambda: migrate(self.path))
        # isolation_level=None: no implicit transactions; each unit of work is an explicit BEGIN IMMEDIATE
        # (the write lock taken at once, so a second process waits instead of failing an upgrade).
        self._db = await aiosqlite.connect(self.path, timeout=30, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        try:
            await self._db.execute("PRAGMA synchronous=NORMAL")
            # One process per file: a lease found at start is a previous process's, and it is gone, so
            # its work is taken over now rather than after the lease.
            await when_unlocked(self.release_leases_of_others)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def _conn(self) -> aiosqlite.Connection:
        assert self._db is not None, "open() first"
        return self._db

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection between transactions: what it reads is committed."""
        async with self._lock:
            yield self._conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One unit of work: committed whole, or rolled back whole (its own statements only)."""
        async with self._lock:
            conn = self._conn
            # aiosqlite runs statements in the order they were sent, even those whose caller was cancelled
            # while waiting: so a ROLLBACK sent here always ends this transaction before the next BEGIN.
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                # None open (BEGIN failed, or COMMIT ran), or the connection is gone: the first error is the one.
                with contextlib.suppress(sqlite3.OperationalError, ValueError):
                    await conn.execute("ROLLBACK")
                raise

    async def ping(self) -> None:
        async with self._reading() as conn:
            await conn.execute_fetchall("SELECT 1")

    def subscribe(self, wake: Callable[[], None]) -> None:
        return None  # one process: its own loops already know when they made work

    async def create_run(
        self,
        run_id: str,
        key_hash: str,
        params: dict[str, Any],
        image_png: bytes | None,
        webhook_endpoint: str | None,
        *,
        owner: str,
        lease_s: float,
        status: RunStatus = RunStatus.QUEUED,
    ) -> Lease:
        now = time.time()
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "INSERT OR IGNORE INTO runs (id, key_hash, status, created_at, started_at, params, image_png,"
                " webhook_endpoint, lease_owner, lease_token, lease_expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (run_id, key_hash, str(status), now, now if status == RunStatus.PROCESSING else None,
                 json.dumps(params), image_png, webhook_endpoint, owner, now + lease_s),
            )  # fmt: skip
            if cursor.rowcount == 1:
                return Lease(owner, 1)
            async with conn.execute("SELECT key_hash, lease_owner, lease_token FROM runs WHERE id = ?", (run_id,)) as c:
                row = await c.fetchone()
        return created_before(key_hash, owner, row)

    async def mark_processing(self, run_id: str, lease: Lease) -> None:
        async with self._transaction() as conn:
            await _fenced(
                conn, "mark_processing", lease, "UPDATE runs SET status = 'processing', started_at = ? WHERE id = ?",
                (time.time(), run_id),
            )  # fmt: skip

    async def finish_run(
        self, run_id: str, lease: Lease, status: RunStatus, body: dict[str, Any], webhook_url: str | None
    ) -> None:
        now = time.time()
        async with self._transaction() as conn:
            await _fenced(
                conn, "finish_run", lease,
                "UPDATE runs SET status = ?, finished_at = ?, body = ?, image_png = NULL, lease_owner = NULL,"
                " lease_expires_at = NULL WHERE id = ?",
                (str(status), now, json.dumps(body), run_id),
            )  # fmt: skip
            if webhook_url is not None:
                await _insert_delivery(conn, run_id, webhook_url, now)

    async def stop_run(
        self, run_id: str, key_hash: str | None, status: RunStatus, body: dict[str, Any]
    ) -> tuple[Run, bool] | None:
        now = time.time()
        async with self._transaction() as conn:
            # Fetched to the end: a RETURNING statement left open would block the COMMIT.
            returned = await conn.execute_fetchall(
                "UPDATE runs SET status = ?, finished_at = ?, body = ?, image_png = NULL, lease_owner = NULL,"
                f" lease_expires_at = NULL WHERE id = ? AND {UNFINISHED_SQL}"
                " AND (? IS NULL OR key_hash = ?) RETURNING webhook_endpoint",
                (str(status), now, json.dumps(body), run_id, key_hash, key_hash),
            )
            stopped = next(iter(returned), None)
            if stopped is not None and stopped[0] is not None:
                await _insert_delivery(conn, run_id, stopped[0], now)
            run = await _get_run(conn, run_id, key_hash)
        return None if run is None else (run, stopped is not None)

    async def finished_among(self, run_ids: list[str]) -> list[str]:
        if not run_ids:
            return []
        marks = ",".join("?" * len(run_ids))
        async with self._reading() as conn:
            rows = await conn.execute_fetchall(f"SELECT id FROM runs WHERE id IN ({marks}) AND {FINISHED_SQL}", run_ids)
        return [row[0] for row in rows]

    async def claim_idempotency(
        self, key_hash: str, key: str, fingerprint: str, run_id: str, *, now: float, ttl_s: float
    ) -> IdempotencyRecord | None:
        async with self._transaction() as conn:
            await conn.execute(
                "DELETE FROM idempotency WHERE key_hash = ? AND key = ? AND created_at < ?",
                (key_hash, key, now - ttl_s),
            )
            cursor = await conn.execute(
                "INSERT OR IGNORE INTO idempotency (key_hash, key, fingerprint, run_id, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (key_hash, key, fingerprint, run_id, now),
            )
            if cursor.rowcount == 1:
                return None
            # In the same transaction as the INSERT that found it: nobody can have released it in between.
            async with conn.execute(
                "SELECT fingerprint, run_id, created_at, response_status, response_body FROM idempotency"
                " WHERE key_hash = ? AND key = ?",
                (key_hash, key),
            ) as found:
                row = await found.fetchone()
        assert row is not None
        return IdempotencyRecord(*row)

    async def answer_idempotency(self, key_hash: str, key: str, status: int, body: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE idempotency SET response_status = ?, response_body = ? WHERE key_hash = ? AND key = ?",
                (status, body, key_hash, key),
            )

    async def release_idempotency(self, key_hash: str, key: str) -> None:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM idempotency WHERE key_hash = ? AND key = ?", (key_hash, key))

    async def run_state(self, run_id: str, key_hash: str) -> RunState | None:
        async with self._reading() as conn, conn.execute(RUN_STATE_SQL.format("?"), (run_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row["key_hash"] != key_hash else RunState.from_row(row)

    async def set_progress(self, run_id: str, progress: dict[str, Any]) -> None:
        async with self._transaction() as conn:
            # Placeholders in text order: the progress, then the id.
            await conn.execute(SET_PROGRESS_SQL.format("?", "?"), (json.dumps(progress), run_id))

    async def get_run(self, run_id: str, key_hash: str | None = None) -> Run | None:
        async with self._reading() as conn:
            return await _get_run(conn, run_id, key_hash)

    async def list_runs(self, key_hash: str, limit: int, before: tuple[float, str] | None = None) -> list[Run]:
        created_at, run_id = before or NO_CURSOR
        async with self._reading() as conn:
            rows = await conn.execute_fetchall(
                LIST_RUNS_SQL.format("?", "?", "?", "?"), (key_hash, created_at, run_id, limit)
            )
        return [_run(row) for row in rows]

    async def claim_unfinished_runs(self, owner: str, lease_s: float, limit: int = 16) -> list[Run]:
        now = time.time()
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE runs SET lease_owner = ?, lease_token = lease_token + 1, lease_expires_at = ?"
                f" WHERE id IN (SELECT id FROM runs WHERE {UNFINISHED_SQL}"
                " AND (lease_owner IS NULL OR lease_expires_at < ?) ORDER BY created_at LIMIT ?) RETURNING *",
                (owner, now + lease_s, now, limit),
            )
        return sorted((_run(row, leased=True) for row in rows), key=lambda run: run.created_at)

    async def claim_due_deliveries(self, owner: str, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE deliveries SET lease_owner = ?, lease_token = lease_token + 1, lease_expires_at = ?"
                " WHERE id IN (SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
                " AND (lease_owner IS NULL OR lease_expires_at < ?) ORDER BY next_attempt_at LIMIT ?) RETURNING id",
                (owner, time.time() + lease_s, now, time.time(), limit),
            )
            ids = [row[0] for row in rows]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            joined = await conn.execute_fetchall(
                "SELECT d.id, d.run_id, d.url, r.status, r.body, d.status, d.attempts, d.next_attempt_at,"
                " d.lease_owner, d.lease_token FROM deliveries d JOIN runs r ON r.id = d.run_id"
                f" WHERE d.id IN ({marks}) ORDER BY d.next_attempt_at",
                ids,
            )
        return [_delivery(row) for row in joined]

    async def next_delivery_at(self) -> float | None:
        sql = NEXT_DELIVERY_SQL.format(now=time.time())
        async with self._reading() as conn, conn.execute(sql) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def record_attempt(
        self,
        delivery_id: str,
        lease: Lease,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: float,
        http_status: int | None,
        error: str | None,
    ) -> None:
        async with self._transaction() as conn:
            await _fenced(
                conn, "record_attempt", lease,
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_status = ?, last_error = ?,"
                " updated_at = ?, lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                (str(status), attempts, next_attempt_at, http_status, error, time.time(), delivery_id),
            )  # fmt: skip

    async def delivery_for_run(self, run_id: str) -> DeliveryState | None:
        async with (
            self._reading() as conn,
            conn.execute("SELECT status, attempts, last_status FROM deliveries WHERE run_id = ?", (run_id,)) as cursor,
        ):
            row = await cursor.fetchone()
        return None if row is None else DeliveryState(DeliveryStatus(row[0]), row[1], row[2])

    async def renew_leases(
        self,
        owner: str,
        lease_s: float,
        runs: Collection[str],
        deliveries: Collection[str],
        slots: Collection[str] = (),
    ) -> int:
        if not runs and not deliveries and not slots:
            return 0
        expires = time.time() + lease_s
        renewed = 0
        async with self._transaction() as conn:
            for table, ids, alive in (
                ("runs", runs, UNFINISHED_SQL),
                ("deliveries", deliveries, "status = 'pending'"),
                ("quota_slots", slots, "TRUE"),
            ):
                if ids:
                    marks = ",".join("?" * len(ids))
                    cursor = await conn.execute(
                        f"UPDATE {table} SET lease_expires_at = ?"
                        f" WHERE id IN ({marks}) AND lease_owner = ? AND {alive}",
                        (expires, *ids, owner),
                    )
                    renewed += cursor.rowcount
        return renewed

    async def take_quota(self, key_hash: str, slot_id: str, owner: str, quota: Quota, lease_s: float) -> Decision:
        now = time.time()
        async with self._transaction() as conn:  # BEGIN IMMEDIATE: one writer, so count and insert are one step
            await conn.execute(QUOTA_LAPSED_SQL.format("?", "?"), (key_hash, now))
            async with conn.execute(QUOTA_IN_FLIGHT_SQL.format("?"), (key_hash,)) as cursor:
                (in_flight,) = await cursor.fetchone() or (0,)
            async with conn.execute(QUOTA_BUCKET_SQL.format("?"), (key_hash,)) as cursor:
                bucket = await cursor.fetchone()
            tokens, updated_at = (bucket[0], bucket[1]) if bucket else (None, None)
            decision = decide(quota, in_flight, tokens, updated_at, now)
            if decision.refused is None:
                await conn.execute(
                    "INSERT INTO quota_slots (id, key_hash, lease_owner, lease_expires_at) VALUES (?, ?, ?, ?)",
                    (slot_id, key_hash, owner, now + lease_s),
                )
            if quota.rate_per_s > 0:
                await conn.execute(QUOTA_SAVE_BUCKET_SQL.format("?", "?", "?"), (key_hash, decision.tokens, now))
        return decision

    async def release_quota(self, slot_id: str) -> None:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM quota_slots WHERE id = ?", (slot_id,))

    async def release_run(self, run_id: str, lease: Lease) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL"
                f" WHERE id = ? AND lease_owner = ? AND lease_token = ? AND {UNFINISHED_SQL}",
                (run_id, *_lease(lease)),
            )

    async def release_leases_of_others(self) -> None:
        async with self._transaction() as conn:
            for table in ("runs", "deliveries"):
                await conn.execute(
                    f"UPDATE {table} SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL"
                )
            await conn.execute("DELETE FROM quota_slots")  # an earlier process's runs: none of them runs now

    async def release_leases(self, owner: str) -> None:
        async with self._transaction() as conn:
            for table in ("runs", "deliveries"):
                await conn.execute(
                    f"UPDATE {table} SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?", (owner,)
                )
            await conn.execute("DELETE FROM quota_slots WHERE lease_owner = ?", (owner,))

    async def expire(
        self, now: float, result_ttl_s: float, run_ttl_s: float, idempotency_ttl_s: float = 86400.0
    ) -> Expired:
        async with self._transaction() as conn:
            results = await conn.execute(
                "UPDATE runs SET body = NULL, result_expired_at = ? WHERE id IN (SELECT id FROM runs r WHERE"
                f" status = 'succeeded' AND result_expired_at IS NULL AND finished_at < ? AND {NO_PENDING_DELIVERY_SQL}"
                " ORDER BY finished_at LIMIT ?)",
                (now, now - result_ttl_s, RETENTION_BATCH),
            )
            old = [
                row[0]
                for row in await conn.execute_fetchall(
                    f"SELECT id FROM runs r WHERE created_at < ? AND {FINISHED_SQL}"
                    f" AND {NO_PENDING_DELIVERY_SQL} ORDER BY created_at LIMIT ?",
                    (now - run_ttl_s, RETENTION_BATCH),
                )
            ]
            marks = ",".join("?" * len(old))
            await conn.execute(f"DELETE FROM deliveries WHERE run_id IN ({marks})", old)
            await conn.execute(f"DELETE FROM runs WHERE id IN ({marks})", old)
            await conn.execute(
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE created_at < ? LIMIT ?)",
                (now - idempotency_ttl_s, RETENTION_BATCH),
            )
        return Expired(results=results.rowcount, runs=len(old))

    async def usage(self) -> Usage:
        async with (
            self._reading() as conn,
            conn.execute(
                "SELECT COUNT(*), COUNT(body), COALESCE(SUM(LENGTH(body)), 0),"
                " (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'),"
                " (SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()) FROM runs"
            ) as cursor,
        ):
            row = await cursor.fetchone()
        assert row is not None
        return Usage(runs=row[0], results=row[1], result_bytes=row[2], pending_deliveries=row[3], disk_bytes=row[4])


async def _fenced(conn: aiosqlite.Connection, what: str, lease: Lease, sql: str, params: tuple[Any, ...]) -> None:
    """``sql`` ends in ``WHERE id = ?``; it runs only while ``lease`` is the current one. Inside a
    ``_transaction``: its LeaseLost rolls back that transaction, nobody else's."""
    cursor = await conn.execute(f"{sql} AND lease_owner = ? AND lease_token = ?", (*params, *_lease(lease)))
    if cursor.rowcount == 0:
        raise LeaseLost(what, lease)


async def _insert_delivery(conn: aiosqlite.Connection, run_id: str, url: str, now: float) -> None:
    await conn.execute(
        "INSERT OR IGNORE INTO deliveries (id, run_id, url, status, attempts, next_attempt_at, updated_at)"
        " VALUES (?, ?, ?, 'pending', 0, ?, ?)",
        (delivery_id(run_id), run_id, url, now, now),
    )


async def _get_run(conn: aiosqlite.Connection, run_id: str, key_hash: str | None) -> Run | None:
    async with conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)) as cursor:
        row = await cursor.fetchone()
    if row is None or (key_hash is not None and row["key_hash"] != key_hash):
        return None
    return _run(row)


async def when_unlocked(step: Callable[[], Awaitable[None]], timeout_s: float = 30) -> None:
    """Run ``step``, again while the file is locked: while another connection switches the file to WAL,
    SQLite answers "locked" at once instead of waiting out the busy timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def migrate(path: Path) -> None:
    """WAL mode, then the missing migrations under one write lock (several openers at once take turns)."""
    async with aiosqlite.connect(path, timeout=30, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            version = int(row[0]) if row else 0
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise


def _lease(lease: Lease) -> tuple[str, int]:
    return lease.owner, lease.token


def _run(row: aiosqlite.Row, leased: bool = False) -> Run:
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
        result_expired_at=row["result_expired_at"],
        lease=Lease(row["lease_owner"], row["lease_token"]) if leased else None,
    )


def _delivery(row: Iterable[Any]) -> Delivery:
    id, run_id, url, run_status, body, status, attempts, next_attempt_at, owner, token = row
    return Delivery(
        id, run_id, url, run_status, body, DeliveryStatus(status), attempts, next_attempt_at, Lease(owner, token)
    )

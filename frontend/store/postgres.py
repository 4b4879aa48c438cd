"""The run store in PostgreSQL, shared by many frontend replicas: the only module that imports ``asyncpg``.

Claims take rows with ``FOR UPDATE SKIP LOCKED`` (replicas never wait on each other's rows) and lease
them by the database's clock (replicas' clocks may disagree); every write about claimed work checks
owner and token (fencing). ``NOTIFY`` wakes peers when work appears or is handed back; a dedicated
connection listens (a pooler in transaction mode cannot carry ``LISTEN``), and callers poll as well.
A connection lost mid-call (a failover, a restart, ``pg_terminate_backend``) is discarded, never reused,
and the call raises ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import TYPE_CHECKING, Any

import asyncpg

from ..errors import StoreUnavailable
from ..quota import Decision, Quota, decide
from .postgres_migrations import MIGRATIONS
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
    RUN_STATE_SQL,
    SET_PROGRESS_SQL,
    UNFINISHED_SQL,
)

if TYPE_CHECKING:  # generic in the stubs only
    from asyncpg.pool import PoolConnectionProxy

    PoolConnection = PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger("frontend.store")
CHANNEL = "sd_img2img_work"
MIGRATION_LOCK = 0x5D1A_6121  # pg_advisory_xact_lock key: one replica migrates at a time
QUOTA_LOCK = 0x5D1A_0407  # hashtextextended seed for a key's fairness lock (never the migration's key)
DB_NOW = "extract(epoch from clock_timestamp())"  # lease times by one clock, the database's


class PostgresRunStore:
    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url, self.pool_size = url, pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribers: list[Callable[[], None]] = []

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, command_timeout=60)
        async with self._pool.acquire() as conn:
            await migrate(conn)
        self._listener = asyncio.create_task(self._listen(), name="store-listen")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL store is closed: open() first")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnection]:
        """A pooled connection for one call. A connection lost mid-call is closed for good, never handed
        back (asyncpg can leave one the server terminated in a state that fails every later call on it:
        "cannot switch to state ..."), and the call raises ``StoreUnavailable``."""
        try:
            async with self._db.acquire() as conn:
                try:
                    yield conn
                except BaseException as exc:
                    if _disconnected(exc):
                        with contextlib.suppress(asyncpg.InterfaceError):  # already closed and given back
                            conn.terminate()
                    raise
        except Exception as exc:
            if _disconnected(exc):
                log.warning("run store call failed: %s: %s", type(exc).__name__, exc)
                raise StoreUnavailable() from exc
            raise

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1", timeout=5)

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._subscribers.append(wake)

    def _wake(self, *_: object) -> None:
        for wake in self._subscribers:
            wake()

    async def _listen(self) -> None:
        """Keep one connection listening; after a reconnect, wake everyone (notifications were missed)."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._wake)
                self._wake()
                await lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection failed (%s); polling until it is back", exc)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()
            await asyncio.sleep(1.0)

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
        async with self._connection() as conn:  # one statement (autocommit): the fast path is one round trip
            inserted = await conn.fetchval(
                "INSERT INTO runs (id, key_hash, status, created_at, started_at, params, image_png, webhook_endpoint,"
                " lease_owner, lease_token, lease_expires_at)"
                f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, {DB_NOW} + $10)"
                " ON CONFLICT (id) DO NOTHING RETURNING 1",
                run_id, key_hash, str(status), now, now if status == RunStatus.PROCESSING else None, json.dumps(params),
                image_png, webhook_endpoint, owner, lease_s,
            )  # fmt: skip
            if inserted:
                return Lease(owner, 1)
            found = await conn.fetchrow("SELECT key_hash, lease_owner, lease_token FROM runs WHERE id = $1", run_id)
        return created_before(key_hash, owner, found)

    async def mark_processing(self, run_id: str, lease: Lease) -> None:
        async with self._connection() as conn:
            await _fenced(
                conn, "mark_processing", lease,
                "UPDATE runs SET status = 'processing', started_at = $4 WHERE id = $1 AND lease_owner = $2"
                " AND lease_token = $3",
                run_id, time.time(),
            )  # fmt: skip

    async def finish_run(
        self, run_id: str, lease: Lease, status: RunStatus, body: dict[str, Any], webhook_url: str | None
    ) -> None:
        now = time.time()
        async with self._connection() as conn, conn.transaction():
            await _fenced(
                conn, "finish_run", lease,
                "UPDATE runs SET status = $4, finished_at = $5, body = $6, image_png = NULL, lease_owner = NULL,"
                " lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2 AND lease_token = $3",
                run_id, str(status), now, json.dumps(body),
            )  # fmt: skip
            if webhook_url is not None:
                await conn.execute(
                    "INSERT INTO deliveries (id, run_id, url, status, attempts, next_attempt_at, updated_at)"
                    " VALUES ($1, $2, $3, 'pending', 0, $4, $4) ON CONFLICT (id) DO NOTHING",
                    delivery_id(run_id), run_id, webhook_url, now,
                )  # fmt: skip
                await conn.execute("SELECT pg_notify($1, 'delivery')", CHANNEL)

    async def stop_run(
        self, run_id: str, key_hash: str | None, status: RunStatus, body: dict[str, Any]
    ) -> tuple[Run, bool] | None:
        now = time.time()
        async with self._connection() as conn, conn.transaction():
            webhook = await conn.fetchrow(
                "UPDATE runs SET status = $2, finished_at = $3, body = $4, image_png = NULL, lease_owner = NULL,"
                f" lease_expires_at = NULL WHERE id = $1 AND {UNFINISHED_SQL}"
                " AND ($5::text IS NULL OR key_hash = $5) RETURNING webhook_endpoint",
                run_id, str(status), now, json.dumps(body), key_hash,
            )  # fmt: skip
            if webhook is not None and webhook[0] is not None:
                await conn.execute(
                    "INSERT INTO deliveries (id, run_id, url, status, attempts, next_attempt_at, updated_at)"
                    " VALUES ($1, $2, $3, 'pending', 0, $4, $4) ON CONFLICT (id) DO NOTHING",
                    delivery_id(run_id), run_id, webhook[0], now,
                )  # fmt: skip
            if webhook is not None:  # the replica running it stops at once, and a deliverer wakes
                await conn.execute("SELECT pg_notify($1, 'stopped')", CHANNEL)
            row = await conn.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        run = _owned_run(row, key_hash)
        return None if run is None else (run, webhook is not None)

    async def finished_among(self, run_ids: list[str]) -> list[str]:
        if not run_ids:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(f"SELECT id FROM runs WHERE id = ANY($1::text[]) AND {FINISHED_SQL}", run_ids)
        return [row[0] for row in rows]

    async def claim_idempotency(
        self, key_hash: str, key: str, fingerprint: str, run_id: str, *, now: float, ttl_s: float
    ) -> IdempotencyRecord | None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM idempotency WHERE key_hash = $1 AND key = $2 AND created_at < $3",
                key_hash, key, now - ttl_s,
            )  # fmt: skip
            inserted = await conn.fetchval(
                "INSERT INTO idempotency (key_hash, key, fingerprint, run_id, created_at) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (key_hash, key) DO NOTHING RETURNING 1",
                key_hash, key, fingerprint, run_id, now,
            )  # fmt: skip
            if inserted:
                return None
            row = await conn.fetchrow(
                "SELECT fingerprint, run_id, created_at, response_status, response_body FROM idempotency"
                " WHERE key_hash = $1 AND key = $2",
                key_hash, key,
            )  # fmt: skip
        if row is None:  # deleted between the two statements (expired by a peer): take it now
            return await self.claim_idempotency(key_hash, key, fingerprint, run_id, now=now, ttl_s=ttl_s)
        return IdempotencyRecord(*row)

    async def answer_idempotency(self, key_hash: str, key: str, status: int, body: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE idempotency SET response_status = $3, response_body = $4 WHERE key_hash = $1 AND key = $2",
                key_hash, key, status, body,
            )  # fmt: skip

    async def release_idempotency(self, key_hash: str, key: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM idempotency WHERE key_hash = $1 AND key = $2", key_hash, key)

    async def run_state(self, run_id: str, key_hash: str) -> RunState | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(RUN_STATE_SQL.format("$1"), run_id)
        return None if row is None or row["key_hash"] != key_hash else RunState.from_row(row)

    async def set_progress(self, run_id: str, progress: dict[str, Any]) -> None:
        async with self._connection() as conn:
            await conn.execute(SET_PROGRESS_SQL.format("$1", "$2"), run_id, json.dumps(progress))

    async def get_run(self, run_id: str, key_hash: str | None = None) -> Run | None:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        return _owned_run(row, key_hash)

    async def list_runs(self, key_hash: str, limit: int, before: tuple[float, str] | None = None) -> list[Run]:
        created_at, run_id = before or NO_CURSOR
        async with self._connection() as conn:
            rows = await conn.fetch(LIST_RUNS_SQL.format("$1", "$2", "$3", "$4"), key_hash, created_at, run_id, limit)
        return [_run(row) for row in rows]

    async def claim_unfinished_runs(self, owner: str, lease_s: float, limit: int = 16) -> list[Run]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"WITH claimable AS (SELECT id FROM runs WHERE {UNFINISHED_SQL}"
                f" AND (lease_owner IS NULL OR lease_expires_at < {DB_NOW}) ORDER BY created_at LIMIT $3"
                " FOR UPDATE SKIP LOCKED)"
                " UPDATE runs SET lease_owner = $1, lease_token = runs.lease_token + 1,"
                f" lease_expires_at = {DB_NOW} + $2 FROM claimable WHERE runs.id = claimable.id RETURNING runs.*",
                owner, lease_s, limit,
            )  # fmt: skip
        return sorted((_run(row, leased=True) for row in rows), key=lambda run: run.created_at)

    async def claim_due_deliveries(self, owner: str, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "WITH claimable AS (SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $3"
                f" AND (lease_owner IS NULL OR lease_expires_at < {DB_NOW}) ORDER BY next_attempt_at LIMIT $4"
                " FOR UPDATE SKIP LOCKED),"
                " claimed AS (UPDATE deliveries d SET lease_owner = $1, lease_token = d.lease_token + 1,"
                f" lease_expires_at = {DB_NOW} + $2 FROM claimable WHERE d.id = claimable.id RETURNING d.*)"
                " SELECT c.id, c.run_id, c.url, r.status AS run_status, r.body, c.status, c.attempts,"
                " c.next_attempt_at, c.lease_owner, c.lease_token"
                " FROM claimed c JOIN runs r ON r.id = c.run_id ORDER BY c.next_attempt_at",
                owner, lease_s, now, limit,
            )  # fmt: skip
        return [
            Delivery(
                row["id"],
                row["run_id"],
                row["url"],
                row["run_status"],
                row["body"],
                DeliveryStatus(row["status"]),
                row["attempts"],
                row["next_attempt_at"],
                Lease(row["lease_owner"], row["lease_token"]),
            )  # fmt: skip
            for row in rows
        ]

    async def next_delivery_at(self) -> float | None:
        async with self._connection() as conn:
            value = await conn.fetchval(NEXT_DELIVERY_SQL.format(now=DB_NOW))
        return None if value is None else float(value)

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
        async with self._connection() as conn:
            await _fenced(
                conn, "record_attempt", lease,
                "UPDATE deliveries SET status = $4, attempts = $5, next_attempt_at = $6, last_status = $7,"
                " last_error = $8, updated_at = $9, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = $1 AND lease_owner = $2 AND lease_token = $3",
                delivery_id, str(status), attempts, next_attempt_at, http_status, error, time.time(),
            )  # fmt: skip

    async def delivery_for_run(self, run_id: str) -> DeliveryState | None:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT status, attempts, last_status FROM deliveries WHERE run_id = $1", run_id)
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
        renewed = 0
        async with self._connection() as conn, conn.transaction():
            for table, ids, alive in (
                ("runs", runs, UNFINISHED_SQL),
                ("deliveries", deliveries, "status = 'pending'"),
                ("quota_slots", slots, "TRUE"),
            ):
                if ids:
                    done = await conn.execute(
                        f"UPDATE {table} SET lease_expires_at = {DB_NOW} + $2"
                        f" WHERE id = ANY($3::text[]) AND lease_owner = $1 AND {alive}",
                        owner, lease_s, list(ids),
                    )  # fmt: skip
                    renewed += _count(done)
        return renewed

    async def take_quota(self, key_hash: str, slot_id: str, owner: str, quota: Quota, lease_s: float) -> Decision:
        async with self._connection() as conn, conn.transaction():
            # One admission per key at a time, across replicas: count and insert are one step.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", key_hash, QUOTA_LOCK)
            now = float(await conn.fetchval(f"SELECT {DB_NOW}"))
            await conn.execute(QUOTA_LAPSED_SQL.format("$1", "$2"), key_hash, now)
            in_flight = await conn.fetchval(QUOTA_IN_FLIGHT_SQL.format("$1"), key_hash)
            bucket = await conn.fetchrow(QUOTA_BUCKET_SQL.format("$1"), key_hash)
            tokens, updated_at = (bucket[0], bucket[1]) if bucket else (None, None)
            decision = decide(quota, in_flight, tokens, updated_at, now)
            if decision.refused is None:
                await conn.execute(
                    "INSERT INTO quota_slots (id, key_hash, lease_owner, lease_expires_at) VALUES ($1, $2, $3, $4)",
                    slot_id, key_hash, owner, now + lease_s,
                )  # fmt: skip
            if quota.rate_per_s > 0:
                await conn.execute(QUOTA_SAVE_BUCKET_SQL.format("$1", "$2", "$3"), key_hash, decision.tokens, now)
        return decision

    async def release_quota(self, slot_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM quota_slots WHERE id = $1", slot_id)

    async def release_run(self, run_id: str, lease: Lease) -> None:
        async with self._connection() as conn, conn.transaction():
            released = await conn.execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL"
                f" WHERE id = $1 AND lease_owner = $2 AND lease_token = $3 AND {UNFINISHED_SQL}",
                run_id, lease.owner, lease.token,
            )  # fmt: skip
            if _count(released):
                await conn.execute("SELECT pg_notify($1, 'released')", CHANNEL)

    async def release_leases(self, owner: str) -> None:
        async with self._connection() as conn, conn.transaction():
            for table in ("runs", "deliveries"):
                await conn.execute(
                    f"UPDATE {table} SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1",
                    owner,
                )
            await conn.execute("DELETE FROM quota_slots WHERE lease_owner = $1", owner)
            await conn.execute("SELECT pg_notify($1, 'released')", CHANNEL)

    async def expire(
        self, now: float, result_ttl_s: float, run_ttl_s: float, idempotency_ttl_s: float = 86400.0
    ) -> Expired:
        async with self._connection() as conn:
            async with conn.transaction():
                results = await conn.execute(
                    "WITH batch AS (SELECT id FROM runs r WHERE status = 'succeeded' AND result_expired_at IS NULL"
                    f" AND finished_at < $2 AND {NO_PENDING_DELIVERY_SQL} ORDER BY finished_at LIMIT $3"
                    " FOR UPDATE SKIP LOCKED)"
                    " UPDATE runs SET body = NULL, result_expired_at = $1 FROM batch WHERE runs.id = batch.id",
                    now, now - result_ttl_s, RETENTION_BATCH,
                )  # fmt: skip
                runs = await conn.execute(  # their deliveries go with them (ON DELETE CASCADE)
                    f"WITH batch AS (SELECT id FROM runs r WHERE created_at < $1 AND {FINISHED_SQL}"
                    f" AND {NO_PENDING_DELIVERY_SQL} ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                    " DELETE FROM runs USING batch WHERE runs.id = batch.id",
                    now - run_ttl_s, RETENTION_BATCH,
                )  # fmt: skip
                await conn.execute(
                    "DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM idempotency WHERE created_at < $1"
                    " LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    now - idempotency_ttl_s, RETENTION_BATCH,
                )  # fmt: skip
            expired = Expired(results=_count(results), runs=_count(runs))
            if expired.results or expired.runs:
                # Make the deleted results' space reusable now, not when autovacuum's thresholds say so;
                # SKIP_LOCKED: a replica whose peer is vacuuming the same table moves on.
                await conn.execute("VACUUM (SKIP_LOCKED) runs, deliveries")
        return expired

    async def usage(self) -> Usage:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT COUNT(*), COUNT(body), COALESCE(SUM(octet_length(body)), 0),"
                " (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'),"
                " pg_total_relation_size('runs') + pg_total_relation_size('deliveries') FROM runs"
            )
        assert row is not None
        return Usage(runs=row[0], results=row[1], result_bytes=row[2], pending_deliveries=row[3], disk_bytes=row[4])


async def migrate(conn: asyncpg.Connection | PoolConnection) -> None:
    """Apply what is missing, under a transaction-scoped advisory lock: replicas starting together
    take turns, and the second finds the work done."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in MIGRATIONS:
            if version not in applied:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
                log.info("applied migration %d: %s", version, name)
        newer = sorted(applied - {version for version, _, _ in MIGRATIONS})
        if newer:
            log.warning("the database has migrations %s this version does not know (a newer replica ran them)", newer)


async def _fenced(conn: PoolConnection, what: str, lease: Lease, sql: str, run_or_delivery_id: str, *rest: Any) -> None:
    """``sql`` takes ``$1`` id, ``$2`` owner, ``$3`` token: a write that only the lease's holder makes."""
    if _count(await conn.execute(sql, run_or_delivery_id, lease.owner, lease.token, *rest)) == 0:
        raise LeaseLost(what, lease)


def _disconnected(exc: BaseException) -> bool:
    """The connection, not the statement, failed: the server went away or terminated it, the pool could not
    connect, or asyncpg's protocol was left mid-operation by such a loss. Never a bad statement or bad data."""
    if isinstance(exc, asyncpg.DataError | asyncpg.ClientConfigurationError):
        return False
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError  # connection lost mid-call, refused
        | asyncpg.InterfaceError  # "connection is closed", "another operation is in progress"
        | asyncpg.InternalClientError  # "cannot switch to state ...": the protocol broken by a lost connection
        | asyncpg.AdminShutdownError  # pg_terminate_backend, a fast shutdown
        | asyncpg.CrashShutdownError
        | asyncpg.CannotConnectNowError  # starting up, in recovery
        | asyncpg.TooManyConnectionsError,
    )


def _owned_run(row: asyncpg.Record | None, key_hash: str | None) -> Run | None:
    if row is None or (key_hash is not None and row["key_hash"] != key_hash):
        return None
    return _run(row)


def _count(status: str) -> int:
    """Rows touched, from a command status such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def _run(row: asyncpg.Record, leased: bool = False) -> Run:
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

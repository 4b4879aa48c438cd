"""The PostgreSQL schema as numbered migrations: each runs once, in order, recorded in ``schema_migrations``.

Add a migration at the end, never edit one that shipped. Keep them additive (new columns nullable or
with defaults) so replicas of the previous version keep working during a rolling upgrade.
"""

from __future__ import annotations

from .sql import QUOTA_SCHEMA

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "runs and deliveries with leases",
        """
        CREATE TABLE runs (
            id text PRIMARY KEY,
            key_hash text NOT NULL,
            status text NOT NULL,
            created_at double precision NOT NULL,
            started_at double precision,
            finished_at double precision,
            params text NOT NULL,
            image_png bytea,
            webhook_endpoint text,
            body text,  -- text, not jsonb: the exact bytes, so every webhook attempt signs the same payload
            result_expired_at double precision,
            lease_owner text,
            lease_token bigint NOT NULL DEFAULT 0,
            lease_expires_at double precision
        );
        -- PNG and base64 PNG barely compress: store them out of line without spending CPU trying.
        ALTER TABLE runs ALTER COLUMN image_png SET STORAGE EXTERNAL, ALTER COLUMN body SET STORAGE EXTERNAL;
        CREATE INDEX runs_unfinished ON runs (created_at) WHERE status IN ('queued', 'processing');
        CREATE INDEX runs_results ON runs (finished_at) WHERE status = 'succeeded' AND result_expired_at IS NULL;
        CREATE INDEX runs_created ON runs (created_at);
        CREATE TABLE deliveries (
            id text PRIMARY KEY,
            run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            url text NOT NULL,
            status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at double precision NOT NULL,
            last_status integer,
            last_error text,
            updated_at double precision NOT NULL,
            lease_owner text,
            lease_token bigint NOT NULL DEFAULT 0,
            lease_expires_at double precision
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
        CREATE INDEX deliveries_run ON deliveries (run_id);
        """,
    ),
    (
        2,
        "Idempotency-Key records",
        """
        CREATE TABLE idempotency (
            key_hash text NOT NULL,
            key text NOT NULL,
            fingerprint text NOT NULL,
            run_id text NOT NULL,
            created_at double precision NOT NULL,
            response_status integer,
            response_body text,
            PRIMARY KEY (key_hash, key)
        );
        CREATE INDEX idempotency_created ON idempotency (created_at);
        """,
    ),
    (3, "a key's runs newest first (GET /runs)", "CREATE INDEX runs_by_key ON runs (key_hash, created_at, id);"),
    (4, "a processing run's progress, for every replica's event streams", "ALTER TABLE runs ADD COLUMN progress text;"),
    (5, "per-key fairness shared by every replica: slots and token buckets", QUOTA_SCHEMA),
]

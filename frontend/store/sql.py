"""SQL both engines share, word for word (only placeholders and clocks differ between them)."""

from __future__ import annotations

from collections.abc import Iterable

from frontend.store.records import TERMINAL, UNFINISHED, RunStatus


def status_in(statuses: Iterable[RunStatus]) -> str:
    """``status IN (...)`` from the enum, in its order: the SQL never spells a status itself."""
    wanted = set(statuses)
    return "status IN (" + ", ".join(f"'{status.value}'" for status in RunStatus if status in wanted) + ")"


UNFINISHED_SQL = status_in(UNFINISHED)
FINISHED_SQL = status_in(TERMINAL)
# For a run aliased ``r``: retention keeps a result while its webhook still has to carry it.
NO_PENDING_DELIVERY_SQL = "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.run_id = r.id AND d.status = 'pending')"
# When this replica should look for deliveries again: one another replica is attempting is not ours
# before its lease lapses (so no busy polling while it is in flight). ``{now}``: the engine's clock.
NEXT_DELIVERY_SQL = (
    "SELECT MIN(CASE WHEN lease_owner IS NOT NULL AND lease_expires_at > {now} THEN lease_expires_at"
    " ELSE next_attempt_at END) FROM deliveries WHERE status = 'pending'"
)
# A key's runs, newest first, for ``list_runs``: every column but the input image (``_run`` reads them
# by name). Placeholders: the key hash, the cursor's created_at and id, the limit.
LIST_RUNS_SQL = (
    "SELECT id, key_hash, status, created_at, started_at, finished_at, params, NULL AS image_png,"
    " webhook_endpoint, body, result_expired_at FROM runs WHERE key_hash = {0} AND (created_at, id) < ({1}, {2})"
    " ORDER BY created_at DESC, id DESC LIMIT {3}"
)
# The first page's cursor: after every run there is.
NO_CURSOR = (float("inf"), "")
# What an event stream polls (``run_state``): never the result or the input image. Placeholder: the id.
RUN_STATE_SQL = "SELECT id, key_hash, status, created_at, started_at, progress FROM runs WHERE id = {0}"
# A processing run's progress (``set_progress``); a run that finished meanwhile keeps none.
SET_PROGRESS_SQL = "UPDATE runs SET progress = {1} WHERE id = {0} AND status = 'processing'"
# Per-key fairness (``take_quota``): each admitted run's slot, leased like its run (a dead replica's lapse),
# and each key's token bucket. Placeholders: the key hash, then the engine's clock or the values.
QUOTA_SCHEMA = """
    CREATE TABLE quota_slots (
        id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        lease_owner TEXT NOT NULL,
        lease_expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX quota_slots_by_key ON quota_slots (key_hash);
    CREATE INDEX quota_slots_by_owner ON quota_slots (lease_owner);
    CREATE TABLE quota_buckets (
        key_hash TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
"""
QUOTA_LAPSED_SQL = "DELETE FROM quota_slots WHERE key_hash = {0} AND lease_expires_at < {1}"
QUOTA_IN_FLIGHT_SQL = "SELECT count(*) FROM quota_slots WHERE key_hash = {0}"
QUOTA_BUCKET_SQL = "SELECT tokens, updated_at FROM quota_buckets WHERE key_hash = {0}"
QUOTA_SAVE_BUCKET_SQL = (
    "INSERT INTO quota_buckets (key_hash, tokens, updated_at) VALUES ({0}, {1}, {2})"
    " ON CONFLICT (key_hash) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at"
)

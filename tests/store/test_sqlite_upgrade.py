"""A SQLite file written by the version before leases (schema 1, no user_version) is upgraded in place:
its unfinished runs resume and its pending delivery is sent with the payload rebuilt from the answer."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from frontend.store import open_store
from frontend.store.sqlite import MIGRATIONS


async def test_a_schema_1_file_upgrades_and_keeps_its_work(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    body = {"run_id": "done", "message": "Successfully generated image", "result": ["aGk="]}
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(MIGRATIONS[0])
        db.execute(
            "INSERT INTO runs (id, key_hash, status, created_at, params, image_png, webhook_endpoint, body)"
            " VALUES ('queued', 'k', 'queued', 1, '{}', x'89', 'https://example.com/h', NULL),"
            " ('done', 'k', 'succeeded', 2, '{}', NULL, 'https://example.com/h', ?)",
            (json.dumps(body),),
        )
        db.execute(
            "INSERT INTO deliveries (id, run_id, url, payload, status, next_attempt_at, updated_at)"
            " VALUES ('msg_done', 'done', 'https://example.com/h', 'old copy', 'pending', 0, 0)"
        )
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        (resumed,) = await store.claim_unfinished_runs("replica", lease_s=30)
        assert resumed.id == "queued" and resumed.image_png == b"\x89"
        (delivery,) = await store.claim_due_deliveries("replica", time.time(), lease_s=30)
        assert delivery.payload == json.dumps({"status": "succeeded", **body}, separators=(",", ":"))
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert "payload" not in {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}

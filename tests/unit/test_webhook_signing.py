"""Webhook signatures (Standard Webhooks v1): HMAC-SHA256 of ``id.timestamp.body`` under the secret, checked
by the ``standardwebhooks`` library a receiver uses, and by hand: a change to the id, the timestamp or the
body fails verification, and so does another secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from frontend.webhooks import WebhookSigner

SECRET = "whsec_" + base64.b64encode(b"a 32-byte secret for the tests!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret, as long as that.").decode()
BODY = '{"status":"succeeded","run_id":"r-1","result":["aGk="]}'


def expected_signature(message_id: str, timestamp: int, body: str, secret: str = SECRET) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_the_headers_are_exactly_the_standard_ones() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
    headers = WebhookSigner(SECRET).headers("msg_r-1", BODY, now=at)
    assert headers == {
        "webhook-id": "msg_r-1",
        "webhook-timestamp": "1767323045",  # whole seconds
        "webhook-signature": expected_signature("msg_r-1", 1767323045, BODY),
        "content-type": "application/json",
    }


def test_a_signature_verifies_with_standardwebhooks_and_fails_when_anything_changes() -> None:
    before = int(time.time())
    headers = WebhookSigner(SECRET).headers("msg_r-1", BODY)
    after = int(time.time())
    assert before <= int(headers["webhook-timestamp"]) <= after  # signed now when no time is given
    receiver = Webhook(SECRET)
    assert receiver.verify(BODY, headers) == {"status": "succeeded", "run_id": "r-1", "result": ["aGk="]}
    changed = {
        "id": {**headers, "webhook-id": "msg_r-2"},
        "timestamp": {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)},
    }
    for what, tampered in changed.items():
        with pytest.raises(WebhookVerificationError, match="No matching signature found"):
            receiver.verify(BODY, tampered)
        assert what
    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        receiver.verify(BODY.replace("r-1", "r-2"), headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        Webhook(OTHER_SECRET).verify(BODY, headers)


def test_a_given_time_is_the_signed_time() -> None:
    at = datetime.now(tz=UTC) - timedelta(minutes=1)
    headers = WebhookSigner(SECRET).headers("msg_r-1", BODY, now=at)
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    assert Webhook(SECRET).verify(BODY, headers)
    stale = WebhookSigner(SECRET).headers("msg_r-1", BODY, now=datetime.now(tz=UTC) - timedelta(minutes=10))
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(BODY, stale)


def test_each_secret_signs_differently() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    mine = WebhookSigner(SECRET).headers("msg_r-1", BODY, now=at)["webhook-signature"]
    theirs = WebhookSigner(OTHER_SECRET).headers("msg_r-1", BODY, now=at)["webhook-signature"]
    assert mine != theirs and theirs == expected_signature("msg_r-1", int(at.timestamp()), BODY, OTHER_SECRET)


def test_a_signature_holds_whatever_the_machines_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signed time and the webhook-timestamp header are the same instant on a host that is not on UTC."""
    monkeypatch.setenv("TZ", "IST-5:30")  # a POSIX zone 5 h 30 east of UTC, no tz database needed
    time.tzset()
    try:
        headers = WebhookSigner(SECRET).headers("msg_r-1", BODY)
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
        assert Webhook(SECRET).verify(BODY, headers)
    finally:
        monkeypatch.undo()
        time.tzset()

"""For webhook receivers: check a delivery's Standard Webhooks signature before trusting it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

__all__ = ["WebhookVerificationError", "verify_webhook"]


def verify_webhook(secret: str, body: bytes | str, headers: Mapping[str, str]) -> dict[str, Any]:
    """The parsed payload if ``webhook-signature`` matches ``secret`` (``whsec_...``) and
    ``webhook-timestamp`` is within 5 minutes; raises ``WebhookVerificationError`` otherwise.
    Deduplicate on ``headers["webhook-id"]``: retries of one delivery share it."""
    payload = Webhook(secret).verify(body, dict(headers))
    if not isinstance(payload, dict):
        raise WebhookVerificationError("payload is not a JSON object")
    return payload

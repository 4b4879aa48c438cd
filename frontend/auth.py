"""API keys: hashed at start-up, matched in constant time; runs are owned by the key's hash."""

from __future__ import annotations

import hashlib
import hmac


def key_hash(key: str) -> str:
    """Runs are owned by the SHA-256 of the key that created them; keys themselves are never stored."""
    # surrogatepass: header bytes that are not UTF-8 reach us as surrogates (a wrong key, not a 500).
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def match_key(presented: str, known_hashes: tuple[str, ...]) -> str | None:
    """The matching key's hash. Constant time by construction: the presented key is hashed first, so every
    comparison is of two equal-length digests, through ``hmac.compare_digest``, against every known key
    (no early exit), whatever the presented key's length or prefix."""
    candidate = key_hash(presented)
    match = None
    for known in known_hashes:
        if hmac.compare_digest(candidate, known):
            match = known
    return match


def presented_key(header: str | None) -> str | None:
    """``Authorization: <key>`` as in the hosted API, or ``Authorization: Bearer <key>``."""
    if not header:
        return None
    value = header.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value or None

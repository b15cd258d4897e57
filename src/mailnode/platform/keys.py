"""API key verification, shared by the HTTP API and SMTP AUTH."""

from __future__ import annotations

import hmac

from mailnode.core.apikey import key_hash
from mailnode.storage.store import ApiKeyRecord, Store


async def verify_api_key(store: Store, presented: str, now: float) -> ApiKeyRecord | None:
    """The active key `presented` names, or None; every failure costs the same work.

    The lookup runs even for an empty or malformed key, by the hash of the whole presented
    string, so timing says nothing about which part was wrong.
    """
    digest = key_hash(presented)
    record = await store.find_api_key(digest)
    if record is None or not hmac.compare_digest(record.key_hash, digest) or not presented:
        return None
    if record.deactivated_at is not None:
        return None
    if record.expires_at is not None and record.expires_at <= now:
        return None
    return record

"""API keys: generated once, shown once, stored only as a SHA-256 hash and a short prefix."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

KEY_PREFIX = "mk_"
_RANDOM_BYTES = 32  # 43 URL-safe characters after the prefix


def new_api_key(random_bytes: Callable[[int], bytes]) -> str:
    """A fresh key: `mk_` and 43 URL-safe characters (256 random bits)."""
    token = base64.urlsafe_b64encode(random_bytes(_RANDOM_BYTES)).rstrip(b"=").decode()
    return KEY_PREFIX + token


def key_hash(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up.

    Lookup by the hash of the whole presented key means the time a check takes does not
    depend on how much of the key is right, and a database leak reveals no usable key.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_prefix(key: str) -> str:
    """The first 8 characters, shown in listings so people can tell keys apart."""
    return key[:8]

"""VERP envelope senders: a bounce address that names its delivery and cannot be forged.

Every platform delivery is sent with MAIL FROM `b-<id>-<key id>-<signature>@<bounce domain>`,
so a bounce that comes back to it says which delivery failed (Variable Envelope Return Path).
The signature is a truncated HMAC-SHA256, so nobody can make mailnode count bounces (and
suppress recipients) for deliveries they name.

The whole local part is lower-case base32 and digits: RFC 5321 §2.4 keeps local parts
case-sensitive, but some MTAs and mailbox software lower-case the address a bounce is sent
to, and the base64url delivery ids (mixed case, "-" and "_") would not survive that. Base32
of the id's bytes carries the same information in one case, and "-" stays free as the field
separator.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping

from mailnode.core.dkim_keys import canonical_domain

PREFIX = "b"
# RFC 5321 §4.5.3.1.1: a local part holds at most 64 octets.
MAX_LOCAL_OCTETS = 64
# 80 bits: 16 base32 characters with no padding, beyond the 64 bits an online forger could
# try against (every guess costs a delivered bounce).
SIGNATURE_BYTES = 10
MIN_KEY_BYTES = 16
KEY_ID = re.compile(r"[a-z0-9]{1,8}")
_FIELD = re.compile(r"[a-z2-7]+")
_SIGNATURE = re.compile(r"[a-z2-7]{16}")
_CONTEXT = b"mailnode-verp-v1"  # domain separation from the other HMACs mailnode computes


def verp_address(delivery_id: str, bounce_domain: str, key: bytes, key_id: str) -> str:
    """The envelope sender for a delivery: its id, signed with `key`, on the bounce domain."""
    if not KEY_ID.fullmatch(key_id):
        raise ValueError(f"VERP key id must be 1-8 lower-case letters or digits, got {key_id!r}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"VERP key must hold at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    if not delivery_id:
        raise ValueError("delivery id is empty")
    domain = canonical_domain(bounce_domain)
    encoded_id = _b32(delivery_id.encode("utf-8"))
    local = f"{PREFIX}-{encoded_id}-{key_id}-{_signature(key, domain, key_id, encoded_id)}"
    if len(local) > MAX_LOCAL_OCTETS:
        raise ValueError(f"delivery id {delivery_id!r} is too long for a {MAX_LOCAL_OCTETS}-octet local part")
    return f"{local}@{domain}"


def parse_verp(address: str, bounce_domain: str, keys: Mapping[str, bytes]) -> str | None:
    """The delivery id a VERP address names, or None unless it is ours and its signature verifies."""
    if not address.isascii():
        return None  # ours are ASCII, and str.lower() maps U+212A KELVIN SIGN to ASCII "k"
    local, at, domain = address.lower().rpartition("@")
    domain = domain.removesuffix(".")
    if not at or domain != canonical_domain(bounce_domain):
        return None
    fields = local.split("-")
    if len(fields) != 4 or fields[0] != PREFIX:
        return None
    _, encoded_id, key_id, signature = fields
    key = keys.get(key_id)
    if key is None or not _FIELD.fullmatch(encoded_id) or not _SIGNATURE.fullmatch(signature):
        return None
    expected = _signature(key, domain, key_id, encoded_id)
    if not hmac.compare_digest(expected, signature):
        return None
    return _decode_id(encoded_id)


def _signature(key: bytes, domain: str, key_id: str, encoded_id: str) -> str:
    # The domain and key id are signed too: an address is valid only where and how it was made.
    message = b"\0".join(
        (_CONTEXT, domain.encode("ascii"), key_id.encode("ascii"), encoded_id.encode("ascii"))
    )
    return _b32(hmac.new(key, message, hashlib.sha256).digest()[:SIGNATURE_BYTES])


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _decode_id(encoded_id: str) -> str | None:
    padded = encoded_id.upper() + "=" * (-len(encoded_id) % 8)
    try:
        return base64.b32decode(padded).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None

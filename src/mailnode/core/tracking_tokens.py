"""Signed tokens in tracking and unsubscribe URLs: /t/o/{token}, /t/c/{token} and /u/{token}.

A token carries its claim (what was sent to whom, under which tracking mode, where a click goes)
and an HMAC-SHA256 tag over it, so the tracker needs no database lookup to trust it and nobody
can mint one, change its mode or point a click somewhere else. Kannon signed JWTs with RSA-4096
(about 4 ms each, ~1 KB URLs); a keyed hash costs microseconds and a typical click token is
about 240 characters.

Layout before base64url (no padding), every integer big-endian:

    version (1) | key id length (1) | key id | kind (1) | mode (1) | expires_at (4) |
    domain | batch | delivery | identity | url | tag (16)

where each of the five text fields is UTF-8 after its length plus one (one byte below 0x80,
else two bytes with the high bit set); a length byte of 0 means the field is absent.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mailnode.core.tracking import TrackingMode, is_trackable_url
from mailnode.core.verp import KEY_ID, MIN_KEY_BYTES

VERSION = 1
# 128 bits: a tracking URL can be guessed at online for free, as often as the tracker answers,
# and a forged click redirects wherever the forger likes. 2^128 guesses is out of reach of any
# attacker; RFC 2104 §5 also advises keeping at least half of the hash output.
TAG_BYTES = 16
# Checked before any decoding, so a request costs bounded work. Leaves room for click URLs of
# about 2,900 characters; mint refuses a claim whose token would be longer.
MAX_TOKEN_CHARS = 4096
PSEUDONYM_BYTES = 16  # 128 bits of CSPRNG output per message build, as in Kannon
MAX_EXPIRES_AT = 2**32 - 1  # four bytes of unix seconds: February 2106
_CONTEXT = b"mailnode-tracking-v1"  # domain separation from the other HMACs mailnode computes
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_PSEUDONYM_LOCAL = re.compile(r"[0-9a-f]{32}")
_TWO_BYTE_LENGTH = 0x80
_MAX_FIELD_SIZE = 0x7FFF  # the largest length plus one that two bytes can hold


class TokenKind(enum.Enum):
    """Which route a token is for; a token is refused on any other route."""

    OPEN = "open"
    CLICK = "click"
    UNSUBSCRIBE = "unsubscribe"


_KIND_CODES = {TokenKind.OPEN: 1, TokenKind.CLICK: 2, TokenKind.UNSUBSCRIBE: 3}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}
_MODES = dict(enumerate(TrackingMode))


@dataclass(frozen=True, slots=True)
class TrackingClaim:
    """What a token says: the message it was sent in and what the tracker may record."""

    kind: TokenKind
    mode: TrackingMode
    domain: str
    batch: str  # the batch's public id
    delivery: str | None  # identified, full and unsubscribe tokens only
    # The recipient address (identified, full, unsubscribe), a pseudonym <32 hex>@track.<domain>
    # (pseudonymous), or None (anonymous).
    identity: str | None
    url: str | None  # where a click goes; click tokens only
    expires_at: int  # unix seconds; the token is refused from this second on


def new_pseudonym(domain: str, random_bytes: Callable[[int], bytes]) -> str:
    """A fresh pseudonym for one message build: 128 random bits in hex, @track.<domain>."""
    data = random_bytes(PSEUDONYM_BYTES)
    if len(data) != PSEUDONYM_BYTES:
        raise ValueError(f"random source gave {len(data)} bytes, not {PSEUDONYM_BYTES}")
    return f"{data.hex()}@track.{domain}"


def is_pseudonym(identity: str, domain: str) -> bool:
    """True for a pseudonym new_pseudonym could have made for domain."""
    local, at, host = identity.partition("@")
    return bool(at) and host == f"track.{domain}" and _PSEUDONYM_LOCAL.fullmatch(local) is not None


def mint(claim: TrackingClaim, key_id: str, key: bytes) -> str:
    """The URL-safe token for claim, signed with key; raise ValueError for a claim that is wrong."""
    if not KEY_ID.fullmatch(key_id):
        raise ValueError(f"tracking key id must be 1-8 lower-case letters or digits, got {key_id!r}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"tracking key must hold at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    check_claim(claim)
    signed = bytes((VERSION, len(key_id))) + key_id.encode("ascii") + _encode_claim(claim)
    token = _b64(signed + _tag(key, signed))
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"token would be {len(token)} characters, over {MAX_TOKEN_CHARS}; URL too long")
    return token


def verify(token: str, keys: Mapping[str, bytes], kind: TokenKind, now: float) -> TrackingClaim | None:
    """The claim a token carries, or None unless it is ours, for this route, and not expired."""
    raw = _decode(token)
    if raw is None or len(raw) < 2 + TAG_BYTES or raw[0] != VERSION:
        return None
    body_start = 2 + raw[1]
    key_id = raw[2:body_start].decode("latin-1")
    if body_start > len(raw) - TAG_BYTES or not KEY_ID.fullmatch(key_id):
        return None
    key = keys.get(key_id)
    if key is None:
        return None
    signed, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    if not hmac.compare_digest(_tag(key, signed), tag):
        return None
    try:
        claim = _decode_claim(signed[body_start:])
        check_claim(claim)
    except ValueError:
        return None  # signed by us but unreadable: a bug or a leaked key, never a valid claim
    if claim.kind is not kind or now >= claim.expires_at:
        return None
    return claim


def check_claim(claim: TrackingClaim) -> None:
    """Raise ValueError unless the claim's fields fit its kind and mode."""
    if not claim.domain or not claim.batch:
        raise ValueError("a tracking token needs a domain and a batch id")
    if not 0 <= claim.expires_at <= MAX_EXPIRES_AT:
        raise ValueError(f"expires_at {claim.expires_at} is outside 0..{MAX_EXPIRES_AT}")
    if claim.kind is TokenKind.CLICK:
        if claim.url is None or not is_trackable_url(claim.url):
            raise ValueError("a click token needs an absolute http or https URL")
    elif claim.url is not None:
        raise ValueError(f"a {claim.kind.value} token carries no URL")
    if claim.kind is TokenKind.UNSUBSCRIBE:
        if not claim.delivery or not claim.identity:
            raise ValueError("an unsubscribe token needs the delivery id and the recipient address")
    else:
        _check_tracked_identity(claim)


def _check_tracked_identity(claim: TrackingClaim) -> None:
    # What the token reveals must be no more than its mode allows (Kannon §4.1).
    mode, identity, delivery = claim.mode, claim.identity, claim.delivery
    if mode is TrackingMode.OFF:
        raise ValueError("tracking is off for this axis: mint no token, send no pixel or redirect")
    if mode is TrackingMode.ANONYMOUS and (identity is not None or delivery is not None):
        raise ValueError("an anonymous token names neither recipient nor delivery")
    if mode is TrackingMode.PSEUDONYMOUS:
        # A real address here by mistake would leak what the recipient chose to hide.
        if identity is None or not is_pseudonym(identity, claim.domain):
            raise ValueError(f"a pseudonymous identity must be <32 hex>@track.{claim.domain}")
        if delivery is not None:
            raise ValueError("a pseudonymous token names no delivery (it would identify the recipient)")
    if mode in (TrackingMode.IDENTIFIED, TrackingMode.FULL) and (not identity or not delivery):
        raise ValueError(f"an {mode.value} token needs the recipient address and the delivery id")


def _encode_claim(claim: TrackingClaim) -> bytes:
    fields = (claim.domain, claim.batch, claim.delivery, claim.identity, claim.url)
    head = bytes((_KIND_CODES[claim.kind], claim.mode.rank)) + claim.expires_at.to_bytes(4, "big")
    return head + b"".join(map(_encode_field, fields))


def _encode_field(text: str | None) -> bytes:
    if text is None:
        return b"\0"
    data = text.encode("utf-8")
    size = len(data) + 1
    if size < _TWO_BYTE_LENGTH:
        return bytes((size,)) + data
    if size > _MAX_FIELD_SIZE:
        raise ValueError(f"a token field of {len(data)} bytes is too long")
    return (0x8000 | size).to_bytes(2, "big") + data


def _decode_claim(body: bytes) -> TrackingClaim:
    """The claim in a token's body; raise ValueError if it is not one _encode_claim wrote."""
    if len(body) < 6 or body[0] not in _KINDS or body[1] not in _MODES:
        raise ValueError("malformed token header")
    fields: list[str | None] = []
    position = 6
    for _ in range(5):
        text, position = _decode_field(body, position)
        fields.append(text)
    if position != len(body):
        raise ValueError("trailing bytes in token")
    domain, batch, delivery, identity, url = fields
    if domain is None or batch is None:
        raise ValueError("token without domain or batch")
    expires_at = int.from_bytes(body[2:6], "big")
    kind, mode = _KINDS[body[0]], _MODES[body[1]]
    return TrackingClaim(kind, mode, domain, batch, delivery, identity, url, expires_at)


def _decode_field(body: bytes, position: int) -> tuple[str | None, int]:
    if position >= len(body):
        raise ValueError("truncated token")
    size = body[position]
    position += 1
    if size >= _TWO_BYTE_LENGTH:
        if position >= len(body):
            raise ValueError("truncated token")
        size = (size & 0x7F) << 8 | body[position]
        position += 1
    if size == 0:
        return None, position
    end = position + size - 1
    if end > len(body):
        raise ValueError("truncated token")
    return body[position:end].decode("utf-8"), end


def _tag(key: bytes, signed: bytes) -> bytes:
    # signed holds the version and the key id: a token is valid only as it was made.
    return hmac.digest(key, _CONTEXT + b"\0" + signed, hashlib.sha256)[:TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _decode(token: str) -> bytes | None:
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except binascii.Error:
        return None
    # One spelling per token: the unused low bits of the last character must be zero, so no
    # other string decodes to the same bytes and verifies.
    return raw if _b64(raw) == token else None

"""Tracking tokens: they say what was minted, on their own route, until they expire, and nothing else."""

from __future__ import annotations

import base64
import dataclasses
import random
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailnode.core.tracking import TrackingMode
from mailnode.core.tracking_tokens import (
    MAX_TOKEN_CHARS,
    TokenKind,
    TrackingClaim,
    is_pseudonym,
    mint,
    new_pseudonym,
    verify,
)

OFF, ANON, PSEUDO, IDENT, FULL = TrackingMode
OPEN, CLICK, UNSUBSCRIBE = TokenKind
DOMAIN = "news.example.com"
KEY = b"k" * 32
OLD_KEY = b"o" * 32
KEYS = {"k2": KEY, "k1": OLD_KEY}
BATCH = "Zq3xY8v1Wm0pLk2Rt5Nb7A"  # 22 characters, like the ids the store hands out
DELIVERY = "Hc9dE4fG6hJ1kL3mN5pQ7r"
ADDRESS = "mario.rossi@example-mail.it"
PSEUDONYM = "0123456789abcdef0123456789abcdef@track." + DOMAIN
URL = "https://www.example.com/products/summer-sale?utm_source=news"
EXPIRES = 1_900_000_000
NOW = EXPIRES - 86400.0


def _claim(kind: TokenKind = CLICK, mode: TrackingMode = IDENT, **changes: Any) -> TrackingClaim:
    identity = {ANON: None, PSEUDO: PSEUDONYM}.get(mode, ADDRESS)
    delivery = DELIVERY if mode in (IDENT, FULL) or kind is UNSUBSCRIBE else None
    claim = TrackingClaim(
        kind=kind,
        mode=mode,
        domain=DOMAIN,
        batch=BATCH,
        delivery=delivery,
        identity=ADDRESS if kind is UNSUBSCRIBE else identity,
        url=URL if kind is CLICK else None,
        expires_at=EXPIRES,
    )
    return dataclasses.replace(claim, **changes)


VALID_CLAIMS = [_claim(kind, mode) for kind in (OPEN, CLICK) for mode in (ANON, PSEUDO, IDENT, FULL)] + [
    _claim(UNSUBSCRIBE, OFF),
    _claim(UNSUBSCRIBE, IDENT),
]


@pytest.mark.parametrize("claim", VALID_CLAIMS, ids=lambda c: f"{c.kind.value}-{c.mode.value}")
def test_round_trip(claim: TrackingClaim) -> None:
    token = mint(claim, "k2", KEY)
    assert verify(token, KEYS, claim.kind, NOW) == claim


def test_tokens_are_url_safe_and_typical_clicks_are_short() -> None:
    token = mint(_claim(CLICK, FULL), "k2", KEY)
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")
    assert (len(DOMAIN), len(ADDRESS), len(URL)) == (16, 27, 60)
    assert len(token) < 250  # Kannon's RS512 JWTs made ~1 KB URLs


def test_anonymous_tokens_are_the_same_for_every_recipient() -> None:
    # Nothing per recipient goes in, so nothing tells recipients apart (Kannon §4.1).
    assert mint(_claim(OPEN, ANON), "k2", KEY) == mint(_claim(OPEN, ANON), "k2", KEY)


def test_non_ascii_fields_and_long_urls_round_trip() -> None:
    claim = _claim(CLICK, IDENT, identity="usér@exämple.it", url="https://x.example/é?" + "q" * 2000)
    assert verify(mint(claim, "k2", KEY), KEYS, CLICK, NOW) == claim


def test_expiry_boundary() -> None:
    token = mint(_claim(OPEN, IDENT), "k2", KEY)
    assert verify(token, KEYS, OPEN, EXPIRES - 0.001) is not None
    assert verify(token, KEYS, OPEN, EXPIRES) is None
    assert verify(token, KEYS, OPEN, EXPIRES + 1) is None


@pytest.mark.parametrize(
    ("minted", "presented"),
    [(OPEN, CLICK), (CLICK, OPEN), (CLICK, UNSUBSCRIBE), (UNSUBSCRIBE, OPEN), (OPEN, UNSUBSCRIBE)],
)
def test_a_token_is_refused_on_another_route(minted: TokenKind, presented: TokenKind) -> None:
    token = mint(_claim(minted, IDENT), "k2", KEY)
    assert verify(token, KEYS, presented, NOW) is None


def test_key_rotation() -> None:
    old_token = mint(_claim(), "k1", OLD_KEY)
    assert verify(old_token, KEYS, CLICK, NOW) == _claim()  # the old key still verifies
    assert verify(old_token, {"k2": KEY}, CLICK, NOW) is None  # until it is retired
    assert verify(old_token, {"k1": KEY}, CLICK, NOW) is None  # and the id names one key only


def test_the_context_separates_tracking_tokens_from_other_signatures() -> None:
    token = mint(_claim(), "k2", KEY)
    assert verify(token, {"k2": b"x" * 32}, CLICK, NOW) is None


@pytest.mark.parametrize(
    "token",
    ["", "A", "AA", "AAAA", "====", "a.b", "é" * 40, "A" * (MAX_TOKEN_CHARS + 4), "AQJrMg" + "A" * 40],
)
def test_garbage_is_refused(token: str) -> None:
    assert verify(token, KEYS, CLICK, NOW) is None


def test_over_long_token_is_refused_before_decoding() -> None:
    token = mint(_claim(CLICK, IDENT, url="https://x.example/?" + "q" * 2800), "k2", KEY)
    assert len(token) <= MAX_TOKEN_CHARS
    assert verify(token, KEYS, CLICK, NOW) is not None
    assert verify(token + "A" * (MAX_TOKEN_CHARS - len(token) + 4), KEYS, CLICK, NOW) is None


def test_every_single_character_change_is_refused() -> None:
    token = mint(_claim(CLICK, FULL), "k2", KEY)
    alphabet = string.ascii_letters + string.digits + "-_=.~ é"
    for index in range(len(token)):
        for replacement in alphabet.replace(token[index], ""):
            mutated = token[:index] + replacement + token[index + 1 :]
            assert verify(mutated, KEYS, CLICK, NOW) is None, (index, replacement)


def test_truncated_and_extended_tokens_are_refused() -> None:
    token = mint(_claim(OPEN, PSEUDO), "k2", KEY)
    for end in range(len(token)):
        assert verify(token[:end], KEYS, OPEN, NOW) is None
    for suffix in ("A", "AA", "AAAA", "_"):
        assert verify(token + suffix, KEYS, OPEN, NOW) is None


@given(st.text(max_size=300))
def test_verify_never_raises_on_text(token: str) -> None:
    for kind in TokenKind:
        assert verify(token, KEYS, kind, NOW) is None


@given(st.binary(max_size=300))
def test_verify_never_raises_on_well_encoded_bytes(data: bytes) -> None:
    token = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert verify(token, KEYS, OPEN, NOW) is None


@given(st.sampled_from(VALID_CLAIMS), st.data())
def test_verify_never_raises_on_byte_mutations(claim: TrackingClaim, data: st.DataObject) -> None:
    token = mint(claim, "k2", KEY)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c != token[index]))
    assert verify(token[:index] + replacement + token[index + 1 :], KEYS, claim.kind, NOW) is None


# -- what mint refuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "problem"),
    [
        (_claim(OPEN, OFF), "tracking is off"),
        (_claim(CLICK, OFF), "tracking is off"),
        (_claim(OPEN, ANON, identity=ADDRESS), "anonymous token names neither"),
        (_claim(OPEN, ANON, delivery=DELIVERY), "anonymous token names neither"),
        (_claim(OPEN, PSEUDO, identity=ADDRESS), "pseudonymous identity must be"),
        (_claim(OPEN, PSEUDO, identity=None), "pseudonymous identity must be"),
        (_claim(OPEN, PSEUDO, identity=PSEUDONYM.upper()), "pseudonymous identity must be"),
        (_claim(OPEN, PSEUDO, identity="0123@track." + DOMAIN), "pseudonymous identity must be"),
        (_claim(OPEN, PSEUDO, identity=PSEUDONYM.replace(DOMAIN, "other.example")), "pseudonymous"),
        (_claim(OPEN, PSEUDO, delivery=DELIVERY), "pseudonymous token names no delivery"),
        (_claim(OPEN, IDENT, identity=None), "needs the recipient address"),
        (_claim(CLICK, FULL, delivery=None), "needs the recipient address and the delivery"),
        (_claim(CLICK, IDENT, url=None), "needs an absolute http or https URL"),
        (_claim(CLICK, IDENT, url="/relative"), "needs an absolute http or https URL"),
        (_claim(CLICK, IDENT, url="javascript:alert(1)"), "needs an absolute http or https URL"),
        (_claim(OPEN, IDENT, url=URL), "open token carries no URL"),
        (_claim(UNSUBSCRIBE, OFF, url=URL), "unsubscribe token carries no URL"),
        (_claim(UNSUBSCRIBE, OFF, delivery=None), "unsubscribe token needs"),
        (_claim(UNSUBSCRIBE, OFF, identity=None), "unsubscribe token needs"),
        (_claim(domain=""), "needs a domain and a batch"),
        (_claim(batch=""), "needs a domain and a batch"),
        (_claim(expires_at=-1), "outside"),
        (_claim(expires_at=2**32), "outside"),
        (_claim(url="https://x.example/?" + "q" * 3100), "over 4096"),
        (_claim(identity="\ud800@example.com"), "surrogate"),
    ],
)
def test_mint_refuses_a_wrong_claim(claim: TrackingClaim, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        mint(claim, "k2", KEY)


@pytest.mark.parametrize(
    ("key_id", "key", "problem"),
    [
        ("", KEY, "key id"),
        ("K2", KEY, "key id"),
        ("toolongid", KEY, "key id"),
        ("k-2", KEY, "key id"),
        ("k2", b"short", "at least 16 bytes"),
    ],
)
def test_mint_refuses_bad_keys(key_id: str, key: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        mint(_claim(), key_id, key)


# -- pseudonyms --------------------------------------------------------------------------------


def test_pseudonym_shape() -> None:
    pseudonym = new_pseudonym(DOMAIN, lambda size: bytes(range(size)))
    assert pseudonym == "000102030405060708090a0b0c0d0e0f@track.news.example.com"
    assert is_pseudonym(pseudonym, DOMAIN)
    assert not is_pseudonym(pseudonym, "other.example")
    assert not is_pseudonym(ADDRESS, DOMAIN)


def test_pseudonyms_take_128_bits_from_the_source() -> None:
    sizes: list[int] = []

    def source(size: int) -> bytes:
        sizes.append(size)
        return random.Random(size).randbytes(size)

    assert is_pseudonym(new_pseudonym(DOMAIN, source), DOMAIN)
    assert sizes == [16]
    with pytest.raises(ValueError, match="gave 8 bytes"):
        new_pseudonym(DOMAIN, lambda size: b"x" * 8)


def test_a_pseudonymous_token_names_no_recipient() -> None:
    claim = _claim(CLICK, PSEUDO, identity=new_pseudonym(DOMAIN, random.Random(1).randbytes))
    token = mint(claim, "k2", KEY)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert ADDRESS.encode() not in raw and DELIVERY.encode() not in raw
    assert verify(token, KEYS, CLICK, NOW) == claim

"""VERP bounce addresses: each names its delivery, survives lower-casing, and cannot be forged."""

from __future__ import annotations

import secrets
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailnode.core.verp import parse_verp, verp_address

DOMAIN = "bounces.example.com"
KEY = b"k" * 32
OTHER_KEY = b"o" * 32
KEYS = {"k1": KEY}

URLSAFE = string.ascii_letters + string.digits + "-_"
delivery_ids = st.text(alphabet=URLSAFE, min_size=1, max_size=22)
key_ids = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8)


def test_address_shape() -> None:
    address = verp_address("aB3-_xYz09QrStUv", DOMAIN, KEY, "k1")
    local, domain = address.split("@")
    assert domain == DOMAIN
    assert local.startswith("b-")
    assert local.split("-")[2] == "k1"
    assert address == address.lower()
    assert len(local) <= 64  # RFC 5321 §4.5.3.1.1


def test_real_delivery_ids_round_trip() -> None:
    for _ in range(50):
        delivery_id = secrets.token_urlsafe(12)  # what the store hands out
        assert parse_verp(verp_address(delivery_id, DOMAIN, KEY, "k1"), DOMAIN, KEYS) == delivery_id


@given(delivery_ids, key_ids)
def test_round_trip(delivery_id: str, key_id: str) -> None:
    address = verp_address(delivery_id, DOMAIN, KEY, key_id)
    assert parse_verp(address, DOMAIN, {key_id: KEY}) == delivery_id


@given(delivery_ids)
def test_a_remote_mta_that_changes_case_does_not_lose_the_bounce(delivery_id: str) -> None:
    address = verp_address(delivery_id, DOMAIN, KEY, "k1")
    assert parse_verp(address.upper(), DOMAIN, KEYS) == delivery_id
    assert parse_verp(address + ".", DOMAIN, KEYS) == delivery_id  # a fully qualified domain


@given(delivery_ids, st.data())
def test_any_single_character_change_is_refused(delivery_id: str, data: st.DataObject) -> None:
    address = verp_address(delivery_id, DOMAIN, KEY, "k1")
    index = data.draw(st.integers(0, len(address) - 1))
    # A change of case is the one change that must still work (see the test above).
    replacement = data.draw(
        st.characters(min_codepoint=0, max_codepoint=0x2FF).filter(lambda c: c.lower() != address[index])
    )
    changed = address[:index] + replacement + address[index + 1 :]
    assert parse_verp(changed, DOMAIN, KEYS) is None


@given(st.text(max_size=100))
def test_anything_else_is_none_never_an_exception(text: str) -> None:
    assert parse_verp(text, DOMAIN, KEYS) is None


def test_rotated_keys_keep_old_bounces_working() -> None:
    old = verp_address("delivery1", DOMAIN, OTHER_KEY, "k0")
    new = verp_address("delivery2", DOMAIN, KEY, "k1")
    keys = {"k0": OTHER_KEY, "k1": KEY}
    assert (parse_verp(old, DOMAIN, keys), parse_verp(new, DOMAIN, keys)) == ("delivery1", "delivery2")


@pytest.mark.parametrize(
    ("address", "keys", "bounce_domain"),
    [
        (verp_address("d1", DOMAIN, OTHER_KEY, "k1"), KEYS, DOMAIN),  # signed with another key
        (verp_address("d1", DOMAIN, KEY, "k9"), KEYS, DOMAIN),  # unknown key id
        (verp_address("d1", DOMAIN, KEY, "k1"), KEYS, "bounces.example.net"),  # not our domain
        (verp_address("d1", "bounces.example.net", KEY, "k1"), KEYS, DOMAIN),  # signed for another domain
        (verp_address("d1", DOMAIN, KEY, "k1").replace("@", "@x."), KEYS, DOMAIN),
        ("postmaster@bounces.example.com", KEYS, DOMAIN),
        ("b-mq-k1@bounces.example.com", KEYS, DOMAIN),
        ("b-mq-k1-aaaaaaaaaaaaaaaa-x@bounces.example.com", KEYS, DOMAIN),
        ("b-mq-k1-aaaaaaaaaaaaaaaa@bounces.example.com", KEYS, DOMAIN),
        ("b-mq-k1-aaaaaaaaaaaaaaa@bounces.example.com", KEYS, DOMAIN),
        ("b--k1-aaaaaaaaaaaaaaaa@bounces.example.com", KEYS, DOMAIN),
        ("b-mq-k1-aaaaaaaaaaaaaaaa", KEYS, DOMAIN),
        ("", KEYS, DOMAIN),
    ],
)
def test_not_ours(address: str, keys: dict[str, bytes], bounce_domain: str) -> None:
    assert parse_verp(address, bounce_domain, keys) is None


def test_idn_bounce_domain_is_written_in_a_labels() -> None:
    address = verp_address("d1", "bounces.bücher.de", KEY, "k1")
    assert address.endswith("@bounces.xn--bcher-kva.de")
    assert parse_verp(address, "bounces.bücher.de", KEYS) == "d1"


@pytest.mark.parametrize(
    ("delivery_id", "key", "key_id", "message"),
    [
        ("d1", KEY, "K1", "key id"),
        ("d1", KEY, "k-1", "key id"),
        ("d1", KEY, "", "key id"),
        ("d1", KEY, "k" * 9, "key id"),
        ("d1", b"short", "k1", "at least 16 bytes"),
        ("", KEY, "k1", "empty"),
        ("x" * 30, KEY, "k1", "too long"),
    ],
)
def test_refuses_addresses_it_could_not_read_back(
    delivery_id: str, key: bytes, key_id: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        verp_address(delivery_id, DOMAIN, key, key_id)

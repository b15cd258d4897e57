"""Envelope address parsing: what a MAIL FROM / RCPT TO path may be."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailnode.core.address import Address, AddressError, parse_address, parse_reverse_path


@pytest.mark.parametrize(
    ("text", "local", "domain", "domain_ascii"),
    [
        ("bob@example.com", "bob", "example.com", "example.com"),
        ("Bob.Smith@Example.COM", "Bob.Smith", "Example.COM", "example.com"),
        ("bob+tag@mail.example.com", "bob+tag", "mail.example.com", "mail.example.com"),
        ("postmaster@localhost", "postmaster", "localhost", "localhost"),
        ("zoë@exämple.com", "zoë", "exämple.com", "xn--exmple-cua.com"),
        ("用户@例え.jp", "用户", "例え.jp", "xn--r8jz45g.jp"),
        ("bob@xn--exmple-cua.com", "bob", "xn--exmple-cua.com", "xn--exmple-cua.com"),
        ('"john..doe"@example.com', '"john..doe"', "example.com", "example.com"),
        ('"a\\"b"@example.com', '"a\\"b"', "example.com", "example.com"),
        ("x@a-b.c0.example", "x", "a-b.c0.example", "a-b.c0.example"),
        ("a" * 64 + "@example.com", "a" * 64, "example.com", "example.com"),
    ],
)
def test_valid_address(text: str, local: str, domain: str, domain_ascii: str) -> None:
    address = parse_address(text)
    assert address == Address(local, domain)
    assert str(address) == text
    assert address.domain_ascii == domain_ascii


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("bob", "no @"),
        ("bob@", "empty domain"),
        ("@example.com", "empty local part"),
        ("bob smith@example.com", "whitespace"),
        ("bob@example.com ", "whitespace"),
        ("bob\t@example.com", "whitespace"),
        ("bob\x00@example.com", "control"),
        ("bob\r\n@example.com", "control"),
        ("bob\x7f@example.com", "control"),
        ("bob\udcff@example.com", "control"),
        ("a" * 65 + "@example.com", "64 octets"),
        ("ü" * 33 + "@example.com", "64 octets"),
        ("bob@" + ".".join(["a" * 60] * 5), "254 octets"),
        ("bob@example..com", "not a valid host name"),
        ("bob@example.com.", "empty label"),
        ("bob@.example.com", "not a valid host name"),
        ("bob@exa_mple.com", "'exa_mple'"),
        ("bob@-example.com", "'-example'"),
        ("bob@example-.com", "'example-'"),
        ("bob@" + "a" * 64 + ".com", "not a valid host name"),
        ("bob@[127.0.0.1]", "address literals"),
        ("host!bob@relay.example", "bang paths"),
        ("bob%other.example@relay.example", "%-routed"),
        ('"bob%x"@relay.example', "%-routed"),
        ("@relay.example:bob@example.com", "source routes"),
        ("bob@relay.example:x", "source routes"),
        ('"bob@evil.example"@example.com', "quoted local part contains @"),
        ("bob@evil.example@example.com", "more than one @"),
        (".bob@example.com", "empty atom"),
        ("bob.@example.com", "empty atom"),
        ("bo..b@example.com", "empty atom"),
        ("bo(b)@example.com", "needs quoting"),
        ('bo"b@example.com', "needs quoting"),
        ("<bob@example.com>", "needs quoting"),
        ('"unterminated@example.com', "needs quoting"),
    ],
)
def test_invalid_address(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_address(text)


def test_null_reverse_path_is_none() -> None:
    assert parse_reverse_path("") is None


def test_reverse_path_is_a_mailbox() -> None:
    assert parse_reverse_path("alice@example.org") == Address("alice", "example.org")
    with pytest.raises(AddressError):
        parse_reverse_path("<>")


_ATEXT = string.ascii_letters + string.digits + "#$&'*+/=?^_`{|}~-" + "éßü日本"
_atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=12)
_dot_string = st.lists(_atoms, min_size=1, max_size=4).map(".".join)
_quoted = st.text(alphabet=string.ascii_letters + '.,;:()<>[]"\\', min_size=1, max_size=20).map(
    lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
_locals = (_dot_string | _quoted).filter(lambda local: len(local.encode()) <= 64)
_ascii_labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
_labels = _ascii_labels | st.sampled_from(["münchen", "bücher", "例え", "xn--bcher-kva"])
_domains = st.lists(_labels, min_size=1, max_size=5).map(".".join)
_addresses = st.builds(lambda local, domain: f"{local}@{domain}", _locals, _domains).filter(
    lambda text: len(text.encode()) <= 254
)


@given(_addresses)
def test_generated_valid_addresses_round_trip(text: str) -> None:
    address = parse_address(text)
    assert str(address) == text
    assert address.domain_ascii.isascii()


@given(st.text(max_size=80) | st.text(alphabet='ab@.:%!"\\[] \x00é-', max_size=30))
def test_garbage_raises_only_address_error(text: str) -> None:
    try:
        address = parse_address(text)
    except AddressError:
        return
    assert str(address) == text

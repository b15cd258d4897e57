"""DKIM signing: a message from a domain with a configured key arrives signed and verifies."""

from __future__ import annotations

import base64
import email
from email import policy
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.sink import Sink

SELECTOR = "s1"


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_file(tmp_path: Path, private_key: rsa.RSAPrivateKey) -> Path:
    # PKCS#8 is what `openssl genpkey` (OpenSSL 3) writes, so it is what operators will have.
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "example.com.pem"
    path.write_bytes(pem)
    return path


@pytest.fixture
async def signing_node(mailnode_factory: MailnodeFactory, key_file: Path) -> Mailnode:
    return await mailnode_factory(dkim={"example.com": {"selector": SELECTOR, "key_file": str(key_file)}})


class Dns:
    """The TXT records a verifier would find, and the names it asked for."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.records = {f"{SELECTOR}._domainkey.example.com.": b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)}
        self.queries: list[str] = []

    def __call__(self, name: bytes, timeout: int = 5) -> bytes | None:
        text = name.decode()
        self.queries.append(text)
        return self.records.get(text if text.endswith(".") else text + ".")


def message(from_address: str, subject: str = "signed") -> str:
    return (
        f"From: Alice <{from_address}>\r\n"
        "To: bob@example.net\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 23 Nov 2026 01:00:00 +0000\r\n"
        "Message-ID: <dkim1@example.com>\r\n"
        "\r\n"
        "Hi Bob,\r\n"
        "this message is signed.\r\n"
    )


def tx(from_address: str, body: str) -> dict:
    return {"mail_from": {"m": from_address}, "rcpt_to": [{"m": "bob@example.net"}], "body": {"inline": body}}


def signature_tags(data: bytes) -> dict[str, str]:
    """The tags of the one DKIM-Signature header, unfolded and stripped of whitespace."""
    parsed = email.message_from_bytes(data, policy=policy.compat32)
    (value,) = parsed.get_all("DKIM-Signature")
    tags = {}
    for item in "".join(value.split()).split(";"):
        if item:
            name, _, tag_value = item.partition("=")
            tags[name] = tag_value
    return tags


async def deliver(node: Mailnode, sink: Sink, from_address: str, body: str) -> bytes:
    status, _, headers = await node.create(tx(from_address, body))
    assert status == 201
    (received,) = await sink.wait_for_messages(1)
    final = await node.wait_final(headers["Location"])
    assert final["final_attempt_reason"] == "upstream response success"
    return received.data


async def test_message_from_a_keyed_domain_arrives_signed_and_verifies(
    signing_node: Mailnode, sink: Sink, private_key: rsa.RSAPrivateKey
) -> None:
    data = await deliver(signing_node, sink, "alice@example.com", message("alice@example.com"))

    assert data.startswith(b"DKIM-Signature: ")
    tags = signature_tags(data)
    assert tags["v"] == "1"
    assert tags["a"] == "rsa-sha256"
    assert tags["d"] == "example.com"
    assert tags["s"] == SELECTOR
    assert tags["c"] == "relaxed/relaxed"
    signed = tags["h"].lower().split(":")
    assert {"from", "to", "subject", "date", "message-id"} <= set(signed)
    # Received headers are added and rewritten by every hop; signing one breaks the signature.
    assert "received" not in signed
    assert b"\r\nReceived: " in data  # ... and the trace header is there, unsigned

    dns = Dns(private_key)
    assert dkim.verify(data, dnsfunc=dns) is True
    assert dns.queries == [f"{SELECTOR}._domainkey.example.com."]


async def test_the_signature_breaks_when_a_signed_header_or_the_body_changes(
    signing_node: Mailnode, sink: Sink, private_key: rsa.RSAPrivateKey
) -> None:
    data = await deliver(signing_node, sink, "alice@example.com", message("alice@example.com"))
    dns = Dns(private_key)
    assert dkim.verify(data, dnsfunc=dns) is True
    assert dkim.verify(data.replace(b"Subject: signed", b"Subject: forged"), dnsfunc=dns) is False
    assert dkim.verify(data.replace(b"is signed.", b"is forged."), dnsfunc=dns) is False
    # relaxed/relaxed: whitespace changes a forwarder might make do not break it.
    assert dkim.verify(data.replace(b"Subject: signed", b"Subject:   signed"), dnsfunc=dns) is True


async def test_a_subdomain_is_signed_with_the_parent_domains_key(
    signing_node: Mailnode, sink: Sink, private_key: rsa.RSAPrivateKey
) -> None:
    data = await deliver(signing_node, sink, "news@news.example.com", message("news@news.example.com"))

    tags = signature_tags(data)
    assert (tags["d"], tags["s"]) == ("example.com", SELECTOR)
    assert dkim.verify(data, dnsfunc=Dns(private_key)) is True


@pytest.mark.parametrize(
    "from_address",
    [
        "carol@other.org",
        # Shares a suffix with example.com but is not a subdomain of it.
        "mallory@notexample.com",
    ],
)
async def test_a_from_domain_without_a_key_is_delivered_unsigned(
    signing_node: Mailnode, sink: Sink, from_address: str
) -> None:
    body = message(from_address)
    data = await deliver(signing_node, sink, from_address, body)

    assert b"DKIM-Signature" not in data
    assert data.startswith(b"Received: ")
    assert data.endswith(body.encode())

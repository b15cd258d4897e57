"""Submission signs with the sending domain's DKIM key; dkimpy verifies what arrives."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ADMIN_TOKEN
from tests.smtp_server.conftest import SmtpFactory
from tests.smtp_server.test_transactions import message, submission_client
from tests.support.platform import create_domain
from tests.support.sink import Sink


def rsa_key(tmp_path: Path) -> tuple[Path, str]:
    """A private key file for the config and the public key as a DKIM TXT record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


async def test_a_submitted_message_is_signed_and_verifies(
    smtp_factory: SmtpFactory, sink: Sink, tmp_path: Path
) -> None:
    key_file, record = rsa_key(tmp_path)
    smtp = await smtp_factory(dkim={"example.com": {"selector": "mail", "key_file": str(key_file)}})
    key, _ = await smtp.add_key("example.com")
    client = await submission_client(smtp, key)
    errors, _ = await client.send_message(message(sender="alice@example.com"))
    await client.quit()
    assert errors == {}

    [received] = await sink.wait_for_messages(1)
    lookups: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        lookups.append(name)
        return record.encode() if name == b"mail._domainkey.example.com." else b""

    assert received.data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(received.data, dnsfunc=dns)
    assert lookups == [b"mail._domainkey.example.com."]
    for header in (b"Received: ", b"\nMessage-ID: ", b"\nDate: "):
        assert header in received.data
    # A change in transit breaks it: the signature covers the body and the signed headers.
    assert not dkim.verify(received.data.replace(b"hello", b"HELLO"), dnsfunc=dns)


async def test_a_platform_domain_key_authenticates_submission_and_its_dkim_key_signs(
    smtp_factory: SmtpFactory, sink: Sink
) -> None:
    smtp = await smtp_factory(admin={"token": ADMIN_TOKEN})
    domain = await create_domain(smtp.node, "example.com")
    client = await submission_client(smtp, domain.key)
    errors, _ = await client.send_message(message(sender="alice@example.com"))
    await client.quit()
    assert errors == {}

    [received] = await sink.wait_for_messages(1)
    assert received.data.startswith(b"DKIM-Signature: ")
    assert b"d=example.com" in received.data.split(b"\r\n\r\n")[0]
    assert domain.verify(received.data)

"""Ingress checks SPF, DKIM and DMARC (against a loopback DNS server) and records them (RFC 8601)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiosmtplib
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import MailnodeFactory
from tests.support.dns_server import DnsServer, start_dns_server
from tests.support.mailnode import Mailnode
from tests.support.sink import Sink

MESSAGE = (
    b"From: Alice <alice@signer.test>\r\nTo: bob@local.test\r\nSubject: signed\r\n"
    b"Date: Mon, 23 Nov 2026 01:00:00 +0000\r\nMessage-ID: <m1@signer.test>\r\n\r\nHello Bob.\r\n"
)


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await start_dns_server()
    yield server
    await server.close()


@pytest.fixture
def signing_key(dns: DnsServer) -> bytes:
    """signer.test's DKIM key: the private PEM; the public key is published in the DNS server."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    dns.add("s1._domainkey.signer.test", "TXT", f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def signed(message: bytes, key: bytes) -> bytes:
    return dkim.sign(message, b"s1", b"signer.test", key, include_headers=[b"from", b"subject"]) + message


async def node_for(factory: MailnodeFactory, dns: DnsServer, sink: Sink, **route: object) -> Mailnode:
    return await factory(
        hostname="mx.mailnode.test",
        dns={"nameservers": [f"{dns.host}:{dns.port}"], "timeout_seconds": 2},
        ingress={
            "check_authentication": True,
            "routes": [{"domain": "local.test", "endpoint": f"smtp:127.0.0.1:{sink.port}", **route}],
        },
    )


async def send(node: Mailnode, message: bytes, mail_from: str = "alice@signer.test") -> tuple[int, str]:
    assert node.service.smtp is not None
    host, port = node.service.smtp.addresses["ingress"]
    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10) as client:
        try:
            _, reply = await client.sendmail(mail_from, ["bob@local.test"], message)
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
    return 250, reply


def results_header(data: bytes) -> str:
    head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
    (line,) = [field for field in head if field.startswith(b"Authentication-Results:")]
    return line.decode()


async def test_a_good_signature_is_recorded_as_pass(
    mailnode_factory: MailnodeFactory, dns: DnsServer, sink: Sink, signing_key: bytes
) -> None:
    dns.add("signer.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    node = await node_for(mailnode_factory, dns, sink)
    assert (await send(node, signed(MESSAGE, signing_key)))[0] == 250
    (received,) = await sink.wait_for_messages(1)
    header = results_header(received.data)
    assert header.startswith("Authentication-Results: mx.mailnode.test;")
    assert "dkim=pass header.d=signer.test" in header and "spf=pass" in header


async def test_a_broken_signature_is_recorded_as_fail_and_still_delivered(
    mailnode_factory: MailnodeFactory, dns: DnsServer, sink: Sink, signing_key: bytes
) -> None:
    node = await node_for(mailnode_factory, dns, sink)
    tampered = signed(MESSAGE, signing_key).replace(b"Hello Bob.", b"Hello Eve.")
    assert (await send(node, tampered))[0] == 250
    (received,) = await sink.wait_for_messages(1)
    assert "dkim=fail" in results_header(received.data)


async def test_a_forged_result_claiming_to_be_ours_is_removed(
    mailnode_factory: MailnodeFactory, dns: DnsServer, sink: Sink
) -> None:
    node = await node_for(mailnode_factory, dns, sink)
    forged = b"Authentication-Results: mx.mailnode.test; dkim=pass header.d=bank.test\r\n" + MESSAGE
    assert (await send(node, forged))[0] == 250
    (received,) = await sink.wait_for_messages(1)
    header = results_header(received.data)  # exactly one: ours, with the real result
    assert "dkim=none" in header and "bank.test" not in header


async def test_an_spf_failure_is_refused_when_the_route_says_so(
    mailnode_factory: MailnodeFactory, dns: DnsServer, sink: Sink
) -> None:
    dns.add("signer.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")  # 127.0.0.1 may not send for it
    node = await node_for(mailnode_factory, dns, sink, reject_spf_fail=True)
    code, text = await send(node, MESSAGE)
    assert (code, text.split()[0]) == (550, "5.7.23")
    assert sink.messages == []
    await node.wait_rows(
        "SELECT status, final_attempt_reason FROM transactions",
        [("failed", "failure returned to the SMTP client")],
    )


async def test_an_spf_failure_is_only_noted_by_default(
    mailnode_factory: MailnodeFactory, dns: DnsServer, sink: Sink
) -> None:
    dns.add("signer.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    node = await node_for(mailnode_factory, dns, sink)
    assert (await send(node, MESSAGE))[0] == 250
    (received,) = await sink.wait_for_messages(1)
    assert "spf=fail" in results_header(received.data)


async def test_dmarc_reject_is_refused_when_the_route_says_so(
    mailnode_factory: MailnodeFactory, dns: DnsServer, sink: Sink
) -> None:
    dns.add("signer.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    dns.add("_dmarc.signer.test", "TXT", "v=DMARC1; p=reject")
    node = await node_for(mailnode_factory, dns, sink, reject_dmarc_fail=True)
    code, text = await send(node, MESSAGE)
    assert (code, text.split()[0]) == (550, "5.7.26")
    assert sink.messages == []

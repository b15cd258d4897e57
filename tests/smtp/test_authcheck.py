"""InboundChecker against a loopback DNS server: SPF, DKIM, ARC, DMARC and the results header."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Iterator

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.support.dns_server import DnsServer

from mailnode.smtp.authcheck import AuthResults, InboundChecker, strip_forged_results

AUTHSERV_ID = "mailnode.test"
SELECTOR = b"s1"
MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@mailnode.test\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


@pytest.fixture(scope="module")
def private_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def publish_key(server: DnsServer, domain: str, private_key: bytes) -> None:
    """Serve the DKIM key record for SELECTOR at `domain` (RFC 6376 §3.6.1)."""
    key = serialization.load_pem_private_key(private_key, password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server.add(
        f"{SELECTOR.decode()}._domainkey.{domain}",
        "TXT",
        f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}",
    )


def signed(message: bytes, domain: str, private_key: bytes) -> bytes:
    signature = dkim.sign(
        message, SELECTOR, domain.encode(), private_key, include_headers=[b"from", b"to", b"subject"]
    )
    return signature + message


def checker(server: DnsServer, timeout: float = 2.0) -> InboundChecker:
    return InboundChecker(authserv_id=AUTHSERV_ID, nameservers=[(server.host, server.port)], timeout=timeout)


async def check(
    server: DnsServer,
    message: bytes = MESSAGE,
    *,
    client_ip: str | None = "127.0.0.1",
    helo: str | None = "mx.example.test",
    mail_from: str = "alice@example.test",
) -> AuthResults:
    return await checker(server).check(message, client_ip=client_ip, helo=helo, mail_from=mail_from)


# --- DKIM ---------------------------------------------------------------------------------------


async def test_signed_message_passes_dkim(dns_server: DnsServer, private_key: bytes) -> None:
    publish_key(dns_server, "example.test", private_key)

    results = await check(dns_server, signed(MESSAGE, "example.test", private_key))

    assert results.dkim == "pass"
    name, value = results.header
    assert name == "Authentication-Results"
    assert value.startswith(f"{AUTHSERV_ID}; ")
    assert "dkim=pass header.d=example.test header.s=s1" in value
    # The key came from the configured server, not the system resolver.
    assert ("s1._domainkey.example.test", "TXT") in dns_server.queries


async def test_changed_body_fails_dkim(dns_server: DnsServer, private_key: bytes) -> None:
    publish_key(dns_server, "example.test", private_key)
    message = signed(MESSAGE, "example.test", private_key).replace(b"Hello Bob.", b"Hello Bog.")

    results = await check(dns_server, message)

    assert results.dkim == "fail"
    assert "dkim=fail header.d=example.test" in results.header[1]


async def test_unsigned_message_has_no_dkim_result(dns_server: DnsServer) -> None:
    results = await check(dns_server)

    assert (results.dkim, results.arc) == ("none", "none")
    assert "dkim=none" in results.header[1]


async def test_signature_without_published_key_is_permerror(
    dns_server: DnsServer, private_key: bytes
) -> None:
    results = await check(dns_server, signed(MESSAGE, "example.test", private_key))

    assert results.dkim == "permerror"  # RFC 6376 §6.1.2: no key record


async def test_one_good_signature_among_bad_ones_passes(dns_server: DnsServer, private_key: bytes) -> None:
    publish_key(dns_server, "example.test", private_key)
    message = signed(signed(MESSAGE, "example.test", private_key), "nokey.test", private_key)

    results = await check(dns_server, message)

    assert results.dkim == "pass"
    assert "dkim=permerror header.d=nokey.test" in results.header[1]
    assert "dkim=pass header.d=example.test" in results.header[1]


# --- ARC ----------------------------------------------------------------------------------------


async def test_arc_sealed_by_forwarder_passes(dns_server: DnsServer, private_key: bytes) -> None:
    publish_key(dns_server, "forwarder.test", private_key)
    received = b"Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=example.test\r\n" + MESSAGE
    seal = dkim.arc_sign(received, SELECTOR, b"forwarder.test", private_key, b"forwarder.test")

    results = await check(dns_server, b"".join(seal) + received)

    assert results.arc == "pass"
    assert "arc=pass" in results.header[1]


# --- SPF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "client_ip", "expected"),
    [
        ("v=spf1 ip4:127.0.0.1 -all", "127.0.0.1", "pass"),
        ("v=spf1 ip4:127.0.0.1 -all", "127.0.0.9", "fail"),
        ("v=spf1 ip4:127.0.0.1 ~all", "127.0.0.9", "softfail"),
        ("v=spf1 ip4:127.0.0.1 ?all", "127.0.0.9", "neutral"),
        ("v=spf1 a:mx.example.test -all", "127.0.0.2", "pass"),
        (None, "127.0.0.1", "none"),
    ],
)
async def test_spf_results(dns_server: DnsServer, record: str | None, client_ip: str, expected: str) -> None:
    dns_server.add("example.test", "A", "192.0.2.1")
    dns_server.add("mx.example.test", "A", "127.0.0.2")
    if record is not None:
        dns_server.add("example.test", "TXT", record)

    results = await check(dns_server, client_ip=client_ip)

    assert results.spf == expected
    assert f"spf={expected} smtp.mailfrom=example.test" in results.header[1]


async def test_spf_servfail_is_temperror(dns_server: DnsServer) -> None:
    dns_server.servfail("example.test")

    results = await check(dns_server)

    assert results.spf == "temperror"


async def test_null_sender_checks_the_helo_identity(dns_server: DnsServer) -> None:
    dns_server.add("mx.example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("example.test", "TXT", "v=spf1 -all")  # would fail if MAIL FROM's domain were used

    results = await check(dns_server, mail_from="", helo="mx.example.test")

    assert results.spf == "pass"
    assert "spf=pass smtp.helo=mx.example.test" in results.header[1]


# --- DMARC --------------------------------------------------------------------------------------


async def test_dmarc_passes_with_aligned_dkim(dns_server: DnsServer, private_key: bytes) -> None:
    publish_key(dns_server, "example.test", private_key)
    dns_server.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject")
    dns_server.add("example.test", "TXT", "v=spf1 -all")

    results = await check(dns_server, signed(MESSAGE, "example.test", private_key))

    assert (results.spf, results.dkim, results.dmarc) == ("fail", "pass", "pass")
    assert results.dmarc_policy == "reject"
    assert "dmarc=pass (p=reject) header.from=example.test" in results.header[1]


async def test_dmarc_fails_with_spf_fail_and_no_dkim(dns_server: DnsServer) -> None:
    dns_server.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject")
    dns_server.add("example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")

    results = await check(dns_server, client_ip="127.0.0.9")

    assert (results.spf, results.dkim, results.dmarc) == ("fail", "none", "fail")
    assert results.dmarc_policy == "reject"
    assert "dmarc=fail (p=reject) header.from=example.test" in results.header[1]


async def test_dmarc_fails_when_only_an_unaligned_domain_passes(
    dns_server: DnsServer, private_key: bytes
) -> None:
    publish_key(dns_server, "bulk-sender.test", private_key)
    dns_server.add("_dmarc.example.test", "TXT", "v=DMARC1; p=quarantine")

    results = await check(dns_server, signed(MESSAGE, "bulk-sender.test", private_key))

    assert (results.dkim, results.dmarc, results.dmarc_policy) == ("pass", "fail", "quarantine")


async def test_subdomain_uses_the_organizational_record(dns_server: DnsServer, private_key: bytes) -> None:
    # Relaxed alignment (RFC 7489 §3.1.1): d=example.test aligns with From: news.example.test, and
    # the policy comes from the organizational domain's record, its sp= for subdomains.
    publish_key(dns_server, "example.test", private_key)
    dns_server.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    message = MESSAGE.replace(b"alice@example.test", b"alice@news.example.test")

    results = await check(dns_server, signed(message, "example.test", private_key))

    assert (results.dmarc, results.dmarc_policy) == ("pass", "quarantine")
    assert "header.from=news.example.test" in results.header[1]


async def test_no_dmarc_record_is_none(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")

    results = await check(dns_server, client_ip="127.0.0.9")

    assert (results.dmarc, results.dmarc_policy) == ("none", None)
    assert "dmarc=none" in results.header[1]


# --- time limits ----------------------------------------------------------------------------------


@pytest.fixture
def silent_nameserver() -> Iterator[tuple[str, int]]:
    """A UDP socket that takes queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()


async def test_unanswered_dns_is_temperror_within_the_timeout(
    silent_nameserver: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    timeout = 1.0
    inbound = InboundChecker(authserv_id=AUTHSERV_ID, nameservers=[silent_nameserver], timeout=timeout)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        results = await inbound.check(
            MESSAGE, client_ip="127.0.0.1", helo="mx.example.test", mail_from="a@example.test"
        )
    finally:
        ticker.cancel()
    elapsed = time.monotonic() - started

    assert elapsed < timeout + 0.1
    assert (results.spf, results.dkim, results.dmarc) == ("temperror", "none", "temperror")
    assert "exceeded" not in caplog.text  # the lookups gave up on their own, before the backstop
    assert ticks > 10  # the event loop kept running while the checks waited on DNS


# --- forged results -------------------------------------------------------------------------------


def test_strip_forged_results_removes_only_our_authserv_id() -> None:
    message = (
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Authentication-Results: mailnode.test; dkim=pass\r\n"
        b"Authentication-Results: other.example;\r\n"
        b"\tspf=pass smtp.mailfrom=example.test\r\n"
        b"authentication-results:  (forged) MailNode.Test;\r\n spf=pass\r\n"
        b"Authentication-Results: mailnode.test.evil; dkim=pass\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mailnode.test; this is the body\r\n"
    )

    stripped = strip_forged_results(message, "mailnode.test")

    assert stripped == (
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Authentication-Results: other.example;\r\n"
        b"\tspf=pass smtp.mailfrom=example.test\r\n"
        b"Authentication-Results: mailnode.test.evil; dkim=pass\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mailnode.test; this is the body\r\n"
    )


def test_strip_forged_results_keeps_a_message_without_them_identical() -> None:
    message = b"Subject: x\n  folded\nFrom: a@example.test\n\nbody\r\nwith mixed endings\n"

    assert strip_forged_results(message, "mailnode.test") == message

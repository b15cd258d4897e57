"""Bounces and complaints coming back to a delivery's VERP address on port 25."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosmtplib
import pytest

from mailnode.storage.batches import VERP_KEYS, BatchStore
from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.platform import Domain, create_domain, send
from tests.support.sink import Sink

SENDER = {"email": "news@example.com"}


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory, sink: Sink) -> Mailnode:
    return await mailnode_factory(admin={"token": ADMIN_TOKEN})


@pytest.fixture
async def domain(node: Mailnode) -> Domain:
    return await create_domain(node, "example.com")


async def _delivered_return_path(node: Mailnode, domain: Domain, sink: Sink, recipient: str) -> str:
    """Send one message; the envelope sender it arrived with (its VERP address)."""
    body = {"sender": SENDER, "subject": "Hi", "text": "Hello", "recipients": [{"email": recipient}]}
    before = len(sink.messages)
    status, answer = await send(node, domain, body)
    assert status == 202, answer
    messages = await sink.wait_for_messages(before + 1)
    return messages[-1].mail_from


def _dsn(recipient: str, status: str, diagnostic: str) -> bytes:
    """An RFC 3464 report as a receiving MTA writes it."""
    return (
        "From: MAILER-DAEMON@mx.example.org\r\n"
        "To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "Your message could not be delivered.\r\n"
        "--b1\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        "Action: failed\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n"
        "--b1--\r\n"
    ).encode()


def _arf(recipient: str) -> bytes:
    """An RFC 5965 abuse report (a mailbox provider's feedback loop)."""
    return (
        "From: feedback@provider.example\r\n"
        "Subject: complaint about message\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b2"\r\n'
        "\r\n"
        "--b2\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "This is an email abuse report.\r\n"
        "--b2\r\n"
        "Content-Type: message/feedback-report\r\n"
        "\r\n"
        "Feedback-Type: abuse\r\n"
        "User-Agent: ProviderFBL/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Rcpt-To: {recipient}\r\n"
        "--b2--\r\n"
    ).encode()


async def _report(node: Mailnode, to: str, message: bytes) -> tuple[int, str]:
    """Send `message` from the null sender to `to` on the ingress listener, as an MTA would."""
    assert node.service.smtp is not None
    host, port = node.service.smtp.addresses["ingress"]
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
    await client.connect()
    try:
        await client.mail("")
        await client.rcpt(to)
        response = await client.data(message)
        return response.code, response.message
    finally:
        await client.quit()


async def _send_again(node: Mailnode, domain: Domain, recipient: str) -> Any:
    body = {"sender": SENDER, "subject": "Again", "text": "Hello", "recipients": [{"email": recipient}]}
    status, answer = await send(node, domain, body)
    assert status == 202
    return answer


async def _wait_events(node: Mailnode, kind: str, count: int) -> list[tuple[Any, ...]]:
    deadline = asyncio.get_running_loop().time() + 10
    while len(rows := node.rows("SELECT recipient, data FROM events WHERE type = ?", kind)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"no {kind} event"
        await asyncio.sleep(0.02)
    return rows


async def test_a_dsn_to_the_return_path_records_a_bounce_and_suppresses(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    verp = await _delivered_return_path(node, domain, sink, "ann@example.org")
    assert verp.endswith("@bounces.mailnode.test")

    code, text = await _report(node, verp, _dsn("ann@example.org", "5.1.1", "550 5.1.1 user unknown"))
    assert code == 250, text
    ((recipient, data),) = await _wait_events(node, "bounced", 1)
    assert recipient == "ann@example.org"
    assert '"code": 550' in data and "user unknown" in data and '"status": "5.1.1"' in data
    assert node.rows("SELECT address, reason FROM suppressions") == [("ann@example.org", "bounced")]
    answer = await _send_again(node, domain, "ann@example.org")
    assert answer["rejected"] == [{"email": "ann@example.org", "reason": "suppressed"}]


async def test_a_soft_dsn_is_recorded_without_suppressing(node: Mailnode, domain: Domain, sink: Sink) -> None:
    verp = await _delivered_return_path(node, domain, sink, "full@example.org")
    code, _ = await _report(node, verp, _dsn("full@example.org", "4.2.2", "452 4.2.2 mailbox full"))
    assert code == 250
    ((_, data),) = await _wait_events(node, "bounced", 1)
    assert '"permanent": false' in data
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]


async def test_an_arf_complaint_records_complained_and_suppresses(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    verp = await _delivered_return_path(node, domain, sink, "cross@example.org")
    code, _ = await _report(node, verp, _arf("cross@example.org"))
    assert code == 250
    ((recipient, data),) = await _wait_events(node, "complained", 1)
    assert recipient == "cross@example.org" and '"feedback_type": "abuse"' in data
    assert node.rows("SELECT address, reason FROM suppressions") == [("cross@example.org", "complained")]


async def test_a_tampered_return_path_is_accepted_and_ignored(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    verp = await _delivered_return_path(node, domain, sink, "ann@example.org")
    local, _, host = verp.partition("@")
    last = local[-1]
    forged = f"{local[:-1]}{'a' if last != 'a' else 'b'}@{host}"
    code, text = await _report(node, forged, _dsn("ann@example.org", "5.1.1", "550 5.1.1 user unknown"))
    assert code == 250 and "ignored" in text
    code, text = await _report(node, f"b-unknown-k1-{'a' * 16}@{host}", _dsn("x@example.org", "5.1.1", "550"))
    assert code == 250 and "ignored" in text
    await node.wait_rows(
        "SELECT count(*) FROM transactions WHERE sender = 'ingress' AND status = 'delivered'", [(2,)]
    )
    assert node.rows("SELECT count(*) FROM events WHERE type IN ('bounced', 'complained')") == [(0,)]
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]


async def test_mail_for_other_domains_is_still_refused_on_port_25(node: Mailnode) -> None:
    node_config = node.service.config
    assert node_config.ingress.routes[0].domain == "*"  # the test default takes every domain
    code, _ = await _report(node, "someone@bounces.mailnode.test", b"Subject: hi\r\n\r\nhello\r\n")
    assert code == 250  # the bounce domain itself: accepted, attributed to nothing


async def test_the_bounce_domain_is_accepted_when_no_route_covers_it(
    mailnode_factory: MailnodeFactory, sink: Sink
) -> None:
    node = await mailnode_factory(
        admin={"token": ADMIN_TOKEN}, ingress={"routes": [{"domain": "example.net", "endpoint": "capture"}]}
    )
    code, text = await _report(node, "whoever@bounces.mailnode.test", b"Subject: hi\r\n\r\nhello\r\n")
    assert code == 250, text
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await _report(node, "someone@elsewhere.example", b"Subject: hi\r\n\r\nhello\r\n")
    assert refused.value.code == 550 and "relaying denied" in refused.value.message


async def test_a_rotated_verp_key_signs_after_a_reload_and_the_older_one_still_verifies(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    """`mailnode signing-key rotate verp`, then SIGHUP (Service.reload_signing_keys): new
    return paths carry the new key; a bounce to one signed before still counts."""
    old = await _delivered_return_path(node, domain, sink, "ann@example.org")
    assert node.service.store is not None
    await BatchStore(node.service.store).rotate_signing_key(VERP_KEYS, lambda: b"n" * 32)
    assert "-k1-" in old and "-k1-" in await _delivered_return_path(node, domain, sink, "bob@example.org")

    await node.service.reload_signing_keys()
    assert "-k2-" in await _delivered_return_path(node, domain, sink, "cy@example.org")
    code, _ = await _report(node, old, _dsn("ann@example.org", "5.1.1", "550 5.1.1 user unknown"))
    assert code == 250
    ((recipient, _),) = await _wait_events(node, "bounced", 1)
    assert recipient == "ann@example.org"

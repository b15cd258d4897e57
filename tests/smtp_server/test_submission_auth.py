"""Submission: AUTH with API keys only after TLS, identical failures, throttling, sender domains."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable

import pytest

from mailnode.smtp.auth import ThrottleSettings
from tests.smtp_server.conftest import THROTTLE, RawClient, Smtp, SmtpFactory

Connect = Callable[..., Awaitable[RawClient]]
INVALID = "535 5.7.8 Authentication credentials invalid\r\n"
OK = "235 2.7.0 Authentication successful\r\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str, password: str, authzid: str = "") -> str:
    """The RFC 4616 PLAIN response: authzid NUL user NUL password, base64."""
    return b64("\0".join([authzid, user, password]))


async def auth_plain(client: RawClient, user: str, password: str) -> str:
    return await client.command(f"AUTH PLAIN {plain(user, password)}")


async def auth_login(client: RawClient, user: str, password: str) -> str:
    assert await client.command("AUTH LOGIN") == f"334 {b64('Username:')}\r\n"
    assert await client.command(b64(user)) == f"334 {b64('Password:')}\r\n"
    return await client.command(b64(password))


async def tls_session(smtp: Smtp, connect: Connect) -> RawClient:
    client = await connect(smtp.port("submission"))
    await client.command("EHLO client.test")
    await client.starttls(smtp.client_tls)
    await client.command("EHLO client.test")
    return client


async def test_auth_is_refused_before_starttls(smtp: Smtp, raw_clients: Connect) -> None:
    key, _ = await smtp.add_key("example.com")
    client = await raw_clients(smtp.port("submission"))
    await client.command("EHLO client.test")

    reply = await auth_plain(client, "example.com", key)

    assert reply == "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    assert await client.command("MAIL FROM:<a@example.com>") == "530 5.7.0 Authentication required\r\n"


async def test_plaintext_auth_on_loopback_when_the_dev_flag_allows_it(
    smtp_factory: SmtpFactory, raw_clients: Connect
) -> None:
    smtp = await smtp_factory(smtp={"submission": {"allow_plaintext_auth_on_loopback": True}})
    key, _ = await smtp.add_key("example.com")
    client = await raw_clients(smtp.port("submission"))

    assert (await client.command("EHLO client.test")).endswith("250 AUTH PLAIN LOGIN\r\n")
    assert await auth_plain(client, "example.com", key) == OK


@pytest.mark.parametrize("mechanism", [auth_plain, auth_login])
@pytest.mark.parametrize("user", ["domain", "id"])
async def test_a_key_authenticates_with_its_domain_or_its_id(
    smtp: Smtp, raw_clients: Connect, mechanism: Callable[..., Awaitable[str]], user: str
) -> None:
    key, record = await smtp.add_key("Example.COM")
    client = await tls_session(smtp, raw_clients)

    reply = await mechanism(client, "example.com" if user == "domain" else str(record.id), key)

    assert reply == OK
    assert await client.command("MAIL FROM:<a@example.com>") == "250 2.1.0 sender ok\r\n"


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "OFFERED", "XOAUTH2"])
async def test_only_plain_and_login_are_mechanisms(smtp: Smtp, raw_clients: Connect, mechanism: str) -> None:
    client = await tls_session(smtp, raw_clients)

    assert await client.command(f"AUTH {mechanism}") == "504 5.5.4 Unrecognized authentication type\r\n"


async def test_every_failure_gets_the_same_answer(smtp_factory: SmtpFactory, raw_clients: Connect) -> None:
    smtp = await smtp_factory(throttle=ThrottleSettings(ban_after_failures=100))
    key, _ = await smtp.add_key("example.com")
    _, other = await smtp.add_key("other.com")
    old_key, _ = await smtp.add_key("example.com", expires_at=smtp.clock() - 1)
    gone_key, gone = await smtp.add_key("example.com")
    await smtp.deactivate(gone)
    client = await tls_session(smtp, raw_clients)

    replies = {
        "wrong key": await auth_plain(client, "example.com", key + "x"),
        "deactivated key": await auth_plain(client, "example.com", gone_key),
        "expired key": await auth_plain(client, "example.com", old_key),
        "another key's domain": await auth_plain(client, "other.com", key),
        "another key's id": await auth_plain(client, str(other.id), key),
        "empty user": await auth_plain(client, "", key),
        "acting for another user": await client.command(f"AUTH PLAIN {plain('example.com', key, 'x')}"),
        "wrong key with LOGIN": await auth_login(client, "example.com", key[:-1]),
        "not UTF-8": await client.command("AUTH PLAIN " + base64.b64encode(b"\0\xff\0\xfe").decode()),
    }

    assert replies == dict.fromkeys(replies, INVALID)
    assert await auth_plain(client, "example.com", key) == OK


async def test_auth_data_never_reaches_the_log(
    smtp: Smtp, raw_clients: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    key, _ = await smtp.add_key("example.com")
    caplog.set_level(logging.DEBUG)
    client = await tls_session(smtp, raw_clients)

    await auth_login(client, "example.com", key + "typo")
    await auth_plain(client, "example.com", key)

    for secret in (key, b64(key), plain("example.com", key), b64(key + "typo")):
        assert secret not in caplog.text
    assert "authenticated key=" in caplog.text


async def test_failures_are_answered_ever_slower_then_the_client_is_banned(
    smtp: Smtp, raw_clients: Connect
) -> None:
    key, _ = await smtp.add_key("example.com")
    client = await tls_session(smtp, raw_clients)

    for _ in range(THROTTLE.ban_after_failures):
        assert await auth_plain(client, "example.com", "mk_wrong") == INVALID
    banned = await auth_plain(client, "example.com", key)  # even the right key, now

    assert smtp.sleep.delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert banned == "421 4.7.0 too many failed authentication attempts, try again later\r\n"
    assert await client.closed() == b""
    other_connection = await tls_session(smtp, raw_clients)
    assert (await auth_plain(other_connection, "example.com", key)).startswith("421 4.7.0")

    smtp.clock.now += THROTTLE.ban_seconds
    after_ban = await tls_session(smtp, raw_clients)
    assert await auth_plain(after_ban, "example.com", key) == OK


async def test_a_success_forgets_earlier_failures(smtp: Smtp, raw_clients: Connect) -> None:
    key, _ = await smtp.add_key("example.com")
    first = await tls_session(smtp, raw_clients)
    await auth_plain(first, "example.com", "mk_wrong")
    await auth_plain(first, "example.com", "mk_wrong")
    assert await auth_plain(first, "example.com", key) == OK

    second = await tls_session(smtp, raw_clients)
    await auth_plain(second, "example.com", "mk_wrong")

    assert smtp.sleep.delays == [1.0, 2.0, 1.0]


async def test_implicit_tls_submission_authenticates(smtp: Smtp, raw_clients: Connect) -> None:
    key, _ = await smtp.add_key("example.com")
    client = await raw_clients(smtp.port("submission_tls"), tls=smtp.client_tls)
    await client.command("EHLO client.test")

    assert await client.command("MAIL FROM:<a@example.com>") == "530 5.7.0 Authentication required\r\n"
    assert await auth_plain(client, "example.com", key) == OK
    assert await client.command("MAIL FROM:<a@example.com>") == "250 2.1.0 sender ok\r\n"


@pytest.mark.parametrize(
    ("sender", "allowed"),
    [
        ("a@mail.example.com", True),
        ("a@MAIL.Example.com", True),
        ("a@example.com", True),  # a parent of the key's domain
        ("", True),  # the null reverse path (bounces)
        ("a@sub.mail.example.com", False),
        ("a@other.com", False),
        ("a@notexample.com", False),
        ("a@com", False),  # a bare top-level domain is no sender domain
    ],
)
async def test_the_key_domain_limits_mail_from(
    smtp: Smtp, raw_clients: Connect, sender: str, allowed: bool
) -> None:
    key, _ = await smtp.add_key("mail.example.com")
    client = await tls_session(smtp, raw_clients)
    assert await auth_plain(client, "mail.example.com", key) == OK

    reply = await client.command(f"MAIL FROM:<{sender}>")

    domain = sender.partition("@")[2]
    refused = f"550 5.7.1 sender domain {domain} is not allowed for this key (domain mail.example.com)\r\n"
    assert reply == ("250 2.1.0 sender ok\r\n" if allowed else refused)


async def test_a_key_without_a_domain_may_send_as_anyone(smtp: Smtp, raw_clients: Connect) -> None:
    key, record = await smtp.add_key(None)
    client = await tls_session(smtp, raw_clients)
    assert await auth_plain(client, str(record.id), key) == OK

    assert await client.command("MAIL FROM:<a@anywhere.test>") == "250 2.1.0 sender ok\r\n"


async def test_a_bad_sender_address_is_refused_with_the_reason(smtp: Smtp, raw_clients: Connect) -> None:
    key, record = await smtp.add_key(None)
    client = await tls_session(smtp, raw_clients)
    await auth_plain(client, str(record.id), key)

    reply = await client.command("MAIL FROM:<user%other.test@example.com>")

    assert reply == "501 5.1.7 bad sender address: bang paths and %-routed addresses are not accepted\r\n"


async def test_starttls_forgets_an_earlier_plaintext_authentication(
    smtp_factory: SmtpFactory, raw_clients: Connect
) -> None:
    smtp = await smtp_factory(smtp={"submission": {"allow_plaintext_auth_on_loopback": True}})
    key, _ = await smtp.add_key("example.com")
    client = await raw_clients(smtp.port("submission"))
    await client.command("EHLO client.test")
    assert await auth_plain(client, "example.com", key) == OK

    await client.starttls(smtp.client_tls)
    await client.command("EHLO client.test")

    assert await client.command("MAIL FROM:<a@example.com>") == "530 5.7.0 Authentication required\r\n"

"""Smarthost delivery with AUTH: the configured credentials are used; wrong ones defer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.sink import Sink, start_sink

MESSAGE = (
    "From: a@example.com\r\n"
    "Date: Mon, 23 Nov 2026 01:00:00 +0000\r\n"
    "Message-ID: <auth@example.com>\r\n"
    "Subject: s\r\n"
    "\r\n"
    "body\r\n"
)
TX = {"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": "b@example.net"}], "body": {"inline": MESSAGE}}
PASSWORD = "s3cret-relay-password"
WRONG_PASSWORD = "not-the-relay-password"


@pytest.fixture
async def relay() -> AsyncIterator[Sink]:
    server = await start_sink(credentials=("relayuser", PASSWORD))
    yield server
    await server.close()


async def start_with_credentials(
    factory: MailnodeFactory, relay: Sink, password: str, **overrides: object
) -> Mailnode:
    return await factory(
        delivery={
            "smarthost": f"127.0.0.1:{relay.port}",
            "smarthost_username": "relayuser",
            "smarthost_password": password,
        },
        **overrides,
    )


async def test_smarthost_credentials_are_used(mailnode_factory: MailnodeFactory, relay: Sink) -> None:
    node = await start_with_credentials(mailnode_factory, relay, PASSWORD)
    _, _, headers = await node.create(TX)

    (received,) = await relay.wait_for_messages(1)
    assert received.login == "relayuser"
    assert received.rcpt_tos == ["b@example.net"]
    assert received.data.endswith(MESSAGE.encode())
    final = await node.wait_final(headers["Location"])
    assert final["final_attempt_reason"] == "upstream response success"


async def test_wrong_smarthost_password_defers_and_sends_nothing(
    mailnode_factory: MailnodeFactory, relay: Sink
) -> None:
    node = await start_with_credentials(mailnode_factory, relay, WRONG_PASSWORD, retry={"max_attempts": 2})
    _, _, headers = await node.create(TX)

    final = await node.wait_final(headers["Location"])

    # A relay refusing our credentials is the operator's problem, not the sender's: 4xx, retried.
    assert final["attempt_count"] == 2
    assert final["final_attempt_reason"] == "retry policy max attempts"
    assert final["mail_response"]["code"] == 451
    assert "authentication" in final["mail_response"]["message"]
    assert relay.messages == []
    # The password never ends up in the database (attempt texts, logs of responses).
    database = node.db_path.read_bytes()
    for path in node.db_path.parent.glob("mailnode.db-*"):
        database += path.read_bytes()
    assert WRONG_PASSWORD.encode() not in database

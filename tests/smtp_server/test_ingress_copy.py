"""An ingress route with copy_to: every message also goes to a second endpoint (an archive)."""

from __future__ import annotations

import aiosmtplib

from tests.conftest import MailnodeFactory
from tests.support.sink import Reply, Sink, start_sink

MESSAGE = "From: a@other.test\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\nSubject: keep me\r\n\r\nhi\r\n"


async def test_the_archive_gets_a_copy_without_changing_the_answer(
    mailnode_factory: MailnodeFactory, sink: Sink
) -> None:
    archive = await start_sink()
    try:
        node = await mailnode_factory(
            ingress={
                "routes": [
                    {
                        "domain": "local.test",
                        "endpoint": f"smtp:127.0.0.1:{sink.port}",
                        "copy_to": f"smtp:127.0.0.1:{archive.port}",
                    }
                ]
            }
        )
        archive.queue(Reply(data="451 4.3.0 archive busy"))  # the copy's first try fails
        assert node.service.smtp is not None
        host, port = node.service.smtp.addresses["ingress"]
        async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10) as client:
            errors, reply = await client.sendmail("a@other.test", ["bob@local.test"], MESSAGE)

        assert (errors, reply) == ({}, "2.0.0 OK")  # the mailbox server's own answer
        (delivered,) = await sink.wait_for_messages(1)
        (copy,) = await archive.wait_for_messages(1)  # retried until the archive took it
        assert copy.rcpt_tos == ["bob@local.test"] and copy.mail_from == "a@other.test"
        assert copy.data.endswith(MESSAGE.encode()) and delivered.data.endswith(MESSAGE.encode())
        # One body, shared by the delivery and its copy.
        assert node.rows("SELECT COUNT(*) FROM blobs") == [(1,)]
        await node.wait_rows(
            "SELECT sender, status FROM transactions ORDER BY id",
            [("ingress", "delivered"), ("copy", "delivered")],
        )
    finally:
        await archive.close()


async def test_a_route_without_copy_to_makes_no_copy(mailnode_factory: MailnodeFactory, sink: Sink) -> None:
    node = await mailnode_factory(
        ingress={"routes": [{"domain": "local.test", "endpoint": f"smtp:127.0.0.1:{sink.port}"}]}
    )
    assert node.service.smtp is not None
    host, port = node.service.smtp.addresses["ingress"]
    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10) as client:
        await client.sendmail("a@other.test", ["bob@local.test"], MESSAGE)
    await sink.wait_for_messages(1)
    await node.wait_rows("SELECT sender, status FROM transactions", [("ingress", "delivered")])

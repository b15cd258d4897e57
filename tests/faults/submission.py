"""An SMTP submission to the service under test, with one answer whatever happens."""

from __future__ import annotations

import asyncio

import aiosmtplib

from tests.support.mailnode import Mailnode

SUBMISSION = {"allow_plaintext_auth_on_loopback": True, "rcpt_timeout_seconds": 2, "data_timeout_seconds": 2}
CLIENT_TIMEOUT = 10.0  # seconds for a whole SMTP session: a hang fails the test


async def submit(
    node: Mailnode, rcpt: str, message: str, mail_from: str = "alice@example.com"
) -> tuple[int, str]:
    """One message over AUTH PLAIN: the first refusal, or the end-of-DATA reply, as (code, text)."""
    assert node.service.smtp is not None
    host, port = node.service.smtp.addresses["submission"]
    async with asyncio.timeout(CLIENT_TIMEOUT):
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=CLIENT_TIMEOUT)
        async with client:
            await client.login(str(node.key_id), node.key)
            try:
                _, reply = await client.sendmail(mail_from, [rcpt], message)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                (refusal,) = exc.recipients
                return refusal.code, refusal.message
            except aiosmtplib.SMTPResponseException as exc:
                return exc.code, exc.message
    return 250, reply

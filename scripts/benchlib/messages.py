"""Benchmark messages: plain ASCII of a given size, tagged for the sink (benchlib.sink)."""

from __future__ import annotations

import email.utils

_LINE = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"


def rfc822_message(tag: str, mail_from: str, rcpt_to: str, size: int) -> bytes:
    """About `size` bytes of message whose X-Bench-Id header is `tag` (CRLF line ends)."""
    headers = (
        f"From: Bench <{mail_from}>\r\n"
        f"To: <{rcpt_to}>\r\n"
        f"Subject: bench message {tag}\r\n"
        f"Date: {email.utils.formatdate(localtime=False)}\r\n"
        f"Message-ID: <{tag}@bench.test>\r\n"
        f"X-Bench-Id: {tag}\r\n"
        "\r\n"
    ).encode()
    body_size = max(size - len(headers), len(_LINE))
    body = (_LINE * (body_size // len(_LINE) + 1))[:body_size]
    return headers + body[: len(body) - 2] + b"\r\n"

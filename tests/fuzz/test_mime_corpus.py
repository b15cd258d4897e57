"""Malformed messages (tests/fuzz/mime_corpus/) through REST and SMTP submission to a loopback sink.

Each message is either delivered byte for byte, with only the trace header mailnode adds in
front (Received; DKIM-Signature where a key signs) and lone CRs and LFs made CRLF (which SMTP
requires, RFC 5321 §2.3.8), or refused with a 4xx/5xx that names what is
wrong. Never a 500, an internal-error reply or a message changed on the way. EXPECTED pins
which of the two happens to each file on each path, so a change of behaviour shows up here.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.sink import Sink

CORPUS = Path(__file__).parent / "mime_corpus"
FILES = sorted(CORPUS.glob("*.eml"))
DELIVERED = "delivered"
# Header fields mailnode may put in front of a message it relays.
ADDED = re.compile(rb"(?:Received|DKIM-Signature):")
# ... and, when the message has none, these (RFC 6409 §8.2, §8.3: a submission server may add them).
_FILLED_IN = (b"Date:", b"Message-ID:")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_REPLY = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*\r\n")

LONG_LINE_REFUSAL = "550 5.6.0 message rejected: line {line} is longer than 998 octets (RFC 5322 §2.1.1)"
SMTP_LONG_LINE_REFUSAL = "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's, during DATA


def _both(refusal: str) -> tuple[str, str]:
    return refusal, refusal


# file stem -> (REST outcome, SMTP outcome): DELIVERED, or the start of the refusal. REST
# refusals are the transaction's data_response: mailnode's validation filter refused it
# before any upstream was reached.
EXPECTED: dict[str, tuple[str, str]] = {
    "bad_base64": (DELIVERED, DELIVERED),
    "bad_quoted_printable": (DELIVERED, DELIVERED),
    "bare_cr_inside_lines": _both("550 5.6.0 message rejected: a header line is not Name: value"),
    "bare_lf_line_endings": (DELIVERED, DELIVERED),
    "boundary_empty_and_quoted_oddly": (DELIVERED, DELIVERED),
    "boundary_mismatch": (DELIVERED, DELIVERED),
    "boundary_not_declared": (DELIVERED, DELIVERED),
    "broken_boundary_never_closed": (DELIVERED, DELIVERED),
    "content_type_garbage": (DELIVERED, DELIVERED),
    "duplicate_from_and_subject": _both("550 5.6.0 message rejected: more than one From header"),
    "eight_bit_headers_latin1": (DELIVERED, DELIVERED),
    "eight_bit_headers_utf8": (DELIVERED, DELIVERED),
    "header_injection_lookalike": (DELIVERED, DELIVERED),
    "header_line_of_2000_octets": (LONG_LINE_REFUSAL.format(line=6), SMTP_LONG_LINE_REFUSAL),
    "header_without_colon": _both("550 5.6.0 message rejected: a header line is not Name: value"),
    "huge_folded_header": _both("550 5.6.0 message rejected: header section longer than 65536 bytes"),
    "line_of_10000_octets": (LONG_LINE_REFUSAL.format(line=7), SMTP_LONG_LINE_REFUSAL),
    "lone_dots_and_dot_stuffing": (DELIVERED, DELIVERED),
    "many_header_fields": _both("550 5.6.0 message rejected: header section longer than 65536 bytes"),
    "missing_date_and_message_id": (DELIVERED, DELIVERED),
    "missing_from": _both("550 5.6.0 message rejected: missing From header"),
    "nested_multipart_100_deep": (DELIVERED, DELIVERED),
    "no_final_line_break": (DELIVERED, DELIVERED),
    "no_header_section": _both("550 5.6.0 message rejected: missing From header"),
    "nul_bytes": _both("550 5.6.0 message rejected: header section contains a NUL byte"),
    "rfc2047_broken_words": (DELIVERED, DELIVERED),
    "unknown_transfer_encoding": (DELIVERED, DELIVERED),
    "whitespace_only_continuation": (DELIVERED, DELIVERED),
}


def on_the_wire(message: bytes) -> bytes:
    """The message as SMTP carries it: every line ending CRLF (RFC 5321 §2.3.8), the last too."""
    message = _LINE_END.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def trace_prefix_only(delivered: bytes, original: bytes) -> bool:
    """`delivered` is `original` as SMTP carries it, behind added trace fields only."""
    original = on_the_wire(original)
    if not delivered.endswith(original):
        return False
    prefix = delivered[: len(delivered) - len(original)]
    header_section = original.split(b"\r\n\r\n", 1)[0]
    missing = [name for name in _FILLED_IN if not re.search(rb"(?im)^" + name, header_section)]
    for line in prefix.split(b"\r\n")[:-1]:
        if not (ADDED.match(line) or line.startswith(tuple(missing)) or line[:1] in (b" ", b"\t")):
            return False
    return prefix == b"" or prefix.endswith(b"\r\n")


async def via_rest(node: Mailnode, sink: Sink, message: bytes) -> str:
    envelope = {"mail_from": {"m": "ann@example.com"}, "rcpt_to": [{"m": "bob@example.net"}]}
    status, created, headers = await node.create(envelope)
    assert status == 201, created
    async with node.http.put(
        f"{node.url}{created['body']['blob_status']['uri']}", data=message, headers=node.headers()
    ) as response:
        text = await response.text()
        assert response.status < 500, text
        if response.status >= 400:
            return f"{response.status} {text}"
    before = len(sink.messages)
    final = await node.wait_final(headers["Location"])
    if final.get("final_attempt_reason") == "upstream response success":
        assert len(sink.messages) == before + 1
        assert trace_prefix_only(sink.messages[-1].data, message), sink.messages[-1].data[:400]
        return DELIVERED
    refusal = final.get("data_response") or final.get("rcpt_response", [{}])[0]
    return f"{refusal.get('code')} {refusal.get('message')}"


def dot_stuffed(message: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line that starts with "." gets one more; the data ends with CRLF.CRLF."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


async def via_smtp(node: Mailnode, sink: Sink, message: bytes) -> str:
    smtp = node.service.smtp
    assert smtp is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", smtp.addresses["submission"][1])
    plain = base64.b64encode(f"\0{node.key_id}\0{node.key}".encode())
    before = len(sink.messages)
    try:
        writer.write(
            b"EHLO corpus.test\r\nAUTH PLAIN " + plain + b"\r\nMAIL FROM:<ann@example.com>\r\n"
            b"RCPT TO:<bob@example.net>\r\nDATA\r\n"
        )
        replies = [await asyncio.wait_for(_reply(reader), 10) for _ in range(6)]
        assert replies[-1].startswith(b"354"), replies
        writer.write(dot_stuffed(message))
        end = await asyncio.wait_for(_reply(reader), 10)
        writer.write(b"QUIT\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    assert not end.startswith(b"451 4.3.0 internal error"), end
    if end.startswith(b"250"):
        await sink.wait_for_messages(before + 1)
        sent = message if message.endswith(b"\r\n") else message + b"\r\n"  # what DATA carried
        assert trace_prefix_only(sink.messages[-1].data, sent), sink.messages[-1].data[:400]
        return DELIVERED
    return end.decode("utf-8", "replace").strip()


async def _reply(reader: asyncio.StreamReader) -> bytes:
    lines = b""
    while True:
        line = await reader.readline()
        assert _REPLY.fullmatch(line), f"malformed reply {line!r}"
        lines += line
        if line[3:4] == b" ":
            return lines


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    return await mailnode_factory(smtp={"submission": {"allow_plaintext_auth_on_loopback": True}})


async def test_the_corpus_is_delivered_unchanged_or_refused_with_a_reason(
    node: Mailnode, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    outcomes: dict[str, Any] = {}
    for path in FILES:
        message = path.read_bytes()
        outcomes[path.stem] = (await via_rest(node, sink, message), await via_smtp(node, sink, message))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert set(outcomes) == set(EXPECTED), "every corpus file needs an expectation, and only those"
    unexpected = {
        name: outcome
        for name, outcome in outcomes.items()
        if not all(got.startswith(want) for got, want in zip(outcome, EXPECTED[name], strict=True))
    }
    assert unexpected == {}

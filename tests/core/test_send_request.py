"""The /v1/send request: each wrong field is named; recipients are split, not the call failed."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailnode.core.message_builder import Mailbox
from mailnode.core.platform_message import Attachment, Sender, VisibleHeaders
from mailnode.core.send_request import (
    BatchContent,
    Recipient,
    Rejection,
    SendError,
    content_from_json,
    content_to_json,
    parse_send_request,
    split_recipients,
)

BASE: dict[str, Any] = {
    "sender": {"email": "news@example.com"},
    "subject": "Hi",
    "text": "Hello",
    "recipients": [{"email": "a@example.org"}],
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def test_minimal_request_parses() -> None:
    request = parse_send_request(BASE)
    assert request.sender == Sender("news@example.com", "")
    assert request.recipients == (Recipient("a@example.org"),)
    assert request.template_id is None and request.scheduled_at is None


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ([], "(body)", "JSON object"),
        (_with(colour="red"), "colour", "unknown field"),
        (_with(sender={"email": "not-an-address"}), "sender.email", "not a valid address"),
        (_with(sender={"email": "a@example.com", "name": "Evil\r\nBcc: x@y"}), "sender.name", "CR, LF"),
        (_with(subject=None), "subject", "required"),
        (_with(text=None), "html", "html or text"),
        (_with(template_id="tpl_1"), "template_id", "not both"),
        (_with(recipients=[]), "recipients", "non-empty"),
        (_with(recipients=[{"email": "a@example.org", "age": 3}]), "recipients[0].age", "unknown field"),
        (_with(recipients=[{"email": "a@example.org", "fields": {"1x": 1}}]),
         "recipients[0].fields.1x", "field name"),
        (_with(headers={"custom": {"Received": "x"}}), "headers.custom.Received", "X-"),
        (_with(headers={"custom": {"X-Tag": "a\nb"}}), "headers.custom.X-Tag", "CR, LF"),
        (_with(headers={"to": ["bad"]}), "headers.to[0]", "not a valid address"),
        (_with(headers={"bcc": ["a@example.org"]}), "headers.bcc", "unknown field"),
        (_with(attachments=[{"filename": "a", "content": "%%%"}]), "attachments[0].content", "base64"),
        (_with(attachments=[{"filename": "a", "content": "", "content_type": "multipart/mixed"}]),
         "attachments[0].content_type", "multipart"),
        (_with(scheduled_at="tomorrow"), "scheduled_at", "RFC 3339"),
        (_with(scheduled_at="2026-12-01T09:00:00"), "scheduled_at", "RFC 3339"),
        (_with(tags=["x"] * 21), "tags", "at most 20"),
        (_with(unsubscribe={"url_template": "http://x.example/u"}), "unsubscribe.url_template", "https://"),
    ],
)  # fmt: skip
def test_a_wrong_field_is_named(body: Any, path: str, words: str) -> None:
    with pytest.raises(SendError) as caught:
        parse_send_request(body)
    assert caught.value.path == path
    assert words in caught.value.problem


def test_times_are_rfc3339_with_a_zone_or_unix_seconds() -> None:
    assert parse_send_request(_with(scheduled_at="2026-12-01T09:00:00Z")).scheduled_at == 1796115600.0
    assert parse_send_request(_with(scheduled_at="2026-12-01T10:00:00+01:00")).scheduled_at == 1796115600.0
    assert parse_send_request(_with(scheduled_at=1796115600)).scheduled_at == 1796115600.0


def test_sender_domain_is_written_in_a_labels() -> None:
    request = parse_send_request(_with(sender={"email": "info@bücher.example"}))
    assert request.sender.email == "info@xn--bcher-kva.example"


def test_recipients_are_split_with_reasons_and_duplicates_sent_once() -> None:
    recipients = [
        Recipient("a@example.org", "A", {"code": 1}),
        Recipient("A@EXAMPLE.ORG", "dup of a? no: local parts are case-sensitive", {"code": 2}),
        Recipient("a@Example.ORG", "dup of a", {"code": 3}),
        Recipient("b@example.org", "B"),
        Recipient("c@@example.org"),
        Recipient("d@example.org", "D", {"code": 4}),
    ]
    accepted, rejected = split_recipients(recipients, frozenset({"code"}), frozenset())
    # Accepted addresses come back as envelope addresses: the domain lower-cased A-labels.
    assert [r.email for r in accepted] == ["a@example.org", "A@example.org", "d@example.org"]
    assert rejected == [
        Rejection("b@example.org", "missing_field: code"),
        Rejection("c@@example.org", "invalid_address: address has more than one @"),
    ]


def test_unsubscribe_fields_missing_give_their_own_reason() -> None:
    accepted, rejected = split_recipients(
        [Recipient("a@example.org", fields={"t": 1}), Recipient("b@example.org")],
        frozenset({"t"}),
        frozenset({"t"}),
    )
    assert [r.email for r in accepted] == ["a@example.org"]
    assert rejected == [Rejection("b@example.org", "unsubscribe_url_unresolved")]


_CONTENT = BatchContent(
    domain="example.com",
    sender=Sender("news@example.com", "Zoë"),
    subject="Hi {{ name }}",
    html="<p>x</p>",
    text=None,
    unsubscribe_url="https://example.com/u/{{ email }}",
    global_fields={"plan": "free", "n": 3},
    headers=VisibleHeaders(
        to=(Mailbox("list@example.com", "The list"),),
        cc=(),
        reply_to=(Mailbox("help@example.com"),),
        custom=(("X-Campaign", "spring"),),
    ),
    attachments=(Attachment("a.bin", "application/octet-stream", b"\x00\xff"),),
)


def test_stored_content_reads_back_equal() -> None:
    assert content_from_json(content_to_json(_CONTENT)) == _CONTENT


@given(st.binary(max_size=2048), st.text(max_size=40))
def test_any_attachment_and_subject_survive_storage(data: bytes, subject: str) -> None:
    content = BatchContent(
        **{**_content_fields(), "subject": subject, "attachments": (Attachment("f", "a/b", data),)}
    )
    assert content_from_json(content_to_json(content)) == content


def _content_fields() -> dict[str, Any]:
    return {name: getattr(_CONTENT, name) for name in BatchContent.__dataclass_fields__}


def test_attachment_content_is_decoded_base64() -> None:
    body = _with(
        attachments=[
            {
                "filename": "r.pdf",
                "content_type": "Application/PDF",
                "content": base64.b64encode(b"%PDF").decode(),
            }
        ]
    )
    (attachment,) = parse_send_request(body).attachments
    assert attachment == Attachment("r.pdf", "application/pdf", b"%PDF")


def test_a_global_field_fills_what_a_recipient_lacks() -> None:
    accepted, rejected = split_recipients(
        [Recipient("a@example.org")], frozenset({"plan"}), frozenset({"plan"}), global_fields={"plan"}
    )
    assert [r.email for r in accepted] == ["a@example.org"] and rejected == []

"""The message-builder JSON spec: strict validation, then RFC 5322 bytes via the email package."""

from __future__ import annotations

import copy
import datetime
import email
import email.policy
from email.message import EmailMessage, MIMEPart
from typing import Any

import pytest

from mailnode.core.message_builder import (
    BlobRef,
    Mailbox,
    SpecError,
    build_message,
    parse_spec,
    transfer_encoding,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 8
HTML = "<p>Grüße, <img src='cid:logo@example.com'></p>"
BLOBS = {"html": HTML.encode(), "logo": PNG, "invoice": PDF}


def full_spec() -> dict[str, Any]:
    return {
        "headers": [
            ["From", [{"display_name": "Zoë Müller", "address": "zoe@exämple.org"}]],
            [
                "To",
                [
                    {"address": "bob@example.net"},
                    {"display_name": "Doe, J.", "address": "j@x.example"},
                ],
            ],
            ["Bcc", [{"address": "hidden@example.net"}]],
            ["Subject", "Grüße aus Köln: 5 € Rechnung"],
            ["Date", {"unix_secs": 1700000000, "tz_offset": 3600}],
            ["Message-ID", ["m1@example.org"]],
            ["References", ["a@example.org", "b@example.org"]],
            ["X-Campaign", "spring"],
        ],
        "text_body": [
            {"content_type": "text/plain", "content": {"inline": "Grüße!\n"}},
            {"content_type": "text/html", "content": {"create_id": "html"}},
        ],
        "related_attachments": [
            {
                "content_type": "image/png",
                "content": {"create_id": "logo"},
                "content_id": "logo@example.com",
                "filename": "logo.png",
            }
        ],
        "file_attachments": [
            {
                "content_type": "application/pdf",
                "content": {"reuse_uri": "/transactions/tx1/blob/invoice"},
                "filename": "Rechnung März.pdf",
            }
        ],
    }


def _text(part: MIMEPart) -> str:
    """A text part's decoded content with the wire's CRLF line endings made LF."""
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_full_spec_builds_the_expected_structure() -> None:
    message = _parse(build_message(parse_spec(full_spec()), BLOBS))
    assert message.get_content_type() == "multipart/mixed"
    body, attachment = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    plain, related = body.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content_charset() == "utf-8"
    assert _text(plain) == "Grüße!\n"
    assert related.get_content_type() == "multipart/related"
    html, image = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert _text(html) == HTML + "\n"
    assert image.get_content_type() == "image/png"
    assert image["Content-ID"] == "<logo@example.com>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == PNG
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "Rechnung März.pdf"
    assert attachment.get_content() == PDF


def test_full_spec_headers_are_typed_and_encoded() -> None:
    raw = build_message(parse_spec(full_spec()), BLOBS)
    message = _parse(raw)
    assert message["Subject"] == "Grüße aus Köln: 5 € Rechnung"
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Zoë Müller", "zoe@xn--exmple-cua.org")
    assert [a.addr_spec for a in message["To"].addresses] == ["bob@example.net", "j@x.example"]
    assert message["To"].addresses[1].display_name == "Doe, J."
    assert message["Bcc"] is None
    assert b"hidden@example.net" not in raw
    assert message["Date"].datetime == datetime.datetime(
        2023, 11, 14, 23, 13, 20, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    assert message["Message-ID"] == "<m1@example.org>"
    assert message["References"] == "<a@example.org> <b@example.org>"
    assert message["X-Campaign"] == "spring"
    assert message["MIME-Version"] == "1.0"
    assert not message.defects


def test_built_message_is_7bit_crlf_and_deterministic() -> None:
    spec = parse_spec(full_spec())
    raw = build_message(spec, BLOBS)
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.count(b"MIME-Version") == 1
    assert build_message(spec, BLOBS) == raw


def test_single_text_part_is_the_whole_body() -> None:
    spec = parse_spec({"text_body": [{"content_type": "text/plain", "content": {"inline": "hi\n"}}]})
    message = _parse(build_message(spec, {}))
    assert message.get_content_type() == "text/plain"
    assert _text(message) == "hi\n"
    assert message["MIME-Version"] == "1.0"


def test_related_parts_follow_a_single_text_root() -> None:
    value = full_spec()
    del value["text_body"][0], value["file_attachments"]
    message = _parse(build_message(parse_spec(value), BLOBS))
    assert message.get_content_type() == "multipart/related"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/html", "image/png"]


def test_inline_text_attachment_gets_a_charset() -> None:
    value = {
        "text_body": [{"content_type": "text/plain", "content": {"inline": "see attached"}}],
        "file_attachments": [
            {"content_type": "text/csv", "content": {"inline": "a,ä\n"}, "filename": "x.csv"}
        ],
    }
    _, attachment = _parse(build_message(parse_spec(value), {})).iter_parts()
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_content_charset() == "utf-8"
    assert _text(attachment) == "a,ä\n"


def test_blob_refs_and_typed_values() -> None:
    spec = parse_spec(full_spec())
    assert spec.blob_refs() == (
        BlobRef("html", None),
        BlobRef("logo", None),
        BlobRef("invoice", "/transactions/tx1/blob/invoice"),
    )
    assert spec.headers[0].value == (Mailbox("zoe@xn--exmple-cua.org", "Zoë Müller"),)
    assert spec.raw == full_spec()


def test_missing_blob_names_the_part() -> None:
    blobs = {key: value for key, value in BLOBS.items() if key != "invoice"}
    with pytest.raises(SpecError) as caught:
        build_message(parse_spec(full_spec()), blobs)
    assert caught.value.path == "message_builder.file_attachments[0].content"
    assert "invoice" in str(caught.value)


def test_text_blob_must_be_utf8() -> None:
    with pytest.raises(SpecError, match=r"text_body\[1\].content: text content is not valid UTF-8"):
        build_message(parse_spec(full_spec()), {**BLOBS, "html": b"caf\xe9"})


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """full_spec() with the item at path replaced (or deleted when value is _DELETE)."""
    spec = copy.deepcopy(full_spec())
    target: Any = spec
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return spec


_DELETE = object()
_H = "message_builder.headers"
_T = "message_builder.text_body"
_R = "message_builder.related_attachments"
_F = "message_builder.file_attachments"


@pytest.mark.parametrize(
    ("value", "path"),
    [
        pytest.param([], "message_builder", id="not-an-object"),
        pytest.param(None, "message_builder", id="null"),
        pytest.param(_with(("bogus",), 1), "message_builder.bogus", id="unknown-key"),
        pytest.param(_with(("headers",), None), _H, id="null-headers"),
        pytest.param(_with(("headers",), {}), _H, id="headers-not-array"),
        pytest.param(_with(("text_body",), _DELETE), _T, id="no-text-body"),
        pytest.param(_with(("text_body",), []), _T, id="empty-text-body"),
        pytest.param(_with(("headers", 0), ["From"]), f"{_H}[0]", id="header-not-pair"),
        pytest.param(_with(("headers", 0, 0), "Fr om"), f"{_H}[0][0]", id="header-name-space"),
        pytest.param(_with(("headers", 0, 0), 7), f"{_H}[0][0]", id="header-name-number"),
        pytest.param(
            _with(("headers", 0), ["Content-Type", "text/html"]),
            f"{_H}[0][0]",
            id="content-type-header",
        ),
        pytest.param(_with(("headers", 3, 1), "a\r\nBcc: x@y"), f"{_H}[3][1]", id="header-crlf"),
        pytest.param(_with(("headers", 3, 1), "a\nb"), f"{_H}[3][1]", id="header-lf"),
        pytest.param(_with(("headers", 3, 1), ["x"]), f"{_H}[3][1]", id="literal-not-string"),
        pytest.param(_with(("headers", 4), ["Subject", "again"]), f"{_H}[4][0]", id="second-subject"),
        pytest.param(_with(("headers", 0, 1), "zoe@example.org"), f"{_H}[0][1]", id="from-string"),
        pytest.param(_with(("headers", 0, 1), []), f"{_H}[0][1]", id="from-empty"),
        pytest.param(_with(("headers", 0, 1, 0, "address"), "zoe@"), f"{_H}[0][1][0].address", id="from-bad"),
        pytest.param(
            _with(("headers", 0, 1, 0, "address"), "zoë@example.org"),
            f"{_H}[0][1][0].address",
            id="from-utf8-local",
        ),
        pytest.param(_with(("headers", 0, 1, 0, "name"), "Z"), f"{_H}[0][1][0].name", id="from-key"),
        pytest.param(
            _with(("headers", 0, 1, 0, "display_name"), "Z\r\nX"),
            f"{_H}[0][1][0].display_name",
            id="display-name-crlf",
        ),
        pytest.param(
            _with(("headers", 4, 1), {"unix_secs": "1700000000"}),
            f"{_H}[4][1].unix_secs",
            id="date-str",
        ),
        pytest.param(_with(("headers", 4, 1), {"unix_secs": True}), f"{_H}[4][1].unix_secs", id="date-bool"),
        pytest.param(
            _with(("headers", 4, 1), {"unix_secs": -1}), f"{_H}[4][1].unix_secs", id="date-negative"
        ),
        pytest.param(
            _with(("headers", 4, 1), {"unix_secs": 10**20}), f"{_H}[4][1].unix_secs", id="date-huge"
        ),
        pytest.param(_with(("headers", 4, 1, "tz_offset"), 90), f"{_H}[4][1].tz_offset", id="tz-seconds"),
        pytest.param(_with(("headers", 4, 1, "tz_offset"), 86400), f"{_H}[4][1].tz_offset", id="tz-too-far"),
        pytest.param(_with(("headers", 4, 1), 1700000000), f"{_H}[4][1]", id="date-number"),
        pytest.param(_with(("headers", 5, 1), ["<m1@x.org>"]), f"{_H}[5][1][0]", id="message-id-brackets"),
        pytest.param(_with(("headers", 5, 1), ["m1"]), f"{_H}[5][1][0]", id="message-id-no-at"),
        pytest.param(_with(("headers", 5, 1), ["m1@exämple.org"]), f"{_H}[5][1][0]", id="message-id-utf8"),
        pytest.param(_with(("headers", 5, 1), ["a@x.org", "b@x.org"]), f"{_H}[5][1]", id="two-message-ids"),
        pytest.param(_with(("headers", 7), ["Sender", "bob@"]), f"{_H}[7][1]", id="unparseable-sender"),
        pytest.param(_with(("text_body", 0, "colour"), "red"), f"{_T}[0].colour", id="part-key"),
        pytest.param(_with(("text_body", 0, "filename"), "a.txt"), f"{_T}[0].filename", id="text-fname"),
        pytest.param(
            _with(("text_body", 0, "content_type"), "image/png"),
            f"{_T}[0].content_type",
            id="text-image",
        ),
        pytest.param(
            _with(("text_body", 0, "content_type"), "text"),
            f"{_T}[0].content_type",
            id="no-subtype",
        ),
        pytest.param(
            _with(("text_body", 0, "content_type"), "text/plain; charset=latin1"),
            f"{_T}[0].content_type",
            id="content-type-params",
        ),
        pytest.param(_with(("text_body", 0, "content"), None), f"{_T}[0].content", id="content-null"),
        pytest.param(
            _with(("text_body", 0, "content"), {"inline": "a", "create_id": "b"}),
            f"{_T}[0].content",
            id="two-contents",
        ),
        pytest.param(_with(("text_body", 0, "content"), {}), f"{_T}[0].content", id="no-content"),
        pytest.param(
            _with(("text_body", 0, "content"), {"inline": 5}),
            f"{_T}[0].content.inline",
            id="inline-int",
        ),
        pytest.param(
            _with(("text_body", 0, "content"), {"inline": "\ud800"}),
            f"{_T}[0].content.inline",
            id="lone-surrogate",
        ),
        pytest.param(
            _with(("text_body", 1, "content"), {"create_id": "../x"}),
            f"{_T}[1].content.create_id",
            id="create-id-path",
        ),
        pytest.param(
            _with(("text_body", 1, "content"), {"create_id": ""}),
            f"{_T}[1].content.create_id",
            id="create-id-empty",
        ),
        pytest.param(
            _with(("file_attachments", 0, "content"), {"reuse_uri": "/transactions/tx1/body"}),
            f"{_F}[0].content.reuse_uri",
            id="reuse-uri-shape",
        ),
        pytest.param(
            _with(("file_attachments", 0, "content"), {"reuse_uri": "https://x/transactions/a/blob/b"}),
            f"{_F}[0].content.reuse_uri",
            id="reuse-uri-absolute",
        ),
        pytest.param(
            _with(("file_attachments", 0, "content"), {"reuse_uri": "/transactions/t2/blob/logo"}),
            f"{_F}[0].content",
            id="duplicate-blob-id",
        ),
        pytest.param(
            _with(("related_attachments", 0, "content_id"), _DELETE),
            f"{_R}[0].content_id",
            id="related-without-cid",
        ),
        pytest.param(
            _with(("related_attachments", 0, "content_id"), "<logo@x>"),
            f"{_R}[0].content_id",
            id="cid-brackets",
        ),
        pytest.param(
            _with(("file_attachments", 0, "content_type"), "multipart/mixed"),
            f"{_F}[0].content_type",
            id="attach-multipart",
        ),
        pytest.param(
            _with(("file_attachments", 0, "filename"), "a\nb.pdf"),
            f"{_F}[0].filename",
            id="fname-lf",
        ),
        pytest.param(_with(("file_attachments", 0, "filename"), ""), f"{_F}[0].filename", id="fname-empty"),
        pytest.param(_with(("file_attachments",), {}), _F, id="attachments-not-array"),
    ],
)
def test_malformed_spec_names_the_path(value: Any, path: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(value)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")


def test_a_long_line_hidden_behind_a_form_feed_is_not_sent_as_7bit() -> None:
    # str.splitlines() breaks at \f; the wire does not, so this is one 1201-octet line.
    text = "a" * 600 + "\f" + "b" * 600
    assert transfer_encoding(text) is None
    assert transfer_encoding("a" * 600 + "\n" + "b" * 600) == "7bit"

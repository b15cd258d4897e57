"""One recipient's message of a /v1 send: headers, MIME structure, encodings, exact golden bytes."""

from __future__ import annotations

import datetime
import email
import email.policy
import email.utils
import os
import re
from dataclasses import replace
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mailnode.core.message_builder import Mailbox
from mailnode.core.platform_message import (
    MAX_UNSUBSCRIBE_URL,
    Attachment,
    Sender,
    VisibleHeaders,
    build_platform_message,
    check_unsubscribe_template,
    header_text,
    validate_unsubscribe_url,
)
from mailnode.core.templating import RenderedContent, compile_content, recipient_context

GOLDEN = Path(__file__).parent / "golden" / "platform"
# MAILNODE_REGENERATE_GOLDEN=1 rewrites the golden files from the code; review the diff.
REGENERATE = os.environ.get("MAILNODE_REGENERATE_GOLDEN") == "1"
DATE = datetime.datetime(2024, 3, 5, 14, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
SENDER = Sender("news@shop.example", "Bits & Bobs")
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4
UNSUBSCRIBE = "https://shop.example/unsubscribe?e={{ email }}&list=spring-{{ campaign }}"


def build(rendered: RenderedContent | None = None, **overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "rendered": rendered or text(),
        "sender": SENDER,
        "recipient_email": "alice@example.com",
        "recipient_name": "Alice Liddell",
        "attachments": (),
        "headers": VisibleHeaders(),
        "message_id": "b1.r1@shop.example",
        "date": DATE,
    }
    return build_platform_message(**(arguments | overrides))


def content(part: EmailMessage) -> str:
    """A text part's content with the line endings Python uses."""
    return str(part.get_content()).replace("\r\n", "\n")


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text(value: str = "Hello Alice,\nyour order is on its way.\n") -> RenderedContent:
    return RenderedContent("Your order", None, value, None)


def html_only() -> bytes:
    compiled = compile_content(
        "Spring sale at {{ shop }}",
        "<h1>Hello {{ name }}</h1>"
        '<p>Everything is <b>20%</b> off. <a href="https://shop.example/">Shop now</a></p>',
        None,
        None,
    )
    return build(
        compiled.render(recipient_context("alice@example.com", "Alice", {}, {"shop": "Bits & Bobs"}))
    )


def text_html_attachment() -> bytes:
    compiled = compile_content(
        "Grüße aus Köln, {{ name }}: Ihre Rechnung über 5 €",
        "<p>Hallo {{ name }},</p><p>anbei Ihre Rechnung.</p>",
        "Hallo {{ name }},\nanbei Ihre Rechnung.\n",
        None,
    )
    return build(
        compiled.render(recipient_context("zoe@exämple.org", "Zoë Müller", {}, {})),
        sender=Sender("rechnung@exämple.org", "Bücherstube Köln"),
        recipient_email="zoe@exämple.org",
        recipient_name="Zoë Müller",
        attachments=[Attachment("Rechnung März \u2013 Zoë.pdf", "application/pdf", PDF)],
    )


def unsubscribe_visible_headers() -> bytes:
    compiled = compile_content("News for {{ name }}", None, "Hi {{ name }}!\n", UNSUBSCRIBE)
    rendered = compiled.render(recipient_context("a+b@example.com", "Ann", {"campaign": "2024 Q1"}, {}))
    return build(
        rendered,
        recipient_email="a+b@example.com",
        recipient_name="Ann",
        headers=VisibleHeaders(
            to=(Mailbox("team@example.com", "The Team"),),
            cc=(Mailbox("boss@example.com", "Doe, J."), Mailbox("audit@example.com")),
            reply_to=(Mailbox("help@shop.example", "Help desk"),),
            custom=(("X-Campaign-Id", "spring-2024-" + "0123456789abcdef" * 6), ("X-Tag", "Frühling")),
        ),
    )


def text_only() -> bytes:
    return build()


GOLDEN_MESSAGES = {
    "html_only.eml": html_only,
    "text_html_attachment.eml": text_html_attachment,
    "unsubscribe_visible_headers.eml": unsubscribe_visible_headers,
    "text_only.eml": text_only,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_MESSAGES))
def test_message_matches_its_golden_file(name: str) -> None:
    raw = GOLDEN_MESSAGES[name]()
    if REGENERATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / name).write_bytes(raw)
    assert raw == (GOLDEN / name).read_bytes()


@pytest.mark.parametrize("name", sorted(GOLDEN_MESSAGES))
def test_lines_end_in_crlf_and_fit_rfc_5322(name: str) -> None:
    raw = GOLDEN_MESSAGES[name]()
    assert raw.isascii()
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert b"\nBcc:" not in raw


def test_html_only_gets_a_generated_text_alternative_first() -> None:
    message = parse(html_only())
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert content(plain) == "Hello Alice\n\nEverything is 20% off. Shop now (https://shop.example/)\n"
    assert html.get_content_type() == "text/html"
    assert "<b>20%</b>" in content(html)


def test_text_only_is_a_single_text_part() -> None:
    message = parse(text_only())
    assert message.get_content_type() == "text/plain"
    assert not message.is_multipart()
    assert content(message) == "Hello Alice,\nyour order is on its way.\n"
    assert message["MIME-Version"] == "1.0"


def test_attachments_follow_the_alternative_in_a_mixed_part() -> None:
    message = parse(text_html_attachment())
    assert message.get_content_type() == "multipart/mixed"
    body, attachment = message.iter_parts()
    assert [part.get_content_type() for part in body.iter_parts()] == ["text/plain", "text/html"]
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "Rechnung März \u2013 Zoë.pdf"
    assert attachment["Content-Transfer-Encoding"] == "base64"
    assert attachment.get_content() == PDF


def test_non_ascii_headers_are_encoded_and_domains_are_a_labels() -> None:
    raw = text_html_attachment()
    message = parse(raw)
    assert message["Subject"] == "Grüße aus Köln, Zoë Müller: Ihre Rechnung über 5 €"
    assert message["From"].addresses[0].display_name == "Bücherstube Köln"
    assert message["From"].addresses[0].addr_spec == "rechnung@xn--exmple-cua.org"
    assert message["To"].addresses[0].addr_spec == "zoe@xn--exmple-cua.org"
    # RFC 2231 §4: the filename parameter in UTF-8 with percent-encoding.
    assert b"\r\n filename*=utf-8''Rechnung%20M%C3%A4rz%20%E2%80%93%20Zo%C3%AB.pdf\r\n" in raw


def test_the_recipient_is_the_default_to() -> None:
    message = parse(text_only())
    assert str(message["To"]) == "Alice Liddell <alice@example.com>"
    assert str(message["From"]) == "Bits & Bobs <news@shop.example>"
    assert message["Cc"] is None
    assert message["Reply-To"] is None
    assert message["Message-ID"] == "<b1.r1@shop.example>"
    assert message["Date"] == "Tue, 05 Mar 2024 14:30:00 +0100"
    assert message["List-Unsubscribe"] is None


def test_visible_headers_replace_to_and_add_cc_reply_to_and_custom_fields() -> None:
    message = parse(unsubscribe_visible_headers())
    assert str(message["To"]) == "The Team <team@example.com>"
    assert [address.addr_spec for address in message["Cc"].addresses] == [
        "boss@example.com",
        "audit@example.com",
    ]
    assert message["Cc"].addresses[0].display_name == "Doe, J."
    assert str(message["Reply-To"]) == "Help desk <help@shop.example>"
    assert message["X-Campaign-Id"] == "spring-2024-" + "0123456789abcdef" * 6
    assert message["X-Tag"] == "Frühling"
    assert "a+b@example.com" not in str(message["To"])


def test_unsubscribe_url_gets_one_click_headers_on_one_line() -> None:
    raw = unsubscribe_visible_headers()
    url = "https://shop.example/unsubscribe?e=a%2Bb%40example.com&list=spring-2024%20Q1"
    # RFC 2369 §3.2 and RFC 8058 §3.1; the URL must not be RFC 2047-encoded or folded.
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in raw
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw


def test_a_long_unsubscribe_url_stays_whole() -> None:
    url = "https://shop.example/u/" + "t" * (MAX_UNSUBSCRIBE_URL - len("https://shop.example/u/"))
    raw = build(RenderedContent("s", None, "t", url))
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in raw
    assert max(len(line) for line in raw.split(b"\r\n")) == 998


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://shop.example/u?t=1", None),
        ("HTTPS://shop.example:8443/u", None),
        ("https://[2001:db8::1]/u", None),
        ("http://shop.example/u", "https://"),
        ("/unsubscribe?t=1", "https://"),
        ("mailto:unsubscribe@shop.example", "https://"),
        ("https:///path", "host"),
        ("https://", "host"),
        ("https://shop.example/a b", "spaces"),
        ("https://shop.example/ü", "ASCII"),
        ("https://shop.example/<x>", "<, >"),
        ("https://[::1/u", "not a valid URL"),
        ("https://shop.example/" + "a" * MAX_UNSUBSCRIBE_URL, f"at most {MAX_UNSUBSCRIBE_URL}"),
    ],
)
def test_validate_unsubscribe_url(url: str, reason: str | None) -> None:
    result = validate_unsubscribe_url(url)
    if reason is None:
        assert result is None
    else:
        assert result is not None
        assert reason in result


def test_an_invalid_unsubscribe_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsubscribe URL must be an absolute https://"):
        build(RenderedContent("s", None, "t", "http://shop.example/u"))


@pytest.mark.parametrize(
    ("template", "ok"),
    [
        (UNSUBSCRIBE, True),
        ("HTTPS://shop.example/u/{{ token }}", True),
        ("http://shop.example/u/{{ token }}", False),
        ("{{ url }}", False),
        ("mailto:u@shop.example", False),
        ("", False),
    ],
)
def test_check_unsubscribe_template(template: str, ok: bool) -> None:
    assert (check_unsubscribe_template(template) is None) == ok


@pytest.mark.parametrize(
    ("custom", "problem"),
    [
        (("Subject", "x"), "must be X-"),
        (("X-", "x"), "must be X-"),
        (("X_Tag", "x"), "must be X-"),
        (("X-Tag:", "x"), "must be X-"),
        (("X-Tag", "a\r\nBcc: victim@example.com"), "control characters"),
        (("X-Tag", "a\nb"), "control characters"),
        (("X-Tag", "grüße\u2028b"), "control characters"),
        (("X-Tag", "a" * 992), "one line"),
    ],
)
def test_custom_headers_are_checked(custom: tuple[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        build(headers=VisibleHeaders(custom=(custom,)))


def test_a_field_cannot_add_a_header_through_the_subject() -> None:
    message = parse(build(RenderedContent("Hi\r\nBcc: victim@example.com", None, "t", None)))
    assert message["Subject"] == "Hi Bcc: victim@example.com"
    assert message["Bcc"] is None


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"recipient_email": "not-an-address"}, "no @"),
        ({"recipient_email": "zoë@example.com"}, "non-ASCII local parts"),
        ({"sender": Sender("nobody")}, "no @"),
        ({"headers": VisibleHeaders(cc=(Mailbox("bad address@example.com"),))}, "whitespace"),
        ({"recipient_name": "n" * 1000}, "too long"),
        ({"message_id": "<b1@shop.example>"}, "left@right"),
        ({"message_id": "no-at-sign"}, "left@right"),
        ({"date": DATE.replace(tzinfo=None)}, "time zone"),
        ({"attachments": [Attachment("a.bin", "multipart/mixed", b"")]}, "type/subtype"),
        ({"attachments": [Attachment("a.bin", "pdf", b"")]}, "type/subtype"),
        ({"attachments": [Attachment("", "application/pdf", b"")]}, "filename"),
        ({"attachments": [Attachment("a\r\n.pdf", "application/pdf", b"")]}, "filename"),
        ({"rendered": RenderedContent("s", None, None, None)}, "neither html nor text"),
    ],
)
def test_bad_values_are_refused(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        build(**overrides)


def test_long_lines_and_form_feeds_are_encoded_to_stay_under_998_octets() -> None:
    # "\f" is a line break to str.splitlines() but not on the wire (RFC 5322 §2.1.1).
    long_text = "a" * 600 + "\f" + "b" * 600 + "\n"
    raw = build(RenderedContent("s", "<p>" + "x " * 1500 + "</p>", long_text, None))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    plain, html = parse(raw).iter_parts()
    assert content(plain) == long_text
    assert content(html) == "<p>" + "x " * 1500 + "</p>\n"


def test_equal_input_gives_equal_bytes() -> None:
    assert text_html_attachment() == text_html_attachment()


def test_a_different_message_id_changes_only_that_header() -> None:
    first = text_only().split(b"\r\n")
    second = build(message_id="b1.r2@shop.example").split(b"\r\n")
    assert [pair for pair in zip(first, second, strict=True) if pair[0] != pair[1]] == [
        (b"Message-ID: <b1.r1@shop.example>", b"Message-ID: <b1.r2@shop.example>")
    ]


# Header text as mailnode writes it; "=?" is left out because the stdlib's reader decodes a
# literal "=?utf-8?q?x?=" that the stdlib's writer leaves as it is.
header_strings = st.text(max_size=120).map(header_text).filter(lambda value: "=?" not in value)


@given(header_strings)
def test_any_subject_round_trips(subject: str) -> None:
    raw = build(RenderedContent(subject, None, "t", None))
    assert parse(raw)["Subject"] == subject


@given(header_strings)
def test_any_display_name_round_trips(name: str) -> None:
    raw = build(recipient_name=name, sender=replace(SENDER, name=name))
    for field in ("From", "To"):
        parsed = parse(raw)[field].addresses[0]
        assert parsed.addr_spec in ("news@shop.example", "alice@example.com")
        # The stdlib's phrase parser adds a space between adjacent encoded words, which RFC 2047
        # §6.2 says to ignore, and collapses Unicode white space: compare without white space.
        assert "".join(parsed.display_name.split()) == "".join(name.split())
        # The legacy decoder follows RFC 2047 §6.2 and gives back the exact name.
        raw_field = email.message_from_bytes(raw, policy=email.policy.compat32)[field]
        display_name, _ = email.utils.parseaddr(raw_field)
        assert str(make_header(decode_header(display_name))) == name


@given(st.lists(st.binary(max_size=3000), max_size=3), st.text(min_size=1, max_size=80))
def test_attachments_come_back_byte_identical(contents: list[bytes], filename: str) -> None:
    filename = header_text(filename)
    assume(filename and len(filename) <= 255)
    attachments = [Attachment(filename, "application/octet-stream", content) for content in contents]
    raw = build(attachments=attachments)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parts = list(parse(raw).iter_attachments())
    assert [part.get_content() for part in parts] == contents
    assert all(part.get_filename() == filename for part in parts)


@given(st.text(max_size=3000), st.text(max_size=3000))
def test_any_body_comes_back_and_fits_on_lines(plain: str, html: str) -> None:
    assume(plain.strip() and html.strip())
    raw = build(RenderedContent("s", html, plain, None))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.count(b"\n") == raw.count(b"\r\n")
    got = [content(part).rstrip("\n") for part in parse(raw).iter_parts()]
    # Only CR and LF end a line on the wire; the body always ends with one.
    assert got == [re.sub(r"\r\n?", "\n", value).rstrip("\n") for value in (plain, html)]

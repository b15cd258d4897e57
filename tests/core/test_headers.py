"""Header section: finding it, checking it, and adding trace and missing fields."""

from __future__ import annotations

import datetime
import email
import email.policy
import email.utils
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailnode.core.headers import (
    MessageCheck,
    check_message,
    from_domain,
    header_block,
    is_date,
    missing_headers,
    parsed_from_domain,
    prepend_headers,
    received_header,
)

WHEN = datetime.datetime(2024, 3, 5, 14, 7, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
DATE = b"Date: Tue, 05 Mar 2024 14:07:09 +0100"
GOOD = b"From: Alice <alice@Example.ORG>\r\nTo: bob@example.net\r\n" + DATE + b"\r\n"
GOOD += b"Message-ID: <m1@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    ("message", "limit", "expected"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody", 65536, b"A: 1\r\nB: 2\r\n"),
        (b"A: 1\nB: 2\n\nbody\n\nmore", 65536, b"A: 1\nB: 2\n"),
        (b"A: 1\r\n folded\r\n\r\n", 65536, b"A: 1\r\n folded\r\n"),
        (b"\r\nbody only", 65536, b""),
        (b"A: 1\r\nB: 2\r\n", 65536, b""),
        (b"A: 1\r\nB: 2", 65536, b""),
        (b"", 65536, b""),
        (b"A: 1\r\n\r\n", 6, b"A: 1\r\n"),
        (b"A: 1\r\n\r\n", 5, b""),
        (b"A: 1\n\n", 5, b"A: 1\n"),
        (b"A: 1\n\n", 4, b""),
    ],
)
def test_header_block(message: bytes, limit: int, expected: bytes) -> None:
    assert header_block(message, limit) == expected


@pytest.mark.parametrize(
    ("message", "require_date", "expected"),
    [
        pytest.param(GOOD, True, MessageCheck((), True, True, "example.org"), id="good"),
        pytest.param(
            GOOD.replace(b"\r\n", b"\n"),
            True,
            MessageCheck((), True, True, "example.org"),
            id="lf-only",
        ),
        pytest.param(
            b"From: a@b.example\r\n\r\n",
            True,
            MessageCheck(("missing Date header",), False, False, "b.example"),
            id="missing-date",
        ),
        pytest.param(
            b"From: a@b.example\r\n\r\n",
            False,
            MessageCheck((), False, False, "b.example"),
            id="missing-date-allowed",
        ),
        pytest.param(
            b"From: a@b.example\r\nDate: next tuesday\r\n\r\n",
            False,
            MessageCheck(("Date header is not a valid date",), False, True, "b.example"),
            id="broken-date",
        ),
        pytest.param(
            b"To: bob@example.net\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(("missing From header",), False, True, None),
            id="missing-from",
        ),
        pytest.param(
            b"From: Alice\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(("From header has no address",), False, True, None),
            id="from-without-address",
        ),
        pytest.param(
            b"From: bob@\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(("From header has no address",), False, True, None),
            id="from-without-domain",
        ),
        pytest.param(
            b"From: <bob@example.net\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(("From header is malformed",), False, True, "example.net"),
            id="from-unclosed-angle",
        ),
        pytest.param(
            b"From: a@one.example\r\nFrom: b@two.example\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(("more than one From header",), False, True, "one.example"),
            id="two-from",
        ),
        pytest.param(
            b"From: Zo\xc3\xab <zo\xc3\xab@B\xc3\xbccher.example>\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck((), False, True, "bücher.example"),
            id="utf8-from",
        ),
        pytest.param(
            b"From: a@\xff.example\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(("From address is not valid UTF-8",), False, True, None),
            id="from-not-utf8",
        ),
        pytest.param(
            b"From: a@b.example\r\n" + DATE + b"\r\n",
            True,
            MessageCheck(("header section not terminated by a blank line",), False, True, "b.example"),
            id="no-separator",
        ),
        pytest.param(
            b"From: a@b.example\r\nX-Bad: a\x00b\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(("header section contains a NUL byte",), False, True, "b.example"),
            id="nul",
        ),
        pytest.param(
            b"To bob\r\nFrom: a@b.example\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(
                ("a header line is not Name: value", "missing From header", "missing Date header"),
                False,
                False,
                None,
            ),
            id="first-line-not-a-header",
        ),
        pytest.param(
            b" folded\r\nFrom: a@b.example\r\n" + DATE + b"\r\n\r\n",
            True,
            MessageCheck(("the first header line is a continuation",), False, True, "b.example"),
            id="first-line-continuation",
        ),
        pytest.param(
            b"From: a@b.example\r\n" + DATE + b"\r\n" + DATE + b"\r\nMessage-ID: <1@b>\r\n"
            b"Message-ID: <2@b>\r\n\r\n",
            True,
            MessageCheck(
                ("more than one Date header", "more than one Message-ID header"),
                True,
                True,
                "b.example",
            ),
            id="duplicate-date-and-message-id",
        ),
        pytest.param(
            b"\r\nbody",
            True,
            MessageCheck(("missing From header", "missing Date header"), False, False, None),
            id="no-headers-at-all",
        ),
    ],
)
def test_check_message(message: bytes, require_date: bool, expected: MessageCheck) -> None:
    assert check_message(message, require_date=require_date) == expected


def test_prepend_keeps_the_original_bytes() -> None:
    original = b"From: a@b.example\nSubject: LF only \xff\n\nbody\r\n"
    result = prepend_headers(original, [("X-One", "1"), ("X-Two", "two\r\n\tfolded")])
    assert result == b"X-One: 1\r\nX-Two: two\r\n\tfolded\r\n" + original


def test_prepend_nothing_is_identity() -> None:
    assert prepend_headers(GOOD, []) == GOOD


def test_prepend_encodes_utf8_values() -> None:
    assert prepend_headers(b"\r\n", [("X-Name", "Zoë")]) == "X-Name: Zoë\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("X-Test", "a\r\nInjected: yes", "not part of a fold"),
        ("X-Test", "a\nb", "not part of a fold"),
        ("X-Test", "a\rb", "not part of a fold"),
        ("X-Test", "trailing\r\n", "not part of a fold"),
        ("X Test", "a", "invalid header field name"),
        ("X-Test:", "a", "invalid header field name"),
        ("", "a", "invalid header field name"),
        ("X-Test", "x" * 1000, "longer than 998"),
    ],
)
def test_prepend_rejects_bad_fields(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepend_headers(GOOD, [(name, value)])


def test_received_header_full() -> None:
    name, value = received_header(
        from_host="client.example",
        from_ip="192.0.2.7",
        by_host="mx.example.com",
        protocol="ESMTPS",
        id="tx42",
        recipient="bob@example.net",
        when=WHEN,
    )
    assert name == "Received"
    assert value == (
        "from client.example ([192.0.2.7])\r\n\tby mx.example.com (mailnode)\r\n\twith ESMTPS"
        "\r\n\tid tx42\r\n\tfor <bob@example.net>;\r\n\tTue, 05 Mar 2024 14:07:09 +0100"
    )


@pytest.mark.parametrize(
    ("from_host", "from_ip", "recipient", "expected_start"),
    [
        (None, None, None, "by mx.example.com (mailnode)\r\n\twith HTTP\r\n\tid tx42;\r\n\t"),
        (None, "192.0.2.7", None, "from [192.0.2.7]\r\n\tby "),
        ("client.example", None, None, "from client.example\r\n\tby "),
        ("c.example", "2001:db8::1", None, "from c.example ([IPv6:2001:db8::1])\r\n\tby "),
        ("evil (x);\r\nX: y", "192.0.2.7", None, "from evil??x????X:?y ([192.0.2.7])\r\n\tby "),
    ],
)
def test_received_header_omits_and_sanitizes(
    from_host: str | None, from_ip: str | None, recipient: str | None, expected_start: str
) -> None:
    _, value = received_header(
        from_host=from_host,
        from_ip=from_ip,
        by_host="mx.example.com",
        protocol="HTTP",
        id="tx42",
        recipient=recipient,
        when=WHEN,
    )
    assert value.startswith(expected_start)
    assert "for <" not in value


def test_received_header_prepends_and_parses_back() -> None:
    field = received_header(
        from_host="client.example",
        from_ip="192.0.2.7",
        by_host="mx.example.com",
        protocol="ESMTPSA",
        id="tx42",
        recipient="bob@example.net",
        when=WHEN,
    )
    parsed = email.message_from_bytes(prepend_headers(GOOD, [field]), policy=email.policy.default)
    received = " ".join(str(parsed["Received"]).split())
    assert received.startswith("from client.example ([192.0.2.7]) by mx.example.com (mailnode)")
    assert email.utils.parsedate_to_datetime(received.rsplit(";", 1)[1]) == WHEN
    assert parsed["Subject"] == "hi"


def test_missing_headers_adds_date_and_message_id() -> None:
    check = check_message(b"From: a@b.example\r\n\r\n", require_date=False)
    assert missing_headers(check, when=WHEN, message_id="abc@mx.example.com") == [
        ("Date", "Tue, 05 Mar 2024 14:07:09 +0100"),
        ("Message-ID", "<abc@mx.example.com>"),
    ]


def test_missing_headers_adds_nothing_to_a_complete_message() -> None:
    assert missing_headers(check_message(GOOD), when=WHEN, message_id="abc@mx.example.com") == []


@pytest.mark.parametrize("message_id", ["<abc@x.example>", "abc", "a b@x.example", ""])
def test_missing_headers_rejects_a_bad_message_id(message_id: str) -> None:
    with pytest.raises(ValueError, match="message id"):
        missing_headers(check_message(GOOD), when=WHEN, message_id=message_id)


# -- the From fast path: the same answers as the stdlib's parser -------------------------------

_ATOM_CHARS = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
_atoms = st.text(_ATOM_CHARS, min_size=1, max_size=6)
_labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,4}[A-Za-z0-9])?", fullmatch=True)
# Near misses as well as plain mailboxes: the pieces include what the fast path refuses
# (dots and quotes in phrases, comments, lists, brackets, 8-bit text, encoded words).
_noise = st.sampled_from(
    ["", " ", ".", "..", '"', "\\", "(c)", ",", "<", ">", "@", ":", ";", "é", "=?", "[1.2.3.4]"]
)


@st.composite
def _from_values(draw: st.DrawFn) -> str:
    local = ".".join(draw(st.lists(_atoms, min_size=1, max_size=3)))
    domain = ".".join(draw(st.lists(_labels, min_size=1, max_size=3)))
    address = local + draw(_noise) + "@" + domain + draw(_noise)
    kind = draw(st.sampled_from(["bare", "phrase", "quoted", "angle"]))
    if kind == "bare":
        return draw(_noise) + address
    if kind == "angle":
        return f"<{address}>"
    words = draw(st.lists(_atoms, min_size=1, max_size=3))
    phrase = (" " + draw(_noise)).join(words)
    if kind == "quoted":
        phrase = '"' + phrase + '"'
    return f"{phrase}{draw(_noise)} <{address}>{draw(_noise)}"


@settings(max_examples=400)
@given(_from_values())
def test_from_fast_path_agrees_with_the_stdlib_parser(value: str) -> None:
    fast: list[str] = []
    slow: list[str] = []
    assert (from_domain(value, fast), fast) == (parsed_from_domain(value, slow), slow)


@pytest.mark.parametrize(
    ("value", "domain", "problems"),
    [
        ("Alice <alice@Example.ORG>", "example.org", []),
        ('"Bob, the builder" <b.o.b@mail.example.net> ', "mail.example.net", []),
        ("carol+tag@sub.example.com", "sub.example.com", []),
        ("=?utf-8?q?J=C3=B6rg?= <j@example.de>", "example.de", []),
        ("Jörg <j@example.de>", "example.de", []),
        ("a@b.example, c@d.example", "b.example", []),
        ("no address here", None, ["From header has no address"]),
        ("bob@", None, ["From header has no address"]),
    ],
)
def test_from_domain(value: str, domain: str | None, problems: list[str]) -> None:
    found: list[str] = []
    assert from_domain(value, found) == domain
    assert found == problems


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("Tue, 05 Mar 2024 14:07:09 +0100", True),
        ("5 Mar 2024 14:07 -0000", True),
        ("Tue, 31 Feb 2024 14:07:09 +0100", False),
        ("yesterday", False),
        ("", False),
    ],
)
def test_is_date_matches_the_stdlib_date_header(value: str, valid: bool) -> None:
    assert is_date(value) is valid
    parsed = email.policy.SMTP.header_fetch_parse("Date", value)
    assert (getattr(parsed, "datetime", None) is not None) is valid

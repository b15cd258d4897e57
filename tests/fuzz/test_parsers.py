"""Property tests for the parsers that read what strangers send, beyond tests/core's.

tests/core already covers: generated valid addresses round-trip and garbage raises only
AddressError; parse_report on random bytes, mutated samples, truncations and shuffled report
lines; token round trips of fixed claims and every one-character change; VERP round trips,
case changes, one-character changes and garbage. Added here: what an *accepted* address can
never contain, the sender-domain rule against look-alike domains, generated MIME trees fed to
the DSN/ARF reader, generated claims with bit flips and splices for tokens, and splices of two
VERP addresses.
"""

from __future__ import annotations

import base64
import dataclasses
import string

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mailnode.core.address import AddressError, parse_address, sender_domain_allowed
from mailnode.core.bounce_report import (
    MAX_FIELD_CHARS,
    MAX_RECIPIENTS,
    BounceReport,
    ReportKind,
    parse_report,
)
from mailnode.core.tracking import TrackingMode
from mailnode.core.tracking_tokens import TokenKind, TrackingClaim, mint, verify
from mailnode.core.verp import parse_verp, verp_address

# Deterministic in CI: the same examples every run (tests/fuzz/ has a small time budget).
FUZZ = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FEW = settings(FUZZ, max_examples=25)  # the slow generators (two claims and a splice each)

# -- addresses --------------------------------------------------------------------------------

_NEAR_ADDRESS = st.lists(
    st.sampled_from(["a", "B", "0", ".", "@", "-", "%", "!", '"', "\\", "[", "]", ":", "é", "例", "xn--"])
    | st.sampled_from(["\r", "\n", "\x00", "\t", " ", "\x0b", "\x85", "\u2028", "\udcff", "\x7f"]),
    max_size=30,
).map("".join)


@FUZZ
@given(_NEAR_ADDRESS | st.text(max_size=60))
@example("user@example.com\r\nBcc: victim@example.net")
@example("user@example.com\x00")
@example('"a\r\nb"@example.com')
def test_an_accepted_address_is_safe_to_write_into_a_header_or_a_command(text: str) -> None:
    """CR, LF, NUL and other controls never get through: they would inject headers or commands."""
    try:
        address = parse_address(text)
    except AddressError:
        return
    written = str(address)
    assert written == text
    assert not any(char.isspace() or ord(char) < 0x20 or char == "\x7f" for char in written)
    assert len(written.encode("utf-8")) <= 254
    assert len(address.local.encode("utf-8")) <= 64
    assert parse_address(written) == address
    assert all(label and len(label) <= 63 for label in address.domain_ascii.split("."))


_LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_DOMAINS = st.lists(_LABELS, min_size=2, max_size=4).map(".".join)


@FUZZ
@given(_DOMAINS, _LABELS)
def test_a_key_never_sends_as_a_look_alike_or_a_child_domain(domain: str, label: str) -> None:
    """A key for example.com may not send as badexample.com, x.example.com or com."""
    assert sender_domain_allowed(domain, domain)
    assert sender_domain_allowed(domain, domain.upper() + ".")
    assert not sender_domain_allowed(domain, label + domain)
    assert not sender_domain_allowed(domain, f"{label}.{domain}")
    assert not sender_domain_allowed(domain, domain.rpartition(".")[2])  # the bare TLD
    assert sender_domain_allowed(f"{label}.{domain}", domain)  # a child key may use its parent


@FUZZ
@given(st.text(max_size=40), st.text(max_size=40))
def test_the_sender_domain_rule_never_raises(key_domain: str, sender_domain: str) -> None:
    assert sender_domain_allowed(key_domain, sender_domain) in (True, False)


# -- DSN and ARF reports ----------------------------------------------------------------------

_TYPES = [
    "multipart/report; report-type=delivery-status",
    "multipart/report; report-type=feedback-report",
    "multipart/mixed",
    "multipart/alternative",
    "message/delivery-status",
    "message/feedback-report",
    "message/rfc822",
    "text/rfc822-headers",
    "text/plain",
    "text/plain; charset=x-unknown",
    "text/plain; charset=utf-7",
    "application/octet-stream",
]
_ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "binary", "bogus"]
_FIELDS = [
    b"Reporting-MTA: dns; mx.example.net",
    b"Final-Recipient: rfc822; user@example.com",
    b"Original-Recipient: rfc822;\xff\xfe@example.com",
    b"Action: failed",
    b"Action: delayed",
    b"Status: 5.1.1",
    b"Status: 9.9.9.9",
    b"Diagnostic-Code: smtp; 550 5.1.1 no such user",
    b"Diagnostic-Code: x-unix; " + b"A" * 2000,
    b"Feedback-Type: abuse",
    b"User-Agent: \x00\x01",
    b"Source-IP: 999.1.1.1",
    b"Original-Rcpt-To: <a@b.test>",
    b"Arrival-Date: not a date",
    b"Remote-MTA: dns;",
    b"",
    b"   folded continuation",
    b"=?utf-8?B?////?=: value",
]


@st.composite
def _mime(draw: st.DrawFn, depth: int = 0) -> bytes:
    content_type = draw(st.sampled_from(_TYPES))
    encoding = draw(st.sampled_from(_ENCODINGS))
    boundary = draw(st.sampled_from([b"b1", b"b2", b"", b'"', b"b1--"]))
    head = b"Content-Type: " + content_type.encode()
    if content_type.startswith("multipart/"):
        head += b'; boundary="' + boundary + b'"'
    head += b"\r\nContent-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n"
    if content_type.startswith("multipart/") and depth < 4:
        children = draw(st.lists(_mime(depth + 1), max_size=3))
        closing = draw(st.sampled_from([b"--\r\n", b"\r\n", b""]))
        body = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children)
        return head + b"preamble\r\n" + body + b"--" + boundary + closing
    lines = draw(st.lists(st.sampled_from(_FIELDS) | st.binary(max_size=40), max_size=12))
    body = b"\r\n".join(lines)
    if encoding == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)
    return head + body


@FUZZ
@given(
    st.lists(
        st.sampled_from([b"From: MAILER-DAEMON@example.net", b"Subject: Undelivered Mail", b"X: \xff"]),
        max_size=3,
    ),
    _mime(),
)
def test_generated_report_trees_never_raise_and_stay_bounded(headers: list[bytes], tree: bytes) -> None:
    report = parse_report(b"\r\n".join(headers) + b"\r\n" + tree)
    assert isinstance(report, BounceReport)
    assert isinstance(report.kind, ReportKind)
    assert len(report.recipients) <= MAX_RECIPIENTS
    for text in (report.text, report.user_agent, report.source_ip, report.feedback_type):
        assert text is None or len(text) <= MAX_FIELD_CHARS + 100
    for recipient in report.recipients:
        for text in dataclasses.astuple(recipient):
            assert text is None or len(text) <= MAX_FIELD_CHARS + 100


def test_nested_multiparts_100_deep_are_unknown_not_a_crash() -> None:
    message = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(100)
    )
    report = parse_report(message + b"Content-Type: message/delivery-status\r\n\r\nAction: failed\r\n")
    assert isinstance(report, BounceReport)


# -- tracking tokens --------------------------------------------------------------------------

KEY = b"k" * 32
KEYS = {"k1": KEY, "k2": b"z" * 32}
EXPIRES = 2_000_000_000
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)
_URLS = st.builds(
    lambda host, path: f"https://{host}/{path}",
    _DOMAINS,
    st.text(alphabet=string.ascii_letters + string.digits + "/?=&%-_.~", max_size=60),
)


@st.composite
def _claims(draw: st.DrawFn) -> TrackingClaim:
    kind = draw(st.sampled_from([TokenKind.OPEN, TokenKind.CLICK, TokenKind.UNSUBSCRIBE]))
    domain = draw(_DOMAINS)
    url = draw(_URLS) if kind is TokenKind.CLICK else None
    if kind is TokenKind.UNSUBSCRIBE:
        return TrackingClaim(
            kind, TrackingMode.OFF, domain, draw(_TEXT), draw(_TEXT), draw(_TEXT), None, EXPIRES
        )
    mode = draw(st.sampled_from([TrackingMode.ANONYMOUS, TrackingMode.IDENTIFIED, TrackingMode.FULL]))
    if mode is TrackingMode.ANONYMOUS:
        return TrackingClaim(kind, mode, domain, draw(_TEXT), None, None, url, EXPIRES)
    return TrackingClaim(kind, mode, domain, draw(_TEXT), draw(_TEXT), draw(_TEXT), url, EXPIRES)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@FUZZ
@given(_claims())
def test_generated_claims_round_trip_on_their_route_only(claim: TrackingClaim) -> None:
    token = mint(claim, "k1", KEY)
    assert verify(token, KEYS, claim.kind, EXPIRES - 1) == claim
    assert verify(token, KEYS, claim.kind, EXPIRES) is None  # expired from this second on
    for other in TokenKind:
        if other is not claim.kind:
            assert verify(token, KEYS, other, EXPIRES - 1) is None
    assert verify(token, {"k1": b"z" * 32}, claim.kind, EXPIRES - 1) is None


@FUZZ
@given(_claims(), st.data())
def test_any_bit_flip_in_a_token_is_refused(claim: TrackingClaim, data: st.DataObject) -> None:
    raw = _raw(mint(claim, "k1", KEY))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert verify(_token(bytes(flipped)), KEYS, claim.kind, EXPIRES - 1) is None


@FEW
@given(_claims(), _claims(), st.data())
def test_splicing_two_tokens_is_refused(
    first: TrackingClaim, second: TrackingClaim, data: st.DataObject
) -> None:
    """One token's claim with another's tag (or any cut-and-join of the two) does not verify."""
    a, b = _raw(mint(first, "k1", KEY)), _raw(mint(second, "k1", KEY))
    cut_a = data.draw(st.integers(1, len(a) - 1))
    cut_b = data.draw(st.integers(1, len(b) - 1))
    spliced = a[:cut_a] + b[cut_b:]
    assume(spliced not in (a, b))
    assert verify(_token(spliced), KEYS, first.kind, EXPIRES - 1) is None
    assert verify(_token(spliced), KEYS, second.kind, EXPIRES - 1) is None


# -- VERP ---------------------------------------------------------------------------------------

_IDS = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=22)
BOUNCES = "bounces.example.com"


@FUZZ
@given(_IDS, _IDS)
def test_verp_fields_from_two_addresses_do_not_combine(first: str, second: str) -> None:
    """Another delivery's id under this one's signature (or the reverse) names nothing."""
    assume(first != second)
    a = verp_address(first, BOUNCES, KEY, "k1").split("@")[0].split("-")
    b = verp_address(second, BOUNCES, KEY, "k1").split("@")[0].split("-")
    for fields in ([a[0], b[1], a[2], a[3]], [a[0], a[1], a[2], b[3]]):
        assert parse_verp("-".join(fields) + "@" + BOUNCES, BOUNCES, KEYS) is None


@FUZZ
@given(_IDS, _LABELS)
def test_a_verp_address_is_valid_only_on_its_bounce_domain_and_key(delivery_id: str, label: str) -> None:
    address = verp_address(delivery_id, BOUNCES, KEY, "k1")
    local = address.split("@")[0]
    assert parse_verp(address.upper(), BOUNCES, KEYS) == delivery_id
    assert parse_verp(f"{local}@{label}.{BOUNCES}", BOUNCES, KEYS) is None
    assert parse_verp(f"{local}@{label}.{BOUNCES}", f"{label}.{BOUNCES}", KEYS) is None
    assert parse_verp(address, BOUNCES, {"k1": b"z" * 32}) is None
    assert parse_verp(address.replace("-k1-", "-k2-"), BOUNCES, KEYS) is None

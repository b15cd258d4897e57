"""Webhook rules: which receiver URLs and addresses pass, the retry schedule, when to disable."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailnode.core.events import EventType
from mailnode.core.webhook_policy import (
    DAY,
    HOUR,
    MAX_URL_LENGTH,
    WebhookUrl,
    WebhookUrlError,
    address_refusal,
    disabled_reason,
    is_private_address,
    next_attempt,
    parse_event_types,
    parse_webhook_url,
    response_error,
    retry_delay,
    should_disable,
)

T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://hooks.example.com/mailnode",
            WebhookUrl("https://hooks.example.com/mailnode", "https", "hooks.example.com", 443),
        ),
        (
            "http://Hooks.Example.com:8080/x?a=1",
            WebhookUrl("http://Hooks.Example.com:8080/x?a=1", "http", "hooks.example.com", 8080),
        ),
        ("HTTPS://[2001:db8::1]/h", WebhookUrl("HTTPS://[2001:db8::1]/h", "https", "2001:db8::1", 443)),
        ("http://127.0.0.1:9/hook", WebhookUrl("http://127.0.0.1:9/hook", "http", "127.0.0.1", 9)),
    ],
)
def test_good_urls_give_their_host_and_port(url: str, expected: WebhookUrl) -> None:
    assert parse_webhook_url(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://hooks.example.com/", "https://"),
        ("javascript:alert(1)", "https://"),
        ("hooks.example.com/hook", "https://"),
        ("https://user:pw@hooks.example.com/", "user name or password"),
        ("https://user@hooks.example.com/", "user name or password"),
        ("https:///path-only", "needs a host"),
        ("https://hooks.example.com:0/", "port 0"),
        ("https://hooks.example.com:99999/", "cannot be read as a URL"),
        ("https://hooks.example.com/a b", "spaces or control characters"),
        ("https://hooks.example.com/\r\nX-Injected: 1", "control characters"),
        ("https://bücher.example/", "punycode"),
        ("https://hooks_.exa mple/", "spaces"),
        ("https://-bad-.example.com/", "neither a host name nor an IP address"),
        ("http://2130706433/", "four decimal numbers"),
        ("http://127.1/", "four decimal numbers"),
        ("http://0x7f000001/", "four decimal numbers"),
        ("https://[::1/", "cannot be read as a URL"),
        ("https://hooks.example.com/" + "a" * MAX_URL_LENGTH, f"limit of {MAX_URL_LENGTH}"),
    ],
)
def test_bad_urls_are_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(WebhookUrlError, match=says.replace("?", r"\?").replace("(", r"\(")):
        parse_webhook_url(url)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "unique local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "not globally routable"),  # documentation
        ("198.18.0.1", "not globally routable"),  # benchmarking
        ("2001:db8::1", "not globally routable"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ],
)
def test_non_public_addresses_are_refused_naming_what_they_are(address: str, kind: str) -> None:
    ip = ipaddress.ip_address(address)
    assert is_private_address(ip)
    refusal = address_refusal(address, ip)
    assert refusal is not None and kind in refusal and "[webhooks] allow_private = true" in refusal


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "100.128.0.1", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_private_address(ip)
    assert address_refusal("hooks.example.com", ip) is None


def test_a_refused_name_says_what_it_resolved_to() -> None:
    refusal = address_refusal("hooks.example.com", ipaddress.ip_address("10.0.0.7"))
    assert refusal is not None
    assert refusal.startswith("hooks.example.com resolves to 10.0.0.7, which is a private address")


def test_event_types_are_checked_and_listed_in_canonical_order() -> None:
    assert parse_event_types(["delivered", "accepted", "delivered"]) == (
        EventType.ACCEPTED,
        EventType.DELIVERED,
    )
    with pytest.raises(ValueError, match="unknown event type 'sent'; known types: accepted, rejected"):
        parse_event_types(["sent"])


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (204, None),
        (299, None),
        (301, "HTTP 301 Moved Permanently: redirects are not followed; give the final URL"),
        (404, "HTTP 404 Not Found"),
        (500, "HTTP 500 Internal Server Error"),
    ],
)
def test_only_2xx_answers_deliver(status: int, expected: str | None) -> None:
    reasons = {301: "Moved Permanently", 404: "Not Found", 500: "Internal Server Error"}
    assert response_error(status, reasons.get(status, "OK")) == expected


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(0, 10), (1, 10), (2, 30), (3, 60), (4, 300), (5, 900), (6, 1800), (7, 3600), (8, 3600), (100, 3600)],
)
def test_the_default_schedule_backs_off_to_hourly(attempts: int, delay: float) -> None:
    assert retry_delay(attempts) == delay


def test_the_base_scales_the_whole_schedule() -> None:
    assert [retry_delay(n, 0.05) for n in (1, 2, 7)] == pytest.approx([0.05, 0.15, 18.0])


def test_next_attempt_is_none_once_past_retry_hours() -> None:
    assert next_attempt(1, T0, T0, 24) == T0 + 10
    assert next_attempt(9, T0, T0 + 23 * HOUR, 24) == T0 + 24 * HOUR  # exactly at the end: still tried
    assert next_attempt(9, T0, T0 + 23 * HOUR + 1, 24) is None


@given(
    retry_hours=st.floats(min_value=0.01, max_value=72),
    base=st.floats(min_value=0.01, max_value=60),
    late=st.lists(st.floats(min_value=0, max_value=120), max_size=60),
)
def test_the_schedule_never_goes_back_and_never_past_retry_hours(
    retry_hours: float, base: float, late: list[float]
) -> None:
    """Attempts made when due (or up to `late` seconds after): each wait at least the last."""
    now, last_delay = T0, 0.0
    for attempts, lateness in enumerate(late, start=1):
        at = next_attempt(attempts, T0, now, retry_hours, base)
        if at is None:
            assert now + retry_delay(attempts, base) > T0 + retry_hours * HOUR
            return
        assert at <= T0 + retry_hours * HOUR
        assert at - now >= last_delay
        last_delay = at - now
        now = at + lateness


def test_a_webhook_is_disabled_after_failing_for_the_configured_days() -> None:
    assert not should_disable(None, T0, 3)
    assert not should_disable(T0, T0 + 3 * DAY - 1, 3)
    assert should_disable(T0, T0 + 3 * DAY, 3)
    reason = disabled_reason(T0, 3, "HTTP 500 Internal Server Error")
    assert "disable_after_days = 3" in reason and "HTTP 500" in reason
    assert '{"enabled": true}' in reason and "2027-01-15T08:00:00Z" in reason

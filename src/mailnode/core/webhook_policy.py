"""Webhook rules with no I/O: which URLs may be called, when a failed POST is retried, when to give up.

A webhook URL is chosen by a sending domain's API key, but the POST leaves from the operator's
network: without a check, a key could reach loopback services, the LAN or a cloud metadata
endpoint (169.254.169.254) — server-side request forgery. So hosts that are, or resolve to,
addresses outside the public Internet are refused unless the operator allows them; the worker
checks again at send time, since a name can resolve elsewhere later (DNS rebinding).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailnode.core.events import EventType

MAX_URL_LENGTH = 2048
HOUR = 3600.0
DAY = 86400.0
# Delays after the 1st, 2nd, … failure in units of the retry base: with the default 10 s base
# 10 s, 30 s, 1 min, 5 min, 15 min, 30 min, 1 h, then hourly until retry_hours have passed.
RETRY_STEPS = (1, 3, 6, 30, 90, 180, 360)
DEFAULT_RETRY_BASE = 10.0
ALLOW_PRIVATE_HINT = "set [webhooks] allow_private = true to allow such receivers"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST = re.compile(
    r"(?=.{1,253}\.?$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?"
)
# Checked in order; the first match names why an address is refused. RFC 6890 lists them.
_NOT_PUBLIC: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "an unspecified ('this network') address"),  # Linux connects 0.0.0.0 to itself
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address (RFC 6598)"),
    ("169.254.0.0/16", "a link-local address (cloud metadata services live here)"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fc00::/7", "a unique local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_NETWORKS = tuple((ipaddress.ip_network(net), why) for net, why in _NOT_PUBLIC)
# IPv6 forms that carry an IPv4 address a packet may end up at: NAT64 (RFC 6052).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class WebhookUrlError(ValueError):
    """A webhook URL that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """A checked webhook URL and where it connects: host (no brackets) and port."""

    url: str
    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class WebhookRetryPolicy:
    """The retry and disable settings of [webhooks], as plain values."""

    retry_hours: float = 24.0
    disable_after_days: float = 3.0
    base_seconds: float = DEFAULT_RETRY_BASE


def parse_webhook_url(text: str) -> WebhookUrl:
    """Check a receiver URL: http(s), a host, no credentials, bounded; WebhookUrlError if not."""
    if len(text) > MAX_URL_LENGTH:
        raise WebhookUrlError(f"{len(text)} characters is over the limit of {MAX_URL_LENGTH}")
    if not text.isascii() or any(ch <= " " or ch == "\x7f" for ch in text):
        raise WebhookUrlError(
            "must be ASCII without spaces or control characters: percent-encode the path, "
            "write an internationalised host in punycode (xn--…)"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"cannot be read as a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookUrlError("must start with https:// (or http://)")
    if "@" in parts.netloc:
        raise WebhookUrlError("must not carry a user name or password; authenticate with the signature")
    host = (parts.hostname or "").lower()
    if not host:
        raise WebhookUrlError("needs a host, as in https://hooks.example.com/mailnode")
    _check_host(host)
    if port == 0:
        raise WebhookUrlError("port 0 cannot be connected to; give a port from 1 to 65535")
    return WebhookUrl(text, scheme, host, port or (443 if scheme == "https" else 80))


def _check_host(host: str) -> None:
    if ip_literal(host) is not None:
        return
    if not _HOST.fullmatch(host):
        raise WebhookUrlError(f"{host!r} is neither a host name nor an IP address")
    last = host.rstrip(".").rsplit(".", 1)[-1]
    # inet_aton reads "127.1", "2130706433" and "0x7f000001" as addresses; no TLD looks so.
    if last.isdigit() or last.startswith("0x"):
        raise WebhookUrlError(f"{host!r}: write an IPv4 address as four decimal numbers (a.b.c.d)")


def ip_literal(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal (IPv6 without brackets), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def non_public_kind(ip: IPAddress) -> str | None:
    """Why `ip` is not a public Internet address ("a loopback address", …); None if it is."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return non_public_kind(embedded)
    for network, why in _NETWORKS:
        if ip.version == network.version and ip in network:
            return why
    if ip.is_reserved or not ip.is_global:
        return "an address that is not globally routable (RFC 6890)"
    return None


def is_private_address(ip: IPAddress) -> bool:
    """Whether `ip` is loopback, private, link-local, CGNAT, multicast, reserved or similar."""
    return non_public_kind(ip) is not None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4 or NAT64 IPv6 address leads to."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(host: str, ip: IPAddress) -> str | None:
    """Why a POST to `host` must not go to `ip`, with what to set; None if it may."""
    kind = non_public_kind(ip)
    if kind is None:
        return None
    via = "" if ip_literal(host) is not None else f" resolves to {ip}, which"
    return f"{host}{via} is {kind}; {ALLOW_PRIVATE_HINT}"


def parse_event_types(values: Iterable[str]) -> tuple[EventType, ...]:
    """Event type names as EventTypes in their canonical order; ValueError naming the known ones."""
    wanted = set()
    for value in values:
        try:
            wanted.add(EventType(value))
        except ValueError:
            known = ", ".join(kind.value for kind in EventType)
            raise ValueError(f"unknown event type {value!r}; known types: {known}") from None
    return tuple(kind for kind in EventType if kind in wanted)


def retry_delay(attempts: int, base_seconds: float = DEFAULT_RETRY_BASE) -> float:
    """Seconds from the `attempts`-th failed attempt (1-based) to the next one."""
    step = RETRY_STEPS[min(max(attempts, 1), len(RETRY_STEPS)) - 1]
    return base_seconds * step


def next_attempt(
    attempts: int,
    created_at: float,
    now: float,
    retry_hours: float,
    base_seconds: float = DEFAULT_RETRY_BASE,
) -> float | None:
    """When to try again after the `attempts`-th failure at `now`; None once past retry_hours."""
    at = now + retry_delay(attempts, base_seconds)
    return at if at <= created_at + retry_hours * HOUR else None


def should_disable(failing_since: float | None, now: float, disable_after_days: float) -> bool:
    """Whether a webhook failing since `failing_since` (None: not failing) is to be disabled."""
    return failing_since is not None and now - failing_since >= disable_after_days * DAY


def disabled_reason(failing_since: float, disable_after_days: float, last_error: str | None) -> str:
    """What a disabled webhook says about why, and how to turn it back on."""
    since = datetime.datetime.fromtimestamp(failing_since, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"disabled: every POST failed since {since}, for [webhooks] disable_after_days = "
        f"{disable_after_days:g}; last error: {last_error or 'unknown'}. Fix the receiver, "
        'then PATCH the webhook with {"enabled": true}'
    )


def response_error(status: int, reason: str) -> str | None:
    """None for a 2xx answer (delivered); otherwise why the POST counts as failed."""
    if 200 <= status < 300:
        return None
    text = f"HTTP {status} {reason}".rstrip()
    if 300 <= status < 400:
        # Redirects are not followed: the target would escape the address check above.
        return f"{text}: redirects are not followed; give the final URL"
    return text

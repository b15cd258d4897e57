"""The filter chain: each step sees a delivery's message on its way to the endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mailnode.config import Config, IngressRoute
from mailnode.core.headers import (
    MessageCheck,
    check_message,
    missing_headers,
    prepend_headers,
    received_header,
)
from mailnode.core.outcome import Stage
from mailnode.core.response import Response
from mailnode.core.transaction import TransactionRecord
from mailnode.errors import PermanentDeliveryError, TransientDeliveryError
from mailnode.metrics import Metrics
from mailnode.platform.dkim_signer import sign_message, signs_quickly
from mailnode.router.endpoints import Endpoint
from mailnode.router.routes import match_route

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DeliveryContext:
    """One attempt of one delivery as it passes the chain."""

    record: TransactionRecord
    message: bytes
    check: MessageCheck | None = field(default=None)
    # Set for /v1 deliveries: the batch's domain, whose key signs whatever the From says.
    signing_domain: str | None = None

    def message_check(self) -> MessageCheck:
        if self.check is None:
            self.check = check_message(self.message, require_date=False)
        return self.check


class Filter(Protocol):
    async def __call__(self, delivery: DeliveryContext) -> None: ...


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


class ReceivedHeaderFilter:
    """Prepends this hop's Received trace header (RFC 5321 §4.4)."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname

    async def __call__(self, delivery: DeliveryContext) -> None:
        record = delivery.record
        header = received_header(
            from_host=record.client_helo,
            from_ip=record.client_address,
            by_host=self._hostname,
            protocol=record.protocol,
            id=record.rest_id,
            recipient=record.rcpt_to,
            when=_utc(record.created_at),
        )
        # A trace header changes none of the facts the check holds: keep it.
        delivery.message = prepend_headers(delivery.message, [header])


class ValidationFilter:
    """Refuses messages without a usable header section; adds Message-ID and Date if asked."""

    def __init__(self, hostname: str, *, add_missing_headers: bool) -> None:
        self._hostname = hostname
        self._add_missing = add_missing_headers

    async def __call__(self, delivery: DeliveryContext) -> None:
        check = delivery.message_check()
        if check.problems:
            reason = "; ".join(check.problems)
            raise PermanentDeliveryError(Response(550, f"5.6.0 message rejected: {reason}"), Stage.DATA.value)
        if not self._add_missing:
            return
        # The Message-ID derives from the transaction id, so every retry carries the same one.
        record = delivery.record
        added = missing_headers(
            check, when=_utc(record.created_at), message_id=f"{record.rest_id}@{self._hostname}"
        )
        if added:
            delivery.message = prepend_headers(delivery.message, added)
            delivery.check = dataclasses.replace(check, has_date=True, has_message_id=True)


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    private_key: bytes  # PEM
    algorithm: str = "rsa"


class DomainKeySource(Protocol):
    """The platform's per-domain keys in the database (platform/domain_keys.py)."""

    async def key_for(self, domain: str) -> DkimKey | None: ...


# Headers signed when present (RFC 6376 §5.4.1 recommends From, Subject, Date, To, Cc, ...).
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
    b"content-type", b"content-transfer-encoding", b"reply-to", b"in-reply-to", b"references",
    b"list-unsubscribe", b"list-unsubscribe-post",
)  # fmt: skip


class DkimFilter:
    """Signs with the key of the From domain (or a parent domain), when there is one.

    Keys from `[dkim.<domain>]` come first, then the platform's domains. A /v1 delivery is
    signed by its batch's domain.
    """

    def __init__(
        self,
        keys: Mapping[str, DkimKey],
        domain_keys: DomainKeySource | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._keys = dict(keys)
        self._domain_keys = domain_keys
        self._clock = clock
        self._metrics = metrics or Metrics()

    def key_for(self, domain: str | None) -> DkimKey | None:
        """The configured key for `domain` or its nearest parent."""
        for candidate in _self_and_parents(domain):
            if candidate in self._keys:
                return self._keys[candidate]
        return None

    async def _key(self, delivery: DeliveryContext) -> DkimKey | None:
        if delivery.signing_domain is not None and self._domain_keys is not None:
            return await self._domain_keys.key_for(delivery.signing_domain)
        from_domain = delivery.message_check().from_domain
        key = self.key_for(from_domain)
        if key is None and self._domain_keys is not None:
            for candidate in _self_and_parents(from_domain):
                key = await self._domain_keys.key_for(candidate)
                if key is not None:
                    break
        return key

    async def __call__(self, delivery: DeliveryContext) -> None:
        if not self._keys and self._domain_keys is None:
            return  # no domain signs: no need to look at the message at all
        key = await self._key(delivery)
        if key is None:
            return
        present = {line.split(b":", 1)[0].strip().lower() for line in _header_names(delivery.message)}
        include = [h for h in SIGNED_HEADERS if h in present]
        signing = (delivery.message, key, include, int(self._clock()), self._metrics)
        if signs_quickly(
            domain=key.domain, selector=key.selector, private_key_pem=key.private_key, algorithm=key.algorithm
        ):
            # Under a millisecond, most of it in OpenSSL with the GIL released: a thread hop
            # would cost more. Signing here took 1.3 ms off cut-through's end-of-DATA wait, at
            # the same throughput (scripts/bench_smtp.py).
            signature = _sign(*signing)
        else:
            signature = await asyncio.to_thread(_sign, *signing)  # a large RSA key: milliseconds
        delivery.message = signature + delivery.message


def _self_and_parents(domain: str | None) -> list[str]:
    """example.com for "example.com"; mail.example.com, example.com for "mail.example.com"."""
    if not domain:
        return []
    labels = domain.lower().split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def _header_names(message: bytes) -> list[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in message else message.split(b"\n\n", 1)[0]
    return [line for line in head.splitlines() if line and line[:1] not in (b" ", b"\t")]


def _sign(message: bytes, key: DkimKey, include: Sequence[bytes], timestamp: int, metrics: Metrics) -> bytes:
    started = time.perf_counter()  # timed here, on the thread: the wait for a free one is not signing
    try:
        signature = sign_message(
            message,
            domain=key.domain,
            selector=key.selector,
            private_key_pem=key.private_key,
            algorithm=key.algorithm,
            include_headers=include,
            timestamp=timestamp,
        )
    except ValueError as exc:
        raise TransientDeliveryError(Response(451, f"4.3.0 DKIM signing failed: {exc}"), "data") from exc
    metrics.dkim_signed(key.algorithm, started)
    return signature


class Router:
    """Picks the endpoint from the envelope alone, so cut-through can start before the body.

    Ingress deliveries follow the first matching `[[ingress.routes]]` entry; every other
    profile uses the endpoint `[delivery] mode` names.
    """

    def __init__(
        self,
        default: Endpoint,
        ingress_routes: Sequence[tuple[IngressRoute, Endpoint]] = (),
        copies: Mapping[IngressRoute, Endpoint] | None = None,
        bounces: tuple[str, Endpoint] | None = None,
    ) -> None:
        self._default = default
        self._routes = list(ingress_routes)
        self._by_spec = {route: endpoint for route, endpoint in self._routes}
        self._copies = dict(copies or {})
        # (the bounce domain, the bounce handler): ahead of every route, "*" included.
        self._bounces = bounces
        self._retired: list[Endpoint] = []  # replaced by a reload; closed with the router

    def reroute(
        self,
        ingress_routes: Sequence[tuple[IngressRoute, Endpoint]],
        copies: Mapping[IngressRoute, Endpoint],
    ) -> None:
        """New `[[ingress.routes]]` (a reload): deliveries routed from now on follow them.

        An endpoint no longer routed to may still be in use by a running attempt, so it is
        closed with the router, not now.
        """
        before = [*self._by_spec.values(), *self._copies.values()]
        self._routes = list(ingress_routes)
        self._by_spec = {route: endpoint for route, endpoint in self._routes}
        self._copies = dict(copies)
        kept = {id(e) for e in (*self._by_spec.values(), *self._copies.values())}
        self._retired.extend(e for e in before if id(e) not in kept)

    async def close(self) -> None:
        """Release what endpoints hold open (an HTTP receiver's connection pool)."""
        endpoints = [self._default, *self._by_spec.values(), *self._copies.values(), *self._retired]
        for endpoint in {id(e): e for e in endpoints}.values():
            close = getattr(endpoint, "close", None)
            if close is not None:
                await close()

    def route(self, record: TransactionRecord) -> Endpoint | None:
        if record.sender not in ("ingress", "copy"):
            return self._default
        domain = record.rcpt_to.rpartition("@")[2]
        if self._bounces is not None and record.sender == "ingress":
            bounce_domain, handler = self._bounces
            if domain.lower().rstrip(".") == bounce_domain:
                return handler
        route = match_route([route for route, _ in self._routes], domain)
        if route is None:
            return None
        return self._copies.get(route) if record.sender == "copy" else self._by_spec[route]


@dataclass(frozen=True, slots=True)
class Chain:
    """A sender profile's message filters, in order, and its router."""

    filters: tuple[Filter, ...]
    router: Router


def load_dkim_keys(config: Config) -> dict[str, DkimKey]:
    """Read the `[dkim.<domain>]` private keys named in the config."""
    return {
        domain.lower(): DkimKey(domain.lower(), entry.selector, Path(entry.key_file).read_bytes())
        for domain, entry in config.dkim.items()
    }


FilterFactory = Callable[[], Filter]


def build_chains(
    config: Config,
    router: Router,
    dkim_keys: Mapping[str, DkimKey],
    domain_keys: DomainKeySource | None = None,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
) -> dict[str, Chain]:
    """One chain per sender profile, with the message filters in the order the profile lists."""
    chains: dict[str, Chain] = {}
    for name, profile in config.senders.items():
        factories: dict[str, FilterFactory] = {
            "received_header": lambda: ReceivedHeaderFilter(config.hostname),
            "validation": lambda p=profile: ValidationFilter(  # type: ignore[misc]
                config.hostname, add_missing_headers=p.add_missing_headers
            ),
            "dkim": lambda: DkimFilter(dkim_keys, domain_keys, clock, metrics),
        }
        filters = tuple(factories[f]() for f in profile.filters if f != "router")
        chains[name] = Chain(filters, router)
    return chains

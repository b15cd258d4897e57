"""What `GET /metrics` shows: one Prometheus registry per Service and the instruments it holds.

Hot paths (an SMTP reply, a delivery attempt, an HTTP request) count on the event loop's
thread into plain integers bound once per label set (`Tally`): about 0.1 µs each, where
prometheus_client's own Counter takes a lock for every add (about 0.5 µs), and an SMTP message
passes a dozen of them. The registry reads them when scraped, on the loop too. DKIM signing,
timed on its worker thread, uses prometheus_client's thread-safe Histogram. What the database
knows (queue depth, the oldest due delivery, the outbox and webhook backlogs) is read at scrape
time, in one unit of work on a database reader, never counted as it happens.

Labels hold bounded vocabularies only (listener names, reply classes, endpoint kinds, route
patterns, event types): never an address, a token, a domain or an id.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import ColumnElement, Connection, and_, case, func, or_, select

from mailnode.core.events import EventType
from mailnode.core.outcome import Status
from mailnode.storage.store import Store
from mailnode.storage.tables import events, transactions, webhook_deliveries
from mailnode.storage.webhooks import PENDING

# Seconds. An attempt to a loopback sink takes milliseconds, one to a slow MX minutes
# (RFC 5321 §4.5.3.2 allows 10 min for the end-of-data reply).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# RSA-2048 signs in about 1 ms, Ed25519 in a fraction of it; dkimpy's canonicalisation adds
# time with the message's size.
DKIM_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
REPLY_CLASSES = {"2": "2xx", "3": "3xx", "4": "4xx", "5": "5xx"}
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A delivery's next state after an attempt, as the outcome label says it.
OUTCOMES = {Status.DELIVERED: "delivered", Status.QUEUED: "deferred", Status.FAILED: "failed"}
UNMATCHED_ROUTE = "unmatched"  # a path no route serves (404, 405): the raw path is never a label
NO_ENDPOINT = "none"  # no route to the recipient


def endpoint_label(name: str | None) -> str:
    """An endpoint's kind for a label: "smtp:host:port" is "smtp", an https URL "http"."""
    if name is None:
        return NO_ENDPOINT
    kind = name.partition(":")[0]
    return "http" if kind in ("http", "https") else kind


class Tally:
    """A count that only the event loop's thread adds to: a plain int, no lock (one writer)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class LoopHistogram:
    """Observations from the event loop's thread only: a count per bucket and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # `le` is inclusive: value <= bound
        self.total += value


class CounterFamily:
    """A labelled counter whose children are Tallies, each made on first use and kept."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._name, self._documentation, self._labels = name, documentation, list(labels)
        self._children: dict[tuple[str, ...], Tally] = {}

    def child(self, *values: str) -> Tally:
        tally = self._children.get(values)
        if tally is None:
            tally = self._children[values] = Tally()
        return tally

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labels)]

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for values, tally in self._children.items():
            family.add_metric(list(values), tally.value)
        return [family]


class HistogramFamily:
    """A labelled histogram whose children are LoopHistograms over the same bounds."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]) -> None:
        self._name, self._documentation, self._labels = name, documentation, list(labels)
        self._bounds = tuple(bounds)
        self._children: dict[tuple[str, ...], LoopHistogram] = {}

    def child(self, *values: str) -> LoopHistogram:
        histogram = self._children.get(values)
        if histogram is None:
            histogram = self._children[values] = LoopHistogram(self._bounds)
        return histogram

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labels)]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        edges = [repr(float(bound)) for bound in self._bounds] + ["+Inf"]  # 0.005, 1.0, ...
        for values, histogram in self._children.items():
            cumulative = itertools.accumulate(histogram.counts)
            family.add_metric(list(values), list(zip(edges, cumulative, strict=True)), histogram.total)
        return [family]


class ListenerMetrics:
    """One SMTP listener's session and reply counters, bound to its label once."""

    def __init__(self, sessions: CounterFamily, replies: CounterFamily, listener: str) -> None:
        self.session = sessions.child(listener)
        self._replies = {digit: replies.child(listener, name) for digit, name in REPLY_CLASSES.items()}
        self._other = replies.child(listener, "other")

    def reply(self, text: str | bytes) -> None:
        """Count one reply; the continuation lines of a multi-line reply pushed one by one are not."""
        if isinstance(text, bytes):  # the 421s written straight to the transport
            text = text.decode("ascii", "replace")
        if text[3:4] == "-" and "\n" not in text:
            return  # "250-SIZE …": an EHLO line; the last one ("250 …") counts the reply
        self._replies.get(text[:1], self._other).inc()


class EndpointMetrics:
    """One endpoint kind's delivery outcomes and attempt latency."""

    def __init__(self, deliveries: CounterFamily, latency: HistogramFamily, endpoint: str) -> None:
        self._outcomes = {status: deliveries.child(name, endpoint) for status, name in OUTCOMES.items()}
        self._latency = latency.child(endpoint)

    def attempted(self, status: Status, seconds: float) -> None:
        """Count an attempt's outcome (the delivery's next state) and observe how long it took."""
        counter = self._outcomes.get(status)
        if counter is not None:
            counter.inc()
        self._latency.observe(seconds)


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the database says at scrape time."""

    queue: dict[str, int]  # deliveries by queue status
    oldest_due_at: float | None  # when the longest-waiting unclaimed due delivery became due
    outbox: int  # events not yet processed
    webhook_backlog: int  # webhook deliveries still to be POSTed


class StoreCollector:
    """Queue depth, the oldest due delivery's age and the backlogs: read when scraped.

    The registry calls collect() synchronously; the handler awaits refresh() just before, so
    the database read happens on a reader thread and the loop never blocks on it.
    """

    def __init__(self) -> None:
        self._store: Store | None = None
        self._state: StoreState | None = None
        self._read_at = 0.0

    def watch(self, store: Store) -> None:
        self._store = store

    async def refresh(self) -> None:
        store = self._store
        if store is None:
            return
        now = store.clock()
        self._state = await store.read(lambda conn: read_store_state(conn, now))
        self._read_at = now

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._state)

    def _families(self, state: StoreState | None) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "mailnode_queue_deliveries",
            "Deliveries not yet finished, by queue status: awaiting_body (no message yet), queued "
            "(never attempted), deferred (attempted, waiting to retry), in_flight (leased now)",
            labels=["status"],
        )
        oldest = GaugeMetricFamily(
            "mailnode_queue_oldest_due_age_seconds",
            "How long the longest-waiting due delivery that no attempt holds has waited (0: none)",
        )
        outbox = GaugeMetricFamily("mailnode_events_outbox", "Events written but not yet processed")
        webhooks = GaugeMetricFamily(
            "mailnode_webhook_backlog", "Webhook deliveries still to be POSTed (pending, retries included)"
        )
        if state is not None:
            for status, count in state.queue.items():
                queue.add_metric([status], count)
            due = state.oldest_due_at
            oldest.add_metric([], 0.0 if due is None else max(self._read_at - due, 0.0))
            outbox.add_metric([], state.outbox)
            webhooks.add_metric([], state.webhook_backlog)
        yield from (queue, oldest, outbox, webhooks)


def read_store_state(conn: Connection, now: float) -> StoreState:
    """One reader unit: three aggregate queries over indexed columns (status, processed)."""
    t = transactions.c
    queued = t.status == Status.QUEUED.value
    unclaimed = or_(t.lease_owner.is_(None), t.lease_expires_at < now)

    row = conn.execute(
        select(
            _count(t.status == Status.AWAITING_BODY.value),
            _count(and_(queued, unclaimed, t.attempt_count == 0)),
            _count(and_(queued, unclaimed, t.attempt_count > 0)),
            _count(and_(queued, ~unclaimed)),
            func.min(case((and_(queued, unclaimed, t.next_attempt_at <= now), t.next_attempt_at))),
        ).where(t.status.in_([Status.AWAITING_BODY.value, Status.QUEUED.value]))
    ).one()
    outbox = conn.execute(select(func.count()).select_from(events).where(events.c.processed.is_(False)))
    backlog = conn.execute(
        select(func.count()).select_from(webhook_deliveries).where(webhook_deliveries.c.status == PENDING)
    )
    awaiting, fresh, deferred, leased, oldest = row
    return StoreState(
        queue={"awaiting_body": awaiting, "queued": fresh, "deferred": deferred, "in_flight": leased},
        oldest_due_at=oldest,
        outbox=int(outbox.scalar() or 0),
        webhook_backlog=int(backlog.scalar() or 0),
    )


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


class Metrics:
    """A Service's instruments, in a registry of its own (several services share a test process)."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        self.smtp_sessions = CounterFamily(
            "mailnode_smtp_sessions", "SMTP connections accepted", ["listener"]
        )
        self.smtp_replies = CounterFamily(
            "mailnode_smtp_replies",
            "SMTP replies sent, by listener and code class (a multi-line reply counts once)",
            ["listener", "class"],
        )
        self.deliveries = CounterFamily(
            "mailnode_deliveries",
            "Delivery attempts recorded, by the delivery's outcome (delivered, deferred, failed) "
            "and endpoint kind",
            ["outcome", "endpoint"],
        )
        self.attempt_seconds = HistogramFamily(
            "mailnode_delivery_attempt_seconds",
            "How long a delivery attempt took, from its start to the endpoint's last answer "
            "(a cut-through attempt includes the time the client takes to send the message)",
            ["endpoint"],
            ATTEMPT_BUCKETS,
        )
        self.dkim_seconds = Histogram(
            "mailnode_dkim_signing_seconds",
            "Time to DKIM-sign one message (on a worker thread), by key algorithm",
            ["algorithm"],
            buckets=DKIM_BUCKETS,
            registry=registry,
        )
        self.http_requests = CounterFamily(
            "mailnode_http_requests",
            "HTTP requests answered, by method, route pattern and status",
            ["method", "route", "status"],
        )
        self.events = CounterFamily("mailnode_events", "Events processed from the outbox, by type", ["type"])
        self.store_state = StoreCollector()
        for family in (
            self.smtp_sessions,
            self.smtp_replies,
            self.deliveries,
            self.attempt_seconds,
            self.http_requests,
            self.events,
            self.store_state,
        ):
            registry.register(family)
        self._listeners: dict[str, ListenerMetrics] = {}
        self._endpoints: dict[str | None, EndpointMetrics] = {}
        self._http: dict[tuple[str, str, int], Tally] = {}
        self._events = {kind: self.events.child(kind.value) for kind in EventType}
        self._dkim = {algorithm: self.dkim_seconds.labels(algorithm) for algorithm in ("rsa", "ed25519")}

    def listener(self, name: str) -> ListenerMetrics:
        """The counters of SMTP listener `name` ("submission", "submission_tls", "ingress")."""
        metrics = self._listeners.get(name)
        if metrics is None:
            metrics = self._listeners[name] = ListenerMetrics(self.smtp_sessions, self.smtp_replies, name)
        return metrics

    def endpoint(self, name: str | None) -> EndpointMetrics:
        """The instruments for deliveries to the endpoint named `name` (None: no route)."""
        metrics = self._endpoints.get(name)
        if metrics is None:
            label = endpoint_label(name)
            metrics = EndpointMetrics(self.deliveries, self.attempt_seconds, label)
            self._endpoints[name] = metrics
        return metrics

    def http_request(self, method: str, route: str | None, status: int) -> None:
        """Count one answered request; `route` is the route's pattern (None: no route matched)."""
        key = (method if method in HTTP_METHODS else "other", route or UNMATCHED_ROUTE, status)
        tally = self._http.get(key)
        if tally is None:
            tally = self._http[key] = self.http_requests.child(key[0], key[1], str(status))
        tally.inc()

    def event(self, kind: EventType) -> None:
        self._events[kind].inc()

    def dkim_signed(self, algorithm: str, started: float) -> None:
        """Observe a signature begun at perf_counter() `started` (called on the signing thread)."""
        histogram = self._dkim.get(algorithm)
        if histogram is not None:
            histogram.observe(time.perf_counter() - started)

    async def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape's body and content type (text format 0.0.4 unless OpenMetrics is asked for)."""
        await self.store_state.refresh()
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

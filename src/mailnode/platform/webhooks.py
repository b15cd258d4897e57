"""The webhook worker: POSTs each queued event to its webhook, signed, retrying with backoff.

The events outbox queues webhook deliveries and publishes the events on the bus; the worker
wakes on those messages, at the next retry that falls due and every `poll_interval`, and sends
what is due with at most [webhooks] concurrency POSTs in flight over one aiohttp session.
Redirects are not followed and receivers are checked for non-public addresses at send time as
well as at creation: names are resolved by `GuardedResolver`, whose answer aiohttp connects to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Iterable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from mailnode import __version__
from mailnode.bus import Bus, Subscription
from mailnode.config import WebhooksConfig
from mailnode.core.events import webhook_signature
from mailnode.core.webhook_policy import (
    WebhookRetryPolicy,
    WebhookUrl,
    WebhookUrlError,
    address_refusal,
    ip_literal,
    parse_webhook_url,
    response_error,
)
from mailnode.errors import MailnodeError
from mailnode.platform.event_outbox import STATS_TOPIC
from mailnode.storage.store import Clock
from mailnode.storage.webhooks import AttemptRecorded, DueDelivery, WebhookAttempt, WebhookStore

log = logging.getLogger(__name__)

USER_AGENT = f"mailnode/{__version__}"
POLL_INTERVAL = 5.0


class WebhookAddressError(MailnodeError):
    """A receiver whose host is, or resolves to, an address the config does not allow."""


class GuardedResolver(AbstractResolver):
    """A resolver with a timeout that refuses names resolving to non-public addresses.

    aiohttp connects to exactly the addresses this returns, so a name cannot pass the check with
    one address and be connected to at another (DNS rebinding).
    """

    def __init__(self, inner: AbstractResolver, *, allow_private: bool, timeout: float) -> None:
        self._inner = inner
        self._allow_private = allow_private
        self._timeout = timeout

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        async with asyncio.timeout(self._timeout):
            results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                refusal = address_refusal(host, ipaddress.ip_address(result["host"].partition("%")[0]))
                if refusal is not None:
                    raise WebhookAddressError(refusal)
        return results

    async def close(self) -> None:
        await self._inner.close()


async def check_receiver(
    target: WebhookUrl, *, allow_private: bool, timeout: float, resolver: AbstractResolver | None = None
) -> None:
    """WebhookAddressError if the URL's host is, resolves to, or cannot resolve to an allowed address."""
    if allow_private:
        return
    literal = ip_literal(target.host)
    if literal is not None:
        refusal = address_refusal(target.host, literal)
        if refusal is not None:
            raise WebhookAddressError(refusal)
        return
    guard = GuardedResolver(resolver or ThreadedResolver(), allow_private=False, timeout=timeout)
    try:
        await guard.resolve(target.host, target.port, socket.AF_UNSPEC)
    except TimeoutError:
        raise WebhookAddressError(f"{target.host} did not resolve within {timeout:g} s; try again") from None
    except OSError as exc:
        raise WebhookAddressError(f"{target.host} does not resolve ({exc}); check the host name") from None


class WebhookWorker:
    """Sends due webhook deliveries until cancelled; `stop()` then closes its HTTP session."""

    def __init__(
        self,
        store: WebhookStore,
        bus: Bus,
        config: WebhooksConfig,
        clock: Clock,
        *,
        resolver: AbstractResolver | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._store = store
        self._bus = bus
        self._config = config
        self._clock = clock
        self._resolver = resolver
        self._poll_interval = poll_interval
        self._policy = WebhookRetryPolicy(
            config.retry_hours, config.disable_after_days, config.retry_base_seconds
        )
        # Half the slots at most for one webhook, so a slow receiver leaves the rest to others.
        self._per_webhook = max(1, config.concurrency // 2)
        self._in_flight: dict[int, int] = {}  # delivery id → webhooks row id
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        """Send what is due, then wait for new events, the next retry or the poll interval."""
        session = self._open_session()
        subscription = self._bus.subscribe(STATS_TOPIC)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._wake_on(subscription))
                while True:
                    self._wake.clear()
                    delay = self._poll_interval
                    try:
                        delay = await self._dispatch(tasks, session)
                    except MailnodeError:
                        log.exception("reading due webhook deliveries failed; trying again in %.0f s", delay)
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that arrives as the wait ends, and the loop would never stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
        finally:
            self._bus.unsubscribe(subscription)

    async def stop(self) -> None:
        """Close the HTTP session (once the task running `run` has been cancelled)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            config = self._config
            resolver = GuardedResolver(
                self._resolver or ThreadedResolver(),
                allow_private=config.allow_private,
                timeout=config.timeout_seconds,
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=config.concurrency),
                timeout=aiohttp.ClientTimeout(total=config.timeout_seconds),
                headers={"User-Agent": USER_AGENT},
                # One session serves every domain's receivers: no cookies carried between them.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no proxy from the environment: it would bypass the address check
            )
        return self._session

    async def _wake_on(self, subscription: Subscription) -> None:
        """Wake the loop whenever events were processed (and so deliveries may be queued)."""
        while True:
            await subscription.get()
            while subscription.get_nowait() is not None:
                pass
            self._wake.set()

    async def _dispatch(self, tasks: asyncio.TaskGroup, session: aiohttp.ClientSession) -> float:
        """Start POSTs for what is due while slots are free; seconds until the next is due."""
        free = self._config.concurrency - len(self._in_flight)
        if free <= 0:
            return self._poll_interval  # a finishing POST wakes the loop
        due = await self._store.due(
            self._clock(), free, skip=self._in_flight, skip_webhooks=self._saturated()
        )
        for delivery in self._pick(due):
            self._in_flight[delivery.id] = delivery.webhook
            tasks.create_task(self._deliver(session, delivery))
        if len(self._in_flight) >= self._config.concurrency:
            return self._poll_interval
        next_at = await self._store.next_due(skip=self._in_flight, skip_webhooks=self._saturated())
        if next_at is None:
            return self._poll_interval
        return min(max(next_at - self._clock(), 0.0), self._poll_interval)

    def _saturated(self) -> set[int]:
        counts = Counter(self._in_flight.values())
        return {webhook for webhook, count in counts.items() if count >= self._per_webhook}

    def _pick(self, due: Iterable[DueDelivery]) -> list[DueDelivery]:
        counts = Counter(self._in_flight.values())
        picked = []
        for delivery in due:
            if counts[delivery.webhook] < self._per_webhook:
                counts[delivery.webhook] += 1
                picked.append(delivery)
        return picked

    async def _deliver(self, session: aiohttp.ClientSession, delivery: DueDelivery) -> None:
        """POST one delivery and record how it went; its slot is free again afterwards."""
        try:
            attempt = await self._attempt(session, delivery)
            recorded = await self._store.record_attempt(delivery, attempt, self._policy)
            _log_attempt(delivery, attempt, recorded)
        except MailnodeError:
            log.exception("recording webhook delivery %d failed; it stays due", delivery.id)
            # Hold the slot a while: a failing database must not turn into a stream of re-POSTs.
            await asyncio.sleep(self._poll_interval)
        finally:
            del self._in_flight[delivery.id]
            self._wake.set()

    async def _attempt(self, session: aiohttp.ClientSession, delivery: DueDelivery) -> WebhookAttempt:
        """`_post`, with a failure it did not foresee recorded as one (so it backs off too)."""
        try:
            return await self._post(session, delivery)
        except Exception as exc:
            # One odd delivery must not end the worker (the TaskGroup) for every webhook.
            log.exception("webhook POST failed unexpectedly delivery=%d", delivery.id)
            return WebhookAttempt(
                self._clock(), delivered=False, error=f"internal error: {type(exc).__name__}"
            )

    async def _post(self, session: aiohttp.ClientSession, delivery: DueDelivery) -> WebhookAttempt:
        """One signed POST; delivered on a 2xx answer, else why not."""
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "Mailnode-Signature": webhook_signature(delivery.secret, timestamp, delivery.payload),
            "Mailnode-Timestamp": str(timestamp),
            "Mailnode-Event-Id": str(delivery.event_id),
            "Mailnode-Delivery-Id": str(delivery.id),
        }
        refusal = self._refusal(delivery.url)
        if refusal is not None:
            return WebhookAttempt(self._clock(), delivered=False, error=refusal)
        try:
            async with session.post(
                delivery.url, data=delivery.payload, headers=headers, allow_redirects=False
            ) as response:
                error = response_error(response.status, response.reason or "")
                return WebhookAttempt(self._clock(), error is None, response.status, error)
        except TimeoutError:
            error = f"no answer within [webhooks] timeout_seconds = {self._config.timeout_seconds:g}"
        except WebhookAddressError as exc:
            error = str(exc)
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        return WebhookAttempt(self._clock(), delivered=False, error=error)

    def _refusal(self, url: str) -> str | None:
        """Why `url` may not be POSTed to before any connection; aiohttp skips the resolver for IPs."""
        try:
            target = parse_webhook_url(url)
        except WebhookUrlError as exc:
            return f"invalid URL: {exc}"
        literal = ip_literal(target.host)
        if literal is None or self._config.allow_private:
            return None
        return address_refusal(target.host, literal)


def _log_attempt(delivery: DueDelivery, attempt: WebhookAttempt, recorded: AttemptRecorded) -> None:
    """One line per outcome, by ids: never the URL (it may hold a token), secret or body."""
    if attempt.delivered:
        log.debug(
            "webhook delivered delivery=%d webhook=%s event=%d",
            delivery.id,
            delivery.webhook_id,
            delivery.event_id,
        )
        return
    log.info(
        "webhook POST failed delivery=%d webhook=%s event=%d attempts=%d status=%s next=%s error=%s",
        delivery.id,
        delivery.webhook_id,
        delivery.event_id,
        delivery.attempts + 1,
        recorded.status,
        recorded.next_attempt_at,
        attempt.error,
    )
    if recorded.webhook_disabled:
        log.warning("webhook disabled after failing for too long webhook=%s", delivery.webhook_id)

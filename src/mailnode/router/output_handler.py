"""The output handler: claims due deliveries, drives each through its chain, records the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Protocol

from mailnode.core.dsn import FailedDelivery, build_dsn
from mailnode.core.exploder import decide_with_fate
from mailnode.core.headers import header_block
from mailnode.core.message_builder import SpecError, build_message, parse_spec
from mailnode.core.outcome import AttemptResult, Decision, Stage, decide
from mailnode.core.response import Response, permanent
from mailnode.core.retry import RetryPolicy
from mailnode.core.transaction import BODY, InlineBlob, NewTransaction, TransactionRecord
from mailnode.errors import DeliveryError, StorageError
from mailnode.metrics import EndpointMetrics, Metrics
from mailnode.router.cut_through import CutThrough, envelope_accepted
from mailnode.router.filters import Chain, DeliveryContext
from mailnode.smtp.client import EnvelopeInfo
from mailnode.storage.store import Store

log = logging.getLogger(__name__)


class Rendered(Protocol):
    @property
    def message(self) -> bytes: ...

    @property
    def domain(self) -> str: ...


class Renderer(Protocol):
    """Builds a /v1 delivery's message from its batch (platform/renderer.py)."""

    async def render(self, record: TransactionRecord) -> Rendered: ...


@dataclass(frozen=True, slots=True)
class OutputSettings:
    session_id: str
    concurrency: int
    per_destination_concurrency: int
    lease_seconds: float
    poll_interval: float
    hostname: str
    postmaster: str


class OutputHandler:
    """Owns every running delivery attempt of this process."""

    def __init__(
        self,
        store: Store,
        chains: Mapping[str, Chain],
        retry_policy: Callable[[str], RetryPolicy | None],
        settings: OutputSettings,
        *,
        new_message_id: Callable[[], str],
        renderer: Renderer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or Metrics()
        self._renderer = renderer
        self._chains = chains
        self._retry_policy = retry_policy
        self._settings = settings
        self._new_message_id = new_message_id
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._destinations: dict[str, asyncio.Semaphore] = {}
        self._stopping = asyncio.Event()

    # Store listener interface --------------------------------------------------------------

    def changed(self, rest_id: str, version: int) -> None:
        """Version changes matter to the version cache, not here."""

    def queued(self) -> None:
        self._wake.set()

    # Lifecycle --------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def set_concurrency(self, concurrency: int) -> None:
        """At most this many attempts at once from now on (a reload); running ones finish."""
        self._settings = dataclasses.replace(self._settings, concurrency=concurrency)
        self._wake.set()

    async def run(self) -> None:
        """Claim and start due deliveries until stop() is called."""
        renewer = asyncio.create_task(self._renew_leases(), name="lease-renewal")
        try:
            while not self._stopping.is_set():
                try:
                    await self._claim_and_start()
                    await self._sleep_until_work()
                except Exception:
                    # A bug must not stop every delivery until a restart: log it, go on.
                    log.exception("output handler: unexpected error; going on after a pause")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._settings.poll_interval):
                            await self._stopping.wait()
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let running attempts finish for `grace` seconds, then cancel them."""
        self._stopping.set()
        self._wake.set()
        running = list(self._running.values())
        if not running:
            return
        _done, pending = await asyncio.wait(running, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _claim_and_start(self) -> None:
        free = self._settings.concurrency - len(self._running)
        while free > 0 and not self._stopping.is_set():
            try:
                claimed = await self._store.claim_due(
                    self._settings.session_id,
                    limit=free,
                    lease_seconds=self._settings.lease_seconds,
                )
            except StorageError:
                log.exception("claiming due deliveries failed; trying again later")
                return
            for record in claimed:
                task = asyncio.create_task(self._attempt(record), name=f"delivery-{record.rest_id}")
                self._running[record.id] = task
                task.add_done_callback(functools.partial(self._finished, record.id))
            if len(claimed) < free:
                return
            free = self._settings.concurrency - len(self._running)

    def _finished(self, tx_id: int, _task: asyncio.Task[None]) -> None:
        self._running.pop(tx_id, None)
        self._wake.set()  # a slot is free again

    async def _sleep_until_work(self) -> None:
        timeout = self._settings.poll_interval
        if len(self._running) < self._settings.concurrency:
            try:
                due = await self._store.next_due_at()
            except StorageError:
                due = None
            if due is not None:
                timeout = min(timeout, max(due - self._store.clock(), 0.0))
        if timeout > 0:
            # asyncio.timeout: wait_for on Python 3.11 can swallow a cancellation (gh-86296).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        self._wake.clear()

    async def _renew_leases(self) -> None:
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._store.renew_leases(
                    self._settings.session_id, list(self._running), self._settings.lease_seconds
                )
            except StorageError:
                log.exception("lease renewal failed")

    # One attempt --------------------------------------------------------------------------

    async def _attempt(self, record: TransactionRecord) -> None:
        log.debug(
            "attempt start tx=%s attempt=%d sender=%s", record.rest_id, record.attempt_count, record.sender
        )
        started = time.perf_counter()
        result, message = await self._run_chain(record)
        seconds = time.perf_counter() - started
        now = self._store.clock()
        decision = decide(
            result,
            retry=self._retry_policy(record.sender) if record.retry else None,
            bounce_enabled=record.bounce,
            attempts_made=record.attempt_count,
            created_at=record.created_at,
            now=now,
        )
        await self._record(record, result, decision, message, now, seconds)

    async def _record(
        self,
        record: TransactionRecord,
        result: AttemptResult,
        decision: Decision,
        message: bytes | None,
        now: float,
        seconds: float,
    ) -> None:
        """Write the attempt's answers and the delivery's next state (and its DSN).

        `seconds`: how long the attempt took, for the latency histogram.
        """
        dsn = self._dsn(record, result, decision, message, now) if decision.bounce else None
        try:
            await self._store.finish_attempt(record, self._settings.session_id, result, decision, dsn)
        except StorageError:
            # The lease runs out and the delivery is attempted again: nothing is lost.
            log.exception("recording the attempt failed tx=%s", record.rest_id)
            return
        self._endpoint_metrics(record).attempted(decision.status, seconds)
        stage, response = result.decisive
        log.info(
            "attempt done tx=%s attempt=%d status=%s stage=%s code=%d final=%s",
            record.rest_id,
            record.attempt_count,
            decision.status.value,
            stage.value,
            response.code,
            decision.final_reason.value if decision.final_reason else "-",
        )

    def _endpoint_metrics(self, record: TransactionRecord) -> EndpointMetrics:
        """The instruments of the endpoint the delivery was routed to (routing is a lookup)."""
        chain = self._chains.get(record.sender)
        endpoint = chain.router.route(record) if chain is not None else None
        return self._metrics.endpoint(endpoint.name if endpoint is not None else None)

    async def _run_chain(self, record: TransactionRecord) -> tuple[AttemptResult, bytes | None]:
        message: bytes | None = None
        try:
            message, signing_domain = await self._load_message(record)
            delivery = await self._filter(record, message, signing_domain)
            endpoint = self._chains[record.sender].router.route(record)
            if endpoint is None:
                return AttemptResult.failed_at(Stage.RCPT, _NO_ROUTE), message
            info = EnvelopeInfo.for_message(record.mail_from, record.rcpt_to, delivery.message)
            async with self._destination(endpoint.destination(record)):
                session = endpoint.session(record, info)
                try:
                    envelope = await session.envelope()
                    if not envelope_accepted(envelope):
                        return envelope, message
                    return await session.data(delivery.message), message
                finally:
                    await session.close()
        except DeliveryError as exc:
            return AttemptResult.failed_at(Stage(exc.stage), exc.response), message
        except SpecError as exc:
            return AttemptResult.failed_at(Stage.DATA, permanent(f"message builder: {exc}", "5.6.0")), message
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug fails loudly in the log, and the delivery is retried like any 4xx.
            log.exception("attempt failed with an internal error tx=%s", record.rest_id)
            return AttemptResult.failed_at(Stage.MAIL, _INTERNAL_ERROR), message

    async def _filter(
        self, record: TransactionRecord, message: bytes, signing_domain: str | None = None
    ) -> DeliveryContext:
        delivery = DeliveryContext(record, message, signing_domain=signing_domain)
        for step in self._chains[record.sender].filters:
            await step(delivery)
        return delivery

    # Cut-through (the SMTP exploder) ---------------------------------------------------------

    def start_cut_through(
        self, record: TransactionRecord, info: EnvelopeInfo, wait_limit: float
    ) -> CutThrough:
        """Start the first attempt of a delivery the exploder just created (leased to us).

        `wait_limit` bounds how long the attempt waits for the exploder (message, verdict).
        """
        handle = CutThrough(record)
        task = asyncio.create_task(
            self._cut_through(handle, info, wait_limit), name=f"cut-through-{record.rest_id}"
        )
        self._running[record.id] = task
        task.add_done_callback(functools.partial(self._finished, record.id))
        return handle

    async def _cut_through(self, handle: CutThrough, info: EnvelopeInfo, wait_limit: float) -> None:
        log.debug("cut-through start tx=%s sender=%s", handle.record.rest_id, handle.record.sender)
        started = time.perf_counter()
        result, message = await self._cut_through_session(handle, info, wait_limit)
        seconds = time.perf_counter() - started
        handle.data_done(result)
        fate = await handle.fate(wait_limit)
        record = handle.record  # as the commit of the message left it, if it came to that
        now = self._store.clock()
        decision = decide_with_fate(
            fate,
            result,
            retry=self._retry_policy(record.sender) if record.retry else None,
            bounce_enabled=record.bounce,
            created_at=record.created_at,
            now=now,
        )
        await self._record(record, result, decision, message, now, seconds)

    async def _cut_through_session(
        self, handle: CutThrough, info: EnvelopeInfo, wait_limit: float
    ) -> tuple[AttemptResult, bytes | None]:
        record = handle.record
        endpoint = self._chains[record.sender].router.route(record)
        if endpoint is None:
            return AttemptResult.failed_at(Stage.RCPT, _NO_ROUTE), None
        message: bytes | None = None
        try:
            async with self._destination(endpoint.destination(record)):
                session = endpoint.session(record, info)
                try:
                    envelope = await session.envelope()
                    handle.envelope_done(envelope)
                    if not envelope_accepted(envelope):
                        return envelope, None
                    message = await handle.message(wait_limit)
                    if message is None:
                        return envelope, None
                    delivery = await self._filter(record, message)
                    if not await handle.committed(wait_limit):
                        return envelope, None  # not stored (the client gets 451): never sent
                    return await session.data(delivery.message), message
                finally:
                    await session.close()
        except DeliveryError as exc:
            return AttemptResult.failed_at(Stage(exc.stage), exc.response), message
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cut-through attempt failed with an internal error tx=%s", record.rest_id)
            return AttemptResult.failed_at(Stage.MAIL, _INTERNAL_ERROR), message

    async def _load_message(self, record: TransactionRecord) -> tuple[bytes, str | None]:
        """The message to send, and the domain that signs it when that is not the From's."""
        if record.batch_id is not None and self._renderer is not None:
            rendered = await self._renderer.render(record)
            return rendered.message, rendered.domain
        blobs = await self._store.read_blobs(record.id)
        if record.message_builder is not None:
            return build_message(parse_spec(record.message_builder), blobs), None
        return blobs[BODY], None

    def _destination(self, key: str) -> asyncio.Semaphore:
        semaphore = self._destinations.get(key)
        if semaphore is None:
            semaphore = asyncio.Semaphore(self._settings.per_destination_concurrency)
            self._destinations[key] = semaphore
            if len(self._destinations) > 4 * self._settings.concurrency:
                self._forget_idle_destinations()
        return semaphore

    def _forget_idle_destinations(self) -> None:
        limit = self._settings.per_destination_concurrency
        for key in [k for k, s in self._destinations.items() if s._value == limit]:
            del self._destinations[key]

    def _dsn(
        self,
        record: TransactionRecord,
        result: AttemptResult,
        decision: Decision,
        message: bytes | None,
        now: float,
    ) -> NewTransaction | None:
        # RFC 3464 §2 / RFC 5321 §4.5.5: never bounce a message from the null reverse path.
        if not record.mail_from or decision.final_reason is None:
            return None
        _stage, response = result.decisive
        headers = header_block(message) if message else b""
        failure = FailedDelivery(
            original_mail_from=record.mail_from,
            recipient=record.rcpt_to,
            response=response,
            remote_host=result.remote_host,
            arrival_date=_utc(record.created_at),
            last_attempt_date=_utc(now),
            original_headers=headers,
            original_message_id=_message_id(headers),
            reason=decision.final_reason.value,
        )
        dsn = build_dsn(
            failure,
            reporting_mta=self._settings.hostname,
            postmaster=self._settings.postmaster,
            message_id=self._new_message_id(),
            date=_utc(now),
        )
        return NewTransaction(
            sender="bounce",
            mail_from="",
            rcpt_to=record.mail_from,
            retry=True,
            bounce=False,
            protocol="DSN",
            blobs=(InlineBlob(BODY, dsn),),
            parent_id=record.id,
        )


_INTERNAL_ERROR = Response(451, "4.3.0 internal error in mailnode; will retry")
_NO_ROUTE = Response(550, "5.4.4 no route to this recipient")


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def _message_id(headers: bytes) -> str | None:
    value = BytesHeaderParser(policy=compat32).parsebytes(headers + b"\r\n\r\n").get("Message-ID")
    return str(value).strip() if value else None

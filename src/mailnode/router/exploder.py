"""The exploder at run time: an SMTP transaction becomes one delivery per recipient.

Each RCPT creates its delivery (leased to this process) and starts it upstream at once; the
client's RCPT and end-of-DATA replies follow the table in `mailnode.core.exploder`. The client
is told 250 only after the message and its deliveries are committed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mailnode.config import Config
from mailnode.core.exploder import Fate, Mode, data_reply, rcpt_reply
from mailnode.core.headers import prepend_headers
from mailnode.core.response import Response
from mailnode.core.transaction import BODY, NewTransaction, ReusedBlob
from mailnode.errors import StorageError
from mailnode.router.cut_through import CutThrough
from mailnode.router.output_handler import OutputHandler
from mailnode.router.routes import match_route
from mailnode.smtp.authcheck import InboundChecker, strip_forged_results
from mailnode.smtp.client import EnvelopeInfo
from mailnode.storage.store import Store

log = logging.getLogger(__name__)

INTERNAL_ERROR = Response(451, "4.3.0 internal error, try again later")
NO_RECIPIENTS = Response(554, "5.5.1 no valid recipients")
# RFC 7372 §3.2/§3.3: the enhanced codes for SPF and for DMARC (several checks) failures.
SPF_FAILED = Response(
    550, "5.7.23 SPF validation failed; the sending host is not allowed to send for this domain"
)
DMARC_FAILED = Response(550, "5.7.26 message rejected: it fails the sender domain's DMARC policy")


@dataclass(frozen=True, slots=True)
class SmtpClient:
    """Who is talking to the listener."""

    address: str | None
    helo: str | None
    tls: bool
    api_key_id: int | None = None
    domain: str | None = None  # the authenticated key's sending domain
    esmtp: bool = True  # EHLO rather than HELO

    def protocol(self) -> str:
        """The Received header's `with` word (RFC 3848): ESMTP plus S for TLS, A for AUTH."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.tls else "") + ("A" if self.api_key_id is not None else "")


@dataclass(frozen=True, slots=True)
class _Timeouts:
    rcpt: float
    data: float
    # How long a started delivery waits for the client's message and verdict at most.
    session: float


class Exploder:
    """Creates the downstream transactions of both SMTP listeners."""

    def __init__(
        self,
        config: Config,
        store: Store,
        output: OutputHandler,
        session_id: str,
        checker: InboundChecker | None = None,
    ) -> None:
        self._store, self._output, self._session_id = store, output, session_id
        self._checker = checker
        self._authserv_id = config.smtp_hostname
        self._lease_seconds = config.delivery.lease_seconds
        self._profiles = {mode: config.senders[mode.value] for mode in Mode}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take routes and timeouts from `config` (a reload); transactions begun keep theirs."""
        self._routes = config.ingress.routes
        smtp = config.smtp
        session = 2 * smtp.command_timeout_seconds
        self._timeouts = {
            Mode.SUBMISSION: _Timeouts(
                smtp.submission.rcpt_timeout_seconds, smtp.submission.data_timeout_seconds, session
            ),
            Mode.INGRESS: _Timeouts(
                smtp.ingress.rcpt_timeout_seconds, smtp.ingress.data_timeout_seconds, session
            ),
        }

    def begin(
        self,
        *,
        mode: Mode,
        mail_from: str,
        client: SmtpClient,
        body_8bit: bool = False,
        smtputf8: bool = False,
    ) -> DownstreamTransaction:
        return DownstreamTransaction(self, mode, mail_from, client, body_8bit=body_8bit, smtputf8=smtputf8)


class DownstreamTransaction:
    """One SMTP transaction, from MAIL to the end of DATA (or its abandonment)."""

    def __init__(
        self,
        exploder: Exploder,
        mode: Mode,
        mail_from: str,
        client: SmtpClient,
        *,
        body_8bit: bool,
        smtputf8: bool,
    ) -> None:
        self._x = exploder
        self._mode = mode
        self._mail_from = mail_from
        self._client = client
        self._body_8bit, self._smtputf8 = body_8bit, smtputf8
        self._timeouts = exploder._timeouts[mode]
        self._started: list[CutThrough] = []
        self._accepted: list[CutThrough] = []
        self._committed = False

    async def add_recipient(self, rcpt_to: str) -> Response:
        """Create and start this recipient's delivery; the client's RCPT reply."""
        # Creating and starting is one step that a cancelled client (a disconnect) cannot cut
        # in half: a delivery that exists is always started, so abort() can settle it.
        start = asyncio.ensure_future(self._create_and_start(rcpt_to))
        try:
            handle = await asyncio.shield(start)
        except asyncio.CancelledError:
            start.add_done_callback(self._cancel_late_start)
            raise
        if handle is None:
            return INTERNAL_ERROR
        verdict = rcpt_reply(self._mode, await handle.rcpt_answer(self._timeouts.rcpt))
        if verdict.fate is not None:
            handle.settle(verdict.fate)
        else:
            self._accepted.append(handle)
        log.debug("rcpt tx=%s code=%d", handle.record.rest_id, verdict.reply.code)
        return verdict.reply

    async def _create_and_start(self, rcpt_to: str) -> CutThrough | None:
        profile = self._x._profiles[self._mode]
        new = NewTransaction(
            sender=self._mode.value,
            mail_from=self._mail_from,
            rcpt_to=rcpt_to,
            retry=profile.retry,
            bounce=profile.bounce,
            protocol=self._client.protocol(),
            blobs=(),
            body_later=True,
            client_address=self._client.address,
            client_helo=self._client.helo,
            api_key_id=self._client.api_key_id,
            domain=self._client.domain,
        )
        try:
            record = await self._x._store.create_transaction(
                new, lease_owner=self._x._session_id, lease_seconds=self._x._lease_seconds
            )
        except StorageError:
            log.exception("creating a delivery failed; answering 451")
            return None
        info = EnvelopeInfo(self._mail_from, rcpt_to, body_8bit=self._body_8bit, smtputf8=self._smtputf8)
        handle = self._x._output.start_cut_through(record, info, self._timeouts.session)
        self._started.append(handle)
        return handle

    @staticmethod
    def _cancel_late_start(start: asyncio.Future[CutThrough | None]) -> None:
        if not start.cancelled() and start.exception() is None and (handle := start.result()):
            handle.settle(Fate.CANCELLED)

    async def finish(self, message: bytes) -> Response:
        """Commit the message for every accepted recipient, then answer with the table."""
        if not self._accepted:
            return NO_RECIPIENTS
        refused: dict[int, Response] = {}
        if self._mode is Mode.INGRESS and self._x._checker is not None:
            message, refused = await self._authenticate(message)
        taking = [h for h in self._accepted if id(h) not in refused]
        if not taking:
            return self._answer(refused)
        for handle in taking:  # their filters run while the body is committed; DATA waits for it
            handle.send(message)
        try:
            records = [handle.record for handle in taking]
            stored = await self._x._store.attach_body(records, message, self._copies(taking))
        except StorageError:
            log.exception("storing a message failed; answering 451")
            await self.abort()
            return INTERNAL_ERROR
        # Committed: from here on, a client that goes away without our answer does not cancel
        # anything. It may send again (a duplicate), but nothing committed is ever dropped.
        self._committed = True
        for handle, record in zip(taking, stored, strict=False):  # the copies come after
            handle.commit(record)
        pending = [h.data_future for h in taking if not h.data_future.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._timeouts.data)
        return self._answer(refused)

    def _copies(self, taking: list[CutThrough]) -> list[NewTransaction]:
        """Deliveries to the copy_to endpoints of the recipients' routes, sharing the body."""
        if self._mode is not Mode.INGRESS:
            return []
        body_of = taking[0].record.rest_id
        copies = []
        for handle in taking:
            route = match_route(self._x._routes, handle.record.rcpt_to.rpartition("@")[2])
            if route is None or not route.copy_to:
                continue
            copies.append(
                NewTransaction(
                    sender="copy",
                    mail_from=self._mail_from,
                    rcpt_to=handle.record.rcpt_to,
                    retry=True,
                    bounce=False,
                    protocol=handle.record.protocol,
                    blobs=(ReusedBlob(BODY, body_of, BODY),),
                    client_address=self._client.address,
                    client_helo=self._client.helo,
                    parent_id=handle.record.id,
                )
            )
        return copies

    def _answer(self, refused: dict[int, Response]) -> Response:
        """The client's end-of-DATA reply; settles every accepted delivery's fate."""
        answers = [refused.get(id(h)) or h.data_answer() for h in self._accepted]
        verdict = data_reply(self._mode, answers)
        for handle, fate in zip(self._accepted, verdict.fates, strict=True):
            handle.settle(Fate.DROPPED if id(handle) in refused else fate)
        self._started.clear()
        return verdict.reply

    async def _authenticate(self, message: bytes) -> tuple[bytes, dict[int, Response]]:
        """SPF, DKIM, ARC and DMARC for mail from outside: the header, and who refuses it."""
        assert self._x._checker is not None
        # RFC 8601 §5: results claiming to be ours that arrive from outside are forgeries.
        message = strip_forged_results(message, self._x._authserv_id)
        results = await self._x._checker.check(
            message, client_ip=self._client.address, helo=self._client.helo, mail_from=self._mail_from
        )
        refused: dict[int, Response] = {}
        for handle in self._accepted:
            route = match_route(self._x._routes, handle.record.rcpt_to.rpartition("@")[2])
            if route is None:
                continue
            if route.reject_spf_fail and results.spf == "fail":
                refused[id(handle)] = SPF_FAILED
            elif route.reject_dmarc_fail and results.dmarc == "fail":
                refused[id(handle)] = DMARC_FAILED
        log.debug("authentication spf=%s dkim=%s dmarc=%s", results.spf, results.dkim, results.dmarc)
        return prepend_headers(message, [results.header]), refused

    async def abort(self) -> None:
        """The client left before our answer: cancel what it started, unless already committed."""
        fate = Fate.STORE_AND_FORWARD if self._committed else Fate.CANCELLED
        for handle in self._started:
            handle.settle(fate)
        self._started.clear()

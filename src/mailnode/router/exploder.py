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
from mailnode.core.response import Response
from mailnode.core.transaction import NewTransaction
from mailnode.errors import StorageError
from mailnode.router.cut_through import CutThrough
from mailnode.router.output_handler import OutputHandler
from mailnode.smtp.client import EnvelopeInfo
from mailnode.storage.store import Store

log = logging.getLogger(__name__)

INTERNAL_ERROR = Response(451, "4.3.0 internal error, try again later")
NO_RECIPIENTS = Response(554, "5.5.1 no valid recipients")


@dataclass(frozen=True, slots=True)
class SmtpClient:
    """Who is talking to the listener."""

    address: str | None
    helo: str | None
    tls: bool
    api_key_id: int | None = None
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

    def __init__(self, config: Config, store: Store, output: OutputHandler, session_id: str) -> None:
        self._store, self._output, self._session_id = store, output, session_id
        self._lease_seconds = config.delivery.lease_seconds
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
        self._profiles = {mode: config.senders[mode.value] for mode in Mode}

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
        log.info("rcpt tx=%s code=%d", handle.record.rest_id, verdict.reply.code)
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
        try:
            await self._x._store.attach_body([h.record.id for h in self._accepted], message)
        except StorageError:
            log.exception("storing a message failed; answering 451")
            await self.abort()
            return INTERNAL_ERROR
        # Committed: from here on, a client that goes away without our answer does not cancel
        # anything. It may send again (a duplicate), but nothing committed is ever dropped.
        self._committed = True
        for handle in self._accepted:
            handle.send(message)
        pending = [h.data_future for h in self._accepted if not h.data_future.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._timeouts.data)
        verdict = data_reply(self._mode, [h.data_answer() for h in self._accepted])
        for handle, fate in zip(self._accepted, verdict.fates, strict=True):
            handle.settle(fate)
        self._started.clear()
        return verdict.reply

    async def abort(self) -> None:
        """The client left before our answer: cancel what it started, unless already committed."""
        fate = Fate.STORE_AND_FORWARD if self._committed else Fate.CANCELLED
        for handle in self._started:
            handle.settle(fate)
        self._started.clear()

"""Where the SMTP exploder and one delivery's running attempt meet.

The attempt (in the output handler) reports the upstream's envelope and data answers; the
exploder hands over the message at the end of DATA — at once, so the attempt can run its
filters (DKIM signing) while the body is being committed — then says whether the commit
succeeded, and once it has answered its client, settles the delivery's fate. The attempt sends
DATA upstream only after the commit. Everything here is in-process and bounded by the caller's waits.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from mailnode.core.exploder import Fate
from mailnode.core.outcome import AttemptResult
from mailnode.core.response import Response
from mailnode.core.transaction import TransactionRecord

T = TypeVar("T")
D = TypeVar("D")

_NO_ANSWER = Response(451, "4.3.0 no answer from the upstream session")


def envelope_answer(result: AttemptResult) -> Response:
    """What the upstream said to the envelope: its MAIL reply if that failed, else RCPT's."""
    if result.mail is None or not result.mail.ok:
        return result.mail or _NO_ANSWER
    return result.rcpt or _NO_ANSWER


def envelope_accepted(result: AttemptResult) -> bool:
    return envelope_answer(result).ok


class CutThrough:
    def __init__(self, record: TransactionRecord) -> None:
        loop = asyncio.get_running_loop()
        self.record = record
        self._envelope: asyncio.Future[AttemptResult] = loop.create_future()
        self._message: asyncio.Future[bytes | None] = loop.create_future()
        self._committed: asyncio.Future[bool] = loop.create_future()
        self._data: asyncio.Future[AttemptResult] = loop.create_future()
        self._fate: asyncio.Future[Fate] = loop.create_future()

    # -- the attempt's side ----------------------------------------------------------------

    def envelope_done(self, result: AttemptResult) -> None:
        if not self._envelope.done():
            self._envelope.set_result(result)

    def data_done(self, result: AttemptResult) -> None:
        self.envelope_done(result)
        if not self._data.done():
            self._data.set_result(result)

    async def message(self, timeout: float) -> bytes | None:
        """The message once the client sent it all; None when none is coming."""
        return await _within(self._message, timeout, None)

    async def committed(self, timeout: float) -> bool:
        """Whether the message handed over is stored: only then may it go upstream."""
        return await _within(self._committed, timeout, False)

    async def fate(self, timeout: float) -> Fate:
        """The exploder's verdict; a verdict that never comes counts as a cancellation."""
        return await _within(self._fate, timeout, Fate.CANCELLED)

    # -- the exploder's side ---------------------------------------------------------------

    async def rcpt_answer(self, timeout: float) -> Response | None:
        """The upstream's answer to RCPT (or to MAIL, when that failed); None: not in time."""
        result = await _within(self._envelope, timeout, None)
        return None if result is None else envelope_answer(result)

    def send(self, message: bytes) -> None:
        """The client's whole message, not yet committed (see `commit`)."""
        if not self._message.done():
            self._message.set_result(message)

    def commit(self, record: TransactionRecord) -> None:
        """The message is stored durably (`record`: the delivery as now stored): the attempt
        may send it upstream."""
        self.record = record
        if not self._committed.done():
            self._committed.set_result(True)

    @property
    def data_future(self) -> asyncio.Future[AttemptResult]:
        return self._data

    def data_answer(self) -> Response | None:
        """The upstream's end-of-data answer, if it has come and DATA was reached."""
        if not self._data.done():
            return None
        return self._data.result().data

    def settle(self, fate: Fate) -> None:
        if not self._fate.done():
            self._fate.set_result(fate)
        if not self._message.done():
            self._message.set_result(None)
        if not self._committed.done():
            self._committed.set_result(fate is not Fate.CANCELLED)

    @property
    def settled(self) -> bool:
        return self._fate.done()


async def _within(future: asyncio.Future[T], timeout: float, default: D) -> T | D:
    """`future`'s result if it comes within `timeout` seconds, else `default`; `future` itself
    is never cancelled (the other side may still settle it). Cheaper than wait_for + shield,
    which wrap the future twice: these waits run several times per message."""
    if not future.done():
        await asyncio.wait((future,), timeout=timeout)
        if not future.done():
            return default
    return future.result()

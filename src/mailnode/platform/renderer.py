"""Rendering a /v1 delivery: its batch's content, personalised for its one recipient.

A batch stores its content once; each delivery row holds only the recipient's fields. The
content is read, its templates compiled and what its messages share (From, Cc, custom fields,
encoded attachments) prepared once per batch (kept in a small LRU), then each attempt renders
its recipient's message from them.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mailnode.core.outcome import Stage
from mailnode.core.platform_message import PreparedBatch, prepare_batch
from mailnode.core.response import Response
from mailnode.core.send_request import BatchContent, content_from_json
from mailnode.core.templating import CompiledContent, TemplateError, compile_content, recipient_context
from mailnode.core.transaction import TransactionRecord
from mailnode.errors import PermanentDeliveryError
from mailnode.platform.link_tracking import MessageTracker
from mailnode.storage.batches import BatchStore

CACHE_BATCHES = 64
# Rendering and building take about 0.15 ms per KiB of template (0.6-0.8 ms for a 4 KiB
# newsletter). They hold the GIL throughout, so a thread does not run them beside the event
# loop, only takes turns with it: measured with scripts/bench_send.py, rendering small batches
# in a thread cost 15 % of the delivery rate. Small templates render on the loop; bigger ones,
# which would stall it for milliseconds per message (CONVENTIONS §9), in a thread.
INLINE_TEMPLATE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class RenderedDelivery:
    message: bytes
    domain: str  # the batch's domain: its DKIM key signs the message


@dataclass(frozen=True, slots=True)
class _Batch:
    content: BatchContent
    compiled: CompiledContent
    prepared: PreparedBatch
    inline: bool  # small enough to render on the event loop

    def message(
        self,
        record: TransactionRecord,
        name: str,
        context: dict[str, object],
        date: datetime.datetime,
        tracker: MessageTracker | None,
    ) -> bytes:
        """The recipient's message: its content rendered and built; TemplateError or ValueError if not."""
        rendered = self.compiled.render(context)
        if tracker is not None:
            rendered = tracker.apply(rendered, self.content, record)
        return self.prepared.build(
            recipient_email=record.rcpt_to,
            recipient_name=name,
            rendered=rendered,
            message_id=f"{record.rest_id}@{self.content.domain}",
            date=date,
        )


class BatchRenderer:
    """Builds each platform delivery's message when it is attempted."""

    def __init__(
        self,
        batches: BatchStore,
        clock: Callable[[], float],
        *,
        tracker: MessageTracker | None = None,
        cache_size: int = CACHE_BATCHES,
    ) -> None:
        self._batches = batches
        self._clock = clock
        self._tracker = tracker
        self._cache_size = cache_size
        self._cache: OrderedDict[int, asyncio.Future[_Batch]] = OrderedDict()

    async def render(self, record: TransactionRecord) -> RenderedDelivery:
        """The recipient's message; a permanent failure if the batch or its template can't give one."""
        assert record.batch_id is not None
        batch = await self._batch(record.batch_id)
        recipient = record.recipient or {}
        name = str(recipient.get("name", ""))
        context = recipient_context(
            record.rcpt_to, name, recipient.get("fields", {}), batch.content.global_fields
        )
        date = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        try:
            if batch.inline:
                message = batch.message(record, name, context, date, self._tracker)
            else:
                message = await asyncio.to_thread(batch.message, record, name, context, date, self._tracker)
        except (TemplateError, ValueError) as exc:
            raise _unrenderable(f"cannot render the message: {exc}") from exc
        return RenderedDelivery(message, batch.content.domain)

    async def _batch(self, batch_id: int) -> _Batch:
        """The batch's content and compiled templates, loaded once however many ask at once."""
        future = self._cache.get(batch_id)
        if future is None:
            future = asyncio.ensure_future(self._load(batch_id))
            self._cache[batch_id] = future
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(batch_id)
        try:
            return await asyncio.shield(future)
        except PermanentDeliveryError:
            raise
        except Exception:
            self._cache.pop(batch_id, None)  # a storage hiccup is not remembered
            raise

    async def _load(self, batch_id: int) -> _Batch:
        data = await self._batches.content(batch_id)
        if data is None:
            raise _unrenderable("the batch of this delivery no longer exists")
        content = content_from_json(data)
        try:
            compiled = compile_content(content.subject, content.html, content.text, content.unsubscribe_url)
        except TemplateError as exc:
            raise _unrenderable(f"the batch's template does not compile: {exc}") from exc
        try:
            prepared = prepare_batch(
                sender=content.sender, attachments=content.attachments, headers=content.headers
            )
        except ValueError as exc:
            raise _unrenderable(f"cannot render the message: {exc}") from exc
        size = sum(len(part or "") for part in (content.subject, content.html, content.text))
        return _Batch(content, compiled, prepared, inline=size <= INLINE_TEMPLATE_BYTES)


def _unrenderable(reason: str) -> PermanentDeliveryError:
    return PermanentDeliveryError(Response(550, f"5.6.0 {reason}"), Stage.DATA.value)

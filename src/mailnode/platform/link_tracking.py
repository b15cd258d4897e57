"""Tracking a platform message: its links and open pixel pointed at /t/, its unsubscribe at /u/.

Runs when a delivery is rendered, before DKIM signs it (the signature covers the tracked
body). The policy was frozen at intake: the batch's (the domain's ceiling narrowed by the
batch) narrowed again by the recipient's own. What a token carries follows the mode: nothing
about the recipient (anonymous), a pseudonym made for this one message (pseudonymous), or the
address and delivery (identified, full).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from mailnode.core.send_request import BatchContent
from mailnode.core.templating import RenderedContent
from mailnode.core.tracking import (
    StatedPolicy,
    TrackingMode,
    TrackingPolicy,
    effective_policy,
    parse_stated,
    rewrite_html,
)
from mailnode.core.tracking_tokens import TokenKind, TrackingClaim, mint, new_pseudonym
from mailnode.core.transaction import TransactionRecord
from mailnode.storage.batches import SigningKeyring

log = logging.getLogger(__name__)


class MessageTracker:
    """Mints the tokens of one message and puts them where the policy says."""

    def __init__(
        self, keys: SigningKeyring, base_url: Callable[[], str], random_bytes: Callable[[int], bytes]
    ) -> None:
        self._keys = keys
        self._base_url = base_url  # asked per message: known only once HTTP listens (port 0)
        self._random_bytes = random_bytes

    def apply(
        self, rendered: RenderedContent, content: BatchContent, record: TransactionRecord
    ) -> RenderedContent:
        """The rendered content with tracking and the managed unsubscribe URL put in."""
        if not content.token_expires_at:  # stored before tracking existed
            return rendered
        unsubscribe_url = rendered.unsubscribe_url
        if content.managed_unsubscribe:
            claim = self._claim(TokenKind.UNSUBSCRIBE, TrackingMode.OFF, content, record, None)
            unsubscribe_url = self._url("u", claim)
        html = rendered.html
        if html is not None:
            html = self._tracked_html(html, content, record)
        return dataclasses.replace(rendered, html=html, unsubscribe_url=unsubscribe_url)

    def _tracked_html(self, html: str, content: BatchContent, record: TransactionRecord) -> str:
        policy = _policy(content.tracking, (record.recipient or {}).get("tracking"))
        pseudonym = None
        if TrackingMode.PSEUDONYMOUS in (policy.opens, policy.links):
            pseudonym = new_pseudonym(content.domain, self._random_bytes)  # one per build, stored nowhere
        pixel_url = None
        if policy.opens is not TrackingMode.OFF:
            pixel_url = self._url(
                "t/o", self._claim(TokenKind.OPEN, policy.opens, content, record, pseudonym)
            )
        link_url = None
        if policy.links is not TrackingMode.OFF:
            base = self._claim(TokenKind.CLICK, policy.links, content, record, pseudonym, url="https://x/")

            def link_url(url: str) -> str | None:
                try:
                    return self._url("t/c", dataclasses.replace(base, url=url))
                except ValueError:  # a URL no token can carry (too long): left as written
                    return None

        # Called even with tracking off: it strips data-no-track attributes.
        return rewrite_html(html, link_url=link_url, pixel_url=pixel_url)

    def _claim(
        self,
        kind: TokenKind,
        mode: TrackingMode,
        content: BatchContent,
        record: TransactionRecord,
        pseudonym: str | None,
        url: str | None = None,
    ) -> TrackingClaim:
        identity: str | None = None
        delivery: str | None = None
        if kind is TokenKind.UNSUBSCRIBE or mode in (TrackingMode.IDENTIFIED, TrackingMode.FULL):
            identity, delivery = record.rcpt_to, record.rest_id
        elif mode is TrackingMode.PSEUDONYMOUS:
            identity = pseudonym
        return TrackingClaim(
            kind=kind,
            mode=mode,
            domain=content.domain,
            batch=content.batch,
            delivery=delivery,
            identity=identity,
            url=url,
            expires_at=content.token_expires_at,
        )

    def _url(self, route: str, claim: TrackingClaim) -> str:
        key_id, key = self._keys.signer()
        return f"{self._base_url().rstrip('/')}/{route}/{mint(claim, key_id, key)}"


def _policy(batch: TrackingPolicy, stated: Any) -> TrackingPolicy:
    """The recipient's effective policy; the batch's was checked against the domain at intake."""
    recipient: StatedPolicy | None = None
    if stated is not None:
        recipient = parse_stated(stated, "recipient.tracking")
    return effective_policy(batch, None, recipient)

"""The message `mailnode send` composes: a message-builder spec from addresses, subject and bodies."""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import parseaddr
from typing import Any

from mailnode.core.address import AddressError, parse_address
from mailnode.core.message_builder import Mailbox, parse_spec


def parse_mailbox(text: str) -> Mailbox:
    """A mailbox as written on a command line: "a@example.com" or "Alice <a@example.com>"."""
    display_name, address = parseaddr(text)
    if not address:
        raise AddressError("expected an address such as a@example.com or 'Name <a@example.com>'")
    parsed = parse_address(address)
    # The message builder's headers hold the domain as IDNA A-labels (RFC 5890).
    return Mailbox(f"{parsed.local}@{parsed.domain_ascii}", display_name)


def builder_spec(
    *, sender: Mailbox, to: Sequence[Mailbox], subject: str, text: str | None, html: str | None
) -> dict[str, Any]:
    """The message-builder JSON of one message: From, To, Subject, and text and/or HTML bodies."""
    headers: list[Any] = [
        ["From", [_mailbox_json(sender)]],
        ["To", [_mailbox_json(mailbox) for mailbox in to]],
        ["Subject", subject],
    ]
    bodies = [("text/plain", text), ("text/html", html)]
    text_body = [{"content_type": kind, "content": {"inline": body}} for kind, body in bodies if body]
    spec = {"headers": headers, "text_body": text_body}
    parse_spec(spec)  # raises SpecError naming what cannot be built
    return spec


def _mailbox_json(mailbox: Mailbox) -> dict[str, str]:
    if mailbox.display_name:
        return {"address": mailbox.address, "display_name": mailbox.display_name}
    return {"address": mailbox.address}

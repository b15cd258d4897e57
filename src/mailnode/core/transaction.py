"""Transactions as plain values: what is created, what is stored, what an attempt reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailnode.core.outcome import Status
from mailnode.core.response import Response

BODY = "body"  # the blob name of a raw RFC 5322 body


@dataclass(frozen=True, slots=True)
class InlineBlob:
    """Bytes given at creation: stored and finalized at once."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class UploadBlob:
    """A blob the client uploads later (PUT body / blob)."""

    name: str


@dataclass(frozen=True, slots=True)
class ReusedBlob:
    """A finalized blob of another transaction, shared by reference (never copied)."""

    name: str
    source_rest_id: str
    source_name: str


BlobSource = InlineBlob | UploadBlob | ReusedBlob


@dataclass(frozen=True, slots=True)
class NewTransaction:
    """Everything needed to create a delivery (one recipient)."""

    sender: str
    mail_from: str  # "" is the null reverse path
    rcpt_to: str
    retry: bool
    bounce: bool
    protocol: str
    blobs: tuple[BlobSource, ...]
    message_builder: dict[str, Any] | None = None
    client_address: str | None = None
    client_helo: str | None = None
    api_key_id: int | None = None
    parent_id: int | None = None
    # The sending domain whose events and suppressions the delivery counts in (see tables.py).
    domain: str | None = None
    # The SMTP exploder creates deliveries at RCPT and attaches one shared body at the end of
    # DATA (Store.attach_body); until then they wait with no blob at all.
    body_later: bool = False


@dataclass(frozen=True, slots=True)
class BlobStatus:
    name: str
    stored_length: int
    total_length: int | None

    @property
    def finalized(self) -> bool:
        return self.total_length is not None and self.stored_length == self.total_length


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    number: int
    started_at: float
    finished_at: float | None
    mail: Response | None
    rcpt: Response | None
    data: Response | None
    remote_host: str | None


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """A stored delivery as of one version."""

    id: int
    rest_id: str
    sender: str
    mail_from: str
    rcpt_to: str
    status: Status
    version: int
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    attempt_count: int
    final_attempt_reason: str | None
    cancelled: bool
    retry: bool
    bounce: bool
    protocol: str
    client_address: str | None
    client_helo: str | None
    parent_id: int | None
    message_builder: dict[str, Any] | None
    blobs: tuple[BlobStatus, ...]
    latest_attempt: AttemptRecord | None
    # A /v1 send's delivery: its batch (which holds the content) and the recipient's fields.
    batch_id: int | None = None
    recipient: dict[str, Any] | None = None
    domain: str | None = None

    @property
    def input_done(self) -> bool:
        return all(blob.finalized for blob in self.blobs)

    def blob(self, name: str) -> BlobStatus | None:
        return next((blob for blob in self.blobs if blob.name == name), None)

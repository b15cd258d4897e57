"""The exception tree: one root, subclasses that mean decisions."""

from __future__ import annotations

from mailnode.core.response import Response


class MailnodeError(Exception):
    """Root of every error mailnode raises on purpose."""


class ConfigError(MailnodeError):
    """The configuration is invalid: each problem names the key path and the reason."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems: tuple[str, ...] = problems


class StorageError(MailnodeError):
    """The database could not do what was asked; callers answer 4xx, never 250."""


class NotFoundError(MailnodeError):
    """A transaction, blob or key that does not exist (or no longer exists)."""


class ConflictError(MailnodeError):
    """A write that contradicts what is stored (write-once fields, blob ranges)."""


class BlobRangeError(ConflictError):
    """An upload chunk that does not continue the stored bytes (HTTP 416)."""

    def __init__(self, message: str, stored_length: int, total_length: int | None) -> None:
        super().__init__(message)
        self.stored_length = stored_length
        self.total_length = total_length


class DeliveryError(MailnodeError):
    """A delivery step failed with an SMTP-shaped answer."""

    def __init__(self, response: Response, stage: str = "data") -> None:
        super().__init__(str(response))
        self.response = response
        self.stage = stage


class TransientDeliveryError(DeliveryError):
    """Try again later (4xx)."""


class PermanentDeliveryError(DeliveryError):
    """Give up (5xx)."""

"""SMTP-shaped responses: the one value every layer uses to say how a step went."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# RFC 3463 §2: class.subject.detail, e.g. "5.1.1".
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


@dataclass(frozen=True, slots=True)
class Response:
    """An SMTP reply: a three-digit code and its text (which may start with an enhanced status)."""

    code: int
    message: str = ""

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def enhanced_status(self) -> str | None:
        """The RFC 3463 status at the start of the text, if its class matches the code."""
        match = _ENHANCED.match(self.message)
        if match is None or match.group(1) != str(self.code)[0]:
            return None
        return match.group(0)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Response:
        return cls(int(value["code"]), str(value.get("message", "")))

    def __str__(self) -> str:
        return f"{self.code} {self.message}".rstrip()


def temporary(message: str) -> Response:
    """A 4xx answer mailnode composes itself (always with an enhanced status)."""
    return Response(451, message if _ENHANCED.match(message) else f"4.3.0 {message}")


def permanent(message: str, status: str = "5.0.0") -> Response:
    """A 5xx answer mailnode composes itself."""
    return Response(550, message if _ENHANCED.match(message) else f"{status} {message}")

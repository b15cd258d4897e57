"""SMTP AUTH for submission: API keys as credentials, a per-IP throttle, the key's sender domains."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mailnode.config import AuthThrottleConfig
from mailnode.platform.keys import verify_api_key
from mailnode.storage.store import ApiKeyRecord, Store

log = logging.getLogger(__name__)


# The settings live in the config ([smtp.auth_throttle]); this module only applies them.
ThrottleSettings = AuthThrottleConfig


@dataclass(slots=True)
class _Failures:
    count: int
    last_at: float
    banned_until: float = 0.0


class AuthThrottle:
    """Failed AUTH attempts per client IP: a growing delay, then a temporary ban."""

    def __init__(self, settings: ThrottleSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    def banned(self, ip: str) -> bool:
        entry = self._current(ip)
        return entry is not None and entry.banned_until > self._clock()

    def failed(self, ip: str) -> float:
        """Record a failure; the seconds to wait before answering it."""
        now = self._clock()
        entry = self._current(ip) or _Failures(0, now)
        entry.count += 1
        entry.last_at = now
        settings = self.settings
        if entry.count >= settings.ban_after_failures:
            entry.banned_until = now + settings.ban_seconds
            log.warning(
                "smtp auth: %s refused for %.0f s after %d failed attempts",
                ip,
                settings.ban_seconds,
                entry.count,
            )
        self._clients[ip] = entry
        self._clients.move_to_end(ip)
        while len(self._clients) > settings.max_clients:
            self._clients.popitem(last=False)
        return min(settings.first_delay_seconds * 2.0 ** (entry.count - 1), settings.max_delay_seconds)

    def succeeded(self, ip: str) -> None:
        self._clients.pop(ip, None)

    def _current(self, ip: str) -> _Failures | None:
        entry = self._clients.get(ip)
        if entry is None:
            return None
        now = self._clock()
        if entry.banned_until <= now and now - entry.last_at >= self.settings.forget_after_seconds:
            del self._clients[ip]
            return None
        return entry


async def authenticate(store: Store, login: str, password: str, now: float) -> ApiKeyRecord | None:
    """The API key `password` names, if `login` is that key's domain or its id; else None."""
    record = await verify_api_key(store, password, now)
    if record is None:
        return None
    names = {str(record.id)}
    if record.domain:
        names.add(record.domain.lower().rstrip("."))
    return record if login.lower().rstrip(".") in names else None

"""Console sessions: random ids held in memory (never the admin token), each with a CSRF token.

A session id is 256 random bits given to the browser in an HttpOnly, SameSite=Strict cookie;
the server keeps only its SHA-256, so the table itself holds nothing a cookie could be made
from. Sessions end at logout, after IDLE_SECONDS without a request, after MAX_AGE_SECONDS in
any case, and when mailnode restarts (an operator logs in again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

IDLE_SECONDS = 8 * 3600.0
MAX_AGE_SECONDS = 24 * 3600.0
# Bounded: past this many sessions the one used least recently is forgotten.
MAX_SESSIONS = 1000
TOKEN_BYTES = 32


@dataclass(slots=True)
class Session:
    csrf: str  # the token every form of this session carries
    created_at: float
    last_seen: float


def new_token(random_bytes: Callable[[int], bytes]) -> str:
    """256 random bits, URL-safe (cookie values and form fields)."""
    return base64.urlsafe_b64encode(random_bytes(TOKEN_BYTES)).rstrip(b"=").decode()


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """The logged-in browsers of this process."""

    def __init__(self, clock: Callable[[], float], random_bytes: Callable[[int], bytes]) -> None:
        self._clock = clock
        self._random_bytes = random_bytes
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def start(self) -> tuple[str, Session]:
        """A new session: the id for the cookie, and the session."""
        now = self._clock()
        session_id = new_token(self._random_bytes)
        session = Session(new_token(self._random_bytes), now, now)
        self._sessions[_key(session_id)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id, session

    def find(self, session_id: str) -> Session | None:
        """The live session of a cookie value (its idle time starts again), or None."""
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > IDLE_SECONDS or now - session.created_at > MAX_AGE_SECONDS:
            del self._sessions[key]
            return None
        session.last_seen = now
        self._sessions.move_to_end(key)
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(_key(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)

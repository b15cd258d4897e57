"""Who is asking: the operator (admin token) or a domain's API key, and what each may do.

Every kind of failure gets the same 401 answer, and the key lookup runs for every request,
even a malformed one or one carrying the admin token, so neither the answer nor its timing
tells which part was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from mailnode.api.errors import ApiError
from mailnode.platform.keys import verify_api_key
from mailnode.storage.store import ApiKeyRecord, Store

UNAUTHORIZED_MESSAGE = "missing or invalid credentials; send Authorization: Bearer <API key or admin token>"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mailnode"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """The credentials a request carried that checked out (both may be absent)."""

    admin: bool = False
    key: ApiKeyRecord | None = None

    @property
    def authenticated(self) -> bool:
        return self.admin or self.key is not None


PRINCIPAL = web.RequestKey("principal", Principal)


def unauthorized() -> ApiError:
    """The one answer to every authentication or authorization-by-identity failure."""
    return ApiError(401, "unauthorized", UNAUTHORIZED_MESSAGE, headers=CHALLENGE)


def _credentials(authorization: str | None) -> tuple[str, str | None]:
    """(secret, domain named by Basic auth or None) from an Authorization header."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value, None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return "", None
        user, _, password = decoded.partition(":")
        return password, user.strip().lower()
    return "", None


def _is_admin_token(presented: str, token: str) -> bool:
    # Digests first: compare_digest on equal-length values leaks nothing about the length.
    expected = hashlib.sha256(token.encode()).digest()
    given = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    return bool(token) and hmac.compare_digest(expected, given)


async def authenticate(store: Store, admin_token: str, authorization: str | None, now: float) -> Principal:
    """Check the Authorization header against the admin token and the API keys."""
    secret, basic_domain = _credentials(authorization)
    admin = basic_domain is None and _is_admin_token(secret, admin_token)
    key = await verify_api_key(store, secret, now)
    if key is not None and basic_domain is not None and key.domain != basic_domain:
        key = None  # Basic auth names the domain; a key of another domain does not count
    return Principal(admin=admin, key=key)


def principal(request: web.Request) -> Principal:
    return request.get(PRINCIPAL) or Principal()


def require_admin(request: web.Request) -> None:
    """Admin routes: the operator token, nothing else."""
    if not principal(request).admin:
        raise unauthorized()


def require_key(request: web.Request) -> ApiKeyRecord:
    """Routes for any API key (the transactions API)."""
    key = principal(request).key
    if key is None:
        raise unauthorized()
    return key


def require_domain_key(request: web.Request) -> ApiKeyRecord:
    """Sending routes: an API key that belongs to a domain."""
    key = principal(request).key
    if key is None or key.domain is None:
        raise unauthorized()
    return key


def require_admin_or_domain(request: web.Request, domain: str) -> None:
    """Per-domain routes (templates): the operator, or a key of exactly that domain."""
    who = principal(request)
    if who.admin:
        return
    if who.key is None or who.key.domain != domain:
        raise unauthorized()

"""Logging in with the admin token (a form POST), and out again."""

from __future__ import annotations

import logging

from aiohttp import web

from mailnode.console.page import (
    LOGIN_COOKIE,
    PREFIX,
    SESSION,
    SESSION_COOKIE,
    console,
    current_session,
    local_path,
    render,
    see_other,
)
from mailnode.console.sessions import MAX_AGE_SECONDS, new_token, same_token

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 1024


def _cookie(response: web.Response, request: web.Request, name: str, value: str, max_age: int) -> None:
    # Secure when the browser came over https: directly, or through a proxy listed in
    # [http] trusted_proxies (its X-Forwarded-Proto is believed; api/proxies.py).
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=f"{PREFIX}/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


async def login_form(request: web.Request) -> web.Response:
    """The login form, with a fresh CSRF token in a cookie and in the form."""
    if current_session(request) is not None:
        return see_other(local_path(request.query.get("next"), f"{PREFIX}/"))
    return _form(request, status=200, next_path=request.query.get("next"))


def _form(request: web.Request, *, status: int, next_path: str | None, error: str = "") -> web.Response:
    state = console(request)
    token = new_token(state.ctx.random_bytes)
    response = render(
        request,
        "login.html",
        status=status,
        login_csrf=token,
        error=error,
        next=local_path(next_path, ""),
        closed=not state.ctx.admin_token,
    )
    _cookie(response, request, LOGIN_COOKIE, token, 3600)
    return response


async def login(request: web.Request) -> web.Response:
    """Check the token (slowed down per address after failures); on success, a session cookie."""
    state = console(request)
    form = await request.post()
    next_path = str(form.get("next", ""))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not same_token(str(form.get("csrf", "")), expected):
        error = "The login form was out of date. Try again."
        return _form(request, status=403, next_path=next_path, error=error)
    client = request.remote or "unknown"
    if state.throttle.banned(client):
        error = "Too many failed logins from your address. Try again later."
        return _form(request, status=429, next_path=next_path, error=error)
    token = str(form.get("token", ""))[:MAX_TOKEN_LENGTH]
    admin_token = state.ctx.admin_token
    if not admin_token or not same_token(token, admin_token):
        delay = state.throttle.failed(client)
        log.warning("console: failed login from %s", client)
        await state.sleep(delay)
        error = "That is not the admin token ([admin] token)."
        return _form(request, status=401, next_path=next_path, error=error)
    state.throttle.succeeded(client)
    session_id, _ = state.sessions.start()
    log.info("console: login from %s", client)
    response = see_other(local_path(next_path, f"{PREFIX}/"))
    _cookie(response, request, SESSION_COOKIE, session_id, int(MAX_AGE_SECONDS))
    response.del_cookie(LOGIN_COOKIE, path=f"{PREFIX}/")
    return response


async def logout(request: web.Request) -> web.Response:
    """End the session (the middleware checked its CSRF token)."""
    assert request.get(SESSION) is not None
    console(request).sessions.end(request.cookies.get(SESSION_COOKIE, ""))
    response = see_other(f"{PREFIX}/login")
    response.del_cookie(SESSION_COOKIE, path=f"{PREFIX}/")
    return response

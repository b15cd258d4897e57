"""Logging in to the console with the admin token, the session cookie, CSRF, logging out."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie

from tests.conftest import ADMIN_TOKEN
from tests.console.conftest import THROTTLE
from tests.console.support import Browser
from tests.support.mailnode import Mailnode


def set_cookie(page_headers, name: str) -> SimpleCookie:
    for header in page_headers.getall("Set-Cookie", []):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        if name in cookie:
            return cookie
    raise AssertionError(f"no Set-Cookie for {name}: {page_headers.getall('Set-Cookie', [])}")


async def test_pages_need_a_login_and_the_login_gives_a_safe_session_cookie(browser: Browser) -> None:
    page = await browser.get("/ui/messages?recipient=a", follow=False)
    assert page.status == 303
    assert page.headers["Location"] == "/ui/login?next=/ui/messages?recipient%3Da"

    form = await browser.get("/ui/login")
    assert form.status == 200 and 'name="token"' in form.text
    answer = await browser.post("/ui/login", {"csrf": form.csrf, "token": ADMIN_TOKEN, "next": "/ui/queue"})
    assert answer.status == 303 and answer.headers["Location"] == "/ui/queue"
    morsel = set_cookie(answer.headers, "mailnode_session")["mailnode_session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/ui/"
    assert not morsel["secure"]  # plain http here; Secure when the console is served over https
    assert ADMIN_TOKEN not in morsel.value and len(morsel.value) >= 40

    overview = await browser.get("/ui/")
    assert overview.status == 200 and "Queue health" in overview.text


async def test_a_wrong_token_is_refused_slowly_then_the_address_is_locked_out(browser: Browser) -> None:
    delays = []
    for _ in range(THROTTLE["ban_after_failures"]):
        form = await browser.get("/ui/login")
        started = time.monotonic()
        answer = await browser.post("/ui/login", {"csrf": form.csrf, "token": "not-the-token"})
        delays.append(time.monotonic() - started)
        assert answer.status == 401 and "not the admin token" in answer.text
        assert "mailnode_session" not in answer.headers.get("Set-Cookie", "")
    assert min(delays) >= THROTTLE["first_delay_seconds"]

    answer = await browser.login()  # even the right token, while the address is refused
    assert answer.status == 429 and "Too many failed logins" in answer.text
    assert (await browser.get("/ui/", follow=False)).status == 303


async def test_the_login_form_needs_its_own_csrf_token(browser: Browser) -> None:
    await browser.get("/ui/login")  # sets the login cookie
    assert (await browser.post("/ui/login", {"csrf": "forged", "token": ADMIN_TOKEN})).status == 403
    fresh = Browser(browser.url)  # no login cookie at all: a cross-site POST
    try:
        assert (await fresh.post("/ui/login", {"csrf": "x", "token": ADMIN_TOKEN})).status == 403
    finally:
        await fresh.close()
    assert (await browser.get("/ui/", follow=False)).status == 303


async def test_logout_needs_the_csrf_token_and_ends_the_session(logged_in: Browser) -> None:
    overview = await logged_in.get("/ui/")
    assert (await logged_in.post("/ui/logout", {"csrf": "forged"})).status == 403
    assert (await logged_in.get("/ui/", follow=False)).status == 200  # still logged in

    answer = await logged_in.post("/ui/logout", {"csrf": overview.csrf})
    assert answer.status == 303 and answer.headers["Location"] == "/ui/login"
    assert (await logged_in.get("/ui/", follow=False)).status == 303


async def test_a_cookie_after_logout_or_a_made_up_one_opens_nothing(
    node: Mailnode, logged_in: Browser
) -> None:
    overview = await logged_in.get("/ui/")
    cookie = next(c.value for c in logged_in.http.cookie_jar if c.key == "mailnode_session")
    await logged_in.post("/ui/logout", {"csrf": overview.csrf})
    for value in (cookie, "made-up", ADMIN_TOKEN):
        async with node.http.get(
            f"{node.url}/ui/", headers={"Cookie": f"mailnode_session={value}"}, allow_redirects=False
        ) as response:
            assert response.status == 303


async def test_the_console_session_is_not_an_api_credential_and_the_api_token_opens_no_page(
    node: Mailnode, logged_in: Browser
) -> None:
    async with logged_in.http.get(f"{node.url}/v1/domains") as response:
        assert response.status == 401
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with node.http.get(f"{node.url}/ui/", headers=headers, allow_redirects=False) as response:
        assert response.status == 303


async def test_a_login_never_redirects_to_another_site(node: Mailnode) -> None:
    for target in ("https://evil.test/", "//evil.test/ui/", "/ui/\\evil", "/v1/domains"):
        browser = Browser(node.url)
        try:
            form = await browser.get("/ui/login")
            answer = await browser.post(
                "/ui/login", {"csrf": form.csrf, "token": ADMIN_TOKEN, "next": target}
            )
        finally:
            await browser.close()
        assert answer.status == 303 and answer.headers["Location"] == "/ui/", target


async def test_without_an_admin_token_the_console_is_closed(mailnode_factory) -> None:
    node = await mailnode_factory(delivery={"mode": "capture"})
    browser = Browser(node.url)
    try:
        form = await browser.get("/ui/login")
        assert "The console is closed" in form.text
        answer = await browser.post("/ui/login", {"csrf": form.csrf, "token": ""})
        assert answer.status == 401
    finally:
        await browser.close()


async def test_the_cookie_is_secure_when_a_trusted_proxy_says_the_browser_used_https(
    mailnode_factory,
) -> None:
    node = await mailnode_factory(
        admin={"token": ADMIN_TOKEN}, delivery={"mode": "capture"}, http={"trusted_proxies": ["127.0.0.1"]}
    )
    browser = Browser(node.url)
    try:
        form = await browser.get("/ui/login")
        async with browser.http.post(
            f"{node.url}/ui/login",
            data={"csrf": form.csrf, "token": ADMIN_TOKEN},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
            allow_redirects=False,
        ) as answer:
            assert answer.status == 303
            morsel = set_cookie(answer.headers, "mailnode_session")["mailnode_session"]
    finally:
        await browser.close()
    assert morsel["secure"] is True and morsel["httponly"] is True and morsel["samesite"] == "Strict"

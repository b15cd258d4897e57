"""A browser stand-in for the console: a cookie jar, forms with their CSRF token, plain HTTP."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.conftest import ADMIN_TOKEN

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Page:
    status: int
    text: str
    headers: Any
    url: str

    @property
    def csrf(self) -> str:
        found = _CSRF.search(self.text)
        assert found is not None, f"no CSRF token on {self.url}"
        return found.group(1)


class Browser:
    """Requests with cookies kept (aiohttp keeps none for an IP address unless told to)."""

    def __init__(self, url: str) -> None:
        self.url = url  # where mailnode's HTTP listener is, e.g. http://127.0.0.1:40123
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, *, follow: bool = True) -> Page:
        async with self.http.get(f"{self.url}{path}", allow_redirects=follow) as response:
            return Page(response.status, await response.text(), response.headers, str(response.url))

    async def post(self, path: str, form: dict[str, str], *, follow: bool = False) -> Page:
        async with self.http.post(f"{self.url}{path}", data=form, allow_redirects=follow) as response:
            return Page(response.status, await response.text(), response.headers, str(response.url))

    async def login(self, token: str = ADMIN_TOKEN) -> Page:
        form = await self.get("/ui/login")
        return await self.post("/ui/login", {"csrf": form.csrf, "token": token})

    async def submit(self, page_path: str, action: str, **fields: str) -> Page:
        """Post a form of `page_path` to `action` with the page's CSRF token (as a browser would)."""
        page = await self.get(page_path)
        assert page.status == 200, page.text
        return await self.post(action, {"csrf": page.csrf, **fields})

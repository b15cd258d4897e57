"""X-Forwarded-For and X-Forwarded-Proto are believed only from [http] trusted_proxies."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mailnode.api.proxies import client_address, forwarded_middleware, parse_networks

PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # not from a proxy: the header is a lie
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", ["6.6.6.6, 198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # the client forged 6.6.6.6
        ("127.0.0.1", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # two header lines, in order
        ("127.0.0.1", ["10.0.0.1, 10.0.0.2"], "10.0.0.1"),  # only proxies: the farthest
        ("127.0.0.1", ["unknown, 10.0.0.2"], "10.0.0.2"),  # not an address: the walk stops
        ("127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_the_client_is_the_nearest_hop_that_is_not_a_trusted_proxy(
    peer: str, forwarded_for: list[str], client: str
) -> None:
    assert client_address(peer, forwarded_for, PROXIES) == client


async def _seen(proxies: list[str], headers: dict[str, str]) -> dict[str, str]:
    async def show(request: web.Request) -> web.Response:
        return web.json_response(
            {"remote": request.remote, "scheme": request.scheme, "secure": request.secure}
        )

    app = web.Application(middlewares=[forwarded_middleware(parse_networks(proxies))])
    app.router.add_get("/", show)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/", headers=headers)
        return await response.json()


async def test_behind_a_trusted_proxy_handlers_see_the_client_and_its_scheme() -> None:
    headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    assert await _seen(["127.0.0.1"], headers) == {
        "remote": "198.51.100.7",
        "scheme": "https",
        "secure": True,
    }


async def test_without_trusted_proxies_the_headers_are_ignored() -> None:
    headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    assert await _seen([], headers) == {"remote": "127.0.0.1", "scheme": "http", "secure": False}
    assert await _seen(["10.0.0.0/8"], headers) == {"remote": "127.0.0.1", "scheme": "http", "secure": False}

"""The domain page's "Check DNS": the doctor's checks against a loopback DNS server."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.console.conftest import THROTTLE
from tests.console.support import Browser
from tests.support.dns_server import DnsServer, start_dns_server
from tests.support.mailnode import Mailnode
from tests.support.platform import create_domain


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = await start_dns_server()
    yield server
    await server.close()


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory, dns_server: DnsServer) -> Mailnode:
    return await mailnode_factory(
        admin={"token": ADMIN_TOKEN},
        delivery={"mode": "capture"},
        smtp={"auth_throttle": THROTTLE},
        dns={"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout_seconds": 2},
    )


def results(html: str) -> dict[str, str]:
    """check name -> pass/warn/fail, for the domain's own checks."""
    rows = re.findall(
        r"<td>([\w.-]+)</td><td>([\w-]+)</td>\s*<td><span class=\"state [\w-]+\">(\w+)</span>", html
    )
    return {name: status for scope, name, status in rows if scope != "server"}


async def test_check_dns_shows_what_passes_and_the_record_to_publish_for_what_fails(
    node: Mailnode, logged_in: Browser, dns_server: DnsServer
) -> None:
    domain = await create_domain(node, "example.com")
    for record in domain.dns:
        if "_domainkey" in record["name"]:
            dns_server.add(record["name"], record["type"], record["value"])  # DKIM only

    page = await logged_in.get("/ui/domains/example.com")
    assert 'name="check" value="dns"' in page.text and "<h2>DNS check</h2>" in page.text

    checked = await logged_in.get("/ui/domains/example.com?check=dns")
    assert checked.status == 200
    assert results(checked.text) == {"dkim": "pass", "spf": "fail", "dmarc": "fail"}
    dmarc = next(r for r in domain.dns if r["name"] == "_dmarc.example.com")
    assert (
        f'publish: <code class="value">_dmarc.example.com. IN TXT &#34;{dmarc["value"]}&#34;</code>'
        in checked.text
    )
    assert f"127.0.0.1:{dns_server.port}" in checked.text


async def test_check_dns_says_when_dns_cannot_be_reached(
    node: Mailnode, logged_in: Browser, dns_server: DnsServer
) -> None:
    await create_domain(node, "example.com")
    await dns_server.close()  # nobody answers on that port any more
    checked = await logged_in.get("/ui/domains/example.com?check=dns")
    assert checked.status == 200
    assert set(results(checked.text).values()) == {"fail"}
    assert "cannot reach DNS" in checked.text

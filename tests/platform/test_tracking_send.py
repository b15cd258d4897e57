"""Tracking end to end: a send's delivered HTML, its pixel and links followed, and the events."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.platform import Domain, admin_headers, create_domain, send
from tests.support.sink import Sink

SENDER = {"email": "news@example.com"}
HTML = (
    '<html><body><p>Hi <a href="https://shop.example/sale?a=1&amp;b=2">sale</a>, '
    '<a href="mailto:help@example.com">mail us</a>, '
    '<a data-no-track href="https://example.com/private">private</a>, '
    '<a href="#top">top</a>.</p></body></html>'
)
PIXEL = re.compile(r'<img src="(http://[^"]+/t/o/[^"]+)"')
LINK = re.compile(r'href="(http://[^"]+/t/c/[^"]+)"')


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory, sink: Sink) -> Mailnode:
    return await mailnode_factory(admin={"token": ADMIN_TOKEN})


@pytest.fixture
async def domain(node: Mailnode) -> Domain:
    return await create_domain(node, "example.com", tracking={"opens": "full", "links": "full"})


def _html(data: bytes) -> str:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    part = message.get_body(("html",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


async def _send_one(node: Mailnode, domain: Domain, sink: Sink, **extra: Any) -> str:
    """Send HTML to ann@example.org; the HTML that arrived."""
    body = {"sender": SENDER, "subject": "Sale", "html": HTML, "recipients": [{"email": "ann@example.org"}]}
    status, answer = await send(node, domain, {**body, **extra})
    assert status == 202, answer
    before = len(sink.messages)
    messages = await sink.wait_for_messages(before + 1)
    return _html(messages[-1].data)


async def _events(node: Mailnode, kind: str, count: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 10
    query = "SELECT recipient, delivery, data FROM events WHERE type = ? ORDER BY id"
    while len(rows := node.rows(query, kind)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"no {kind} event"
        await asyncio.sleep(0.02)
    return [{"recipient": r, "delivery": d, "data": json.loads(data)} for r, d, data in rows]


async def test_identified_tracking_end_to_end(node: Mailnode, domain: Domain, sink: Sink) -> None:
    html = await _send_one(node, domain, sink, tracking={"opens": "identified", "links": "identified"})
    (pixel,) = PIXEL.findall(html)
    (link,) = LINK.findall(html)
    assert pixel.startswith(node.url) and link.startswith(node.url)
    assert 'href="mailto:help@example.com"' in html and 'href="#top"' in html
    assert '<a href="https://example.com/private">' in html  # left alone, its attribute removed
    assert "data-no-track" not in html

    async with node.http.get(pixel) as response:
        assert response.status == 200
        assert response.content_type == "image/gif"
        assert (await response.read()).startswith(b"GIF8")
    (opened,) = await _events(node, "opened", 1)
    assert opened["recipient"] == "ann@example.org"
    assert "ip" not in opened["data"] and "user_agent" not in opened["data"]

    async with node.http.get(link, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "https://shop.example/sale?a=1&b=2"
    (clicked,) = await _events(node, "clicked", 1)
    assert clicked["data"]["url"] == "https://shop.example/sale?a=1&b=2"

    token = link.rsplit("/", 1)[1]
    forged = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    async with node.http.get(link.replace(token, forged), allow_redirects=False) as response:
        assert response.status == 404
    async with node.http.get(pixel.replace("/t/o/", "/t/c/"), allow_redirects=False) as response:
        assert response.status == 404  # an open token on the click route
    await asyncio.sleep(0)  # nothing recorded for either
    assert node.rows("SELECT count(*) FROM events WHERE type IN ('opened', 'clicked')") == [(2,)]


@pytest.mark.parametrize(
    ("mode", "recipient_kind", "client_details"),
    [
        ("anonymous", "none", False),
        ("pseudonymous", "pseudonym", False),
        ("identified", "address", False),
        ("full", "address", True),
    ],
)
async def test_each_mode_decides_what_the_events_know(
    node: Mailnode, domain: Domain, sink: Sink, mode: str, recipient_kind: str, client_details: bool
) -> None:
    html = await _send_one(node, domain, sink, tracking={"opens": mode, "links": mode})
    (pixel,) = PIXEL.findall(html)
    (link,) = LINK.findall(html)
    assert "ann@example.org" not in pixel + link or mode in ("identified", "full")
    async with node.http.get(pixel, headers={"User-Agent": "Mozilla/5.0 (Test)"}) as response:
        assert response.status == 200
    async with node.http.get(link, allow_redirects=False, headers={"User-Agent": "Mozilla/5.0"}) as response:
        assert response.status == 302
    (opened,) = await _events(node, "opened", 1)
    (clicked,) = await _events(node, "clicked", 1)
    for event in (opened, clicked):
        recipient = event["recipient"]
        if recipient_kind == "none":
            assert recipient is None and event["delivery"] is None
        elif recipient_kind == "pseudonym":
            assert re.fullmatch(r"[0-9a-f]{32}@track\.example\.com", recipient)
            assert event["delivery"] is None
        else:
            assert recipient == "ann@example.org" and event["delivery"] is not None
        assert ("ip" in event["data"] and "user_agent" in event["data"]) is client_details
    if recipient_kind == "pseudonym":
        assert opened["recipient"] == clicked["recipient"]  # one pseudonym per message


async def test_tracking_off_sends_no_pixel_and_original_links(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    html = await _send_one(node, domain, sink, tracking={"opens": "off", "links": "off"})
    assert "/t/o/" not in html and "/t/c/" not in html
    assert 'href="https://shop.example/sale?a=1&amp;b=2"' in html
    assert "data-no-track" not in html


async def test_links_only_tracks_links(node: Mailnode, domain: Domain, sink: Sink) -> None:
    html = await _send_one(node, domain, sink, tracking={"opens": "off", "links": "identified"})
    assert PIXEL.findall(html) == [] and len(LINK.findall(html)) == 1


async def test_a_batch_above_the_domain_ceiling_is_a_400_naming_the_axis(node: Mailnode, sink: Sink) -> None:
    domain = await create_domain(
        node, "capped.example", tracking={"opens": "anonymous", "links": "identified"}
    )
    body = {
        "sender": {"email": "news@capped.example"},
        "subject": "s",
        "html": HTML,
        "recipients": [{"email": "ann@example.org"}],
        "tracking": {"opens": "identified"},
    }
    status, answer = await send(node, domain, body)
    assert status == 400
    assert answer["error"]["field"] == "tracking.opens"
    assert "ceiling" in answer["error"]["message"]
    recipient_over = {
        **body,
        "tracking": {"opens": "anonymous"},
        "recipients": [
            {"email": "bob@example.org", "tracking": {"links": "full"}},
            {"email": "cy@example.org"},
        ],
    }
    status, answer = await send(node, domain, recipient_over)
    assert status == 202
    assert answer["rejected"] == [{"email": "bob@example.org", "reason": "tracking_above_ceiling"}]


async def test_the_domain_ceiling_is_set_by_the_operator(node: Mailnode) -> None:
    await create_domain(node, "policy.example")
    url = f"{node.url}/v1/domains/policy.example"
    async with node.http.get(url, headers=admin_headers()) as response:
        assert (await response.json())["tracking"] == {"opens": "off", "links": "off"}  # privacy by default
    async with node.http.put(f"{url}/tracking", json={"opens": "full"}, headers=admin_headers()) as response:
        assert response.status == 200
        assert (await response.json())["tracking"] == {"opens": "full", "links": "off"}
    async with node.http.put(f"{url}/tracking", json={"opens": "loud"}, headers=admin_headers()) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "opens"


async def test_managed_unsubscribe_needs_an_https_tracking_url(node: Mailnode, domain: Domain) -> None:
    body = {"sender": SENDER, "subject": "s", "text": "t", "recipients": [{"email": "ann@example.org"}]}
    status, answer = await send(node, domain, {**body, "unsubscribe": {"managed": True}})
    assert status == 400
    assert answer["error"]["field"] == "unsubscribe.managed"
    assert "base_url" in answer["error"]["message"]


async def test_managed_unsubscribe_post_suppresses_and_get_does_not(
    mailnode_factory: MailnodeFactory, sink: Sink
) -> None:
    # As in production: an https address in front (a proxy ending TLS), plain HTTP behind it.
    node = await mailnode_factory(
        admin={"token": ADMIN_TOKEN}, tracking={"base_url": "https://track.example"}
    )
    domain = await create_domain(node, "example.com")
    body = {
        "sender": SENDER,
        "subject": "News",
        "text": "Hello",
        "recipients": [{"email": "ann@example.org"}],
        "unsubscribe": {"managed": True},
    }
    assert (await send(node, domain, body))[0] == 202
    (received,) = await sink.wait_for_messages(1)
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    public_url = str(message["List-Unsubscribe"]).strip("<>")
    assert public_url.startswith("https://track.example/u/")
    url = public_url.replace("https://track.example", node.url)
    assert domain.verify(received.data)  # the headers are inside the DKIM signature

    async with node.http.get(url) as response:
        assert response.status == 200
        assert "<form" in await response.text()
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]  # a link scanner's GET changes nothing

    async with node.http.post(url, data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 200
    await node.wait_rows("SELECT address, reason FROM suppressions", [("ann@example.org", "unsubscribed")])
    (event,) = await _events(node, "unsubscribed", 1)
    assert event["recipient"] == "ann@example.org"
    _, again = await send(node, domain, body)
    assert again["rejected"] == [{"email": "ann@example.org", "reason": "suppressed"}]

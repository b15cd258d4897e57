"""The tracking routes (/t/o, /t/c) and the managed unsubscribe (/u): the real app over HTTP, SQLite."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import Any

import aiohttp
import pytest

from mailnode.core.events import EventType, NewEvent
from mailnode.core.tracking import TrackingMode
from mailnode.core.tracking_tokens import TokenKind, TrackingClaim, mint
from mailnode.platform.engagement import WRITE_BATCH, EngagementRecorder
from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.mailnode import Mailnode, stop_mailnode
from tests.support.platform import Domain, create_domain, send

DOMAIN = "example.com"
READER = "reader@example.org"
PSEUDONYM = "0123456789abcdef0123456789abcdef@track.example.com"
BATCH, DELIVERY = "batch-1", "delivery-1"
PRODUCT = "https://shop.example/p?id=7&ref=mail"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
EVENT_COLUMNS = "type, domain, batch, delivery, recipient"


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    return await mailnode_factory(admin={"token": ADMIN_TOKEN})


@pytest.fixture
async def domain(node: Mailnode) -> Domain:
    return await create_domain(node, DOMAIN)


def token(
    node: Mailnode,
    kind: TokenKind,
    mode: TrackingMode = TrackingMode.IDENTIFIED,
    *,
    url: str | None = None,
    expires_at: int | None = None,
) -> str:
    """A token as the renderer mints them: what it names depends on the mode."""
    identity: str | None = READER
    delivery: str | None = DELIVERY
    if kind is TokenKind.UNSUBSCRIBE:
        mode = TrackingMode.OFF
    elif mode is TrackingMode.ANONYMOUS:
        identity = delivery = None
    elif mode is TrackingMode.PSEUDONYMOUS:
        identity, delivery = PSEUDONYM, None
    expiry = int(time.time()) + 3600 if expires_at is None else expires_at
    claim = TrackingClaim(kind, mode, DOMAIN, BATCH, delivery, identity, url, expiry)
    keys = node.service.tracking_keys
    return mint(claim, keys.current_id, keys.current)


def open_token(node: Mailnode, mode: TrackingMode = TrackingMode.IDENTIFIED) -> str:
    return token(node, TokenKind.OPEN, mode)


def click_token(node: Mailnode, url: str = PRODUCT, mode: TrackingMode = TrackingMode.IDENTIFIED) -> str:
    return token(node, TokenKind.CLICK, mode, url=url)


async def hit(
    node: Mailnode, path: str, *, method: str = "GET", agent: str = BROWSER
) -> tuple[int, bytes, Any]:
    """One request as a mail client makes it (no credentials, redirects not followed)."""
    async with node.http.request(
        method, f"{node.url}{path}", headers={"User-Agent": agent}, allow_redirects=False
    ) as response:
        return response.status, await response.read(), response.headers


async def wait_events(node: Mailnode, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Until `count` events are stored (they are written after the answer); each with its data."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(rows := node.rows(f"SELECT {EVENT_COLUMNS}, data FROM events ORDER BY id")) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{len(rows)} events, waiting for {count}"
        await asyncio.sleep(0.02)
    keys = EVENT_COLUMNS.split(", ")
    return [{**dict(zip(keys, row[:-1], strict=True)), "data": json.loads(row[-1])} for row in rows]


# -- opens ---------------------------------------------------------------------------------------


async def test_the_pixel_is_a_gif_nobody_caches_and_records_one_open(node: Mailnode, domain: Domain) -> None:
    status, body, headers = await hit(node, f"/t/o/{open_token(node)}")

    assert status == 200
    assert headers["Content-Type"] == "image/gif"
    assert len(body) == 43 and body.startswith(b"GIF89a") and body.endswith(b";")
    assert struct.unpack("<HH", body[6:10]) == (1, 1)  # logical screen width and height
    assert headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0, private"
    assert headers["Pragma"] == "no-cache" and headers["Expires"] == "0"
    assert headers["X-Content-Type-Options"] == "nosniff"
    (event,) = await wait_events(node, 1)
    assert event == {
        "type": "opened",
        "domain": DOMAIN,
        "batch": BATCH,
        "delivery": DELIVERY,
        "recipient": READER,
        "data": {"mode": "identified", "machine": False, "unique": True},
    }


async def test_repeated_opens_are_all_recorded_and_only_the_first_is_unique(
    node: Mailnode, domain: Domain
) -> None:
    pixel = f"/t/o/{open_token(node)}"
    assert (await hit(node, pixel))[0] == 200
    await wait_events(node, 1)
    assert (await hit(node, pixel))[0] == 200
    events = await wait_events(node, 2)
    assert [event["data"]["unique"] for event in events] == [True, False]


async def test_the_stats_worker_counts_opens_and_unique_opens(node: Mailnode, domain: Domain) -> None:
    pixel = f"/t/o/{open_token(node)}"
    for _ in range(2):
        assert (await hit(node, pixel))[0] == 200
    await node.wait_rows(
        "SELECT count, unique_count, machine_count FROM stats_hourly WHERE type = 'opened'", [(2, 1, 0)]
    )


async def test_head_requests_and_scanner_agents_are_flagged_as_machines(
    node: Mailnode, domain: Domain
) -> None:
    pixel = f"/t/o/{open_token(node)}"
    assert (await hit(node, pixel, method="HEAD"))[0] == 200
    assert (await hit(node, pixel, agent="Barracuda Sentinel (EE)"))[0] == 200
    assert (await hit(node, f"/t/c/{click_token(node)}", method="HEAD"))[0] == 302
    events = await wait_events(node, 3)
    assert [(event["type"], event["data"]["machine"]) for event in events] == [
        ("opened", True),
        ("opened", True),
        ("clicked", True),
    ]
    assert all("unique" not in event["data"] for event in events)  # not counted as a person


# -- refused tokens --------------------------------------------------------------------------------


def changed_one_character(value: str) -> str:
    middle = len(value) // 2
    return value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]


async def test_forged_expired_and_wrong_route_tokens_get_404_and_record_nothing(
    node: Mailnode, domain: Domain
) -> None:
    expired = token(node, TokenKind.OPEN, expires_at=int(time.time()) - 1)
    for path in (
        f"/t/o/{changed_one_character(open_token(node))}",
        f"/t/c/{changed_one_character(click_token(node))}",
        f"/t/c/{open_token(node)}",  # an open token on the click route
        f"/t/o/{click_token(node)}",
        f"/t/o/{token(node, TokenKind.UNSUBSCRIBE)}",
        f"/t/o/{expired}",
        "/t/o/not-a-token",
        "/t/c/" + "A" * 5000,
    ):
        status, body, headers = await hit(node, path)
        assert status == 404, path
        assert body == b"not found\n" and "Location" not in headers
    # Events are written in the order of the hits: once this one is stored, any before it would be.
    assert (await hit(node, f"/t/o/{open_token(node)}"))[0] == 200
    (event,) = await wait_events(node, 1)
    assert event["type"] == "opened"


# -- clicks ---------------------------------------------------------------------------------------


async def test_a_click_redirects_to_the_claimed_url_only_and_records_it(
    node: Mailnode, domain: Domain
) -> None:
    status, _, headers = await hit(node, f"/t/c/{click_token(node)}?url=https://evil.example/")

    assert status == 302
    assert headers["Location"] == PRODUCT
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
    (event,) = await wait_events(node, 1)
    assert event["type"] == "clicked" and event["recipient"] == READER and event["delivery"] == DELIVERY
    assert event["data"] == {"url": PRODUCT, "mode": "identified", "machine": False, "unique": True}


async def test_a_click_url_is_percent_encoded_for_the_location_header(node: Mailnode, domain: Domain) -> None:
    url = "https://shop.example/café menu?q=a%20b&pct=100%"
    status, _, headers = await hit(node, f"/t/c/{click_token(node, url)}")
    assert status == 302
    assert headers["Location"] == "https://shop.example/caf%C3%A9%20menu?q=a%20b&pct=100%25"
    (event,) = await wait_events(node, 1)
    assert event["data"]["url"] == url  # the event keeps the URL as it was in the message


# -- tracking modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "recipient", "delivery", "sees_client"),
    [
        (TrackingMode.ANONYMOUS, None, None, False),
        (TrackingMode.PSEUDONYMOUS, PSEUDONYM, None, False),
        (TrackingMode.IDENTIFIED, READER, DELIVERY, False),
        (TrackingMode.FULL, READER, DELIVERY, True),
    ],
)
async def test_what_an_event_holds_follows_the_tracking_mode(
    node: Mailnode,
    domain: Domain,
    mode: TrackingMode,
    recipient: str | None,
    delivery: str | None,
    sees_client: bool,
) -> None:
    assert (await hit(node, f"/t/o/{open_token(node, mode)}"))[0] == 200
    assert (await hit(node, f"/t/c/{click_token(node, mode=mode)}"))[0] == 302
    for event in await wait_events(node, 2):
        assert (event["recipient"], event["delivery"], event["batch"]) == (recipient, delivery, BATCH)
        assert event["data"]["mode"] == mode.value
        if sees_client:
            assert event["data"]["ip"] == "127.0.0.1" and event["data"]["user_agent"] == BROWSER
        else:
            assert "ip" not in event["data"] and "user_agent" not in event["data"]


# -- managed unsubscribe ------------------------------------------------------------------------------


async def test_the_unsubscribe_page_offers_a_button_and_changes_nothing(
    node: Mailnode, domain: Domain
) -> None:
    status, body, headers = await hit(node, f"/u/{token(node, TokenKind.UNSUBSCRIBE)}")

    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert '<form method="post">' in page
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert READER in page and "<script" not in page and "src=" not in page and "href=" not in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]
    assert node.rows("SELECT count(*) FROM events") == [(0,)]


async def unsubscribe(node: Mailnode, path: str, form: aiohttp.FormData | dict[str, str]) -> tuple[int, str]:
    async with node.http.post(f"{node.url}{path}", data=form, headers={"User-Agent": BROWSER}) as response:
        return response.status, await response.text()


async def test_a_one_click_post_unsubscribes_once_and_the_next_send_is_refused(
    node: Mailnode, domain: Domain
) -> None:
    path = f"/u/{token(node, TokenKind.UNSUBSCRIBE)}"
    status, page = await unsubscribe(node, path, {"List-Unsubscribe": "One-Click"})
    assert status == 200 and "unsubscribed" in page

    suppressed = "SELECT domain, address, reason FROM suppressions"
    assert node.rows(suppressed) == [(DOMAIN, READER, "unsubscribed")]
    assert node.rows(f"SELECT {EVENT_COLUMNS} FROM events") == [
        ("unsubscribed", DOMAIN, BATCH, DELIVERY, READER)
    ]
    # A mail client may POST again (RFC 8058 asks for multipart/form-data as well as urlencoded).
    multipart = aiohttp.FormData()
    multipart.add_field("List-Unsubscribe", "One-Click", content_type="text/plain")
    assert (await unsubscribe(node, path, multipart))[0] == 200
    assert node.rows(suppressed) == [(DOMAIN, READER, "unsubscribed")]
    assert node.rows("SELECT count(*) FROM events") == [(1,)]

    body = {
        "sender": {"email": "news@example.com"},
        "subject": "Hi",
        "text": "Hello",
        "recipients": [{"email": READER}],
    }
    status, answer = await send(node, domain, body)
    assert status == 202, answer
    assert answer["rejected"] == [{"email": READER, "reason": "suppressed"}]


async def test_a_post_without_the_one_click_field_is_refused(node: Mailnode, domain: Domain) -> None:
    path = f"/u/{token(node, TokenKind.UNSUBSCRIBE)}"
    for form in ({}, {"List-Unsubscribe": "yes"}, {"unsubscribe": "One-Click"}):
        status, text = await unsubscribe(node, path, form)
        assert status == 400, form
        assert "List-Unsubscribe=One-Click" in text
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]


async def test_a_bad_unsubscribe_token_gets_404(node: Mailnode, domain: Domain) -> None:
    forged = f"/u/{changed_one_character(token(node, TokenKind.UNSUBSCRIBE))}"
    assert (await hit(node, forged))[0] == 404
    assert (await unsubscribe(node, forged, {"List-Unsubscribe": "One-Click"}))[0] == 404
    open_on_unsubscribe = f"/u/{open_token(node)}"
    assert (await unsubscribe(node, open_on_unsubscribe, {"List-Unsubscribe": "One-Click"}))[0] == 404
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]


# -- the engagement recorder ------------------------------------------------------------------------


def opened(n: int, *, batch: str | None = BATCH, machine: bool = False) -> NewEvent:
    data = {"machine": machine}
    return NewEvent(
        EventType.OPENED,
        time.time(),
        DOMAIN,
        batch,
        delivery=f"d{n}",
        recipient=f"r{n}@example.org",
        data=data,
    )


async def test_opens_written_together_are_unique_once_per_recipient(node: Mailnode) -> None:
    await node.service.events.record_engagements([opened(1)])  # an earlier write
    together = [opened(1), opened(2), opened(2), opened(3, machine=True), opened(4, batch=None)]
    assert await node.service.events.record_engagements(together) == len(together)

    rows = node.rows("SELECT recipient, json_extract(data, '$.unique') FROM events ORDER BY id")
    assert rows[1:] == [
        ("r1@example.org", 0),  # opened in the earlier write
        ("r2@example.org", 1),
        ("r2@example.org", 0),
        ("r3@example.org", None),  # a machine: not counted as a person
        ("r4@example.org", 1),  # no batch: unique per delivery
    ]


async def test_a_scanner_opening_first_does_not_take_the_persons_unique_open(node: Mailnode) -> None:
    events = node.service.events
    await events.record_engagements([opened(1, machine=True)])  # a link scanner fetched first
    await events.record_engagements([opened(1)])  # then the recipient (a separate write)
    await events.record_engagement(opened(1))  # and again
    rows = node.rows("SELECT json_extract(data, '$.unique') FROM events ORDER BY id")
    assert rows == [(None,), (1,), (0,)]


async def test_a_graceful_stop_writes_every_queued_event(node: Mailnode) -> None:
    recorder = node.service.engagement
    assert recorder is not None
    count = 2 * WRITE_BATCH + 1  # more than one write's worth
    for n in range(count):
        assert recorder.record(opened(n))
    await stop_mailnode(node)
    assert node.rows("SELECT count(*) FROM events WHERE type = 'opened'") == [(count,)]
    assert (recorder.recorded, recorder.dropped) == (count, 0)


async def test_a_full_queue_drops_and_counts_instead_of_waiting(node: Mailnode) -> None:
    recorder = EngagementRecorder(node.service.events, queue_size=2)  # not running: nothing drains it
    assert [recorder.record(opened(n)) for n in range(3)] == [True, True, False]
    assert recorder.dropped == 1
    await recorder.stop()
    assert recorder.recorded == 2
    assert node.rows("SELECT count(*) FROM events") == [(2,)]

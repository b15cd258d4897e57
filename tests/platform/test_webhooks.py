"""Webhooks end to end: the real app and worker, a loopback SMTP sink and a loopback receiver."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from mailnode.bus import Bus
from mailnode.config import WebhooksConfig
from mailnode.core.dkim_keys import generate_dkim_key
from mailnode.core.events import EventType, NewEvent
from mailnode.platform.webhooks import WebhookWorker
from mailnode.storage.domains import DomainStore
from mailnode.storage.events import EventStore
from mailnode.storage.store import Store
from mailnode.storage.webhooks import WebhookStore
from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.clock import OffsetClock
from tests.support.mailnode import Mailnode, make_config, start_mailnode, stop_mailnode
from tests.support.platform import Domain, admin_headers, create_domain, send
from tests.support.sink import Sink
from tests.support.webhook_receiver import HANG, WebhookReceiver, start_receiver

# Receivers on loopback, quick retries (0.05 s, 0.15 s, 0.3 s, 1.5 s, …), a short POST timeout.
WEBHOOKS = {"allow_private": True, "retry_base_seconds": 0.05, "timeout_seconds": 1.0}
SENDER = {"email": "news@example.com"}


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = await start_receiver()
    yield server
    await server.stop()


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    return await mailnode_factory(admin={"token": ADMIN_TOKEN}, webhooks=WEBHOOKS)


@pytest.fixture
async def domain(node: Mailnode) -> Domain:
    return await create_domain(node, "example.com")


async def call(
    node: Mailnode, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with node.http.request(method, f"{node.url}{path}", json=body, headers=headers) as response:
        return response.status, (await response.json() if response.status != 204 else None)


async def create_webhook(node: Mailnode, domain: Domain, url: str, types: list[str]) -> dict[str, Any]:
    status, answer = await call(
        node,
        "POST",
        f"/v1/domains/{domain.name}/webhooks",
        domain.headers(),
        {"url": url, "event_types": types},
    )
    assert status == 201, answer
    return dict(answer)


async def deliveries(node: Mailnode, domain: Domain, hook: dict[str, Any]) -> list[dict[str, Any]]:
    status, answer = await call(
        node, "GET", f"/v1/domains/{domain.name}/webhooks/{hook['id']}/deliveries", domain.headers()
    )
    assert status == 200, answer
    return list(answer["items"])


async def wait_deliveries(
    node: Mailnode,
    domain: Domain,
    hook: dict[str, Any],
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Poll the webhook's deliveries list until `until` holds; AssertionError with the last list."""
    deadline = time.monotonic() + timeout
    while not until(items := await deliveries(node, domain, hook)):
        assert time.monotonic() < deadline, f"deliveries never matched: {items}"
        await asyncio.sleep(0.02)
    return items


def all_delivered(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda items: len(items) == count and all(item["status"] == "delivered" for item in items)


async def send_one(node: Mailnode, domain: Domain, rcpt: str = "ann@example.org") -> str:
    status, answer = await send(
        node, domain, {"sender": SENDER, "subject": "s", "text": "t", "recipients": [{"email": rcpt}]}
    )
    assert status == 202, answer
    return str(answer["batch_id"])


# -- (a) each event once, signed, as JSON; filtered by event type ----------------------------------


async def test_accepted_and_delivered_events_are_posted_once_each_signed(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    both = await create_webhook(node, domain, receiver.url("/both"), ["accepted", "delivered"])
    delivered_only = await create_webhook(node, domain, receiver.url("/delivered"), ["delivered"])
    recipients = ["ann@example.org", "bob@example.org"]
    status, answer = await send(
        node,
        domain,
        {"sender": SENDER, "subject": "s", "text": "t", "recipients": [{"email": r} for r in recipients]},
    )
    assert status == 202
    items = await wait_deliveries(node, domain, both, all_delivered(4))
    await wait_deliveries(node, domain, delivered_only, all_delivered(2))

    by_path: dict[str, list[Any]] = {"/both": [], "/delivered": []}
    for post in receiver.posts:
        by_path[post.path].append(post)
    assert Counter(p.json()["type"] for p in by_path["/both"]) == {"accepted": 2, "delivered": 2}
    assert Counter(p.json()["type"] for p in by_path["/delivered"]) == {"delivered": 2}
    for path, hook in (("/both", both), ("/delivered", delivered_only)):
        posts = by_path[path]
        assert len({p.json()["id"] for p in posts}) == len(posts), "an event was POSTed twice"
        for post in posts:
            assert post.signed_by(hook["secret"])
            event = post.json()
            assert post.headers["Mailnode-Event-Id"] == str(event["id"])
            assert post.headers["Content-Type"] == "application/json"
            assert post.headers["User-Agent"].startswith("mailnode/")
            assert abs(int(post.headers["Mailnode-Timestamp"]) - time.time()) < 60
            assert event["domain"] == "example.com" and event["batch_id"] == answer["batch_id"]
            assert event["recipient"] in recipients and event["delivery_id"]
            if event["type"] == "delivered":
                assert event["data"]["code"] == 250
    # Each webhook signs with its own secret.
    assert not by_path["/delivered"][0].signed_by(both["secret"])
    assert {str(item["id"]) for item in items} == {
        p.headers["Mailnode-Delivery-Id"] for p in by_path["/both"]
    }
    assert all(item["attempts"] == 1 and item["last_status"] == 200 for item in items)
    # Never logged: the secret, or what the POSTs carried.
    assert both["secret"] not in caplog.text
    assert by_path["/both"][0].body.decode() not in caplog.text


# -- (b), (c) retries with backoff, attempts listed ----------------------------------------------


async def test_a_failing_receiver_is_retried_with_backoff_until_it_answers_2xx(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    hook = await create_webhook(node, domain, receiver.url(), ["delivered"])
    receiver.status = 500
    await send_one(node, domain)
    failing = await wait_deliveries(
        node, domain, hook, lambda items: bool(items) and items[0]["attempts"] >= 3
    )
    assert failing[0]["status"] == "pending"
    assert failing[0]["last_status"] == 500
    assert failing[0]["last_error"] == "HTTP 500 Internal Server Error"
    assert failing[0]["next_attempt_at"] is not None
    status, shown = await call(
        node, "GET", f"/v1/domains/{domain.name}/webhooks/{hook['id']}", domain.headers()
    )
    assert status == 200 and shown["failing_since"] is not None and shown["enabled"] is True

    receiver.status = 200
    [done] = await wait_deliveries(node, domain, hook, all_delivered(1))
    assert done["last_status"] == 200 and done["last_error"] is None and done["next_attempt_at"] is None
    posts = receiver.posts
    assert done["attempts"] == len(posts) >= 4
    assert len({p.body for p in posts}) == 1, "every retry carries the same event"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(posts)]
    for gap, least in zip(gaps, (0.05, 0.15, 0.3), strict=False):
        assert gap >= least - 0.01, f"retried sooner than the schedule: {gaps}"
    status, shown = await call(
        node, "GET", f"/v1/domains/{domain.name}/webhooks/{hook['id']}", domain.headers()
    )
    assert status == 200 and shown["failing_since"] is None, "a success ends the failing streak"


async def test_a_receiver_that_is_down_gets_the_event_when_it_comes_back(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    hook = await create_webhook(node, domain, receiver.url(), ["delivered"])
    await receiver.stop()  # the port is closed: connections are refused
    await send_one(node, domain)
    failing = await wait_deliveries(
        node, domain, hook, lambda items: bool(items) and items[0]["attempts"] >= 2
    )
    assert failing[0]["status"] == "pending" and failing[0]["last_status"] is None
    assert "connect" in failing[0]["last_error"].lower()

    await receiver.start()
    [done] = await wait_deliveries(node, domain, hook, all_delivered(1))
    assert done["attempts"] > failing[0]["attempts"]
    [post] = receiver.posts
    assert post.signed_by(hook["secret"]) and post.json()["type"] == "delivered"


async def test_a_receiver_that_does_not_answer_times_out_and_is_retried(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    hook = await create_webhook(node, domain, receiver.url(), ["delivered"])
    receiver.answer(HANG, HANG)
    await send_one(node, domain)
    # The second POST hangs for [webhooks] timeout_seconds: the first one's failure shows meanwhile.
    [failing] = await wait_deliveries(
        node, domain, hook, lambda items: bool(items) and items[0]["attempts"] >= 1
    )
    assert failing["last_error"] == "no answer within [webhooks] timeout_seconds = 1"
    [done] = await wait_deliveries(node, domain, hook, all_delivered(1))
    assert done["attempts"] == 3 and len(receiver.posts) == 3


# -- (d) what may be a receiver --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:9/hook", "127.0.0.1 is a loopback address"),
        ("http://localhost:9/hook", "localhost resolves to"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.8/hook", "private address"),
        ("http://100.64.1.1/hook", "carrier-grade NAT"),
    ],
)
async def test_private_receivers_are_refused_without_allow_private(
    mailnode_factory: MailnodeFactory, url: str, says: str
) -> None:
    node = await mailnode_factory(admin={"token": ADMIN_TOKEN})  # [webhooks] allow_private = false
    domain = await create_domain(node, "example.com")
    path = f"/v1/domains/{domain.name}/webhooks"
    status, answer = await call(
        node, "POST", path, domain.headers(), {"url": url, "event_types": ["bounced"]}
    )
    assert status == 400, answer
    assert answer["error"]["field"] == "url"
    assert says in answer["error"]["message"]
    assert "[webhooks] allow_private = true" in answer["error"]["message"]


async def test_a_private_receiver_is_allowed_with_allow_private_but_not_patched_in_without(
    mailnode_factory: MailnodeFactory, receiver: WebhookReceiver
) -> None:
    node = await mailnode_factory(admin={"token": ADMIN_TOKEN}, webhooks={"allow_private": False})
    domain = await create_domain(node, "example.com")
    status, answer = await call(
        node,
        "POST",
        f"/v1/domains/{domain.name}/webhooks",
        domain.headers(),
        {"url": "https://93.184.215.14/hook", "event_types": ["bounced"]},
    )
    assert status == 201, answer
    status, answer = await call(
        node,
        "PATCH",
        f"/v1/domains/{domain.name}/webhooks/{answer['id']}",
        domain.headers(),
        {"url": receiver.url()},
    )
    assert status == 400 and answer["error"]["field"] == "url"


async def test_with_allow_private_a_loopback_receiver_is_created(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    hook = await create_webhook(node, domain, receiver.url(), ["bounced", "complained"])
    assert hook["url"] == receiver.url() and hook["event_types"] == ["bounced", "complained"]
    assert hook["enabled"] is True and hook["id"].startswith("wh_") and hook["secret"].startswith("whsec_")


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"url": "ftp://hooks.example.com/", "event_types": ["delivered"]}, "url", "https://"),
        ({"url": "https://u:p@hooks.example.com/", "event_types": ["delivered"]}, "url", "password"),
        ({"url": 7, "event_types": ["delivered"]}, "url", "string"),
        (
            {"url": "https://hooks.example.com/", "event_types": ["sent"]},
            "event_types",
            "known types: accepted",
        ),
        ({"url": "https://hooks.example.com/", "event_types": []}, "event_types", "non-empty"),
        ({"url": "https://hooks.example.com/"}, "event_types", "required"),
        ({"event_types": ["delivered"]}, "url", "required"),
        ({"url": "https://hooks.example.com/", "event_types": ["delivered"], "x": 1}, "x", "unknown field"),
    ],
)
async def test_bad_requests_name_the_field(
    node: Mailnode, domain: Domain, body: dict[str, Any], field: str, says: str
) -> None:
    status, answer = await call(node, "POST", f"/v1/domains/{domain.name}/webhooks", domain.headers(), body)
    assert status == 400, answer
    assert answer["error"]["field"] == field and says in answer["error"]["message"]


async def test_only_the_operator_and_the_domains_own_keys_manage_its_webhooks(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    other = await create_domain(node, "other.example")
    path = f"/v1/domains/{domain.name}/webhooks"
    body = {"url": receiver.url(), "event_types": ["delivered"]}
    assert (await call(node, "POST", path, other.headers(), body))[0] == 401
    assert (await call(node, "POST", path, admin_headers(), body))[0] == 201
    assert (await call(node, "GET", path, other.headers()))[0] == 401
    status, answer = await call(node, "GET", "/v1/domains/nowhere.example/webhooks", admin_headers())
    assert status == 404 and "nowhere.example" in answer["error"]["message"]


# -- (e) disabled after failing for disable_after_days -------------------------------------------


async def test_a_webhook_failing_for_disable_after_days_is_disabled_and_says_so(
    tmp_path: Path, sink: Sink, receiver: WebhookReceiver
) -> None:
    clock = OffsetClock()
    config = make_config(tmp_path, sink.port, admin={"token": ADMIN_TOKEN}, webhooks=WEBHOOKS)
    node = await start_mailnode(config, clock=clock)
    try:
        domain = await create_domain(node, "example.com")
        hook = await create_webhook(node, domain, receiver.url(), ["delivered"])
        one = f"/v1/domains/{domain.name}/webhooks/{hook['id']}"
        receiver.status = 500
        await send_one(node, domain)
        await wait_deliveries(node, domain, hook, lambda items: bool(items) and items[0]["attempts"] >= 2)
        status, shown = await call(node, "GET", one, domain.headers())
        assert shown["enabled"] is True and shown["failing_since"] is not None

        clock.advance(3 * 86400 + 60)  # [webhooks] disable_after_days = 3 (the default)
        [given_up] = await wait_deliveries(node, domain, hook, lambda items: items[0]["status"] == "failed")
        assert given_up["next_attempt_at"] is None
        status, shown = await call(node, "GET", one, domain.headers())
        assert shown["enabled"] is False and shown["disabled_at"] is not None
        assert "disable_after_days = 3" in shown["disabled_reason"]
        assert "HTTP 500" in shown["disabled_reason"] and '"enabled": true' in shown["disabled_reason"]

        # Disabled: new events are not queued for it.
        posts = len(receiver.posts)
        await send_one(node, domain, "bob@example.org")
        await node.wait_rows("SELECT COUNT(*) FROM events WHERE type = 'delivered' AND processed = 1", [(2,)])
        assert len(await deliveries(node, domain, hook)) == 1 and len(receiver.posts) == posts

        receiver.status = 200
        status, shown = await call(node, "PATCH", one, domain.headers(), {"enabled": True})
        assert status == 200 and shown["enabled"] is True
        assert shown["disabled_reason"] is None and shown["failing_since"] is None
        await send_one(node, domain, "cy@example.org")
        items = await wait_deliveries(node, domain, hook, lambda items: items[0]["status"] == "delivered")
        assert len(items) == 2 and receiver.posts[-1].json()["recipient"] == "cy@example.org"
    finally:
        await stop_mailnode(node)


# -- (f) the secret is shown once -----------------------------------------------------------------


async def test_the_secret_is_only_in_the_answer_to_the_creation(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    hook = await create_webhook(node, domain, receiver.url(), ["delivered"])
    secret = hook["secret"]
    one = f"/v1/domains/{domain.name}/webhooks/{hook['id']}"
    await send_one(node, domain)
    await wait_deliveries(node, domain, hook, all_delivered(1))
    answers = [
        await call(node, "GET", one, domain.headers()),
        await call(node, "GET", f"/v1/domains/{domain.name}/webhooks", domain.headers()),
        await call(node, "PATCH", one, domain.headers(), {"event_types": ["delivered", "bounced"]}),
        await call(node, "GET", f"{one}/deliveries", domain.headers()),
    ]
    for status, answer in answers:
        assert status == 200
        assert secret not in json.dumps(answer) and "secret" not in json.dumps(answer)
    assert answers[2][1]["event_types"] == ["delivered", "bounced"]
    assert (await call(node, "DELETE", one, domain.headers()))[0] == 204
    assert (await call(node, "GET", one, domain.headers()))[0] == 404


async def test_a_webhook_turned_off_through_the_api_gets_nothing_until_turned_on(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    hook = await create_webhook(node, domain, receiver.url(), ["delivered"])
    one = f"/v1/domains/{domain.name}/webhooks/{hook['id']}"
    assert (await call(node, "PATCH", one, domain.headers(), {"enabled": "no"}))[0] == 400
    status, shown = await call(node, "PATCH", one, domain.headers(), {"enabled": False})
    assert status == 200 and shown["enabled"] is False
    assert shown["disabled_reason"] == "disabled through the API"
    await send_one(node, domain)
    await node.wait_rows("SELECT COUNT(*) FROM events WHERE type = 'delivered' AND processed = 1", [(1,)])
    assert await deliveries(node, domain, hook) == [] and receiver.posts == []
    status, shown = await call(node, "PATCH", one, domain.headers(), {"enabled": True})
    assert status == 200 and shown["enabled"] is True
    await send_one(node, domain, "bob@example.org")
    await wait_deliveries(node, domain, hook, all_delivered(1))
    [post] = receiver.posts
    assert post.json()["recipient"] == "bob@example.org"


async def test_deliveries_are_listed_newest_first_a_page_at_a_time(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    hook = await create_webhook(node, domain, receiver.url(), ["accepted", "delivered"])
    await send_one(node, domain)
    items = await wait_deliveries(node, domain, hook, all_delivered(2))
    path = f"/v1/domains/{domain.name}/webhooks/{hook['id']}/deliveries"
    status, first = await call(node, "GET", f"{path}?limit=1", domain.headers())
    assert [item["id"] for item in first["items"]] == [items[0]["id"]] and items[0]["id"] > items[1]["id"]
    status, second = await call(
        node, "GET", f"{path}?limit=1&cursor={first['next_cursor']}", domain.headers()
    )
    assert status == 200 and [item["id"] for item in second["items"]] == [items[1]["id"]]


# -- the worker on its own: send-time address checks, bounded concurrency ----------------------------


class FixedResolver(AbstractResolver):
    """Resolves every name to one address, as a DNS answer changed since creation would."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host=self.address, port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/mailnode.db", sqlite_synchronous="normal")
    await DomainStore(opened).create_domain("example.com", generate_dkim_key("ed25519"), "mailnode")
    yield opened
    await opened.close()


async def queue_events(store: Store, count: int) -> None:
    """`count` delivered events of example.com, processed into webhook deliveries."""
    events = EventStore(store)
    await events.record([NewEvent(EventType.DELIVERED, store.clock(), "example.com") for _ in range(count)])
    await events.process_outbox()


async def run_worker(worker: WebhookWorker, until: Callable[[], Any], timeout: float = 10.0) -> None:
    """Run the worker until `until()` (awaited) is true, then stop it."""
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + timeout
        while not await until():
            assert time.monotonic() < deadline, "the worker never got there"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.stop()


@pytest.mark.parametrize("allow_private", [False, True])
async def test_a_name_resolving_to_a_private_address_at_send_time_is_not_posted_to(
    store: Store, receiver: WebhookReceiver, allow_private: bool
) -> None:
    webhooks = WebhookStore(store, os.urandom)
    # Stored directly: the name passed the check at creation, and now resolves to loopback.
    hook = await webhooks.create(
        "example.com", f"http://hooks.test:{receiver.port}/hook", [EventType.DELIVERED]
    )
    await queue_events(store, 1)
    config = WebhooksConfig(allow_private=allow_private, retry_base_seconds=0.05)
    worker = WebhookWorker(webhooks, Bus(), config, store.clock, resolver=FixedResolver("127.0.0.1"))

    async def attempted() -> bool:
        items = await webhooks.deliveries("example.com", hook.id)
        return items[0].attempts >= 1

    await run_worker(worker, attempted)
    [item] = await webhooks.deliveries("example.com", hook.id)
    if allow_private:
        assert item.status == "delivered" and len(receiver.posts) == 1
    else:
        assert item.status == "pending" and receiver.posts == []
        assert item.last_error is not None
        assert "hooks.test resolves to 127.0.0.1, which is a loopback address" in item.last_error


async def test_no_more_posts_are_in_flight_than_concurrency_allows(
    store: Store, receiver: WebhookReceiver
) -> None:
    webhooks = WebhookStore(store, os.urandom)
    first = await webhooks.create("example.com", receiver.url("/1"), [EventType.DELIVERED])
    second = await webhooks.create("example.com", receiver.url("/2"), [EventType.DELIVERED])
    await queue_events(store, 5)  # 10 deliveries
    receiver.answer(*[HANG] * 10)
    config = WebhooksConfig(allow_private=True, concurrency=4, timeout_seconds=10.0)
    worker = WebhookWorker(webhooks, Bus(), config, store.clock)

    async def all_sent() -> bool:
        if len(receiver.posts) >= 4:
            receiver.release()
        pages = [await webhooks.deliveries("example.com", hook.id) for hook in (first, second)]
        return all(item.status == "delivered" for page in pages for item in page)

    await run_worker(worker, all_sent)
    assert len(receiver.posts) == 10
    assert receiver.max_in_flight == 4  # [webhooks] concurrency
    first_four = Counter(post.path for post in receiver.posts[:4])
    assert first_four == {"/1": 2, "/2": 2}, "one webhook may take half the slots at most"


async def test_a_redirect_is_a_failure_and_is_not_followed(store: Store, receiver: WebhookReceiver) -> None:
    webhooks = WebhookStore(store, os.urandom)
    hook = await webhooks.create("example.com", receiver.url(), [EventType.DELIVERED])
    await queue_events(store, 1)
    receiver.answer(302)  # to /redirected, on the same receiver
    config = WebhooksConfig(allow_private=True, retry_base_seconds=60.0)
    worker = WebhookWorker(webhooks, Bus(), config, store.clock)

    async def attempted() -> bool:
        return (await webhooks.deliveries("example.com", hook.id))[0].attempts >= 1

    await run_worker(worker, attempted)
    assert [post.path for post in receiver.posts] == ["/hook"]
    [item] = await webhooks.deliveries("example.com", hook.id)
    assert item.status == "pending" and item.last_status == 302
    assert item.last_error is not None and "redirects are not followed" in item.last_error
    assert item.next_attempt_at is not None and item.next_attempt_at >= item.last_attempt_at + 60


async def test_an_event_left_by_a_crash_before_its_webhook_is_posted_after_restart(
    mailnode_factory: MailnodeFactory, node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    hook = await create_webhook(node, domain, receiver.url(), ["delivered"])
    await stop_mailnode(node)
    # What a kill right after a delivery's commit leaves: its event stored, not yet processed
    # (so neither counted nor queued for the webhook).
    with sqlite3.connect(node.db_path) as connection:
        connection.execute(
            "INSERT INTO events (type, occurred_at, domain, recipient, data, processed)"
            " VALUES ('delivered', ?, 'example.com', 'ann@example.org', '{\"code\": 250}', 0)",
            (time.time(),),
        )
    await mailnode_factory(admin={"token": ADMIN_TOKEN}, webhooks=WEBHOOKS)
    (post,) = await receiver.wait_for_posts(1)
    assert post.signed_by(hook["secret"])
    assert post.json()["type"] == "delivered" and post.json()["recipient"] == "ann@example.org"


async def test_deleting_a_domain_deletes_its_webhooks(
    node: Mailnode, domain: Domain, receiver: WebhookReceiver
) -> None:
    await create_webhook(node, domain, receiver.url(), ["delivered"])
    status, _ = await call(node, "DELETE", "/v1/domains/example.com", admin_headers())
    assert status == 204
    assert node.rows("SELECT count(*) FROM webhooks") == [(0,)]
    again = await create_domain(node, "example.com")
    status, listed = await call(node, "GET", "/v1/domains/example.com/webhooks", again.headers())
    assert status == 200 and listed["items"] == []

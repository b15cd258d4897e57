"""POST /v1/send end to end: the real app, a real SQLite file and a loopback SMTP sink."""

from __future__ import annotations

import base64
import email
import email.policy
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.platform import Domain, create_domain, send
from tests.support.sink import Reply, Sink

SENDER = {"email": "news@example.com", "name": "Example News"}


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory, sink: Sink) -> Mailnode:
    return await mailnode_factory(admin={"token": ADMIN_TOKEN})


@pytest.fixture
async def domain(node: Mailnode) -> Domain:
    return await create_domain(node, "example.com")


def _parse(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def _by_recipient(sink: Sink) -> dict[str, Any]:
    return {m.rcpt_tos[0]: m for m in sink.messages}


async def test_three_personalised_messages_arrive_signed_by_the_domain(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    status, answer = await send(
        node,
        domain,
        {
            "sender": SENDER,
            "subject": "Hello {{ name }}",
            "html": "<p>Hi {{ name }}, your code is {{ code }} ({{ plan }}).</p>",
            "recipients": [
                {"email": "ann@example.org", "name": "Ann", "fields": {"code": "A-1"}},
                {"email": "bob@example.org", "name": "Bob", "fields": {"code": "B-2"}},
                {"email": "cy@example.net", "name": "Cy", "fields": {"code": "C-3", "plan": "pro"}},
            ],
            "global_fields": {"plan": "free"},
        },
    )
    assert status == 202, answer
    assert answer["accepted"] == 3 and answer["rejected"] == []
    await sink.wait_for_messages(3)
    received = _by_recipient(sink)
    assert set(received) == {"ann@example.org", "bob@example.org", "cy@example.net"}
    for rcpt, name, code, plan in (
        ("ann@example.org", "Ann", "A-1", "free"),
        ("bob@example.org", "Bob", "B-2", "free"),
        ("cy@example.net", "Cy", "C-3", "pro"),
    ):
        data = received[rcpt].data
        message = _parse(data)
        assert message["Subject"] == f"Hello {name}"
        assert message["To"] == f"{name} <{rcpt}>"
        html = message.get_body(("html",)).get_content()
        assert f"Hi {name}, your code is {code} ({plan})." in html
        text = message.get_body(("plain",)).get_content()
        assert f"Hi {name}, your code is {code} ({plan})." in text
        assert domain.verify(data), "DKIM signature does not verify with the published key"
        signature = message["DKIM-Signature"]
        assert "d=example.com" in signature and "s=mailnode" in signature
        # The envelope sender is a VERP address on the bounce domain, not the From.
        assert received[rcpt].mail_from.endswith("@bounces.mailnode.test")
        assert received[rcpt].mail_from.startswith("b-")


async def test_batch_status_counts_deliveries_and_lists_each_one(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    sink.reply_for("bad@example.org", Reply(rcpt="550 5.1.1 no such user"))
    status, answer = await send(
        node,
        domain,
        {
            "sender": SENDER,
            "subject": "s",
            "text": "t",
            "recipients": [
                {"email": "ok@example.org"},
                {"email": "bad@example.org"},
                {"email": "not an address"},
            ],
        },
    )
    assert status == 202
    assert answer["accepted"] == 2
    assert answer["rejected"][0]["email"] == "not an address"
    assert answer["rejected"][0]["reason"].startswith("invalid_address")
    batch_url = f"{node.url}/v1/batches/{answer['batch_id']}"
    await node.wait_rows(
        "SELECT status, COUNT(*) FROM transactions WHERE batch_id IS NOT NULL"
        " GROUP BY status ORDER BY status",
        [("delivered", 1), ("failed", 1)],
    )
    async with node.http.get(batch_url, headers=domain.headers()) as response:
        assert response.status == 200
        batch = await response.json()
    assert batch["counts"] == {"queued": 0, "delivered": 1, "failed": 1, "cancelled": 0}
    assert batch["accepted"] == 2 and len(batch["rejected"]) == 1
    async with node.http.get(f"{batch_url}/deliveries", headers=domain.headers()) as response:
        items = {item["email"]: item for item in (await response.json())["items"]}
    assert items["ok@example.org"]["status"] == "delivered"
    assert items["bad@example.org"]["status"] == "failed"
    assert items["bad@example.org"]["last_response"] == {
        "stage": "rcpt",
        "code": 550,
        "message": "5.1.1 no such user",
    }


async def test_attachments_arrive_byte_identical_and_non_ascii_text_round_trips(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    blob = bytes(range(256)) * 40
    status, _ = await send(
        node,
        domain,
        {
            "sender": {"email": "news@example.com", "name": "Zoë Ünicode-Sender"},
            "subject": "Grüße aus Köln · 你好 {{ name }}",
            "html": "<p>Anbei.</p>",
            "recipients": [{"email": "ann@example.org", "name": "Ännchen"}],
            "attachments": [
                {
                    "filename": "Übersicht 2026 · 報告.bin",
                    "content_type": "application/octet-stream",
                    "content": base64.b64encode(blob).decode(),
                }
            ],
        },
    )
    assert status == 202
    (received,) = await sink.wait_for_messages(1)
    assert received.data.isascii(), "the message must be 7-bit clean on the wire"
    message = _parse(received.data)
    assert message["Subject"] == "Grüße aus Köln · 你好 Ännchen"
    assert message["From"].addresses[0].display_name == "Zoë Ünicode-Sender"
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == "Übersicht 2026 · 報告.bin"
    assert attachment.get_content() == blob
    assert domain.verify(received.data)


async def test_one_click_unsubscribe_headers_carry_the_recipients_url_inside_the_signature(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    status, _ = await send(
        node,
        domain,
        {
            "sender": SENDER,
            "subject": "s",
            "text": "t",
            "recipients": [{"email": "a+b@example.org", "name": "Zoë & Co", "fields": {"list": "news/eu"}}],
            "unsubscribe": {"url_template": "https://example.com/u?e={{ email }}&n={{ name }}&l={{ list }}"},
        },
    )
    assert status == 202
    (received,) = await sink.wait_for_messages(1)
    message = _parse(received.data)
    assert (
        message["List-Unsubscribe"]
        == "<https://example.com/u?e=a%2Bb%40example.org&n=Zo%C3%AB%20%26%20Co&l=news%2Feu>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    signature = message["DKIM-Signature"].replace(" ", "").replace("\t", "")
    signed = next(tag for tag in signature.split(";") if tag.startswith("h=")).removeprefix("h=").split(":")
    assert "list-unsubscribe" in signed and "list-unsubscribe-post" in signed
    assert domain.verify(received.data)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("http://example.com/u?e={{ email }}", "https://"),
        ("/u?e={{ email }}", "https://"),
        ("mailto:unsub@example.com", "https://"),
    ],
)
async def test_unsubscribe_template_that_is_not_https_fails_the_call(
    node: Mailnode, domain: Domain, template: str, problem: str
) -> None:
    status, answer = await send(
        node,
        domain,
        {
            "sender": SENDER,
            "subject": "s",
            "text": "t",
            "recipients": [{"email": "a@example.org"}],
            "unsubscribe": {"url_template": template},
        },
    )
    assert status == 400
    assert answer["error"]["field"] == "unsubscribe.url_template"
    assert problem in answer["error"]["message"]
    assert node.rows("SELECT COUNT(*) FROM batches") == [(0,)]


async def test_recipient_whose_fields_cannot_fill_the_unsubscribe_url_is_rejected(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    status, answer = await send(
        node,
        domain,
        {
            "sender": SENDER,
            "subject": "s",
            "text": "t",
            "recipients": [{"email": "a@example.org", "fields": {"token": "x"}}, {"email": "b@example.org"}],
            "unsubscribe": {"url_template": "https://example.com/u/{{ token }}"},
        },
    )
    assert status == 202
    assert answer["accepted"] == 1
    assert answer["rejected"] == [{"email": "b@example.org", "reason": "unsubscribe_url_unresolved"}]
    (received,) = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["a@example.org"]


async def test_after_a_rotation_the_next_message_is_signed_with_the_new_selector(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    body = {"sender": SENDER, "subject": "s", "text": "t", "recipients": [{"email": "a@example.org"}]}
    await send(node, domain, body)
    (first,) = await sink.wait_for_messages(1)
    async with node.http.post(
        f"{node.url}/v1/domains/example.com/dkim/rotate", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as response:
        assert response.status == 201
        selector = (await response.json())["selector"]
    async with node.http.get(
        f"{node.url}/v1/domains/example.com/dns", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as response:
        domain.dns = (await response.json())["records"]
    await send(node, domain, body)
    _, second = await sink.wait_for_messages(2)
    assert "s=mailnode;" in _parse(first.data)["DKIM-Signature"].replace(" ", "")
    assert f"s={selector};" in _parse(second.data)["DKIM-Signature"].replace(" ", "")
    assert domain.verify(first.data) and domain.verify(second.data)

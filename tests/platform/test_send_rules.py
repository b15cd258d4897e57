"""POST /v1/send's rules: who may send, what a repeat does, what a template may do, scale."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.clock import OffsetClock
from tests.support.mailnode import Mailnode, make_config, start_mailnode, stop_mailnode
from tests.support.platform import Domain, admin_headers, create_domain, send
from tests.support.sink import Sink

BODY: dict[str, Any] = {
    "sender": {"email": "news@example.com"},
    "subject": "Hi {{ name }}",
    "text": "Hello {{ name }}",
    "recipients": [{"email": "a@example.org", "name": "A"}],
}


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    return await mailnode_factory(admin={"token": ADMIN_TOKEN})


@pytest.fixture
async def domain(node: Mailnode) -> Domain:
    return await create_domain(node, "example.com")


async def _post(node: Mailnode, headers: dict[str, str], body: dict[str, Any] = BODY) -> tuple[int, Any]:
    async with node.http.post(f"{node.url}/v1/send", json=body, headers=headers) as response:
        return response.status, await response.json()


def _stored(node: Mailnode) -> tuple[Any, ...]:
    return (
        node.rows("SELECT COUNT(*) FROM batches")[0][0],
        node.rows("SELECT COUNT(*) FROM transactions")[0][0],
    )


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_every_kind_of_bad_credential_gets_the_identical_401(tmp_path: Path, sink: Sink) -> None:
    clock = OffsetClock()
    node = await start_mailnode(make_config(tmp_path, sink.port, admin={"token": ADMIN_TOKEN}), clock=clock)
    try:
        domain = await create_domain(node, "example.com")
        other = await create_domain(node, "other.example")
        async with node.http.post(
            f"{node.url}/v1/domains/example.com/keys",
            json={"name": "short-lived", "expires_at": clock() + 60},
            headers=admin_headers(),
        ) as response:
            expiring = (await response.json())["key"]
        async with node.http.post(
            f"{node.url}/v1/domains/example.com/keys", json={"name": "retired"}, headers=admin_headers()
        ) as response:
            retired = await response.json()
        async with node.http.post(
            f"{node.url}/v1/domains/example.com/keys/{retired['id']}/deactivate", headers=admin_headers()
        ) as response:
            assert response.status == 200
        clock.advance(61)
        attempts = {
            "no header": {},
            "wrong key": {"Authorization": "Bearer mk_" + "x" * 43},
            "malformed": {"Authorization": "Bearer"},
            "other domain's key named as this domain": _basic("example.com", other.key),
            "expired": {"Authorization": f"Bearer {expiring}"},
            "deactivated": {"Authorization": f"Bearer {retired['key']}"},
            "the admin token (not a domain key)": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        }
        answers = {what: await _post(node, headers) for what, headers in attempts.items()}
        assert {what: status for what, (status, _) in answers.items()} == dict.fromkeys(attempts, 401)
        assert len({repr(body) for _, body in answers.values()}) == 1, answers
        assert _stored(node) == (0, 0)
        # The same key works over Basic auth with its domain as the user name.
        status, _ = await _post(node, _basic("example.com", domain.key))
        assert status == 202
    finally:
        await stop_mailnode(node)


async def test_a_wrong_admin_token_gets_401_on_admin_routes(node: Mailnode, domain: Domain) -> None:
    async with node.http.get(
        f"{node.url}/v1/domains", headers={"Authorization": "Bearer " + "y" * 32}
    ) as response:
        assert response.status == 401


async def test_sending_as_another_domain_is_403_naming_both_and_stores_nothing(
    node: Mailnode, domain: Domain
) -> None:
    status, answer = await send(node, domain, {**BODY, "sender": {"email": "ceo@other.example"}})
    assert status == 403
    assert answer["error"]["field"] == "sender.email"
    assert "other.example" in answer["error"]["message"] and "example.com" in answer["error"]["message"]
    assert _stored(node) == (0, 0)


async def test_a_parent_domain_may_be_the_sender_of_a_subdomains_key(node: Mailnode) -> None:
    sub = await create_domain(node, "mail.example.com")
    status, answer = await send(node, sub, BODY)
    assert status == 202, answer


async def test_same_idempotency_key_and_body_gives_the_first_answer_and_sends_nothing_new(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    first = await send(node, domain, BODY, **{"Idempotency-Key": "order-42"})
    again = await send(node, domain, BODY, **{"Idempotency-Key": "order-42"})
    assert first[0] == again[0] == 202
    assert first[1] == again[1]
    assert _stored(node) == (1, 1)
    status, answer = await send(
        node, domain, {**BODY, "subject": "changed"}, **{"Idempotency-Key": "order-42"}
    )
    assert status == 409
    assert answer["error"]["code"] == "idempotency_key_reused"
    assert _stored(node) == (1, 1)
    await sink.wait_for_messages(1)
    assert len(sink.messages) == 1


async def test_an_idempotency_key_is_per_api_key(node: Mailnode, domain: Domain) -> None:
    other = await create_domain(node, "other.example")
    await send(node, domain, BODY, **{"Idempotency-Key": "k"})
    status, _ = await send(
        node, other, {**BODY, "sender": {"email": "a@other.example"}}, **{"Idempotency-Key": "k"}
    )
    assert status == 202
    assert _stored(node) == (2, 2)


async def test_a_missing_template_field_rejects_that_recipient_naming_the_field(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    body = {
        **BODY,
        "html": "<p>Dear {{ title }} {{ name }}</p>",
        "text": None,
        "recipients": [{"email": "a@example.org", "fields": {"title": "Dr"}}, {"email": "b@example.org"}],
    }
    del body["text"]
    status, answer = await send(node, domain, body)
    assert status == 202
    assert answer["accepted"] == 1
    assert answer["rejected"] == [{"email": "b@example.org", "reason": "missing_field: title"}]
    (received,) = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["a@example.org"]


@pytest.mark.parametrize(
    "escape",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ name|attr('__class__') }}",
        "{{ name['__class__'] }}",
    ],
)
async def test_a_sandbox_escape_is_refused_and_nothing_leaks(
    node: Mailnode, domain: Domain, escape: str
) -> None:
    status, answer = await send(node, domain, {**BODY, "text": f"Hello {escape}"})
    assert status == 400
    assert answer["error"]["field"] == "text"
    assert "unsafe" in answer["error"]["message"]
    assert "object" not in answer["error"]["message"]  # no class or module names come back
    assert _stored(node) == (0, 0)


async def test_a_template_by_id_sends_with_its_subject_and_bodies(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    async with node.http.post(
        f"{node.url}/v1/domains/example.com/templates",
        json={"name": "welcome", "subject": "Welcome {{ name }}", "html": "<b>Hi {{ name }}</b>"},
        headers=domain.headers(),
    ) as response:
        assert response.status == 201, await response.text()
        template = await response.json()
    body = {
        "sender": BODY["sender"],
        "template_id": template["id"],
        "recipients": [{"email": "a@example.org", "name": "Ann"}],
    }
    status, answer = await send(node, domain, body)
    assert status == 202, answer
    (received,) = await sink.wait_for_messages(1)
    assert b"Subject: Welcome Ann" in received.data
    assert b"<b>Hi Ann</b>" in received.data


async def test_an_unknown_template_id_is_a_400(node: Mailnode, domain: Domain) -> None:
    body = {"sender": BODY["sender"], "template_id": "tpl_nope", "recipients": BODY["recipients"]}
    status, answer = await send(node, domain, body)
    assert (status, answer["error"]["field"]) == (400, "template_id")


async def test_header_injection_in_any_header_value_is_a_400(node: Mailnode, domain: Domain) -> None:
    for body, field in (
        (
            {**BODY, "sender": {"email": "news@example.com", "name": "x\r\nBcc: victim@example.net"}},
            "sender.name",
        ),
        (
            {**BODY, "headers": {"custom": {"X-Campaign": "a\nBcc: v@example.net"}}},
            "headers.custom.X-Campaign",
        ),
        ({**BODY, "recipients": [{"email": "a@example.org", "name": "A\rB"}]}, "recipients[0].name"),
    ):
        status, answer = await send(node, domain, body)
        assert (status, answer["error"]["field"]) == (400, field)
    assert _stored(node) == (0, 0)


async def test_too_many_recipients_is_413(mailnode_factory: MailnodeFactory) -> None:
    node = await mailnode_factory(admin={"token": ADMIN_TOKEN}, platform={"max_recipients_per_send": 2})
    domain = await create_domain(node, "example.com")
    recipients = [{"email": f"r{i}@example.org"} for i in range(3)]
    status, answer = await send(node, domain, {**BODY, "recipients": recipients})
    assert status == 413
    assert "max_recipients_per_send" in answer["error"]["message"]


async def test_a_duplicate_recipient_is_sent_once(node: Mailnode, domain: Domain, sink: Sink) -> None:
    recipients = [{"email": "a@example.org"}, {"email": "a@EXAMPLE.org"}, {"email": "b@example.org"}]
    status, answer = await send(node, domain, {**BODY, "recipients": recipients})
    assert (status, answer["accepted"], answer["rejected"]) == (202, 2, [])
    await sink.wait_for_messages(2)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["a@example.org", "b@example.org"]


async def test_ten_thousand_recipients_store_one_body_and_small_rows(node: Mailnode, domain: Domain) -> None:
    recipients = [
        {"email": f"r{i}@example.org", "name": f"R{i}", "fields": {"code": i}} for i in range(10_000)
    ]
    body = {**BODY, "html": "<p>{{ name }}: {{ code }}</p>" + "x" * 4000, "recipients": recipients}
    status, answer = await send(node, domain, {**body, "scheduled_at": "2099-01-01T00:00:00Z"})
    assert (status, answer["accepted"]) == (202, 10_000)
    assert node.rows("SELECT COUNT(*) FROM blobs") == [(1,)]
    assert node.rows("SELECT COUNT(*) FROM transaction_blobs") == [(0,)]
    ((count, largest),) = node.rows("SELECT COUNT(*), MAX(LENGTH(recipient)) FROM transactions")
    assert count == 10_000
    assert largest < 100, "a delivery row holds the recipient's fields, never the 4 KB body"


async def test_a_scheduled_batch_waits_and_cancel_stops_it(tmp_path: Path, sink: Sink) -> None:
    clock = OffsetClock()
    node = await start_mailnode(make_config(tmp_path, sink.port, admin={"token": ADMIN_TOKEN}), clock=clock)
    try:
        domain = await create_domain(node, "example.com")
        later = {**BODY, "scheduled_at": clock() + 3600}
        _, first = await send(node, domain, later)
        _, second = await send(node, domain, later)
        assert node.rows("SELECT COUNT(*) FROM transactions WHERE status = 'queued'") == [(2,)]
        async with node.http.post(
            f"{node.url}/v1/batches/{second['batch_id']}/cancel", headers=domain.headers()
        ) as response:
            assert response.status == 200
            cancelled = await response.json()
        assert cancelled["cancelled"] == 1
        assert cancelled["counts"]["cancelled"] == 1
        clock.advance(3601)
        node.service.output.queued()  # wake it now rather than at its next poll
        (received,) = await sink.wait_for_messages(1)
        await node.wait_rows(
            "SELECT b.public_id, t.status FROM transactions t"
            " JOIN batches b ON b.id = t.batch_id ORDER BY t.id",
            [(first["batch_id"], "delivered"), (second["batch_id"], "cancelled")],
        )
        assert received.rcpt_tos == ["a@example.org"]
    finally:
        await stop_mailnode(node)


async def test_a_batch_of_another_domain_is_not_found(node: Mailnode, domain: Domain) -> None:
    other = await create_domain(node, "other.example")
    _, answer = await send(node, domain, BODY)
    async with node.http.get(
        f"{node.url}/v1/batches/{answer['batch_id']}", headers=other.headers()
    ) as response:
        assert response.status == 404
    async with node.http.get(
        f"{node.url}/v1/batches/{answer['batch_id']}", headers=admin_headers()
    ) as response:
        assert response.status == 200

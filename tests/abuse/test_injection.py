"""CR/LF injection in every API field that ends up in a header or an SMTP command, and template escapes.

tests/platform/test_send_rules.py covers sender.name, headers.custom and recipients[].name on
/v1/send and sandbox escapes in the text body; tests/platform/test_webhooks.py covers private
webhook receivers. Here: every other header-bearing field of /v1/send, values that only become
header text after rendering (template fields in the subject), the REST transaction API's
envelope and message-builder headers, and escapes through the subject and stored templates.
Each must be a 400 naming the field with nothing stored, or, where a rendered value carries the
line break, a message whose header section has no injected field.
"""

from __future__ import annotations

import email
import email.policy
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.platform import Domain, create_domain, send
from tests.support.sink import Sink

INJECTED = "x\r\nBcc: victim@example.net"
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


def stored(node: Mailnode) -> tuple[int, int]:
    ((batches,),) = node.rows("SELECT COUNT(*) FROM batches")
    ((deliveries,),) = node.rows("SELECT COUNT(*) FROM transactions")
    return batches, deliveries


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.net"}, "subject"),
        ({"subject": "Hi\nBcc: victim@example.net"}, "subject"),
        ({"sender": {"email": "news@example.com\r\nBcc: v@example.net"}}, "sender.email"),
        ({"headers": {"reply_to": {"email": "r@example.com", "name": INJECTED}}}, "headers.reply_to[0].name"),
        ({"headers": {"reply_to": "r@example.com\r\nBcc: v@example.net"}}, "headers.reply_to[0]"),
        ({"headers": {"to": [{"email": "t@example.com", "name": INJECTED}]}}, "headers.to[0].name"),
        ({"headers": {"cc": {"email": "c@example.com\nBcc: v@example.net"}}}, "headers.cc[0].email"),
        ({"headers": {"custom": {"X-Ok\r\nBcc": "v@example.net"}}}, "headers.custom.X-Ok\r\nBcc"),
        ({"headers": {"custom": {"X-Tab": "a\rb"}}}, "headers.custom.X-Tab"),
        (
            {"attachments": [{"filename": "a.txt\r\nBcc: v@example.net", "content": "aGk="}]},
            "attachments[0].filename",
        ),
        (
            {
                "attachments": [
                    {"filename": "a.txt", "content_type": "text/plain\r\nBcc: v", "content": "aGk="}
                ]
            },
            "attachments[0].content_type",
        ),
        (
            {"unsubscribe": {"url_template": "https://example.com/u\r\nBcc: v@example.net"}},
            "unsubscribe.url_template",
        ),
    ],
)
async def test_a_line_break_in_a_header_bearing_send_field_is_a_400_naming_it(
    node: Mailnode, domain: Domain, change: dict[str, Any], field: str
) -> None:
    status, answer = await send(node, domain, {**BODY, **change})

    assert status == 400, answer
    assert answer["error"]["field"] == field
    assert stored(node) == (0, 0)


async def test_a_line_break_in_a_recipient_address_rejects_that_recipient(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    """A batch takes the good recipients and lists the bad ones (the API's documented answer)."""
    bad = "a@example.org\r\nRCPT TO:<v@example.net>"
    recipients = [{"email": bad}, {"email": "b@example.org"}]

    status, answer = await send(node, domain, {**BODY, "recipients": recipients})

    assert (status, answer["accepted"]) == (202, 1), answer
    assert [rejected["email"] for rejected in answer["rejected"]] == [bad]
    (received,) = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["b@example.org"]


async def test_a_line_break_in_a_stored_template_subject_is_a_400(node: Mailnode, domain: Domain) -> None:
    async with node.http.post(
        f"{node.url}/v1/domains/{domain.name}/templates",
        json={"name": "t", "subject": INJECTED, "text": "hi"},
        headers=domain.headers(),
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "subject"


@pytest.mark.parametrize(
    "where",
    [
        {"recipients": [{"email": "a@example.org", "fields": {"code": INJECTED}}]},
        {"global_fields": {"code": INJECTED}, "recipients": [{"email": "a@example.org"}]},
    ],
)
async def test_a_template_field_with_a_line_break_never_becomes_a_header(
    node: Mailnode, domain: Domain, sink: Sink, where: dict[str, Any]
) -> None:
    """A field rendered into the subject: refused (400) or sent with the break inside the Subject."""
    status, answer = await send(node, domain, {**BODY, "subject": "Hi {{ code }}", **where})

    if status == 400:
        assert answer["error"]["field"].startswith(next(iter(where)))
        assert stored(node) == (0, 0)
        return
    assert status == 202, answer
    (received,) = await sink.wait_for_messages(1)
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert message["Bcc"] is None
    assert "victim@example.net" in str(message["Subject"])


@pytest.mark.parametrize(
    "escape",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ name|attr('__class__') }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ self._TemplateReference__context }}",
        "{{ lipsum.__globals__['os'] }}",
    ],
)
async def test_a_sandbox_escape_in_a_subject_or_a_stored_template_is_refused(
    node: Mailnode, domain: Domain, escape: str
) -> None:
    status, answer = await send(node, domain, {**BODY, "subject": f"Hi {escape}"})
    assert (status, answer["error"]["field"]) == (400, "subject")
    assert "object" not in answer["error"]["message"]

    async with node.http.post(
        f"{node.url}/v1/domains/{domain.name}/templates",
        json={"name": "t", "subject": "s", "html": f"<p>{escape}</p>"},
        headers=domain.headers(),
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "html"
    assert stored(node) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mail_from": {"m": "a@example.com\r\nRCPT TO:<v@example.net>"}}, "mail_from"),
        ({"rcpt_to": [{"m": "b@example.net\r\nDATA"}]}, "rcpt_to"),
        ({"mail_from": {"m": "a@example.com\n"}}, "mail_from"),
        ({"rcpt_to": [{"m": "b@example.net\x00"}]}, "rcpt_to"),
    ],
)
async def test_a_line_break_in_the_rest_envelope_is_a_400_naming_it(
    node: Mailnode, body: dict[str, Any], field: str
) -> None:
    envelope = {"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": "b@example.net"}], **body}

    status, answer, _ = await node.create(envelope)

    assert status == 400, answer
    assert answer["error"]["field"].startswith(field)
    assert node.rows("SELECT COUNT(*) FROM transactions") == [(0,)]


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ([["Subject", INJECTED]], "message_builder.headers[0][1]"),
        ([["X-Ok\r\nBcc", "v@example.net"]], "message_builder.headers[0][0]"),
    ],
)
async def test_a_line_break_in_message_builder_headers_is_a_400_naming_it(
    node: Mailnode, headers: list[list[str]], path: str
) -> None:
    spec = {"headers": headers, "text_body": [{"content_type": "text/plain", "content": {"inline": "hi"}}]}
    envelope = {
        "mail_from": {"m": "a@example.com"},
        "rcpt_to": [{"m": "b@example.net"}],
        "body": {"message_builder": spec},
    }

    status, answer, _ = await node.create(envelope)

    assert status == 400, answer
    assert answer["error"]["field"] == "body.message_builder"
    assert answer["error"]["message"].startswith(f"body.message_builder: {path}: ")
    assert node.rows("SELECT COUNT(*) FROM transactions") == [(0,)]

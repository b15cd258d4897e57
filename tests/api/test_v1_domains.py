"""/v1/domains over real HTTP: domains, DKIM keys and the DNS records to publish, API keys."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import dkim
import pytest

from mailnode.storage.domains import DomainStore
from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.mailnode import Mailnode, make_config, start_mailnode, stop_mailnode
from tests.support.sink import Sink

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MESSAGE = (
    b"From: Shop <news@example.com>\r\n"
    b"To: someone@example.net\r\n"
    b"Subject: signed\r\n"
    b"Date: Mon, 23 Nov 2026 01:00:00 +0000\r\n"
    b"Message-ID: <dns-test@example.com>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


async def call(
    node: Mailnode, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request (as the operator unless `headers` say otherwise): (status, JSON or None)."""
    async with node.http.request(
        method, f"{node.url}{path}", json=body, headers=ADMIN if headers is None else headers
    ) as response:
        payload = await response.json() if response.content_type == "application/json" else None
        return response.status, payload


async def new_domain(node: Mailnode, name: str = "example.com", **options: Any) -> dict[str, Any]:
    status, created = await call(node, "POST", "/v1/domains", {"name": name, **options})
    assert status == 201, created
    return created


async def new_key(node: Mailnode, domain: str, **options: Any) -> dict[str, Any]:
    status, created = await call(node, "POST", f"/v1/domains/{domain}/keys", {"name": "app", **options})
    assert status == 201, created
    return created


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_domain_is_created_canonical_with_a_dkim_key_and_its_records(
    admin_mailnode: Mailnode,
) -> None:
    status, created = await call(admin_mailnode, "POST", "/v1/domains", {"name": "  Example.COM. "})
    assert status == 201
    assert created["name"] == "example.com"
    (key,) = created["dkim"]
    assert (key["selector"], key["algorithm"], key["signing"]) == ("mailnode", "rsa", True)
    dkim_record = next(r for r in created["dns_records"] if r["name"] == "mailnode._domainkey.example.com")
    assert dkim_record["value"].endswith(f"p={key['public_key']}")

    status, again = await call(admin_mailnode, "POST", "/v1/domains", {"name": "example.com"})
    assert (status, again["error"]["code"]) == (409, "conflict")
    status, listed = await call(admin_mailnode, "GET", "/v1/domains")
    assert [d["name"] for d in listed["items"]] == ["example.com"]
    status, shown = await call(admin_mailnode, "GET", "/v1/domains/EXAMPLE.com")
    assert (status, shown) == (200, {k: created[k] for k in ("name", "created_at", "dkim", "tracking")})
    assert shown["tracking"] == {"opens": "off", "links": "off"}


async def test_an_idn_is_stored_as_its_a_label_and_found_by_either_form(admin_mailnode: Mailnode) -> None:
    created = await new_domain(admin_mailnode, "Bücher.example", dkim_algorithm="ed25519")
    assert (created["name"], created["dkim"][0]["algorithm"]) == ("xn--bcher-kva.example", "ed25519")
    status, shown = await call(admin_mailnode, "GET", "/v1/domains/bücher.example")
    assert (status, shown["name"]) == (200, "xn--bcher-kva.example")


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"name": "localhost"}, "name", "two labels"),
        ({"name": "exa mple.com"}, "name", "letters, digits"),
        ({"name": "192.0.2.1"}, "name", "IP address"),
        ({"name": ""}, "name", "must not be empty"),
        ({}, "name", "required"),
        ({"name": 5}, "name", "must be a string"),
        ({"name": "example.com", "dkim_algorithm": "dsa"}, "dkim_algorithm", "rsa, ed25519"),
        ({"name": "example.com", "owner": "x"}, "owner", "unknown field"),
    ],
)
async def test_a_bad_domain_request_is_a_400_naming_the_field(
    admin_mailnode: Mailnode, body: dict[str, Any], field: str, says: str
) -> None:
    status, answer = await call(admin_mailnode, "POST", "/v1/domains", body)
    assert (status, answer["error"]["field"]) == (400, field)
    assert says in answer["error"]["message"]
    assert admin_mailnode.rows("SELECT count(*) FROM domains") == [(0,)]


async def test_admin_routes_answer_every_other_credential_with_the_same_401(admin_mailnode: Mailnode) -> None:
    await new_domain(admin_mailnode)
    domain_key = (await new_key(admin_mailnode, "example.com"))["key"]
    credentials: list[dict[str, str]] = [
        {},
        bearer("not-the-admin-token"),
        bearer(ADMIN_TOKEN + "x"),
        bearer(domain_key),  # a domain's API key is not the operator
        bearer(admin_mailnode.key),  # nor is the transactions API's key
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
    ]
    routes = [
        ("GET", "/v1/domains", None),
        ("POST", "/v1/domains", {"name": "example.org"}),
        ("GET", "/v1/domains/example.com/dns", None),
        ("DELETE", "/v1/domains/example.com", None),
        ("POST", "/v1/domains/example.com/keys", {"name": "x"}),
        ("POST", "/v1/domains/example.com/dkim/rotate", None),
    ]
    answers = []
    for method, path, body in routes:
        for headers in credentials:
            status, answer = await call(admin_mailnode, method, path, body, headers)
            assert status == 401, (method, path, headers)
            answers.append(answer)
    assert answers[0]["error"]["code"] == "unauthorized"
    assert all(answer == answers[0] for answer in answers)
    assert admin_mailnode.rows("SELECT name FROM domains") == [("example.com",)]


async def test_the_published_dkim_record_verifies_mail_signed_with_the_stored_key(
    mailnode_factory: MailnodeFactory,
) -> None:
    node = await mailnode_factory(admin={"token": ADMIN_TOKEN}, platform={"sending_ips": ["192.0.2.7"]})
    created = await new_domain(node)
    status, dns = await call(node, "GET", "/v1/domains/example.com/dns")
    assert status == 200
    records = {(r["name"], r["type"]): r["value"] for r in dns["records"]}
    dkim_value = records[("mailnode._domainkey.example.com", "TXT")]
    assert dkim_value == f"v=DKIM1; k=rsa; p={created['dkim'][0]['public_key']}"
    assert records[("example.com", "TXT")] == "v=spf1 ip4:192.0.2.7 ~all"
    assert records[("_dmarc.example.com", "TXT")].startswith("v=DMARC1; p=none")
    assert records[("bounces.mailnode.test", "MX")] == "10 mailnode.test"

    ((private_key,),) = node.rows("SELECT private_key FROM dkim_keys")
    signature = dkim.sign(
        MESSAGE, b"mailnode", b"example.com", private_key, canonicalize=(b"relaxed", b"relaxed")
    )

    def published(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get((name.decode().rstrip("."), "TXT"), "").encode() or None

    assert dkim.verify(signature + MESSAGE, dnsfunc=published)
    assert not dkim.verify(signature + MESSAGE.replace(b"Hello", b"Hullo"), dnsfunc=published)


async def test_rotation_adds_a_selector_that_signs_and_the_last_key_stays(admin_mailnode: Mailnode) -> None:
    await new_domain(admin_mailnode)
    status, rotated = await call(admin_mailnode, "POST", "/v1/domains/example.com/dkim/rotate")
    assert status == 201
    assert rotated["selector"].startswith("mailnode-") and rotated["signing"] is True
    assert rotated["dns_record"]["name"] == f"{rotated['selector']}._domainkey.example.com"

    _, shown = await call(admin_mailnode, "GET", "/v1/domains/example.com")
    assert [(k["selector"], k["signing"]) for k in shown["dkim"]] == [
        ("mailnode", False),
        (rotated["selector"], True),
    ]
    _, dns = await call(admin_mailnode, "GET", "/v1/domains/example.com/dns")
    assert sum(r["name"].endswith("._domainkey.example.com") for r in dns["records"]) == 2
    signing = await DomainStore(admin_mailnode.service.store).signing_key("example.com")
    assert signing is not None and signing.selector == rotated["selector"]

    status, _ = await call(admin_mailnode, "DELETE", "/v1/domains/example.com/dkim/mailnode")
    assert status == 204
    status, last = await call(admin_mailnode, "DELETE", f"/v1/domains/example.com/dkim/{rotated['selector']}")
    assert status == 409
    assert "last DKIM key" in last["error"]["message"]
    status, _ = await call(admin_mailnode, "DELETE", "/v1/domains/example.com/dkim/mailnode")
    assert status == 404


async def test_an_api_key_is_shown_once_and_stored_as_a_hash(admin_mailnode: Mailnode) -> None:
    await new_domain(admin_mailnode)
    created = await new_key(admin_mailnode, "example.com", expires_at="2099-01-01T00:00:00Z")
    assert re.fullmatch(r"mk_[A-Za-z0-9_-]{40,}", created["key"])
    assert (created["prefix"], created["state"], created["expires_at"]) == (
        created["key"][:8],
        "active",
        "2099-01-01T00:00:00Z",
    )
    digest = hashlib.sha256(created["key"].encode()).hexdigest()
    assert admin_mailnode.rows("SELECT key_hash, domain FROM api_keys WHERE id = ?", created["id"]) == [
        (digest, "example.com")
    ]
    second = await new_key(admin_mailnode, "example.com")
    _, listed = await call(admin_mailnode, "GET", "/v1/domains/example.com/keys")
    assert [k["id"] for k in listed["items"]] == [second["id"], created["id"]]
    assert all("key" not in k for k in listed["items"])
    status, shown = await call(admin_mailnode, "GET", f"/v1/domains/example.com/keys/{created['id']}")
    assert (status, shown) == (200, {k: v for k, v in created.items() if k != "key"})


@pytest.mark.parametrize(
    ("expires_at", "says"),
    [
        ("2001-01-01T00:00:00Z", "in the past"),
        (1, "in the past"),
        ("tomorrow", "RFC 3339"),
        (True, "RFC 3339"),
    ],
)
async def test_a_key_cannot_expire_in_the_past(admin_mailnode: Mailnode, expires_at: Any, says: str) -> None:
    await new_domain(admin_mailnode)
    body = {"name": "app", "expires_at": expires_at}
    status, answer = await call(admin_mailnode, "POST", "/v1/domains/example.com/keys", body)
    assert (status, answer["error"]["field"]) == (400, "expires_at")
    assert says in answer["error"]["message"]


async def test_deactivation_is_for_good_and_asking_twice_answers_the_same(admin_mailnode: Mailnode) -> None:
    await new_domain(admin_mailnode)
    key = await new_key(admin_mailnode, "example.com")
    templates = "/v1/domains/example.com/templates"
    assert (await call(admin_mailnode, "GET", templates, headers=bearer(key["key"])))[0] == 200

    path = f"/v1/domains/example.com/keys/{key['id']}/deactivate"
    status, first = await call(admin_mailnode, "POST", path)
    assert (status, first["state"]) == (200, "deactivated")
    status, second = await call(admin_mailnode, "POST", path)
    assert (status, second) == (200, first)
    status, answer = await call(admin_mailnode, "GET", templates, headers=bearer(key["key"]))
    assert (status, answer["error"]["code"]) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/domains/example.org"),
        ("GET", "/v1/domains/example.org/dns"),
        ("DELETE", "/v1/domains/example.org"),
        ("POST", "/v1/domains/example.org/dkim/rotate"),
        ("GET", "/v1/domains/example.org/keys"),
        ("GET", "/v1/domains/example.org/keys/1"),
        ("GET", "/v1/domains/example.com/keys/999"),
        ("GET", "/v1/domains/example.com/keys/abc"),
        ("POST", "/v1/domains/example.org/keys/1/deactivate"),
        ("GET", "/v1/domains/not..valid"),
    ],
)
async def test_unknown_domains_and_keys_are_404(admin_mailnode: Mailnode, method: str, path: str) -> None:
    await new_domain(admin_mailnode)
    status, answer = await call(admin_mailnode, method, path)
    assert (status, answer["error"]["code"]) == (404, "not_found")


async def test_creating_a_key_for_an_unknown_domain_is_404(admin_mailnode: Mailnode) -> None:
    status, answer = await call(admin_mailnode, "POST", "/v1/domains/example.org/keys", {"name": "x"})
    assert status == 404
    assert "no domain 'example.org'" in answer["error"]["message"]
    assert admin_mailnode.rows("SELECT count(*) FROM api_keys WHERE domain IS NOT NULL") == [(0,)]


async def test_deleting_a_domain_takes_its_keys_and_templates(admin_mailnode: Mailnode) -> None:
    await new_domain(admin_mailnode)
    key = await new_key(admin_mailnode, "example.com")
    template = {"name": "t", "subject": "s", "text": "x"}
    assert (await call(admin_mailnode, "POST", "/v1/domains/example.com/templates", template))[0] == 201

    status, _ = await call(admin_mailnode, "DELETE", "/v1/domains/Example.com")
    assert status == 204
    assert (await call(admin_mailnode, "GET", "/v1/domains/example.com"))[0] == 404
    for table in ("domains", "dkim_keys", "templates"):
        assert admin_mailnode.rows(f"SELECT count(*) FROM {table}") == [(0,)]
    status, _ = await call(
        admin_mailnode, "GET", "/v1/domains/example.com/templates", headers=bearer(key["key"])
    )
    assert status == 401


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_an_expired_key_fails_like_an_unknown_one(tmp_path: Path, sink: Sink) -> None:
    clock = Clock()
    node = await start_mailnode(make_config(tmp_path, sink.port, admin={"token": ADMIN_TOKEN}), clock=clock)
    try:
        await new_domain(node)
        key = await new_key(node, "example.com", expires_at=clock.now + 60)
        templates = "/v1/domains/example.com/templates"
        assert (await call(node, "GET", templates, headers=bearer(key["key"])))[0] == 200
        _, unknown = await call(node, "GET", templates, headers=bearer("mk_" + "x" * 43))

        clock.now += 61
        status, expired = await call(node, "GET", templates, headers=bearer(key["key"]))
        assert (status, expired) == (401, unknown)
        _, shown = await call(node, "GET", f"/v1/domains/example.com/keys/{key['id']}")
        assert shown["state"] == "expired"
    finally:
        await stop_mailnode(node)


async def test_records_that_the_config_cannot_give_say_which_key_to_set(
    mailnode_factory: MailnodeFactory,
) -> None:
    # "localhost" names no host on the Internet: the bounce MX cannot point at it.
    node = await mailnode_factory(admin={"token": ADMIN_TOKEN}, hostname="localhost")
    created = await new_domain(node, dkim_algorithm="ed25519")
    assert created["dns_records"] is None
    assert "`hostname`" in created["dns_error"]
    status, answer = await call(node, "GET", "/v1/domains/example.com/dns")
    assert (status, answer["error"]["code"]) == (409, "dns_config")
    assert "`hostname`" in answer["error"]["message"]

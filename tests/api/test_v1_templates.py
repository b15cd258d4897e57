"""/v1/domains/{domain}/templates over real HTTP: CRUD, paging, checks, who may touch them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.mailnode import Mailnode

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TEMPLATES = "/v1/domains/example.com/templates"
WELCOME = {"name": "welcome", "subject": "Hello {{ name }}", "html": "<p>Hi {{ name }}</p>"}


async def call(
    node: Mailnode, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with node.http.request(
        method, f"{node.url}{path}", json=body, headers=ADMIN if headers is None else headers
    ) as response:
        payload = await response.json() if response.content_type == "application/json" else None
        return response.status, payload


async def domain_with_key(node: Mailnode, name: str) -> str:
    """Create `name` and return the plaintext of a new API key of it."""
    assert (await call(node, "POST", "/v1/domains", {"name": name, "dkim_algorithm": "ed25519"}))[0] == 201
    status, key = await call(node, "POST", f"/v1/domains/{name}/keys", {"name": "app"})
    assert status == 201
    return str(key["key"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(user: str, key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


@pytest.fixture
async def key(admin_mailnode: Mailnode) -> str:
    return await domain_with_key(admin_mailnode, "example.com")


async def test_a_domain_key_creates_reads_changes_and_deletes_its_templates(
    admin_mailnode: Mailnode, key: str
) -> None:
    status, created = await call(admin_mailnode, "POST", TEMPLATES, WELCOME, bearer(key))
    assert status == 201
    assert created["id"].startswith("tpl_")
    assert {k: created[k] for k in WELCOME} == WELCOME
    assert (created["text"], created["domain"]) == (None, "example.com")
    path = f"{TEMPLATES}/{created['id']}"

    status, shown = await call(admin_mailnode, "GET", path, headers=basic("example.com", key))
    assert (status, shown) == (200, created)
    status, changed = await call(admin_mailnode, "PATCH", path, {"text": "Hi {{ name }}"}, bearer(key))
    assert status == 200
    assert (changed["name"], changed["html"], changed["text"]) == (
        "welcome",
        WELCOME["html"],
        "Hi {{ name }}",
    )
    status, changed = await call(admin_mailnode, "PATCH", path, {"html": None})
    assert (status, changed["html"], changed["text"]) == (200, None, "Hi {{ name }}")
    status, refused = await call(admin_mailnode, "PATCH", path, {"text": None})
    assert (status, refused["error"]["field"]) == (400, "text")
    assert (await call(admin_mailnode, "GET", path))[1] == changed

    assert (await call(admin_mailnode, "DELETE", path, headers=bearer(key)))[0] == 204
    status, gone = await call(admin_mailnode, "GET", path)
    assert (status, gone["error"]["code"]) == (404, "not_found")
    assert (await call(admin_mailnode, "DELETE", path))[0] == 404


async def test_templates_are_listed_in_pages_with_the_total(admin_mailnode: Mailnode, key: str) -> None:
    for number in range(5):
        body = {**WELCOME, "name": f"t{number}"}
        assert (await call(admin_mailnode, "POST", TEMPLATES, body, bearer(key)))[0] == 201
    status, page = await call(admin_mailnode, "GET", f"{TEMPLATES}?limit=2&offset=3", headers=bearer(key))
    assert status == 200
    assert ([t["name"] for t in page["items"]], page["total"], page["limit"], page["offset"]) == (
        ["t3", "t4"],
        5,
        2,
        3,
    )
    _, first = await call(admin_mailnode, "GET", TEMPLATES)
    assert (len(first["items"]), first["limit"], first["offset"]) == (5, 50, 0)
    for query in ("limit=0", "limit=201", "offset=-1", "limit=x"):
        status, answer = await call(admin_mailnode, "GET", f"{TEMPLATES}?{query}")
        assert (status, answer["error"]["field"]) == (400, query.split("=")[0])


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({**WELCOME, "html": "<p>{{ name </p>"}, "html", "html"),
        ({**WELCOME, "subject": "{{ ''.__class__.__mro__ }}"}, "subject", "subject"),
        ({**WELCOME, "html": "{{ name.__class__ }}"}, "html", "html"),
        ({**WELCOME, "text": "{% for x in y %}"}, "text", "text"),
        ({"name": "t", "subject": "s"}, "html", "html or text"),
        ({"name": "t", "html": "x"}, "subject", "required"),
        ({"subject": "s", "html": "x"}, "name", "required"),
        ({**WELCOME, "html": None}, "html", "null is not allowed"),
        ({**WELCOME, "name": ""}, "name", "must not be empty"),
        ({**WELCOME, "engine": "mustache"}, "engine", "unknown field"),
    ],
)
async def test_a_template_that_cannot_be_used_is_refused_naming_the_part(
    admin_mailnode: Mailnode, key: str, body: dict[str, Any], field: str, says: str
) -> None:
    status, answer = await call(admin_mailnode, "POST", TEMPLATES, body, bearer(key))
    assert (status, answer["error"]["field"]) == (400, field), answer
    assert says in answer["error"]["message"]
    assert admin_mailnode.rows("SELECT count(*) FROM templates") == [(0,)]


async def test_an_unsafe_edit_is_refused_and_changes_nothing(admin_mailnode: Mailnode, key: str) -> None:
    _, created = await call(admin_mailnode, "POST", TEMPLATES, WELCOME)
    path = f"{TEMPLATES}/{created['id']}"
    unsafe = {"name": "x", "html": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}
    status, answer = await call(admin_mailnode, "PATCH", path, unsafe, bearer(key))
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, "invalid_template", "html")
    assert (await call(admin_mailnode, "GET", path))[1] == created
    status, answer = await call(admin_mailnode, "PATCH", path, {})
    assert (status, answer["error"]["field"]) == (400, "body")


async def test_another_domains_key_gets_the_same_401_as_no_key(admin_mailnode: Mailnode, key: str) -> None:
    other_key = await domain_with_key(admin_mailnode, "example.org")
    _, created = await call(admin_mailnode, "POST", TEMPLATES, WELCOME)
    one = f"{TEMPLATES}/{created['id']}"
    credentials = [
        bearer(other_key),
        basic("example.org", other_key),
        basic("example.com", other_key),  # the key does not belong to the domain Basic names
        basic("example.org", key),
        bearer(admin_mailnode.key),  # a key of no domain
        {},
    ]
    requests = [("GET", TEMPLATES, None), ("POST", TEMPLATES, WELCOME), ("GET", one, None)]
    requests += [
        ("PATCH", one, {"name": "x"}),
        ("DELETE", one, None),
        ("GET", "/v1/domains/a..b/templates", None),
    ]
    answers = []
    for method, path, body in requests:
        for headers in credentials:
            status, answer = await call(admin_mailnode, method, path, body, headers)
            assert status == 401, (method, path, headers)
            answers.append(answer)
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["error"]["code"] == "unauthorized"
    assert (await call(admin_mailnode, "GET", one))[1] == created


async def test_a_key_sees_its_domains_templates_under_any_spelling_of_the_name(
    admin_mailnode: Mailnode, key: str
) -> None:
    status, _ = await call(admin_mailnode, "GET", "/v1/domains/EXAMPLE.com/templates", headers=bearer(key))
    assert status == 200
    status, answer = await call(admin_mailnode, "GET", "/v1/domains/example.net/templates")
    assert (status, answer["error"]["code"]) == (404, "not_found")

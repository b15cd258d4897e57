"""schemathesis against mailnode's own OpenAPI document, over real HTTP to a running Service.

Every operation in GET /v1/openapi.json gets requests generated from its description: valid ones
(positive) and ones that break it (negative), each sent with a credential the operation takes
(the admin token, the domain's API key as Bearer or as Basic). Half the requests name resources
that exist (the domain, its key, template, webhook, batch and delivery made beforehand), so
the routes are exercised past their 404s. The properties, for every response:

* never a 5xx;
* the status code is one the document lists for the operation, and the body (JSON) matches
  the schema given for that status, with the content type and headers it promises;
* for negative requests, a 4xx (schema-invalid input is refused, not half-accepted).

The run is derandomized with a fixed number of examples per operation, so CI sends the same
requests every time. Nothing leaves 127.0.0.1: mail goes to the capture store and webhook URLs
are pointed at a closed loopback port (with [webhooks] allow_private), since a generated URL
would otherwise be resolved and POSTed to by the webhook worker.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.platform import admin_headers, create_domain, send

EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 4}
# The webhook worker POSTs events to webhook URLs: the discard port on loopback, closed.
RECEIVER = "http://127.0.0.1:9/hook"
POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [not_a_server_error, negative_data_rejection, content_type_conformance]
_PATH_PARAMETER = re.compile(r"\{(\w+)\}")


def _credentials(operation: Any, admin: str, key: str, domain: str) -> list[dict[str, str]]:
    """The Authorization headers the operation's security requirements accept."""
    schemes = {name for requirement in operation.definition.raw.get("security", []) for name in requirement}
    basic = base64.b64encode(f"{domain}:{key}".encode()).decode()
    choices = {"adminToken": f"Bearer {admin}", "apiKey": f"Bearer {key}", "apiKeyBasic": f"Basic {basic}"}
    return [{"Authorization": value} for name, value in choices.items() if name in schemes] or [{}]


def _aim_webhooks_at_loopback(case: Case) -> None:
    if isinstance(case.body, dict) and "url" in case.body and "/webhooks" in case.operation.path:
        case.body["url"] = RECEIVER


def run_schemathesis(base_url: str, key: str, domain: str, existing: dict[str, str]) -> list[str]:
    """Fuzz every operation; the failures found (hypothesis's smallest example each)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deletions last, so the resources the others name still exist while they run.
    operations.sort(key=lambda operation: operation.method.upper() == "DELETE")
    failures: list[str] = []
    for operation in operations:
        headers = st.sampled_from(_credentials(operation, ADMIN_TOKEN, key, domain))
        names = _PATH_PARAMETER.findall(operation.path)
        pinned = {name: existing[name] for name in names if name in existing}
        for mode, examples in EXAMPLES.items():
            strategy = operation.as_strategy(generation_mode=mode)
            if pinned:
                strategy = strategy | operation.as_strategy(generation_mode=mode, path_parameters=pinned)
            checks = POSITIVE_CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS
            try:
                _fuzz(strategy, headers, base_url, checks, examples)()
            except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all failures reported
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


def _fuzz(
    strategy: st.SearchStrategy[Case],
    headers: st.SearchStrategy[dict[str, str]],
    base_url: str,
    checks: list[Any],
    examples: int,
) -> Callable[[], None]:
    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, auth=headers)
    def requests_match_the_document(case: Case, auth: dict[str, str]) -> None:
        _aim_webhooks_at_loopback(case)
        case.call_and_validate(base_url=base_url, headers=auth, checks=checks, timeout=10)

    return requests_match_the_document  # type: ignore[no-any-return]


async def test_every_operation_answers_as_the_openapi_document_says(
    mailnode_factory: MailnodeFactory,
) -> None:
    node = await mailnode_factory(admin={"token": ADMIN_TOKEN}, webhooks={"allow_private": True})
    domain = await create_domain(node, "fuzz.example.com")
    base = f"{node.url}/v1/domains/{domain.name}"
    async with node.http.post(
        f"{base}/templates",
        json={"name": "welcome", "subject": "Hi {{ name }}", "text": "Hello {{ name }}"},
        headers=admin_headers(),
    ) as response:
        assert response.status == 201, await response.text()
        template_id = str((await response.json())["id"])
    async with node.http.post(
        f"{base}/webhooks", json={"url": RECEIVER, "event_types": ["delivered"]}, headers=admin_headers()
    ) as response:
        assert response.status == 201, await response.text()
        webhook_id = str((await response.json())["id"])
    status, sent = await send(
        node,
        domain,
        {
            "sender": {"email": f"news@{domain.name}"},
            "recipients": [{"email": "reader@example.net"}],
            "subject": "s",
            "text": "t",
        },
    )
    assert status == 202, sent
    batch_id = sent["batch_id"]
    async with node.http.get(f"{node.url}/v1/batches/{batch_id}/deliveries", headers=domain.headers()) as r:
        deliveries = (await r.json())["items"]
    existing = {
        "domain": domain.name,
        "key_id": str(domain.key_id),
        "template_id": template_id,
        "webhook_id": webhook_id,
        "batch_id": batch_id,
        "delivery_id": deliveries[0]["id"],
        "selector": next(r["name"] for r in domain.dns if "._domainkey" in r["name"]).split(".")[0],
        "address": "reader@example.net",
    }

    failures = await asyncio.to_thread(run_schemathesis, node.url, domain.key, domain.name, existing)

    assert failures == [], "\n\n".join(failures)


async def test_a_time_past_year_9999_is_a_400_naming_the_field(mailnode_factory: MailnodeFactory) -> None:
    """Found by the run above: such an expires_at was stored, then every answer about the key was a 500."""
    node = await mailnode_factory(admin={"token": ADMIN_TOKEN})
    domain = await create_domain(node, "fuzz.example.com")
    async with node.http.post(
        f"{node.url}/v1/domains/{domain.name}/keys",
        json={"name": "k", "expires_at": 1.8e281},
        headers=admin_headers(),
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "expires_at"
    async with node.http.get(
        f"{node.url}/v1/domains/{domain.name}/events?from=1e300", headers=admin_headers()
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "from"

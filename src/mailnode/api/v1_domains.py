"""/v1/domains: sending domains, their DKIM keys and DNS records, API keys (admin) and templates.

Domains and their API keys are the operator's (admin token); a domain's templates are also open
to that domain's own API keys. A `{domain}` in a path is canonicalised (`Example.COM` works).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast
from urllib.parse import urlsplit

from aiohttp import web

from mailnode.api.auth import require_admin, require_admin_or_domain
from mailnode.api.context import AppContext, context
from mailnode.api.errors import ApiError, bad_request
from mailnode.api.validation import future_time, int_query, json_object, rfc3339, text_field
from mailnode.config import Config
from mailnode.core.apikey import key_hash, key_prefix, new_api_key
from mailnode.core.dkim_keys import (
    ALGORITHMS,
    DkimAlgorithm,
    DkimKeyPair,
    DomainNameError,
    canonical_domain,
    dkim_txt_value,
    generate_dkim_key,
)
from mailnode.core.dns_records import DnsRecord, records_to_publish
from mailnode.core.templating import TemplateError, compile_content
from mailnode.core.tracking import AXES, TrackingPolicy, TrackingPolicyError
from mailnode.errors import NotFoundError
from mailnode.storage.domains import DkimKeyRecord, DomainRecord, TemplateRecord, new_template_id
from mailnode.storage.store import ApiKeyRecord

MAX_KEY_NAME = 128
MAX_TEMPLATE_NAME = 200
MAX_SUBJECT = 2000
MAX_TEMPLATE_PART = 1_000_000  # characters of html or text
DEFAULT_PAGE = 50
MAX_PAGE = 200
_CREATE_DOMAIN_FIELDS = frozenset({"name", "dkim_algorithm", "tracking"})
_ROTATE_FIELDS = frozenset({"dkim_algorithm"})
_CREATE_KEY_FIELDS = frozenset({"name", "expires_at"})
_TEMPLATE_FIELDS = frozenset({"name", "subject", "html", "text"})
_TEMPLATE_BODIES = frozenset({"html", "text"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/domains", create_domain)
    router.add_get("/v1/domains", list_domains)
    router.add_get("/v1/domains/{domain}", get_domain)
    router.add_delete("/v1/domains/{domain}", delete_domain)
    router.add_get("/v1/domains/{domain}/dns", get_dns)
    router.add_put("/v1/domains/{domain}/tracking", set_tracking)
    router.add_post("/v1/domains/{domain}/dkim/rotate", rotate_dkim)
    router.add_delete("/v1/domains/{domain}/dkim/{selector}", remove_dkim)
    router.add_post("/v1/domains/{domain}/keys", create_key)
    router.add_get("/v1/domains/{domain}/keys", list_keys)
    router.add_get("/v1/domains/{domain}/keys/{key_id}", get_key)
    router.add_post("/v1/domains/{domain}/keys/{key_id}/deactivate", deactivate_key)
    router.add_post("/v1/domains/{domain}/templates", create_template)
    router.add_get("/v1/domains/{domain}/templates", list_templates)
    router.add_get("/v1/domains/{domain}/templates/{template_id}", get_template)
    router.add_patch("/v1/domains/{domain}/templates/{template_id}", update_template)
    router.add_delete("/v1/domains/{domain}/templates/{template_id}", delete_template)


# -- domains ---------------------------------------------------------------------------------


async def create_domain(request: web.Request) -> web.Response:
    """A new domain with a fresh DKIM key; the answer lists the DNS records to publish."""
    require_admin(request)
    ctx = context(request)
    body = await json_object(request, _CREATE_DOMAIN_FIELDS)
    name = _domain_name(text_field(body, "name", max_length=300) or "")
    tracking = _tracking_policy(body.get("tracking", {}), "tracking")
    key = await _new_key(ctx, body)
    domain = await ctx.domains.create_domain(name, key, ctx.config.platform.dkim_selector, tracking)
    answer = domain_with_records_json(ctx.config, domain)
    return web.json_response(answer, status=201, headers={"Location": f"/v1/domains/{name}"})


async def set_tracking(request: web.Request) -> web.Response:
    """Set the domain's tracking ceiling, per axis; an axis left out is off (as in Kannon)."""
    require_admin(request)
    ctx = context(request)
    body = await json_object(request, frozenset(AXES))
    tracking = _tracking_policy(body, "")
    domain = await ctx.domains.set_tracking(_path_domain(request), tracking)
    return web.json_response(domain_json(domain))


def _tracking_policy(value: object, path: str) -> TrackingPolicy:
    try:
        return TrackingPolicy.parse(value, path)
    except TrackingPolicyError as exc:
        raise bad_request(exc.path.lstrip("."), exc.problem) from None


async def list_domains(request: web.Request) -> web.Response:
    require_admin(request)
    domains = await context(request).domains.list_domains()
    return web.json_response({"items": [domain_json(d) for d in domains]})


async def get_domain(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response(domain_json(await _domain(request)))


async def delete_domain(request: web.Request) -> web.Response:
    """Delete the domain with its keys and templates; its unsent deliveries are cancelled."""
    require_admin(request)
    await context(request).domains.delete_domain(_path_domain(request))
    return web.Response(status=204)


async def get_dns(request: web.Request) -> web.Response:
    """The records the domain's owner publishes: DKIM, SPF, DMARC, bounce MX, tracking."""
    require_admin(request)
    ctx = context(request)
    domain = await _domain(request)
    try:
        records = dns_records(ctx.config, domain)
    except ValueError as exc:
        raise ApiError(409, "dns_config", dns_problem(exc)) from None
    return web.json_response({"records": [record_json(r) for r in records]})


async def rotate_dkim(request: web.Request) -> web.Response:
    """A new key under a new selector signs from now on; the old one stays until removed."""
    require_admin(request)
    ctx = context(request)
    name = _path_domain(request)
    body = await json_object(request, _ROTATE_FIELDS, empty_ok=True)
    key = await _new_key(ctx, body)
    record = await ctx.domains.add_dkim_key(name, key, ctx.config.platform.dkim_selector)
    answer = {**_dkim_json(record, signing=True), "dns_record": record_json(dkim_dns_record(name, record))}
    return web.json_response(answer, status=201)


async def remove_dkim(request: web.Request) -> web.Response:
    """Retire a key (unpublish its record afterwards); the last key cannot go."""
    require_admin(request)
    selector = request.match_info["selector"].lower()
    await context(request).domains.remove_dkim_key(_path_domain(request), selector)
    return web.Response(status=204)


# -- API keys ----------------------------------------------------------------------------------


async def create_key(request: web.Request) -> web.Response:
    """A new API key of the domain; the plaintext is in this answer only."""
    require_admin(request)
    ctx = context(request)
    name = _path_domain(request)
    body = await json_object(request, _CREATE_KEY_FIELDS)
    key_name = text_field(body, "name", max_length=MAX_KEY_NAME) or ""
    expires_at = None
    if "expires_at" in body:
        expires_at = future_time(body["expires_at"], "expires_at", ctx.store.clock())
    plaintext = new_api_key(ctx.random_bytes)
    record = await ctx.domains.create_api_key(
        name, name=key_name, prefix=key_prefix(plaintext), key_hash=key_hash(plaintext), expires_at=expires_at
    )
    location = f"/v1/domains/{name}/keys/{record.id}"
    answer = {"key": plaintext, **_key_json(record, ctx.store.clock())}
    return web.json_response(answer, status=201, headers={"Location": location})


async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = context(request)
    records = await ctx.domains.list_api_keys(_path_domain(request))
    now = ctx.store.clock()
    return web.json_response({"items": [_key_json(r, now) for r in records]})


async def get_key(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = context(request)
    name, key_id = _path_domain(request), _key_id(request)
    record = await ctx.domains.get_api_key(name, key_id)
    if record is None:
        await _domain(request)  # an unknown domain says so
        raise NotFoundError(f"domain {name!r} has no API key {key_id}")
    return web.json_response(_key_json(record, ctx.store.clock()))


async def deactivate_key(request: web.Request) -> web.Response:
    """Deactivate for good; asking again answers the same, with the first deactivated_at."""
    require_admin(request)
    ctx = context(request)
    name, key_id = _path_domain(request), _key_id(request)
    await _domain(request)
    record = await ctx.domains.deactivate_api_key(name, key_id)
    return web.json_response(_key_json(record, ctx.store.clock()))


# -- templates ---------------------------------------------------------------------------------


async def create_template(request: web.Request) -> web.Response:
    ctx = context(request)
    name = scoped_domain(request)
    body = await json_object(request, _TEMPLATE_FIELDS)
    fields = _template_fields(body)
    if "name" not in fields or "subject" not in fields:
        raise bad_request("name" if "name" not in fields else "subject", "required")
    if fields.get("html") is None and fields.get("text") is None:
        raise bad_request("html", "a template needs html or text (or both)")
    _check_template(fields["subject"], fields.get("html"), fields.get("text"))
    record = await ctx.domains.create_template(
        name,
        new_template_id(ctx.random_bytes),
        name=fields["name"],
        subject=fields["subject"],
        html=fields.get("html"),
        text=fields.get("text"),
    )
    location = f"/v1/domains/{name}/templates/{record.id}"
    return web.json_response(template_json(record), status=201, headers={"Location": location})


async def list_templates(request: web.Request) -> web.Response:
    """A page of the domain's templates, oldest first, with the total count."""
    name = scoped_domain(request)
    limit = int_query(request, "limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE)
    offset = int_query(request, "offset", default=0, low=0, high=2**31)
    items, total = await context(request).domains.list_templates(name, limit=limit, offset=offset)
    answer = {"items": [template_json(t) for t in items], "total": total, "limit": limit, "offset": offset}
    return web.json_response(answer)


async def get_template(request: web.Request) -> web.Response:
    name = scoped_domain(request)
    template_id = request.match_info["template_id"]
    record = await context(request).domains.get_template(name, template_id)
    if record is None:
        await _domain(request)
        raise NotFoundError(f"domain {name!r} has no template {template_id!r}")
    return web.json_response(template_json(record))


async def update_template(request: web.Request) -> web.Response:
    """Change the fields given; null removes html or text (one of them must remain)."""
    name = scoped_domain(request)
    body = await json_object(request, _TEMPLATE_FIELDS, nullable=_TEMPLATE_BODIES)
    if not body:
        raise bad_request("body", f"nothing to change; give any of {', '.join(sorted(_TEMPLATE_FIELDS))}")
    changes = _template_fields(body)

    def edit(current: TemplateRecord) -> TemplateRecord:
        edited = replace(current, **changes)
        if edited.html is None and edited.text is None:
            raise bad_request("html" if "html" in changes else "text", "a template needs html or text")
        _check_template(edited.subject, edited.html, edited.text)
        return edited

    domains = context(request).domains
    record = await domains.update_template(name, request.match_info["template_id"], edit)
    return web.json_response(template_json(record))


async def delete_template(request: web.Request) -> web.Response:
    name = scoped_domain(request)
    await context(request).domains.delete_template(name, request.match_info["template_id"])
    return web.Response(status=204)


def _template_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The template fields present in `body`, each checked; html/text may be None (remove)."""
    fields: dict[str, Any] = {}
    limits = {"name": MAX_TEMPLATE_NAME, "subject": MAX_SUBJECT, "html": MAX_TEMPLATE_PART}
    for field, limit in {**limits, "text": MAX_TEMPLATE_PART}.items():
        if field in body:
            fields[field] = text_field(body, field, max_length=limit, required=field not in _TEMPLATE_BODIES)
    if "\r" in fields.get("subject", "") or "\n" in fields.get("subject", ""):
        raise bad_request("subject", "must not contain CR or LF (it becomes the Subject header)")
    return fields


def _check_template(subject: str, html: str | None, text: str | None) -> None:
    """Compile every part once: a syntax error or an unsafe access is a 400 naming the part."""
    try:
        compile_content(subject, html, text, None)
    except TemplateError as exc:
        raise ApiError(400, "invalid_template", str(exc), field=exc.part) from None


# -- the domain in the path ----------------------------------------------------------------------


def _domain_name(text: str) -> str:
    """A domain name from a request body, canonical, or a 400 saying what is wrong with it."""
    try:
        return canonical_domain(text)
    except DomainNameError as exc:
        raise bad_request("name", str(exc)) from None


def _path_domain(request: web.Request) -> str:
    """The canonical `{domain}` of the path; a name that cannot exist is a 404."""
    raw = request.match_info["domain"]
    try:
        return canonical_domain(raw)
    except DomainNameError as exc:
        raise NotFoundError(f"no domain {raw!r}: {exc}") from None


def scoped_domain(request: web.Request) -> str:
    """The path's domain for per-domain routes: the operator's, or the caller key's own."""
    try:
        name = _path_domain(request)
    except NotFoundError:
        require_admin(request)  # a key's own domain is always a valid name: others get the 401
        raise
    require_admin_or_domain(request, name)
    return name


async def _domain(request: web.Request) -> DomainRecord:
    name = _path_domain(request)
    domain = await context(request).domains.get_domain(name)
    if domain is None:
        raise NotFoundError(f"no domain {name!r}; list them with GET /v1/domains")
    return domain


def _key_id(request: web.Request) -> int:
    text = request.match_info["key_id"]
    if not text.isdigit() or len(text) > 18:
        raise NotFoundError(f"no API key {text!r}; key ids are numbers, as GET /v1/domains/{{d}}/keys lists")
    return int(text)


async def _new_key(ctx: AppContext, body: dict[str, Any]) -> DkimKeyPair:
    """A fresh DKIM key of the requested (or configured) algorithm, made off the event loop."""
    algorithm = body.get("dkim_algorithm", ctx.config.platform.dkim_algorithm)
    if algorithm not in ALGORITHMS:
        raise bad_request("dkim_algorithm", f"must be one of {', '.join(ALGORITHMS)}")
    # RSA key generation takes tens of milliseconds of CPU: not on the event loop.
    return await asyncio.to_thread(generate_dkim_key, cast(DkimAlgorithm, algorithm))


# -- DNS records ---------------------------------------------------------------------------------


def dns_records(config: Config, domain: DomainRecord) -> list[DnsRecord]:
    """The records to publish for `domain` with this server's config; ValueError if it cannot say."""
    tracking_host = urlsplit(config.tracking_base_url).hostname
    target: str | None = config.smtp_hostname
    if tracking_host is None or tracking_host == target or not _is_dns_name(tracking_host):
        tracking_host = target = None  # tracking on this server's own name or an address
    return records_to_publish(
        domain=domain.name,
        dkim=[(k.selector, k.algorithm, k.public_key_b64) for k in domain.dkim_keys],
        sending_ips=config.platform.sending_ips,
        bounce_domain=config.bounce_domain,
        bounce_mx_host=config.smtp_hostname,
        tracking_host=tracking_host,
        tracking_target=target,
    )


def _is_dns_name(host: str) -> bool:
    try:
        canonical_domain(host)
    except DomainNameError:
        return False
    return True


def dns_problem(exc: ValueError) -> str:
    """Why the records cannot be built, and which config keys to set."""
    return (
        f"cannot build the DNS records from this server's config: {exc}. The bounce MX points at "
        "`hostname` (or [smtp] hostname), which must be this server's public name like mail.example.net; "
        "bounces use [platform] bounce_domain"
    )


def dkim_dns_record(domain: str, key: DkimKeyRecord) -> DnsRecord:
    """The TXT record that publishes one DKIM key (RFC 6376 §3.6.2.1)."""
    value = dkim_txt_value(key.algorithm, key.public_key_b64)
    purpose = f"DKIM public key for selector {key.selector} ({key.algorithm})"
    return DnsRecord(f"{key.selector}._domainkey.{domain}", "TXT", value, purpose)


# -- answers ---------------------------------------------------------------------------------


def domain_json(domain: DomainRecord) -> dict[str, Any]:
    """A domain as /v1 answers it (also `mailnode domain show --json`)."""
    signing = domain.signing_key
    return {
        "name": domain.name,
        "created_at": rfc3339(domain.created_at),
        "dkim": [_dkim_json(k, signing=k is signing) for k in domain.dkim_keys],
        "tracking": domain.tracking.to_json(),
    }


def domain_with_records_json(config: Config, domain: DomainRecord) -> dict[str, Any]:
    """A domain with its DNS records, or with dns_error saying why the config cannot give them."""
    answer = domain_json(domain)
    try:
        answer["dns_records"] = [record_json(r) for r in dns_records(config, domain)]
    except ValueError as exc:
        answer["dns_records"], answer["dns_error"] = None, dns_problem(exc)
    return answer


def _dkim_json(key: DkimKeyRecord, *, signing: bool) -> dict[str, Any]:
    return {
        "selector": key.selector,
        "algorithm": key.algorithm,
        "public_key": key.public_key_b64,
        "created_at": rfc3339(key.created_at),
        "signing": signing,
    }


def record_json(record: DnsRecord) -> dict[str, str]:
    """A DNS record to publish, as /v1 answers it."""
    return {"name": record.name, "type": record.type, "value": record.value, "purpose": record.purpose}


def _key_json(record: ApiKeyRecord, now: float) -> dict[str, Any]:
    if record.deactivated_at is not None:
        state = "deactivated"
    elif record.expires_at is not None and record.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    return {
        "id": record.id,
        "prefix": record.prefix,
        "name": record.name,
        "domain": record.domain,
        "state": state,
        "created_at": rfc3339(record.created_at),
        "expires_at": rfc3339(record.expires_at),
        "deactivated_at": rfc3339(record.deactivated_at),
    }


def template_json(record: TemplateRecord) -> dict[str, Any]:
    """A template as /v1 answers it."""
    return {
        "id": record.id,
        "domain": record.domain,
        "name": record.name,
        "subject": record.subject,
        "html": record.html,
        "text": record.text,
        "created_at": rfc3339(record.created_at),
        "updated_at": rfc3339(record.updated_at),
    }

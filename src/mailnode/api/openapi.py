"""The OpenAPI 3.1 document of /v1 (and GET /metrics), served at GET /v1/openapi.json (public).

tests/api/test_openapi.py checks it against the routes the app really has, both ways: a /v1
route without a description here (or a description without a route) fails the suite.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from mailnode import __version__
from mailnode.core.events import EventType, SuppressionReason
from mailnode.core.tracking import TrackingMode

Schema = dict[str, Any]

Security = list[dict[str, list[str]]]
_ADMIN: Security = [{"adminToken": []}]
_KEY: Security = [{"apiKey": []}, {"apiKeyBasic": []}]
_ADMIN_OR_KEY = _ADMIN + _KEY


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/openapi.json", get_openapi)


async def get_openapi(request: web.Request) -> web.Response:
    """The document, built once per process."""
    return web.Response(body=_DOCUMENT_JSON, content_type="application/json")


def document() -> Schema:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailnode sending platform",
            "version": __version__,
            "description": _DESCRIPTION,
        },
        "paths": {
            **_domain_paths(),
            **_key_paths(),
            **_template_paths(),
            **_send_paths(),
            **_feedback_paths(),
            **_webhook_paths(),
            **_doc_paths(),
            **_operations_paths(),
        },
        "components": {
            "securitySchemes": _SECURITY_SCHEMES,
            "schemas": {
                **_common_schemas(),
                **_domain_schemas(),
                **_template_schemas(),
                **_send_schemas(),
                **_feedback_schemas(),
                **_webhook_schemas(),
            },
            "parameters": _PARAMETERS,
            "responses": _RESPONSES,
        },
    }


_DESCRIPTION = (
    "Domains with DKIM keys, API keys, templates and batch sends. Admin routes take the operator "
    "token from `[admin] token`; sending routes take a domain's API key as `Authorization: Bearer "
    "<key>` or HTTP Basic `<domain>:<key>`. Every authentication failure gets the same 401 answer. "
    'Errors are `{"error": {"code", "message", "field"?}}`. Times are RFC 3339 UTC.'
)


# -- building blocks -----------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def _error(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: Schema, description: str = "JSON object") -> Schema:
    return {"required": True, **_json(schema, description)}


def _op(
    operation_id: str,
    summary: str,
    security: Security,
    responses: dict[str, Schema],
    *,
    parameters: tuple[str, ...] = (),
    body: Schema | None = None,
    errors: tuple[str, ...] = (),
) -> Schema:
    """One operation; `errors` names the error answers beside 401 (which every secured one has)."""
    answers = dict(responses)
    for status in (*errors, *(("401",) if security else ())):
        answers[status] = _error(_ERROR_NAMES[status])
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "security": security,
        "responses": answers,
    }
    if parameters:
        operation["parameters"] = [_param(name) for name in parameters]
    if body is not None:
        operation["requestBody"] = body
    return operation


_NO_CONTENT = {"204": {"description": "Done; no content."}}
_ERROR_NAMES = {
    "400": "BadRequest",
    "401": "Unauthorized",
    "403": "Forbidden",
    "404": "NotFound",
    "409": "Conflict",
    "413": "TooLarge",
}


def _object(properties: Schema, required: tuple[str, ...] = (), description: str = "") -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def _string(description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


_TIME = _string(format="date-time")
_TIME_OR_NULL = _nullable(_TIME)
_TRACKING_MODE = {"type": "string", "enum": [mode.value for mode in TrackingMode]}


# -- paths ---------------------------------------------------------------------------------------


def _domain_paths() -> dict[str, Schema]:
    domain = ("Domain",)
    return {
        "/v1/domains": {
            "post": _op(
                "createDomain",
                "Create a domain and its first DKIM key; the answer lists the DNS records to publish",
                _ADMIN,
                {"201": _json(_ref("DomainCreated"), "The domain")},
                body=_body(_ref("DomainCreate")),
                errors=("400", "409"),
            ),
            "get": _op(
                "listDomains",
                "List domains",
                _ADMIN,
                {"200": _json(_object({"items": {"type": "array", "items": _ref("Domain")}}), "Domains")},
            ),
        },
        "/v1/domains/{domain}": {
            "get": _op(
                "getDomain",
                "A domain and its DKIM keys",
                _ADMIN,
                {"200": _json(_ref("Domain"), "The domain")},
                parameters=domain,
                errors=("404",),
            ),
            "delete": _op(
                "deleteDomain",
                "Delete a domain, its API keys and templates; cancel its unsent deliveries",
                _ADMIN,
                _NO_CONTENT,
                parameters=domain,
                errors=("404",),
            ),
        },
        "/v1/domains/{domain}/tracking": {
            "put": _op(
                "setDomainTracking",
                "Set the tracking ceiling (and default) per axis; an axis left out is off",
                _ADMIN,
                {"200": _json(_ref("Domain"), "The domain as changed")},
                parameters=domain,
                body=_body(_ref("TrackingPolicy")),
                errors=("400", "404"),
            ),
        },
        "/v1/domains/{domain}/dns": {
            "get": _op(
                "getDomainDns",
                "The DNS records to publish: DKIM, SPF, DMARC, the bounce MX, tracking",
                _ADMIN,
                {
                    "200": _json(
                        _object({"records": {"type": "array", "items": _ref("DnsRecord")}}), "Records"
                    )
                },
                parameters=domain,
                errors=("404", "409"),
            ),
        },
        "/v1/domains/{domain}/dkim/rotate": {
            "post": _op(
                "rotateDkim",
                "A new DKIM key under a new selector signs from now on; older keys stay until removed",
                _ADMIN,
                {"201": _json(_ref("DkimKeyCreated"), "The new key")},
                parameters=domain,
                body={**_body(_ref("DkimRotate")), "required": False},
                errors=("400", "404"),
            ),
        },
        "/v1/domains/{domain}/dkim/{selector}": {
            "delete": _op(
                "removeDkimKey",
                "Remove a DKIM key; the domain's last key cannot be removed (409)",
                _ADMIN,
                _NO_CONTENT,
                parameters=(*domain, "Selector"),
                errors=("404", "409"),
            ),
        },
    }


def _key_paths() -> dict[str, Schema]:
    domain = ("Domain",)
    one = ("Domain", "KeyId")
    return {
        "/v1/domains/{domain}/keys": {
            "post": _op(
                "createApiKey",
                "Create an API key; its plaintext is in this answer only",
                _ADMIN,
                {"201": _json(_ref("ApiKeyCreated"), "The key, with its plaintext")},
                parameters=domain,
                body=_body(_ref("ApiKeyCreate")),
                errors=("400", "404"),
            ),
            "get": _op(
                "listApiKeys",
                "The domain's API keys, newest first (prefix only)",
                _ADMIN,
                {"200": _json(_object({"items": {"type": "array", "items": _ref("ApiKey")}}), "Keys")},
                parameters=domain,
                errors=("404",),
            ),
        },
        "/v1/domains/{domain}/keys/{key_id}": {
            "get": _op(
                "getApiKey",
                "One API key (prefix only)",
                _ADMIN,
                {"200": _json(_ref("ApiKey"), "The key")},
                parameters=one,
                errors=("404",),
            ),
        },
        "/v1/domains/{domain}/keys/{key_id}/deactivate": {
            "post": _op(
                "deactivateApiKey",
                "Deactivate a key for good; asking again answers the same",
                _ADMIN,
                {"200": _json(_ref("ApiKey"), "The deactivated key")},
                parameters=one,
                errors=("404",),
            ),
        },
    }


def _template_paths() -> dict[str, Schema]:
    domain = ("Domain",)
    one = ("Domain", "TemplateId")
    return {
        "/v1/domains/{domain}/templates": {
            "post": _op(
                "createTemplate",
                "Create a template (jinja2, sandboxed; checked when stored)",
                _ADMIN_OR_KEY,
                {"201": _json(_ref("Template"), "The template")},
                parameters=domain,
                body=_body(_ref("TemplateCreate")),
                errors=("400", "404"),
            ),
            "get": _op(
                "listTemplates",
                "A page of the domain's templates, oldest first, with the total",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("TemplatePage"), "Templates")},
                parameters=(*domain, "Limit", "Offset"),
                errors=("400", "404"),
            ),
        },
        "/v1/domains/{domain}/templates/{template_id}": {
            "get": _op(
                "getTemplate",
                "One template",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("Template"), "The template")},
                parameters=one,
                errors=("404",),
            ),
            "patch": _op(
                "updateTemplate",
                "Change the fields given; null removes html or text (one must remain)",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("Template"), "The template as changed")},
                parameters=one,
                body=_body(_ref("TemplatePatch")),
                errors=("400", "404"),
            ),
            "delete": _op(
                "deleteTemplate",
                "Delete a template",
                _ADMIN_OR_KEY,
                _NO_CONTENT,
                parameters=one,
                errors=("404",),
            ),
        },
    }


def _send_paths() -> dict[str, Schema]:
    batch = ("BatchId",)
    return {
        "/v1/send": {
            "post": _op(
                "send",
                "Send html, text or a template to recipients, one delivery each",
                _KEY,
                {
                    "202": _json(
                        _ref("SendAccepted"), "Accepted; the recipients that cannot be sent are listed"
                    )
                },
                parameters=("IdempotencyKey",),
                body=_body(_ref("SendRequest")),
                errors=("400", "403", "409", "413"),
            ),
        },
        "/v1/batches/{batch_id}": {
            "get": _op(
                "getBatch",
                "A batch and its deliveries counted per status",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("Batch"), "The batch")},
                parameters=batch,
                errors=("404",),
            ),
        },
        "/v1/batches/{batch_id}/deliveries": {
            "get": _op(
                "listBatchDeliveries",
                "A page of the batch's deliveries: status, attempts, last answer",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("DeliveryPage"), "Deliveries")},
                parameters=(*batch, "PageLimit", "Cursor"),
                errors=("400", "404"),
            ),
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": _op(
                "cancelBatch",
                "Cancel what has not been sent; delivered stays delivered",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("BatchCancelled"), "The batch after the cancel")},
                parameters=batch,
                errors=("404",),
            ),
        },
    }


def _feedback_paths() -> dict[str, Schema]:
    domain = ("Domain",)
    one = ("Domain", "Address")
    return {
        "/v1/domains/{domain}/suppressions": {
            "get": _op(
                "listSuppressions",
                "A page of the addresses the domain does not send to, oldest first",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("SuppressionPage"), "Suppressions")},
                parameters=(*domain, "Reason", "PageLimit", "Cursor"),
                errors=("400", "404"),
            ),
            "post": _op(
                "addSuppression",
                "Stop sending to an address (201; 200 if it already was)",
                _ADMIN_OR_KEY,
                {
                    "201": _json(_ref("Suppression"), "Suppressed"),
                    "200": _json(_ref("Suppression"), "Was suppressed already"),
                },
                parameters=domain,
                body=_body(_ref("SuppressionCreate")),
                errors=("400", "404"),
            ),
        },
        "/v1/domains/{domain}/suppressions/{address}": {
            "get": _op(
                "getSuppression",
                "Whether one address is suppressed",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("Suppression"), "It is")},
                parameters=one,
                errors=("400", "404"),
            ),
            "delete": _op(
                "removeSuppression",
                "Send to the address again",
                _ADMIN_OR_KEY,
                _NO_CONTENT,
                parameters=one,
                errors=("400", "404"),
            ),
        },
        "/v1/domains/{domain}/stats": {
            "get": _op(
                "getStats",
                "Counts per event type and hour or day in [from, to): one dense series per type",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("Stats"), "The series")},
                parameters=(*domain, "From", "To", "Granularity"),
                errors=("400", "404"),
            ),
        },
        "/v1/domains/{domain}/events": {
            "get": _op(
                "listEvents",
                "A page of raw events, oldest first (kept [events] retention_days)",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("EventPage"), "Events")},
                parameters=(
                    *domain,
                    "EventTypes",
                    "Recipient",
                    "Batch",
                    "Delivery",
                    "From",
                    "To",
                    "PageLimit",
                    "Cursor",
                ),
                errors=("400", "404"),
            ),
        },
        "/v1/deliveries/{delivery_id}": {
            "get": _op(
                "getDelivery",
                "One delivery: its status, every attempt's answers, its events",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("DeliveryStory"), "The delivery")},
                parameters=("DeliveryId",),
                errors=("404",),
            ),
        },
    }


def _doc_paths() -> dict[str, Schema]:
    document = {"type": "object", "description": "An OpenAPI 3.1 document"}
    return {
        "/v1/openapi.json": {
            "get": _op("getOpenApi", "This document (no authentication)", [], {"200": _json(document, "OK")})
        }
    }


def _operations_paths() -> dict[str, Schema]:
    text = {"type": "string", "description": "Prometheus text format 0.0.4 (OpenMetrics if Accept asks)"}
    ok = {
        "description": "Counters, gauges and histograms named mailnode_*; no label holds an address or id",
        "content": {"text/plain": {"schema": text}, "application/openmetrics-text": {"schema": text}},
    }
    summary = (
        "The service's metrics for Prometheus: SMTP sessions and replies, deliveries, queue depth, "
        "attempt latency, DKIM signing time, HTTP requests, events, webhook backlog. The admin "
        "token, or no credentials with [metrics] public = true"
    )
    return {"/metrics": {"get": _op("getMetrics", summary, _ADMIN, {"200": ok})}}


# -- components ----------------------------------------------------------------------------------

_SECURITY_SCHEMES = {
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator token ([admin] token or token_file): admin routes.",
    },
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "A domain's API key (mk_…): sending routes and the domain's templates.",
    },
    "apiKeyBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "HTTP Basic with the domain as user name and its API key as password.",
    },
}


def _path(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _query(name: str, description: str, default: int, low: int, high: int) -> Schema:
    schema = {"type": "integer", "minimum": low, "maximum": high, "default": default}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _query_text(name: str, description: str, **schema: Any) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_EVENT_TYPES = [kind.value for kind in EventType]
_TIME_QUERY = "RFC 3339 with a zone, or Unix seconds"

_PARAMETERS = {
    "Domain": _path("domain", "A domain name; canonicalised (Example.COM and IDNs work)"),
    "Selector": _path("selector", "A DKIM selector of the domain"),
    "KeyId": _path("key_id", "An API key's id", {"type": "integer", "minimum": 1}),
    "TemplateId": _path("template_id", "A template's id (tpl_…)"),
    "BatchId": _path("batch_id", "A batch's id (bat_…)"),
    "WebhookId": _path("webhook_id", "A webhook's id (wh_…)"),
    "Limit": _query("limit", "Items per page", 50, 1, 200),
    "Offset": _query("offset", "Items to skip", 0, 0, 2**31),
    "PageLimit": _query("limit", "Items per page", 100, 1, 1000),
    "Cursor": _query("cursor", "next_cursor of the previous page", 0, 0, 2**62),
    "Address": _path("address", "An email address (compared lower-cased)"),
    "DeliveryId": _path("delivery_id", "A delivery's id, as batches and events name it"),
    "Reason": _query_text("reason", "Only this reason", enum=[reason.value for reason in SuppressionReason]),
    "From": _query_text("from", f"Start (inclusive); {_TIME_QUERY}"),
    "To": _query_text("to", f"End (exclusive); {_TIME_QUERY}; default now"),
    "Granularity": _query_text("granularity", "Bucket size", enum=["hour", "day"], default="hour"),
    "EventTypes": _query_text("type", f"Only these types, comma-separated: {', '.join(_EVENT_TYPES)}"),
    "Recipient": _query_text("recipient", "Only this recipient (case-insensitive)"),
    "Batch": _query_text("batch", "Only this batch (bat_…)"),
    "Delivery": _query_text("delivery", "Only this delivery"),
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Repeat a send safely for 24 h: the same key and body get the first answer and "
        "send nothing new; the same key with another body is a 409.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
}


def _error_response(description: str) -> Schema:
    return _json(_ref("Error"), description)


_RESPONSES = {
    "BadRequest": _error_response("The request is malformed; error.field names the field"),
    "Unauthorized": _error_response("Missing or invalid credentials (the same answer for every cause)"),
    "Forbidden": _error_response("The key may not do this (e.g. send from another domain)"),
    "NotFound": _error_response("No such domain, key, template or batch"),
    "Conflict": _error_response("Contradicts what is stored (exists already, last key, idempotency)"),
    "TooLarge": _error_response("Over a limit: recipients per send or content size"),
}


def _feedback_schemas() -> dict[str, Schema]:
    integer = {"type": "integer"}
    next_cursor = _nullable(_string("Give back as cursor for the next page; null: no more"))
    suppression = _object(
        {
            "address": _string(),
            "reason": {"type": "string", "enum": [reason.value for reason in SuppressionReason]},
            "details": {"type": "object", "description": "What caused it: the event, SMTP code and text"},
            "created_at": _TIME,
        },
        ("address", "reason", "details", "created_at"),
    )
    event = _object(
        {
            "id": integer,
            "type": {"type": "string", "enum": _EVENT_TYPES},
            "occurred_at": _TIME,
            "domain": _string(),
            "batch_id": _nullable(_string()),
            "delivery_id": _nullable(_string()),
            "recipient": _nullable(_string("The address, a pseudonym, or null (tracking mode)")),
            "data": {"type": "object", "description": "code, text, url, user_agent, ip, unique, machine…"},
        },
        ("id", "type", "occurred_at", "domain", "batch_id", "delivery_id", "recipient", "data"),
    )
    bucket = _object(
        {"t": _TIME, "count": integer, "unique": integer, "machine": integer},
        ("t", "count", "unique", "machine"),
    )
    answer = _nullable(_object({"code": integer, "message": _string()}, ("code", "message")))
    attempt = _object(
        {
            "number": integer,
            "started_at": _TIME,
            "finished_at": _TIME_OR_NULL,
            "remote_host": _nullable(_string()),
            "answers": _object({"mail": answer, "rcpt": answer, "data": answer}, ("mail", "rcpt", "data")),
            "outcome": _nullable(
                _object(
                    {"stage": _string(), "code": integer, "message": _string()}, ("stage", "code", "message")
                )
            ),
        },
        ("number", "started_at", "finished_at", "remote_host", "answers", "outcome"),
    )
    return {
        "Suppression": suppression,
        "SuppressionCreate": _object(
            {
                "address": _string(),
                "reason": {"type": "string", "enum": [reason.value for reason in SuppressionReason]},
            },
            ("address",),
        ),
        "SuppressionPage": _object(
            {"items": {"type": "array", "items": _ref("Suppression")}, "next_cursor": next_cursor},
            ("items", "next_cursor"),
        ),
        "Event": event,
        "EventPage": _object(
            {"items": {"type": "array", "items": _ref("Event")}, "next_cursor": next_cursor},
            ("items", "next_cursor"),
        ),
        "Stats": _object(
            {
                "domain": _string(),
                "granularity": {"type": "string", "enum": ["hour", "day"]},
                "from": _TIME,
                "to": _TIME,
                "series": {
                    "type": "object",
                    "description": "Per event type, one bucket per hour or day, zeros included",
                    "additionalProperties": {"type": "array", "items": bucket},
                },
            },
            ("domain", "granularity", "from", "to", "series"),
        ),
        "DeliveryStory": _object(
            {
                "id": _string(),
                "domain": _nullable(_string()),
                "mail_from": _string(),
                "rcpt_to": _string(),
                "status": _string(),
                "final_reason": _nullable(_string()),
                "created_at": _TIME,
                "updated_at": _TIME,
                "next_attempt_at": _TIME_OR_NULL,
                "attempts": {"type": "array", "items": attempt},
                "events": {"type": "array", "items": _ref("Event")},
            },
            (
                "id",
                "domain",
                "mail_from",
                "rcpt_to",
                "status",
                "final_reason",
                "created_at",
                "updated_at",
                "next_attempt_at",
                "attempts",
                "events",
            ),
        ),
    }


def _common_schemas() -> dict[str, Schema]:
    error = _object(
        {
            "code": _string("Machine-readable, e.g. invalid_request, unauthorized, not_found"),
            "message": _string("What was wrong and what to do"),
            "field": _string("The request field at fault"),
        },
        ("code", "message"),
    )
    return {
        "Error": _object({"error": error}, ("error",)),
        "TimeInput": {
            "oneOf": [_string(format="date-time"), {"type": "number"}],
            "description": 'An RFC 3339 time with a zone ("2027-01-31T00:00:00Z") or Unix seconds',
        },
    }


def _domain_schemas() -> dict[str, Schema]:
    algorithm = {"type": "string", "enum": ["rsa", "ed25519"]}
    dkim_key = _object(
        {
            "selector": _string(),
            "algorithm": algorithm,
            "public_key": _string("Base64, the p= of the DKIM record"),
            "created_at": _TIME,
            "signing": {"type": "boolean", "description": "The newest key: mail is signed with it"},
        },
        ("selector", "algorithm", "public_key", "created_at", "signing"),
    )
    domain_properties = {
        "name": _string("Canonical: lower-case A-labels"),
        "created_at": _TIME,
        "dkim": {"type": "array", "items": _ref("DkimKey")},
        "tracking": _ref("TrackingPolicy"),
    }
    records = {"type": "array", "items": _ref("DnsRecord")}
    return {
        "DomainCreate": _object(
            {
                "name": _string("The domain, e.g. example.com"),
                "dkim_algorithm": algorithm,
                "tracking": _ref("TrackingPolicy"),
            },
            ("name",),
        ),
        "TrackingPolicy": _object(
            {"opens": _TRACKING_MODE, "links": _TRACKING_MODE},
            description="Tracking per axis: off < anonymous < pseudonymous < identified < full. "
            "The domain's is a ceiling: a batch or recipient may ask for less, never more.",
        ),
        "DkimRotate": _object({"dkim_algorithm": algorithm}),
        "DkimKey": dkim_key,
        "DkimKeyCreated": _object(
            {**dkim_key["properties"], "dns_record": _ref("DnsRecord")}, (*dkim_key["required"], "dns_record")
        ),
        "Domain": _object(domain_properties, ("name", "created_at", "dkim", "tracking")),
        "DomainCreated": _object(
            {
                **domain_properties,
                "dns_records": _nullable(records),
                "dns_error": _string("Why dns_records is null: what to set in the config"),
            },
            ("name", "created_at", "dkim", "dns_records"),
        ),
        "DnsRecord": _object(
            {
                "name": _string("Owner name, without the final dot"),
                "type": {"type": "string", "enum": ["TXT", "MX", "CNAME"]},
                "value": _string("TXT: the whole text; MX: '<preference> <host>'"),
                "purpose": _string(),
            },
            ("name", "type", "value", "purpose"),
        ),
        "ApiKeyCreate": _object(
            {"name": _string("What the key is for", maxLength=128), "expires_at": _ref("TimeInput")},
            ("name",),
        ),
        "ApiKey": _object(_API_KEY_PROPERTIES, tuple(_API_KEY_PROPERTIES)),
        "ApiKeyCreated": _object(
            {"key": _string("The plaintext key, shown this once", pattern="^mk_"), **_API_KEY_PROPERTIES},
            ("key", *_API_KEY_PROPERTIES),
        ),
    }


_API_KEY_PROPERTIES: Schema = {
    "id": {"type": "integer"},
    "prefix": _string("The key's first 8 characters"),
    "name": _string(),
    "domain": _string(),
    "state": {"type": "string", "enum": ["active", "expired", "deactivated"]},
    "created_at": _TIME,
    "expires_at": _TIME_OR_NULL,
    "deactivated_at": _TIME_OR_NULL,
}


def _template_schemas() -> dict[str, Schema]:
    parts = {
        "name": _string(maxLength=200),
        "subject": _string("A template too, like the bodies", maxLength=2000),
        "html": _string("HTML body template (autoescaped)"),
        "text": _string("Plain-text body template"),
    }
    template = {
        "id": _string("tpl_…"),
        "domain": _string(),
        **parts,
        "html": _nullable(parts["html"]),
        "text": _nullable(parts["text"]),
        "created_at": _TIME,
        "updated_at": _TIME,
    }
    return {
        "TemplateCreate": _object(parts, ("name", "subject"), "html or text (or both) is required"),
        "TemplatePatch": _object(
            {**parts, "html": _nullable(parts["html"]), "text": _nullable(parts["text"])},
            description="Only the fields given change; null removes html or text",
        ),
        "Template": _object(template, tuple(template)),
        "TemplatePage": _object(
            {
                "items": {"type": "array", "items": _ref("Template")},
                "total": {"type": "integer"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
            },
            ("items", "total", "limit", "offset"),
        ),
    }


def _send_schemas() -> dict[str, Schema]:
    email = _string(format="email")
    mailbox = {"oneOf": [email, _object({"email": email, "name": _string()}, ("email",))]}
    mailboxes = {"oneOf": [mailbox, {"type": "array", "items": mailbox}]}
    return {
        "Mailbox": _object({"email": email, "name": _string("Display name; no CR or LF")}, ("email",)),
        "Recipient": _object(
            {
                "email": email,
                "name": _string(),
                "fields": {"type": "object", "description": "Template fields of this recipient"},
                "tracking": _ref("TrackingPolicy"),
            },
            ("email",),
        ),
        "Attachment": _object(
            {
                "filename": _string(),
                "content_type": _string("type/subtype; default application/octet-stream"),
                "content": _string("The file's bytes", contentEncoding="base64"),
            },
            ("filename", "content"),
        ),
        "VisibleHeaders": _object(
            {
                "to": mailboxes,
                "cc": mailboxes,
                "reply_to": mailboxes,
                "custom": {
                    "type": "object",
                    "description": "X-… headers only",
                    "propertyNames": {"pattern": "^[Xx]-[A-Za-z0-9-]{1,70}$"},
                    "additionalProperties": {"type": "string"},
                },
            }
        ),
        "SendRequest": _send_request(),
        "Rejection": _object({"email": _string(), "reason": _string()}, ("email", "reason")),
        "SendAccepted": _object(
            {
                "batch_id": _string("bat_…"),
                "accepted": {"type": "integer"},
                "rejected": {"type": "array", "items": _ref("Rejection")},
            },
            ("batch_id", "accepted", "rejected"),
        ),
        "Batch": _object(_BATCH_PROPERTIES),
        "BatchCancelled": _object({**_BATCH_PROPERTIES, "cancelled": {"type": "integer"}}),
        "Delivery": _delivery_schema(),
        "DeliveryPage": _object(
            {
                "batch_id": _string(),
                "items": {"type": "array", "items": _ref("Delivery")},
                "next_cursor": _nullable({"type": "integer"}),
            },
            ("batch_id", "items", "next_cursor"),
        ),
    }


def _send_request() -> Schema:
    return _object(
        {
            "sender": _ref("Mailbox"),
            "subject": _string("Required unless template_id gives one"),
            "html": _string(),
            "text": _string(),
            "template_id": _string("A template of the key's domain instead of subject/html/text"),
            "recipients": {"type": "array", "items": _ref("Recipient"), "minItems": 1},
            "global_fields": {"type": "object", "description": "Template fields for every recipient"},
            "attachments": {"type": "array", "items": _ref("Attachment")},
            "headers": _ref("VisibleHeaders"),
            "scheduled_at": _ref("TimeInput"),
            "tags": {"type": "array", "items": _string(maxLength=100), "maxItems": 20},
            "metadata": {"type": "object", "maxProperties": 50},
            "unsubscribe": _object(
                {
                    "url_template": _string("An absolute https URL template, per recipient (RFC 8058)"),
                    "managed": {
                        "type": "boolean",
                        "description": "mailnode hosts the one-click unsubscribe (/u/…) and suppresses",
                    },
                },
                description="Give url_template, or managed: true",
            ),
            "tracking": _ref("TrackingPolicy"),
        },
        ("sender", "recipients"),
        "html and/or text, or template_id",
    )


_BATCH_PROPERTIES: Schema = {
    "batch_id": _string(),
    "domain": _string(),
    "created_at": _TIME,
    "scheduled_at": _TIME_OR_NULL,
    "cancelled_at": _TIME_OR_NULL,
    "accepted": {"type": "integer"},
    "rejected": {"type": "array", "items": _ref("Rejection")},
    "tags": {"type": "array", "items": _string()},
    "metadata": {"type": "object"},
    "counts": {
        "type": "object",
        "properties": {name: {"type": "integer"} for name in ("queued", "delivered", "failed", "cancelled")},
    },
}


def _delivery_schema() -> Schema:
    last = _object({"stage": _string(), "code": {"type": "integer"}, "message": _string()})
    return _object(
        {
            "id": _string(),
            "email": _string(),
            "status": {
                "type": "string",
                "enum": ["awaiting_body", "queued", "delivered", "failed", "cancelled"],
            },
            "attempts": {"type": "integer"},
            "next_attempt_at": _TIME_OR_NULL,
            "last_response": _nullable(last),
            "final_reason": _nullable(_string()),
            "updated_at": _TIME,
        }
    )


# -- webhooks ------------------------------------------------------------------------------------


def _webhook_paths() -> dict[str, Schema]:
    domain = ("Domain",)
    one = ("Domain", "WebhookId")
    return {
        "/v1/domains/{domain}/webhooks": {
            "post": _op(
                "createWebhook",
                "Create a webhook: the domain's events of the given types are POSTed to its URL, signed; "
                "the answer holds the signing secret, this once",
                _ADMIN_OR_KEY,
                {"201": _json(_ref("WebhookCreated"), "The webhook, with its secret")},
                parameters=domain,
                body=_body(_ref("WebhookCreate")),
                errors=("400", "404", "409"),
            ),
            "get": _op(
                "listWebhooks",
                "The domain's webhooks, oldest first (no secrets)",
                _ADMIN_OR_KEY,
                {"200": _json(_object({"items": {"type": "array", "items": _ref("Webhook")}}), "Webhooks")},
                parameters=domain,
                errors=("404",),
            ),
        },
        "/v1/domains/{domain}/webhooks/{webhook_id}": {
            "get": _op(
                "getWebhook",
                "One webhook: whether it is enabled, failing since when, and why it was disabled",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("Webhook"), "The webhook")},
                parameters=one,
                errors=("404",),
            ),
            "patch": _op(
                "updateWebhook",
                "Change the URL or event types; enabled: true turns a disabled webhook back on, "
                "false turns it off (its queued deliveries are given up)",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("Webhook"), "The webhook as changed")},
                parameters=one,
                body=_body(_ref("WebhookPatch")),
                errors=("400", "404"),
            ),
            "delete": _op(
                "deleteWebhook",
                "Delete a webhook; what it had not been sent yet is dropped",
                _ADMIN_OR_KEY,
                _NO_CONTENT,
                parameters=one,
                errors=("404",),
            ),
        },
        "/v1/domains/{domain}/webhooks/{webhook_id}/deliveries": {
            "get": _op(
                "listWebhookDeliveries",
                "A page of the webhook's deliveries, newest first: status, attempts, the last answer",
                _ADMIN_OR_KEY,
                {"200": _json(_ref("WebhookDeliveryPage"), "Deliveries")},
                parameters=(*one, "PageLimit", "Cursor"),
                errors=("400", "404"),
            ),
        },
    }


def _webhook_schemas() -> dict[str, Schema]:
    url = _string(
        "http(s), at most 2048 characters, no user name or password; loopback, private and link-local "
        "receivers need [webhooks] allow_private = true",
        format="uri",
        maxLength=2048,
    )
    types = {"type": "array", "items": {"type": "string", "enum": _EVENT_TYPES}, "minItems": 1}
    webhook = {
        "id": _string("wh_…"),
        "domain": _string(),
        "url": url,
        "event_types": types,
        "enabled": {"type": "boolean"},
        "created_at": _TIME,
        "failing_since": {**_TIME_OR_NULL, "description": "The first failed POST since the last success"},
        "disabled_at": _TIME_OR_NULL,
        "disabled_reason": _nullable(_string("Why it was disabled and how to turn it back on")),
    }
    secret = _string(
        "Signs each POST: Mailnode-Signature is v1=<hex HMAC-SHA256 of '<Mailnode-Timestamp>.<body>'>. "
        "Shown in this answer only",
        pattern="^whsec_",
    )
    delivery = {
        "id": {"type": "integer", "description": "Sent as Mailnode-Delivery-Id"},
        "event_id": {"type": "integer", "description": "Sent as Mailnode-Event-Id"},
        "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "integer"},
        "created_at": _TIME,
        "next_attempt_at": _TIME_OR_NULL,
        "last_attempt_at": _TIME_OR_NULL,
        "last_status": _nullable({"type": "integer", "description": "The receiver's HTTP status"}),
        "last_error": _nullable(_string("Why the last POST failed")),
    }
    return {
        "WebhookCreate": _object({"url": url, "event_types": types}, ("url", "event_types")),
        "WebhookPatch": _object(
            {"url": url, "event_types": types, "enabled": {"type": "boolean"}},
            description="Only the fields given change",
        ),
        "Webhook": _object(webhook, tuple(webhook)),
        "WebhookCreated": _object({**webhook, "secret": secret}, (*webhook, "secret")),
        "WebhookDelivery": _object(delivery, tuple(delivery)),
        "WebhookDeliveryPage": _object(
            {
                "webhook_id": _string(),
                "items": {"type": "array", "items": _ref("WebhookDelivery")},
                "next_cursor": _nullable({"type": "integer"}),
            },
            ("webhook_id", "items", "next_cursor"),
        ),
    }


_DOCUMENT_JSON = json.dumps(document(), indent=1).encode()

"""The served OpenAPI document describes exactly the /v1 routes the app has, and holds together."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from tests.support.mailnode import Mailnode

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


async def served(node: Mailnode) -> dict[str, Any]:
    async with node.http.get(f"{node.url}/v1/openapi.json") as response:  # no credentials
        assert response.status == 200
        assert response.content_type == "application/json"
        document: dict[str, Any] = await response.json()
        return document


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every /v1 route and /metrics; the HEAD beside a GET is left out."""
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if (path.startswith("/v1/") or path == "/metrics") and route.method != "HEAD":
            routes.add((route.method, path))
    return routes


def described_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def resolve(document: dict[str, Any], pointer: str) -> Any:
    assert pointer.startswith("#/"), f"only local references: {pointer}"
    node: Any = document
    for part in pointer[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{pointer} does not resolve"
        node = node[part]
    return node


async def test_every_v1_route_is_described_and_every_description_is_a_route(mailnode: Mailnode) -> None:
    document = await served(mailnode)
    app = mailnode.service._runner.app
    routes = registered_routes(app)
    described = described_routes(document)
    assert routes - described == set(), "routes without a description in api/openapi.py"
    assert described - routes == set(), "descriptions of routes the app does not have"
    assert ("POST", "/v1/send") in routes and ("GET", "/v1/openapi.json") in routes


async def test_the_document_holds_together(mailnode: Mailnode) -> None:
    document = await served(mailnode)
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert {"title", "version"} <= set(document["info"])
    for pointer in set(refs(document)):
        resolve(document, pointer)
    schemes = document["components"]["securitySchemes"]
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, method, operation in operations(document):
        where = f"{method.upper()} {path}"
        assert operation["responses"], where
        for requirement in operation["security"]:
            assert set(requirement) <= set(schemes), where
        if operation["security"]:
            assert "401" in operation["responses"], f"{where}: a secured route can answer 401"
        declared = {
            resolve(document, p["$ref"])["name"] if "$ref" in p else p["name"]
            for p in operation.get("parameters", ())
            if (resolve(document, p["$ref"]) if "$ref" in p else p)["in"] == "path"
        }
        assert declared == set(re.findall(r"\{(\w+)\}", path)), f"{where}: path parameters"


async def test_errors_are_described_as_the_app_answers_them(mailnode: Mailnode) -> None:
    document = await served(mailnode)
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert set(error["properties"]["error"]["properties"]) == {"code", "message", "field"}
    async with mailnode.http.get(f"{mailnode.url}/v1/domains") as response:
        answer = await response.json()
    assert response.status == 401
    assert set(answer) == {"error"} and set(answer["error"]) <= {"code", "message", "field"}
    send = document["paths"]["/v1/send"]["post"]
    assert {"202", "400", "401", "403", "409", "413"} <= set(send["responses"])
    fields = set(resolve(document, "#/components/schemas/SendRequest")["properties"])
    assert {"sender", "recipients", "template_id", "attachments", "headers", "unsubscribe"} <= fields

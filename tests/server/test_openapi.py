"""The OpenAPI document and the routes the server registered are the same set."""

from __future__ import annotations

import re

from qubix_jupyter.db.models import new_id
from qubix_jupyter.server_extension.handlers import (
    RouteHandler,
    WorkerRouteHandler,
    serves_on_tornado,
)
from qubix_jupyter.server_extension.openapi import IDEMPOTENCY_PARAMETER
from qubix_jupyter.server_extension.routes import API_PREFIX, ROUTES, by_path

from .conftest import Api, body_of

PARAM = re.compile(r"\{(\w+)\}")
#: A path parameter of the route table: ``(?P<name>[^/]+)``.
GROUP = re.compile(r"(\(\?P<\w+>[^)]*\))")
SECURITY = {
    "public": [],
    "user": [{"bearerAuth": []}],
    "worker": [{"workerAuth": []}],
    "operator": [{"jupyterAuth": []}],
}


def _registered(web_app, base_url: str) -> set[tuple[str, str]]:
    """(method, path) of every market route the tornado application serves."""
    found = set()
    for rule in web_app.default_router.rules:
        for inner in getattr(rule.target, "rules", [rule]):
            if inner.target in (RouteHandler, WorkerRouteHandler):
                pattern = inner.matcher.regex.pattern.rstrip("$")
                assert pattern.startswith(base_url + API_PREFIX), pattern
                path = pattern[len(base_url + API_PREFIX) :]
                path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)
                for method in inner.target_kwargs["routes"]:
                    found.add((method, "/" + path))
    return found


async def test_openapi_equals_the_registered_routes(api: Api, jp_serverapp, jp_base_url):
    response = await api("GET", "openapi.json")
    assert response.code == 200
    document = body_of(response)
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": jp_base_url + "qubix/api"}]
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, op in operations.items()
        if "x-websocket" not in op  # the events WebSocket: tests/server/test_websocket.py
    }
    registered = _registered(jp_serverapp.web_app, jp_base_url)
    assert documented == registered
    assert documented == {(r.method, "/" + r.openapi_path) for r in ROUTES}


async def test_every_operation_is_complete(api: Api):
    document = body_of(await api("GET", "openapi.json"))
    schemas = document["components"]["schemas"]
    by_route = {(r.method.lower(), "/" + r.openapi_path): r for r in ROUTES}
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            if "x-websocket" in op:
                continue
            route = by_route[(method, path)]
            provisioning = [{"provisionAuth": []}] if route.provisioning else []
            assert op["security"] == SECURITY[route.auth] + provisioning
            ref = op["responses"]["200"]["content"][route.media_type]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in schemas
            if route.body is not None:
                body_ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                schema = schemas[body_ref.rsplit("/", 1)[1]]
                assert schema["additionalProperties"] is False
            if not route.public:
                assert "401" in op["responses"]
            path_params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert path_params == PARAM.findall(path)
            query_params = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            assert query_params == ([] if route.query is None else list(route.query.model_fields))
            headers = [p for p in op.get("parameters", []) if p["in"] == "header"]
            assert headers == ([IDEMPOTENCY_PARAMETER] if route.idempotent else []), path
            assert list(op["responses"]["200"]["content"]) == [route.media_type], path
            statuses = {int(status) for status in op["responses"]}
            assert set(route.errors) | set(route.alt_statuses) | {200} <= statuses, path
            if route.idempotent:  # a retry with another body; a malformed key
                assert {409, 422} <= statuses, path
            for status in route.alt_statuses:
                alt = op["responses"][str(status)]["content"]["application/json"]["schema"]
                assert alt["$ref"] == ref, (path, status)
            for status in statuses - {200, *route.alt_statuses}:
                error = op["responses"][str(status)]["content"]["application/json"]["schema"]
                assert error["$ref"].endswith("/ErrorResponse"), (path, status)


async def test_the_document_names_each_credential_kind(api: Api):
    """Each ``auth`` kind of the table has its security scheme, and only the operator's is
    Jupyter's own authentication."""
    document = body_of(await api("GET", "openapi.json"))
    schemes = document["components"]["securitySchemes"]
    used = {
        name
        for operations in document["paths"].values()
        for op in operations.values()
        for requirement in op["security"]
        for name in requirement
    }
    assert used == set(schemes)  # none undocumented, none unused
    assert {name for r in SECURITY.values() for req in r for name in req} <= used
    assert {r.auth for r in ROUTES} <= set(SECURITY)
    assert schemes["bearerAuth"]["scheme"] == schemes["workerAuth"]["scheme"] == "bearer"
    assert schemes["jupyterAuth"] == schemes["jupyterAuth"] | {
        "in": "header",
        "name": "Authorization",
    }


async def test_every_documented_route_answers(api: Api):
    """No documented route is a 404 or 405: unauthenticated, each answers 200, 401 or 422 (or
    the 404 of a record that does not exist, which is not the router's ``not_found``)."""
    document = body_of(await api("GET", "openapi.json"))
    for path, operations in document["paths"].items():
        concrete = PARAM.sub("X", path).lstrip("/")
        for method in operations:
            response = await api(method.upper(), concrete)
            if response.code == 404:
                assert body_of(response)["error"]["code"] != "not_found", (method, path)
                continue
            assert response.code in {200, 401, 422}, (method, path, response.code)


def test_no_path_of_the_table_is_taken_by_a_worker_path_served_before_it():
    """Worker-token paths are registered first; a request for any other path must not match
    one of them. A workerId is the provider's to choose: it is tried as every literal segment of
    the table; every other parameter is an id the market generates (new_id), tried as one."""
    table = by_path(ROUTES)
    workers = [path for path, methods in table.items() if serves_on_tornado(methods)]
    assert "providers/(?P<workerId>[^/]+)/heartbeat" in workers
    literals = {seg for path in table for seg in GROUP.sub("", path).split("/") if seg} | {"x"}
    for path in table:
        if path in workers:
            continue
        requests = [""]
        for part in GROUP.split(path):
            if not GROUP.fullmatch(part):
                options = [part]
            elif part.startswith("(?P<workerId>"):
                options = sorted(literals)
            else:
                options = [new_id(), "x"]
            requests = [r + o for r in requests for o in options]
        for request in requests:
            taken = [w for w in workers if re.fullmatch(w, request)]
            assert not taken, f"{request} (for {path}) would be served by {taken}"

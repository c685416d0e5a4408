"""The OpenAPI 3.1 document, built from the route table and the pydantic models' JSON schemas."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .. import __version__
from . import models
from .routes import API_PREFIX, Route

REF = "#/components/schemas/{model}"

#: Answers any route may give, besides those it lists itself.
_COMMON_ERRORS = {
    429: "Rate limited; see the `Retry-After` header",
    500: "Unexpected server error (logged; the body is generic)",
    503: "A dependency does not answer: the database (`database_unavailable`, see the "
    "`Retry-After` header), or on some routes the chain or settlement",
}
#: Answers of every route that takes a request body.
_BODY_ERRORS = {
    400: "Malformed request (not JSON)",
    413: "Request body over `max_body_bytes`",
    422: "Request body does not match the schema (the details name each field)",
}
_ROUTE_ERRORS = {
    401: "No, unknown, expired or revoked bearer token (or, at connect, a bad signature or "
    "challenge)",
    402: "Insufficient funds: your wallet holds less than the request needs",
    403: "Not yours",
    404: "No such record",
    409: "Conflict with the current state (e.g. a workerId registered by another user)",
    422: "A query parameter or header does not match the schema (the details name each one)",
    503: "A dependency does not answer or is not configured (the chain, settlement)",
}

_ALT_STATUSES = {503: "Degraded: a dependency (the database) does not answer"}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}},
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One ``in: query`` parameter per field of the route's query model (lists: repeat it, or
    give a comma list)."""
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema["properties"].items():
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k not in {"title", "description"}},
        }
        if "description" in prop:
            parameter["description"] = prop["description"]
        if prop.get("type") == "array":
            parameter["style"] = "form"
            parameter["explode"] = True
        parameters.append(parameter)
    return parameters


_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "public": [],
    "user": [{"bearerAuth": []}],
    "worker": [{"workerAuth": []}],
    "operator": [{"jupyterAuth": []}],
}

IDEMPOTENCY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1 to 200 printable ASCII characters chosen by the client, unique per "
    "request it means. A retry with the same key and body gets the first answer and moves no "
    "money again; the same key with another body is a 409 idempotency_conflict.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[\\x21-\\x7e]+$"},
}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.endpoint.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "security": _SECURITY[route.auth] + ([{"provisionAuth": []}] if route.provisioning else []),
        "responses": {
            "200": {
                "description": "OK",
                "content": {
                    route.media_type: {
                        "schema": {"$ref": REF.format(model=route.response.__name__)}
                    }
                },
            }
        },
    }
    for status in route.alt_statuses:
        op["responses"][str(status)] = {
            "description": _ALT_STATUSES.get(status, "See the body"),
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=route.response.__name__)}}
            },
        }
    if route.path_params:
        op["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.path_params
        ]
    if route.query is not None:
        op.setdefault("parameters", []).extend(_query_parameters(route.query))
    if route.idempotent:
        op.setdefault("parameters", []).append(IDEMPOTENCY_PARAMETER)
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=route.body.__name__)}}
            },
        }
    statuses = dict(_COMMON_ERRORS)
    if route.body is not None:
        statuses.update(_BODY_ERRORS)
    if not route.public:
        statuses[401] = _ROUTE_ERRORS[401]
    if route.idempotent:
        statuses[409] = _ROUTE_ERRORS[409]
        # a malformed Idempotency-Key header, on a route with a body or without one
        statuses.setdefault(422, _ROUTE_ERRORS[422])
    for status in route.errors:
        statuses.setdefault(status, _ROUTE_ERRORS.get(status, "Error"))
    for status in sorted(statuses):
        if status not in route.alt_statuses:  # health's 503 is its own body
            op["responses"][str(status)] = _error_response(statuses[status])
    return op


def openapi_document(routes: Iterable[Route], base_url: str = "/") -> dict[str, Any]:
    routes = tuple(routes)
    paths: dict[str, dict[str, Any]] = {}
    # requests are documented as they are validated, responses as they are serialized
    schema_models: dict[type[BaseModel], JsonSchemaMode] = {models.ErrorResponse: "serialization"}
    for route in routes:
        paths.setdefault("/" + route.openapi_path, {})[route.method.lower()] = _operation(route)
        schema_models[route.response] = "serialization"
        if route.body is not None:
            schema_models[route.body] = "validation"
    _, top = models_json_schema(list(schema_models.items()), ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "QUBIX market API",
            "version": __version__,
            "description": "A GPU-time marketplace inside Jupyter. Sign in: POST auth/challenge, "
            "sign K12(challenge) with your Qubic wallet, POST wallet/connect, then send "
            "`Authorization: Bearer <token>`.",
        },
        "servers": [{"url": base_url.rstrip("/") + "/" + API_PREFIX.rstrip("/")}],
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the market token from POST wallet/connect (not Jupyter's)",
                },
                "workerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the provider's worker token from POST "
                    "providers/quick-register (its workerToken)",
                },
                "provisionAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a provisioning token (qxp_…) from POST "
                    "providers/provision-tokens: registers providers for its owner "
                    "(providers/quick-register) and opens nothing else",
                },
                "jupyterAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "the Jupyter server's own authentication, for the market's "
                    "operator: `Authorization: token <Jupyter token>` (or Jupyter's login "
                    "cookie); market tokens are refused",
                },
            },
        },
    }

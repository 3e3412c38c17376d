"""The OpenAPI document says what errors look like: every error is RFC 9457 problem+json.

FastAPI documents its validation error (422) as ``application/json`` with its own
shape; the service answers every error, that one included, as
``application/problem+json`` (see ``api/errors.py``). The document is corrected once,
when first asked for: each operation's 422 and a ``default`` response carry the
Problem schema, so clients and fuzzers (schemathesis) can check every answer against it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import PROBLEM_JSON

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; never carries a credential.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "errors": {"type": "array", "items": {"type": "object"}},
        "stages": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "status", "detail"],
    "additionalProperties": True,
}
_PROBLEM_RESPONSE = {
    "description": "An error, as problem+json (status and detail say what to fix).",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = with_problems(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_problems(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for path_item in document.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            responses["422"] = _PROBLEM_RESPONSE
            responses["default"] = _PROBLEM_RESPONSE
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document

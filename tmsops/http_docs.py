"""Each service's OpenAPI document: the error answers in the JSON error format, and whole schemas.

A route declares the errors of its own domain with ``responses=error_responses(404, 503)``;
the ones every route of a kind can give are added to the document by :func:`complete_document`
(the app factory does it): 401 and 403 on a route that needs a scope, 422 (replacing FastAPI's
own ``HTTPValidationError``, which is not what the services send) on a route with parameters or
a body, and 400 on a route with a body (a body FastAPI cannot decode). A 500 is never
documented: it is a bug.

A request body schema given whole in ``openapi_extra`` (a route that reads its body itself, e.g.
JSON or YAML) keeps its definitions under ``$defs``, where ``#/$defs/...`` does not resolve in
the document: they are moved to the components.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, cast

from pydantic import BaseModel, Field

from tmsops.http_errors import status_phrase

REF_PREFIX = "#/components/schemas/"
ResponsesSpec = dict[int | str, dict[str, Any]]


class ErrorDetail(BaseModel):
    code: str = Field(description="the error's name in snake_case, e.g. not_found, validation_error, unknown_service")
    message: str = Field(description="what went wrong, naming the field or the setting")
    details: dict[str, Any] = Field(description="more about it, e.g. errors: [{field, message}] for a 422")


class ErrorBody(BaseModel):
    """The body of every error answer (4xx and 503)."""

    error: ErrorDetail


def error_responses(*codes: int) -> ResponsesSpec:
    """``responses=`` for a route that can answer ``codes`` with the JSON error format."""
    return {code: {"model": ErrorBody, "description": status_phrase(code)} for code in codes}


def complete_document(document: dict[str, Any], protected: Collection[tuple[str, str]]) -> dict[str, Any]:
    """``document`` with the errors every route of its kind gives and its definitions in the
    components; ``protected`` holds the (path, METHOD) pairs of the routes that need a scope."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorBody.model_json_schema(ref_template=REF_PREFIX + "{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorBody"] = error_schema
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            _add_errors(operation, (path, method.upper()) in protected)
            _hoist_definitions(operation, schemas)
    if not _referenced(document, "HTTPValidationError"):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return cast(dict[str, Any], json.loads(json.dumps(document).replace('"#/$defs/', f'"{REF_PREFIX}')))


def _add_errors(operation: dict[str, Any], protected: bool) -> None:
    codes = [401, 403] if protected else []
    if operation.get("parameters") or "requestBody" in operation:
        codes.append(422)
    if "requestBody" in operation:
        codes.append(400)
    responses = operation.setdefault("responses", {})
    for code in codes:
        responses[str(code)] = _error_answer(code)


def _hoist_definitions(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    for media in operation.get("requestBody", {}).get("content", {}).values():
        for name, definition in media.get("schema", {}).pop("$defs", {}).items():
            if schemas.setdefault(name, definition) != definition:
                raise ValueError(f"two different schemas are named {name} in the OpenAPI document")


def _error_answer(code: int) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": REF_PREFIX + "ErrorBody"}}}
    return {"description": status_phrase(code), "content": content}


def _referenced(document: dict[str, Any], name: str) -> bool:
    return json.dumps(REF_PREFIX + name) in json.dumps(document.get("paths", {}))

"""The model server's OpenAPI document (``GET /docs.json``) as the server really answers.

BentoML labels its document OpenAPI 3.0.2, but the schemas in it are pydantic 2's JSON Schema
2020-12 (``{"type": "null"}``, numeric ``exclusiveMinimum``): that is OpenAPI 3.1. And its
error answers are BentoML's, while :class:`serving.errors.HttpConventions` answers every error
in the project's format ``{"error": {"code", "message", "details"}}`` with its own statuses
(a bad body is a 422, an oversized one a 413, no model loaded or a full queue a 503). A 500 is
never documented: it is a bug.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

OPENAPI_VERSION = "3.1.0"
ERROR_REF = "#/components/schemas/ErrorBody"
ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "title": "ErrorBody",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "e.g. validation_error, payload_too_large"},
                "message": {"type": "string", "description": "what went wrong, naming the field"},
                "details": {"type": "object", "description": "errors: [{field, message}] for a 422"},
            },
        }
    },
}
MODEL_API_ERRORS = (400, 413, 422, 503)
# (method, path) -> the error statuses it answers; every other error answer BentoML lists is dropped.
ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/forecast"): MODEL_API_ERRORS,
    ("post", "/detect"): MODEL_API_ERRORS,
    ("post", "/reload"): (401, 403, 413, 503),
    ("get", "/readyz"): (503,),
}
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError", "HTTPValidationError", "ValidationError")


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (BentoML's) relabelled OpenAPI 3.1 with this server's error answers; changed in place."""
    document["openapi"] = OPENAPI_VERSION
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in BENTOML_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas["ErrorBody"] = ERROR_BODY
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in [status for status in responses if str(status)[0] in "45"]:
                del responses[status]
            for status in ERRORS.get((method, path), ()):
                responses[str(status)] = _error_answer(status)
    return document


def _error_answer(status: int) -> dict[str, Any]:
    return {"description": HTTPStatus(status).phrase, "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}}

"""The JSON error format of every service: ``{"error": {"code", "message", "details"}}``.

HTTP errors keep their status and headers; request validation is a 422 naming the field;
a :class:`TmsopsError` is a 503 with ``Retry-After`` when temporary, otherwise its
``http_status`` class attribute (400 when it has none). The message of an error response
is kept on ``request.state.error_message`` for the audit log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tmsops.errors import TemporaryError, TmsopsError

DEFAULT_PERMANENT_STATUS = 400


def error_response(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    request.state.error_message = message
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details or {})}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(TmsopsError, _tmsops_error)  # type: ignore[arg-type]


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    plain = isinstance(error.detail, str)
    message = error.detail if plain else status_phrase(error.status_code)
    details = {} if plain else {"detail": error.detail}
    code = status_code_name(error.status_code)
    return error_response(request, error.status_code, code, message, details, error.headers)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = [{"field": _field(item["loc"]), "message": item["msg"]} for item in error.errors()]
    message = "; ".join(f"{problem['field']}: {problem['message']}" for problem in problems)
    return error_response(request, 422, "validation_error", message, {"errors": problems})


async def _tmsops_error(request: Request, error: TmsopsError) -> JSONResponse:
    code = _snake_case(type(error).__name__)
    if isinstance(error, TemporaryError):
        headers = {"Retry-After": str(math.ceil(error.retry_after))}
        return error_response(request, 503, code, error.message, error.details, headers)
    status_code = getattr(error, "http_status", DEFAULT_PERMANENT_STATUS)
    return error_response(request, status_code, code, error.message, error.details)


def internal_error_response(request: Request, request_id: str) -> JSONResponse:
    message = f"internal error; the server log holds its details under request id {request_id}"
    return error_response(request, 500, "internal_error", message, {"request_id": request_id})


def status_code_name(status_code: int) -> str:
    """``404`` -> ``not_found``; ``http_599`` for a code without a name."""
    phrase = status_phrase(status_code)
    return f"http_{status_code}" if phrase.isdigit() else _snake_case(phrase.replace(" ", ""))


def status_phrase(status_code: int) -> str:
    """``404`` -> ``Not Found``; the number itself for a code without a name."""
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return str(status_code)


def _field(location: tuple[int | str, ...] | list[int | str]) -> str:
    return ".".join(str(part) for part in location)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name.replace("-", "")).lower()

"""HTTP conventions around the BentoML app: a body size limit (413), the project's JSON error
format ``{"error": {"code", "message", "details"}}`` with 422 for bad input, and an OpenAPI
document (``/docs.json``) that says so (:mod:`serving.openapi`)."""

from __future__ import annotations

import json
from email.message import Message as MimeHeaders
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.openapi import complete_openapi

DOCS_PATH = "/docs.json"

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


def error_body(status: int, message: str, details: Any = None) -> bytes:
    code = STATUS_CODES.get(status, "error" if status < 500 else "internal_error")
    return json.dumps({"error": {"code": code, "message": message, "details": details or {}}}).encode()


class HttpConventions:
    """ASGI middleware: refuses oversized bodies and form bodies without a boundary, rewrites
    BentoML's error bodies."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = 32 * 1024 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _respond(send, 413, f"request body over the limit of {self.max_body_bytes} bytes")
            return
        if not _boundary_if_form(headers.get(b"content-type", b"").decode("latin-1")):
            # BentoML answers 500 when Starlette cannot split such a form.
            await _respond(send, 400, "Content-Type multipart/form-data needs a boundary parameter")
            return
        rewriter = _ErrorRewriter(send, self.max_body_bytes)
        answer: Send = _DocumentRewriter(rewriter) if scope["path"] == DOCS_PATH else rewriter
        try:
            await self.app(scope, self._limited(receive, rewriter), answer)
        except BodyTooLarge:
            if rewriter.start is None:
                await _respond(send, 413, rewriter.too_large_message())

    def _limited(self, receive: Receive, rewriter: _ErrorRewriter) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                rewriter.too_large = True
                raise BodyTooLarge
            return message

        return limited


def _boundary_if_form(content_type: str) -> bool:
    """False for ``multipart/form-data`` without a (non-empty) boundary; True for anything else."""
    header = MimeHeaders()
    header["content-type"] = content_type
    return header.get_content_type() != "multipart/form-data" or bool(header.get_param("boundary"))


class BodyTooLarge(Exception):
    """A streamed body went over the limit (no or a false Content-Length)."""


async def _respond(send: Send, status: int, message: str, details: Any = None, kept: list[Any] | None = None) -> None:
    body = error_body(status, message, details)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(kept or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _DocumentRewriter:
    """Buffers BentoML's OpenAPI document and sends it completed by :func:`complete_openapi`."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self.chunks)
        if self.start["status"] == 200:
            body = json.dumps(complete_openapi(json.loads(body))).encode()
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
        await self.send({**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})


class _ErrorRewriter:
    """Buffers a 4xx/5xx response and sends it in the project's format, keeping its other headers."""

    def __init__(self, send: Send, max_body_bytes: int) -> None:
        self.send = send
        self.max_body_bytes = max_body_bytes
        self.too_large = False
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    def too_large_message(self) -> str:
        return f"request body over the limit of {self.max_body_bytes} bytes"

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400:
                self.start = message
                return
            await self.send(message)
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            status, text, details = _translate(self.start["status"], b"".join(self.chunks))
            if self.too_large:
                status, text, details = 413, self.too_large_message(), None
            kept = [
                (k, v)
                for k, v in self.start.get("headers", [])
                if k.lower() not in (b"content-type", b"content-length")
            ]
            await _respond(self.send, status, text, details, kept)


def _translate(status: int, body: bytes) -> tuple[int, str, Any]:
    """BentoML's ``{"error": str, "detail": [...]}`` (400 for validation) -> ours (422)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")[:500], None
    if isinstance(payload, list) and payload:  # BentoML wraps some errors in a one-item list
        payload = payload[0]
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return status, payload["error"].get("message", ""), payload["error"].get("details")
    if not isinstance(payload, dict):
        return status, str(payload)[:500], None
    detail = payload.get("detail")
    if status == 400 and isinstance(detail, list):
        fields = [
            {"field": ".".join(str(part) for part in item.get("loc", ())), "message": item.get("msg", "")}
            for item in detail
        ]
        first = fields[0] if fields else {"field": "", "message": str(payload.get("error"))}
        return 422, f"{first['field']}: {first['message']}", {"errors": fields}
    if status == 503:
        return status, "the model server cannot answer now (no champion model loaded, or overloaded); retry later", None
    return status, str(payload.get("error") or payload.get("detail") or "error"), None

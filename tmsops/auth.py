"""Bearer tokens with scopes, and the FastAPI dependency every protected route declares.

Scopes are ordered ``read`` < ``operate`` < ``admin``; a token holds its scope and every
lower one. Only the SHA-256 of a token is stored, beside its id, name, scope and creation
time, so a leaked state store leaks no usable token.

A route declares its scope with an ``Annotated`` dependency::

    @app.post("/scale")
    async def scale(token: OperateToken, request: ScaleRequest) -> ...

In an app made by :func:`tmsops.app.create_app`, the attempt on a route whose scope is above
``read`` or whose method changes something is written to the audit log whatever happens:
refused (401 without a valid token, 403 with too low a scope), failed, or allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

from fastapi import Depends, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Column, Connection, DateTime, Engine, MetaData, String, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError

from tmsops.audit import AuditAttempt
from tmsops.state import make_engine

TOKEN_PREFIX = "tmsops_"
FIRST_ADMIN_NAME = "admin (first start)"
CONFIGURED_ADMIN_NAME = "admin (configured)"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_KEY_NAME = re.compile(r"(token|secret|password|passwd|api_key|secret_key)$", re.IGNORECASE)
SCOPE_MARK = "__tmsops_scope__"

_metadata = MetaData()

token_table = Table(
    "api_tokens",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("scope", String(16), nullable=False),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class Scope(StrEnum):
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"

    def includes(self, needed: Scope) -> bool:
        """Whether a token of this scope may do what ``needed`` allows."""
        order = list(Scope)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class TokenIdentity:
    """Who is calling: a stored token, never its secret."""

    id: str
    name: str
    scope: Scope
    created_at: datetime


@dataclass(frozen=True)
class IssuedToken:
    identity: TokenIdentity
    secret: str


class TokenStore:
    """Tokens in the state store, kept as SHA-256 hashes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        token_table.create(engine, checkfirst=True)

    def issue(self, name: str, scope: Scope) -> IssuedToken:
        """A new random token; its secret exists only in the returned value. A taken name raises IntegrityError."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._engine.begin() as connection:
            return IssuedToken(_insert(connection, secret, name, scope), secret)

    def register(self, secret: str, name: str, scope: Scope) -> TokenIdentity:
        """Store a token chosen by the operator under ``name``, replacing another token of that name."""
        known = self.identify(secret)
        if known is not None and (known.name, known.scope) == (name, scope):
            return known
        with self._engine.begin() as connection:
            connection.execute(delete(token_table).where(token_table.c.name == name))
            return _insert(connection, secret, name, scope)

    def identify(self, secret: str) -> TokenIdentity | None:
        statement = select(token_table).where(token_table.c.sha256 == _digest(secret))
        with self._engine.connect() as connection:
            row = connection.execute(statement).first()
        return _identity(row._mapping) if row else None

    def has_scope(self, scope: Scope) -> bool:
        statement = select(token_table.c.id).where(token_table.c.scope == scope.value).limit(1)
        with self._engine.connect() as connection:
            return connection.execute(statement).first() is not None


def _insert(connection: Connection, secret: str, name: str, scope: Scope) -> TokenIdentity:
    identity = TokenIdentity(f"tok_{secrets.token_hex(6)}", name, scope, datetime.now(UTC))
    row = {**identity.__dict__, "scope": scope.value, "sha256": _digest(secret)}
    connection.execute(insert(token_table).values(row))
    return identity


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _identity(row: Any) -> TokenIdentity:
    created = row["created_at"]
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
    return TokenIdentity(row["id"], row["name"], Scope(row["scope"]), created)


def ensure_admin_token(state_dir: Path, *, database_url: str | None = None) -> str | None:
    """Create the first admin token and return its secret, to be shown once; ``None`` once one exists.

    The store is ``database_url``, or SQLite in ``state_dir``. Services starting together
    create one token between them: the token name is unique.
    """
    engine = make_engine(database_url or f"sqlite:///{state_dir / 'tmsops.db'}")
    try:
        return first_admin_secret(TokenStore(engine))
    finally:
        engine.dispose()


def service_token(store: TokenStore, service: str, scope: Scope = Scope.OPERATE) -> str:
    """A fresh token for the tmsops service ``service`` to call another one; it replaces the previous one."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    store.register(secret, f"service:{service}", scope)
    return secret


def first_admin_secret(store: TokenStore) -> str | None:
    if store.has_scope(Scope.ADMIN):
        return None
    try:
        return store.issue(FIRST_ADMIN_NAME, Scope.ADMIN).secret
    except IntegrityError:
        return None


_bearer = HTTPBearer(auto_error=False, description="a tmsops token: `Authorization: Bearer tmsops_...`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require(scope: Scope | str) -> Callable[..., Awaitable[TokenIdentity]]:
    """A dependency that admits a bearer token holding ``scope`` and returns its identity.

    401 (with ``WWW-Authenticate: Bearer``) when the token is missing or unknown, 403 when its
    scope is too low. The app must hold a TokenStore in ``app.state.tokens``.
    """
    needed = Scope(scope)

    async def token_with_scope(request: Request, credentials: Credentials) -> TokenIdentity:
        attempt = AuditAttempt(parameters=await request_parameters(request))
        request.state.audit_attempt = attempt
        identity = _authenticate(request.app.state.tokens, credentials, attempt)
        attempt.token_id = identity.id
        if not identity.scope.includes(needed):
            held = identity.scope.value
            _refuse(attempt, status.HTTP_403_FORBIDDEN, f"this needs scope {needed.value}; the token has {held}")
        return identity

    setattr(token_with_scope, SCOPE_MARK, needed)
    return token_with_scope


def _authenticate(
    store: TokenStore, credentials: HTTPAuthorizationCredentials | None, attempt: AuditAttempt
) -> TokenIdentity:
    if credentials is None:
        _refuse(attempt, status.HTTP_401_UNAUTHORIZED, "a bearer token is required (Authorization: Bearer ...)")
    identity = store.identify(credentials.credentials)
    if identity is None:
        _refuse(attempt, status.HTTP_401_UNAUTHORIZED, "the bearer token is not known")
    return identity


def _refuse(attempt: AuditAttempt, code: int, message: str) -> NoReturn:
    attempt.refused = True
    headers = {"WWW-Authenticate": "Bearer"} if code == status.HTTP_401_UNAUTHORIZED else None
    raise HTTPException(code, message, headers=headers)


async def request_parameters(request: Request) -> dict[str, Any]:
    """Path and query parameters and the JSON body, with secrets redacted."""
    parameters: dict[str, Any] = {"path": dict(request.path_params), "query": dict(request.query_params)}
    body = await request.body()
    if body:
        parameters["body"] = _json_or_size(body)
    return redact(parameters)


def _json_or_size(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return {"unparsed_bytes": len(body)}


def redact(value: Any) -> Any:
    """``value`` with every mapping entry whose key names a secret replaced by ``"***"``."""
    if isinstance(value, dict):
        return {key: "***" if _names_secret(key) else redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def _names_secret(key: object) -> bool:
    return isinstance(key, str) and SECRET_KEY_NAME.search(key) is not None


def declared_scope(dependant: Dependant) -> Scope | None:
    """The highest scope a route (its dependency tree) requires through :func:`require`, if any."""
    scopes = [getattr(dependant.call, SCOPE_MARK, None)]
    scopes += [declared_scope(sub) for sub in dependant.dependencies]
    found = [scope for scope in scopes if scope is not None]
    return max(found, key=list(Scope).index) if found else None


def is_audited(method: str, scope: Scope | None) -> bool:
    """Attempts on a protected route are audited unless they only read: a safe method with scope read."""
    return scope is not None and (method.upper() not in SAFE_METHODS or scope is not Scope.READ)


ReadToken = Annotated[TokenIdentity, Depends(require(Scope.READ))]
OperateToken = Annotated[TokenIdentity, Depends(require(Scope.OPERATE))]
AdminToken = Annotated[TokenIdentity, Depends(require(Scope.ADMIN))]

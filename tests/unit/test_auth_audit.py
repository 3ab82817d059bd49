"""Tokens, scopes and the audit log, against real stores (a SQLite file, PostgreSQL when reachable) and a real app."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import OperationalError

from tmsops.app import create_app
from tmsops.audit import AuditEntry, AuditLog, AuditQuery, AuditResult
from tmsops.auth import AdminToken, OperateToken, ReadToken, Scope, TokenStore, ensure_admin_token, token_table
from tmsops.errors import PermanentError
from tmsops.settings import CoreSettings
from tmsops.state import make_engine

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class ScaleRequest(BaseModel):
    replicas: int = Field(ge=0)
    api_token: str = ""


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("TMSOPS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"PostgreSQL is required (TMSOPS_REQUIRE_SERVICES=1) but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture
def postgres_engine() -> Iterator[Engine]:
    """An engine on a fresh schema of the local PostgreSQL, dropped afterwards."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("the psycopg driver is not installed")
    schema = f"tmsops_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
    except OperationalError as error:
        unavailable(str(error.orig))
    engine = create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    yield engine
    engine.dispose()
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_engine")
        return
    sqlite = make_engine(f"sqlite:///{tmp_path / 'state' / 'tmsops.db'}")
    yield sqlite
    sqlite.dispose()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CoreSettings:
    for name in [name for name in os.environ if name.startswith("TMSOPS_")]:
        monkeypatch.delenv(name)
    return CoreSettings(state_dir=tmp_path / "state", model_server_url="http://127.0.0.1:9")


def service_app(settings: CoreSettings) -> FastAPI:
    """A service with routes of every scope, as the autoscaler, optimizer and chaos services declare them."""
    app = create_app("test-service", settings, version="0.0.1")

    @app.post("/services/{service}/scale")
    async def scale(service: str, body: ScaleRequest, token: OperateToken) -> dict[str, object]:
        return {"service": service, "replicas": body.replicas, "by": token.id}

    @app.delete("/experiments/{experiment_id}")
    async def stop(experiment_id: int, token: AdminToken) -> dict[str, object]:
        return {"stopped": experiment_id}

    @app.post("/what-if")
    async def what_if(token: ReadToken) -> dict[str, object]:
        return {"replicas": 3}

    @app.post("/flaky")
    async def flaky(token: OperateToken) -> None:
        raise PermanentError("the service is not declared")

    return app


@pytest.fixture
def app(settings: CoreSettings) -> FastAPI:
    return service_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def bearer(store: TokenStore, scope: Scope) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.issue(f'{scope.value}-{uuid.uuid4().hex[:6]}', scope).secret}"}


def audit_entries(app: FastAPI, **filters: object) -> list[AuditEntry]:
    return app.state.audit_log.query(AuditQuery.model_validate(filters))


# Scopes and tokens


@pytest.mark.parametrize(
    ("held", "needed", "allowed"),
    [
        (Scope.READ, Scope.READ, True),
        (Scope.READ, Scope.OPERATE, False),
        (Scope.OPERATE, Scope.READ, True),
        (Scope.OPERATE, Scope.OPERATE, True),
        (Scope.OPERATE, Scope.ADMIN, False),
        (Scope.ADMIN, Scope.READ, True),
        (Scope.ADMIN, Scope.OPERATE, True),
        (Scope.ADMIN, Scope.ADMIN, True),
    ],
)
def test_a_higher_scope_includes_the_lower_ones(held: Scope, needed: Scope, allowed: bool) -> None:
    assert held.includes(needed) is allowed


def test_tokens_are_stored_only_as_hashes(engine: Engine) -> None:
    store = TokenStore(engine)
    issued = store.issue("ci", Scope.OPERATE)

    with engine.connect() as connection:
        stored = connection.execute(select(token_table)).mappings().one()

    assert issued.secret not in [str(value) for value in stored.values()]
    assert (stored["id"], stored["name"], stored["scope"]) == (issued.identity.id, "ci", "operate")
    assert store.identify(issued.secret) == issued.identity
    assert store.identify(issued.secret + "x") is None


def test_a_registered_token_keeps_its_identity_across_restarts(engine: Engine) -> None:
    store = TokenStore(engine)
    first = store.register("operator-chosen-secret", "ops", Scope.ADMIN)

    assert store.register("operator-chosen-secret", "ops", Scope.ADMIN) == first
    replaced = store.register("a-new-secret", "ops", Scope.ADMIN)
    assert store.identify("operator-chosen-secret") is None
    assert store.identify("a-new-secret") == replaced


def test_the_first_admin_token_is_created_once(tmp_path: Path) -> None:
    secret = ensure_admin_token(tmp_path / "state")

    assert secret is not None
    assert ensure_admin_token(tmp_path / "state") is None
    engine = make_engine(f"sqlite:///{tmp_path / 'state' / 'tmsops.db'}")
    identity = TokenStore(engine).identify(secret)
    engine.dispose()
    assert identity is not None and identity.scope is Scope.ADMIN


def test_the_first_start_prints_the_admin_token_once(
    settings: CoreSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    with TestClient(service_app(settings)):
        printed = capsys.readouterr().out
    with TestClient(service_app(settings)):
        printed_again = capsys.readouterr().out

    secret = printed.strip().rsplit(" ", 1)[-1]
    assert "admin token (shown once" in printed and secret.startswith("tmsops_")
    assert secret not in printed_again and "admin token" not in printed_again
    with TestClient(service_app(settings)) as client:
        assert client.delete("/experiments/1", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_a_configured_admin_token_is_used_and_nothing_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "tmsops_" + "p" * 40
    production = CoreSettings(mode="production", admin_token=token, state_dir=tmp_path / "state")

    with TestClient(service_app(production)) as client:
        response = client.delete("/experiments/7", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert capsys.readouterr().out == ""


# Every mutating route: 401 / 403 / allowed, each audited


def mutating_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route that changes state."""
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    return [(method, route.path) for route in routes for method in route.methods or () if method not in {"GET", "HEAD"}]


def test_every_mutating_route_refuses_a_missing_token_and_audits_it(app: FastAPI, client: TestClient) -> None:
    routes = mutating_routes(app)
    for method, template in routes:
        path = template.format(service="cart", experiment_id=4)
        response = client.request(method, path, json={"replicas": 2})

        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
        entry = audit_entries(app, limit=1)[0]
        assert (entry.endpoint, entry.result, entry.status_code, entry.token_id) == (
            f"{method} {path}",
            AuditResult.REFUSED,
            401,
            None,
        )
    assert len(audit_entries(app)) == len(routes) >= 4


def test_an_unknown_token_is_refused_and_audited(app: FastAPI, client: TestClient) -> None:
    response = client.post("/services/cart/scale", json={"replicas": 2}, headers={"Authorization": "Bearer nope"})

    assert response.status_code == 401
    [entry] = audit_entries(app)
    assert (entry.result, entry.message) == (AuditResult.REFUSED, "the bearer token is not known")


def test_an_under_scoped_token_is_refused_with_403_and_audited(app: FastAPI, client: TestClient) -> None:
    reader = bearer(app.state.tokens, Scope.READ)
    operator = bearer(app.state.tokens, Scope.OPERATE)

    assert client.post("/services/cart/scale", json={"replicas": 2}, headers=reader).status_code == 403
    assert client.delete("/experiments/4", headers=operator).status_code == 403

    admin_refusal, operate_refusal = audit_entries(app)
    assert operate_refusal.endpoint == "POST /services/cart/scale" and operate_refusal.token_id is not None
    assert (operate_refusal.result, operate_refusal.status_code) == (AuditResult.REFUSED, 403)
    assert operate_refusal.message == "this needs scope operate; the token has read"
    assert (admin_refusal.endpoint, admin_refusal.result) == ("DELETE /experiments/4", AuditResult.REFUSED)


def test_an_allowed_attempt_is_audited_with_its_parameters(app: FastAPI, client: TestClient) -> None:
    operator = bearer(app.state.tokens, Scope.OPERATE)
    token_id = app.state.tokens.identify(operator["Authorization"].split()[1]).id

    response = client.post(
        "/services/cart/scale?dry_run=true", json={"replicas": 3, "api_token": "hush"}, headers=operator
    )

    assert response.status_code == 200 and response.json()["by"] == token_id
    [entry] = audit_entries(app)
    assert (entry.result, entry.status_code, entry.token_id) == (AuditResult.ALLOWED, 200, token_id)
    assert entry.parameters == {
        "path": {"service": "cart"},
        "query": {"dry_run": "true"},
        "body": {"replicas": 3, "api_token": "***"},
    }


def test_an_authorised_attempt_that_fails_is_audited_as_failed(app: FastAPI, client: TestClient) -> None:
    admin = bearer(app.state.tokens, Scope.ADMIN)

    assert client.post("/services/cart/scale", json={"replicas": -1}, headers=admin).status_code == 422
    assert client.post("/flaky", headers=admin).status_code == 400

    flaky, invalid = audit_entries(app)
    assert (invalid.result, invalid.status_code) == (AuditResult.FAILED, 422)
    assert "body.replicas" in invalid.message
    assert (flaky.result, flaky.status_code, flaky.message) == (AuditResult.FAILED, 400, "the service is not declared")


def test_a_body_that_is_not_json_is_audited_even_before_the_token_is_read(app: FastAPI, client: TestClient) -> None:
    response = client.post("/services/cart/scale", content=b"{not json", headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    [entry] = audit_entries(app)
    assert (entry.result, entry.token_id, entry.parameters["path"]) == (AuditResult.FAILED, None, {"service": "cart"})


def test_a_read_scope_post_is_audited_but_reads_are_not(app: FastAPI, client: TestClient) -> None:
    reader = bearer(app.state.tokens, Scope.READ)

    assert client.post("/what-if", headers=reader).status_code == 200
    assert client.get("/audit", headers=reader).status_code == 200

    assert [entry.endpoint for entry in audit_entries(app)] == ["POST /what-if"]


def test_a_route_that_changes_state_without_a_scope_stops_the_start(settings: CoreSettings) -> None:
    app = create_app("careless", settings, version="0")

    @app.post("/restart")
    async def restart() -> None:
        return None

    with pytest.raises(PermanentError, match=r"POST /restart changes state but declares no scope"), TestClient(app):
        pass


# The audit log and its filters


def record(log: AuditLog, endpoint: str, token_id: str | None, result: AuditResult, status_code: int) -> None:
    method, path = endpoint.split()
    log.append(
        method=method, path=path, token_id=token_id, parameters={}, result=result, status_code=status_code, message=""
    )


def test_audit_filters(engine: Engine) -> None:
    log = AuditLog(engine)
    record(log, "POST /services/cart/scale", "tok_a", AuditResult.ALLOWED, 200)
    time.sleep(0.01)
    middle = datetime.now(UTC)
    time.sleep(0.01)
    record(log, "DELETE /experiments/3", None, AuditResult.REFUSED, 401)
    record(log, "POST /services/cart_x/scale", "tok_b", AuditResult.FAILED, 409)

    def paths(**filters: object) -> list[str]:
        return [entry.path for entry in log.query(AuditQuery.model_validate(filters))]

    assert paths() == ["/services/cart_x/scale", "/experiments/3", "/services/cart/scale"]
    assert paths(until=middle) == ["/services/cart/scale"]
    assert paths(since=middle) == ["/services/cart_x/scale", "/experiments/3"]
    assert paths(token_id="tok_b") == ["/services/cart_x/scale"]
    assert paths(method="delete") == ["/experiments/3"]
    assert paths(path_prefix="/services/cart_") == ["/services/cart_x/scale"]
    assert paths(result="refused") == ["/experiments/3"]
    assert paths(limit=1, offset=1) == ["/experiments/3"]


def test_get_audit_filters_over_http(app: FastAPI, client: TestClient) -> None:
    operator = bearer(app.state.tokens, Scope.OPERATE)
    client.post("/services/cart/scale", json={"replicas": 2}, headers=operator)
    client.post("/services/cart/scale", json={"replicas": 2})

    page = client.get("/audit", params={"result": "refused"}, headers=operator).json()
    unfiltered = client.get("/audit", params={"limit": 5}, headers=operator).json()

    assert [entry["status_code"] for entry in page["entries"]] == [401]
    assert page["entries"][0]["at"].endswith("Z") or "+00:00" in page["entries"][0]["at"]
    assert (len(unfiltered["entries"]), unfiltered["limit"]) == (2, 5)
    assert client.get("/audit").status_code == 401
    assert client.get("/audit", params={"result": "maybe"}, headers=operator).status_code == 422

"""The OpenAPI document of an app made by the factory says how it answers errors, and a 405 names
every method of its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from serving.openapi import complete_openapi
from tmsops.app import create_app
from tmsops.auth import OperateToken
from tmsops.http_docs import error_responses
from tmsops.settings import CoreSettings

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


class Part(BaseModel):
    name: str


class Whole(BaseModel):
    parts: list[Part]


def app(tmp_path: Path) -> FastAPI:
    made = create_app("docs", CoreSettings(state_dir=tmp_path), version="1")
    router = APIRouter()

    @router.get("/things/{name}", responses=error_responses(404))
    async def read(name: str) -> dict[str, str]:
        return {"name": name}

    @router.post("/things/{name}")
    async def change(name: str, token: OperateToken, body: Part) -> dict[str, str]:
        return {"name": body.name}

    @router.post("/documents", openapi_extra={"requestBody": {"content": {"application/yaml": {"schema": whole()}}}})
    async def document(request: Request, token: OperateToken) -> dict[str, str]:
        return {}

    made.include_router(router)
    return made


def whole() -> dict[str, Any]:
    return Whole.model_json_schema()


def error_schema(operation: dict[str, Any], status: str) -> Any:
    return operation["responses"][status]["content"]["application/json"]["schema"]


def test_errors_are_documented_in_the_error_format(tmp_path: Path) -> None:
    document = TestClient(app(tmp_path)).get("/openapi.json").json()
    read, change = document["paths"]["/things/{name}"]["get"], document["paths"]["/things/{name}"]["post"]
    assert sorted(read["responses"]) == ["200", "404", "422"]
    assert sorted(change["responses"]) == ["200", "400", "401", "403", "422"]
    assert all(error_schema(change, status) == ERROR_REF for status in ("400", "401", "403", "422"))
    assert error_schema(read, "404") == ERROR_REF and error_schema(read, "422") == ERROR_REF
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_a_whole_schema_in_openapi_extra_has_its_definitions_in_the_components(tmp_path: Path) -> None:
    document = TestClient(app(tmp_path)).get("/openapi.json").json()
    schema = document["paths"]["/documents"]["post"]["requestBody"]["content"]["application/yaml"]["schema"]
    assert "$defs" not in schema
    assert schema["properties"]["parts"]["items"] == {"$ref": "#/components/schemas/Part"}
    assert document["components"]["schemas"]["Part"]["required"] == ["name"]


def test_a_405_names_every_method_of_the_path(tmp_path: Path) -> None:
    answer = TestClient(app(tmp_path)).delete("/things/a")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.json()["error"]["code"] == "method_not_allowed"


def test_the_model_servers_document_is_openapi_3_1_with_its_own_error_answers() -> None:
    bentoml_document = {
        "openapi": "3.0.2",
        "paths": {
            "/forecast": {"post": {"responses": {"200": {}, "400": {}, "404": {}, "500": {}}}},
            "/livez": {"get": {"responses": {"200": {}}}},
        },
        "components": {"schemas": {"InvalidArgument": {}, "NotFound": {}, "InternalServerError": {}}},
    }
    document = complete_openapi(bentoml_document)
    assert document["openapi"] == "3.1.0"
    assert sorted(document["paths"]["/forecast"]["post"]["responses"]) == ["200", "400", "413", "422", "503"]
    assert sorted(document["paths"]["/livez"]["get"]["responses"]) == ["200"]
    assert sorted(document["components"]["schemas"]) == ["ErrorBody"]

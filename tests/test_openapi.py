"""The OpenAPI schema, read from the compiled plans: a kitchen-sink app validated with openapi-spec-validator
(3.1 and 3.0), every parameter kind checked against what the extractors do, the framework's own error bodies
checked against real responses, and the docs routes (serving, caching, disabling, precedence, escaping)."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

import httpx
import msgspec
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_schema_validator import validate as validate_instance
from openapi_spec_validator import validate as validate_spec

from tachyon_api import (
    BackgroundTasks,
    Body,
    Cookie,
    Depends,
    File,
    Form,
    Header,
    HTTPException,
    Query,
    Request,
    Router,
    Struct,
    Tachyon,
    UploadFile,
)
from tachyon_api.cli import main
from tachyon_api.docs import swagger_ui_assets
from tachyon_api.openapi import (
    Contact,
    License,
    OpenAPIConfig,
    OpenAPIGenerator,
    Server,
    build_components_for_struct,
    build_param_schema,
    create_openapi_config,
)
from tests.conftest import ROOT, assert_validation_error, client_for


# --- the kitchen-sink app ----------------------------------------------------------------------------------
class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(Struct):
    street: str
    zip: Annotated[str, msgspec.Meta(pattern=r"^\d{5}$")]


class Item(Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
    price: Annotated[float, msgspec.Meta(gt=0)]
    tags: list[str] = []  # noqa: RUF012 - msgspec gives each instance its own copy
    address: Optional[Address] = None


class ItemOut(Struct):
    id: uuid.UUID
    name: str


class BearerScheme:
    """A security scheme following FastAPI's convention (``model``: the securityScheme object,
    ``scheme_name``), as ``tachyon_api.security``'s classes do."""

    model: ClassVar[dict[str, str]] = {"type": "http", "scheme": "bearer"}
    scheme_name = "BearerAuth"

    async def __call__(self, request: Request, x_unused: str = Header("")) -> str:
        token = request.headers.get("authorization", "")
        if token != "Bearer good":
            raise HTTPException(401, "Not authenticated", {"WWW-Authenticate": "Bearer"})
        return token


class KeyScheme:
    model: ClassVar[dict[str, str]] = {"type": "apiKey", "in": "header", "name": "x-key"}
    scheme_name = "ApiKey"

    def __call__(self, request: Request) -> str:
        return request.headers.get("x-key", "")


bearer = BearerScheme()
api_key = KeyScheme()


def pagination(offset: int = 0, limit: int = Query(10, ge=1, le=100, description="page size")) -> tuple[int, int]:
    return offset, limit


def tenant(x_tenant: str = Header(), page: tuple[int, int] = Depends(pagination)) -> str:
    return x_tenant


def build_app(**config: Any) -> Tachyon:
    app = Tachyon(openapi_config=create_openapi_config(title="Kitchen", version="2.0", **config))

    @app.get("/items/{item_id}", response_model=ItemOut, tags=["items"])
    def get_item(
        item_id: uuid.UUID,
        color: Optional[Color] = None,
        kind: Literal["a", "b"] = "a",
        since: Optional[datetime.datetime] = None,
        day: datetime.date = Query(None),
        ids: list[int] = Query([]),
        price: decimal.Decimal = Query(decimal.Decimal("1.5")),
        session: str = Cookie(None, alias="sid"),
        who: str = Depends(tenant),
        token: str = Depends(bearer),
        legacy: str = Query(None, title="Legacy", examples=["x"], deprecated=True, description="old"),
        code: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] = Query("ABC", max_length=3),
    ) -> dict:
        """Read one item.

        With a longer description."""
        return {"id": item_id, "name": f"{who}:{color.value if color else '-'}:{kind}"}

    @app.post(
        "/items", status_code=201, response_model=ItemOut, summary="Create", responses={409: {"description": "Exists"}}
    )
    def create_item(item: Item, background: BackgroundTasks) -> dict:
        return {"id": uuid.UUID(int=1), "name": item.name}

    @app.post("/upload")
    async def upload(file: UploadFile, note: str = Form(""), more: list[UploadFile] = File([])) -> dict:
        return {"file": file.filename, "note": note, "more": [f.filename for f in more]}

    @app.post("/upload-meta")
    async def upload_meta(meta: Item, file: UploadFile = File()) -> dict:
        return {"name": meta.name, "file": file.filename, "size": len(await file.read())}

    @app.post("/login")
    async def login(username: str = Form(), password: str = Form()) -> dict:
        return {"user": username}

    @app.put("/embed", operation_id="embedBoth")
    def embed(item: Item = Body(), address: Address = Body(), q: Optional[int] = None) -> dict:
        return {"zip": address.zip}

    @app.get("/hidden", include_in_schema=False)
    def hidden() -> dict:
        return {}

    @app.get("/old", deprecated=True, response_description="The old thing")
    def old() -> dict:
        return {}

    @app.delete("/items/{item_id}", status_code=204, dependencies=[Depends(api_key)])
    def delete_item(item_id: int) -> None:
        return None

    @app.get("/crash")
    def crash() -> dict:
        raise RuntimeError("boom")

    router = Router(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(bearer)],
        responses={403: {"description": "Forbidden", "model": ItemOut}},
    )

    @router.get("/stats", tags=["stats"], responses={403: {"description": "Not an admin"}})
    async def stats() -> dict:
        return {}

    @router.get("/again")
    async def get_item_again() -> dict:
        return {}

    app.include_router(router)
    app.get("/items-copy/{item_id}")(get_item)  # the same function at a second path
    return app


@pytest.fixture(scope="module")
def app() -> Tachyon:
    return build_app()


@pytest.fixture(scope="module")
def doc(app: Tachyon) -> dict[str, Any]:
    return app.openapi()


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return doc["paths"][path][method]


def assert_documented(doc: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The response's status is documented for the operation and its JSON body matches the schema."""
    responses = operation(doc, method, path)["responses"]
    assert str(response.status_code) in responses, (response.status_code, list(responses))
    schema = responses[str(response.status_code)]["content"]["application/json"]["schema"]
    validate_instance(response.json(), {**schema, "components": doc["components"]}, cls=OAS31Validator)


# --- validity ----------------------------------------------------------------------------------------------
def test_kitchen_sink_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    validate_spec(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "Kitchen", "version": "2.0", "description": "A fast API built with Tachyon"}


def test_openapi_30_output_is_valid_and_uses_nullable() -> None:
    doc = build_app(openapi_version="3.0.3").openapi()
    validate_spec(doc)
    assert doc["openapi"] == "3.0.3"
    params = {p["name"]: p for p in operation(doc, "get", "/items/{item_id}")["parameters"]}
    assert params["since"]["schema"] == {"type": "string", "format": "date-time", "nullable": True, "default": None}
    assert params["color"]["schema"] == {
        "nullable": True,
        "allOf": [{"$ref": "#/components/schemas/Color"}],
        "default": None,
    }
    item = doc["components"]["schemas"]["Item"]["properties"]
    assert item["price"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert item["address"]["nullable"] is True
    text = json.dumps(doc)
    assert '"type": "null"' not in text and "examples" not in text
    assert params["legacy"]["schema"]["example"] == "x"


def test_every_operation_and_nothing_else(doc: dict[str, Any]) -> None:
    operations = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert operations == {
        ("get", "/items/{item_id}"),
        ("post", "/items"),
        ("post", "/upload"),
        ("post", "/upload-meta"),
        ("post", "/login"),
        ("put", "/embed"),
        ("get", "/old"),
        ("delete", "/items/{item_id}"),
        ("get", "/crash"),
        ("get", "/admin/stats"),
        ("get", "/admin/again"),
        ("get", "/items-copy/{item_id}"),
    }  # no /hidden (include_in_schema=False), no docs pages


# --- parameters --------------------------------------------------------------------------------------------
def test_parameters_of_every_source_with_dependencies(doc: dict[str, Any]) -> None:
    params = operation(doc, "get", "/items/{item_id}")["parameters"]
    assert [(p["in"], p["name"], p["required"]) for p in params] == [
        ("path", "item_id", True),
        ("query", "color", False),
        ("query", "kind", False),
        ("query", "since", False),
        ("query", "day", False),
        ("query", "ids", False),
        ("query", "price", False),
        ("cookie", "sid", False),  # the alias is the name looked up
        ("query", "legacy", False),
        ("query", "code", False),
        ("header", "x-tenant", True),  # from the dependency `tenant`
        ("query", "offset", False),  # from `pagination`, a dependency of the dependency
        ("query", "limit", False),
    ]  # the security scheme's own parameters (x-unused) are not listed: the scheme documents them
    by_name = {p["name"]: p for p in params}
    assert by_name["item_id"]["schema"] == {"type": "string", "format": "uuid"}
    assert by_name["color"]["schema"] == {
        "anyOf": [{"$ref": "#/components/schemas/Color"}, {"type": "null"}],
        "default": None,
    }
    assert doc["components"]["schemas"]["Color"] == {"title": "Color", "enum": ["green", "red"]}
    assert by_name["kind"]["schema"] == {"enum": ["a", "b"], "default": "a"}
    assert by_name["day"]["schema"] == {"type": "string", "format": "date"}
    assert by_name["ids"]["schema"] == {"type": "array", "items": {"type": "integer"}, "default": []}
    assert by_name["price"]["schema"] == {"type": "string", "format": "decimal", "default": "1.5"}
    # Constraints from the marker and from Annotated[..., Meta(...)] are the ones the server enforces.
    assert by_name["code"]["schema"] == {"type": "string", "maxLength": 3, "pattern": "^[A-Z]{3}$", "default": "ABC"}
    assert by_name["limit"] == {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "page size",
        "schema": {"description": "page size", "type": "integer", "minimum": 1, "maximum": 100, "default": 10},
    }
    assert by_name["legacy"] == {
        "name": "legacy",
        "in": "query",
        "required": False,
        "description": "old",
        "deprecated": True,
        "schema": {"title": "Legacy", "description": "old", "examples": ["x"], "deprecated": True, "type": "string"},
    }


def test_documented_parameters_are_the_ones_served(app: Tachyon, doc: dict[str, Any]) -> None:
    client = client_for(app)
    url = f"/items/{uuid.UUID(int=5)}"
    ok = client.get(
        url, params={"color": "red", "kind": "b"}, headers={"x-tenant": "t1", "authorization": "Bearer good"}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"id": str(uuid.UUID(int=5)), "name": "t1:red:b"}
    assert_documented(doc, "get", "/items/{item_id}", ok)
    # Every documented required parameter is required by the server, under the documented name.
    invalid = client.get(
        url, params={"color": "blue", "limit": "0", "code": "abcd"}, headers={"authorization": "Bearer good"}
    )
    assert_validation_error(
        invalid, [["query", "color"], ["header", "x-tenant"], ["query", "limit"], ["query", "code"]]
    )
    assert_documented(doc, "get", "/items/{item_id}", invalid)
    not_found = client.get("/items/not-a-uuid", headers={"x-tenant": "t", "authorization": "Bearer good"})
    assert not_found.status_code == 404
    assert_documented(doc, "get", "/items/{item_id}", not_found)


# --- bodies ------------------------------------------------------------------------------------------------
def test_json_body_from_msgspec_with_constraints_and_nested_optional_structs(doc: dict[str, Any]) -> None:
    body = operation(doc, "post", "/items")["requestBody"]
    assert body == {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}},
        "required": True,
    }
    schemas = doc["components"]["schemas"]
    assert schemas["Item"] == {
        "title": "Item",
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 50},
            "price": {"type": "number", "exclusiveMinimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "default": []},
            "address": {"anyOf": [{"$ref": "#/components/schemas/Address"}, {"type": "null"}], "default": None},
        },
        "required": ["name", "price"],
    }
    assert schemas["Address"]["properties"]["zip"] == {"type": "string", "pattern": r"^\d{5}$"}


def test_several_body_parameters_are_one_object(app: Tachyon, doc: dict[str, Any]) -> None:
    op = operation(doc, "put", "/embed")
    assert op["operationId"] == "embedBoth"
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "type": "object",
        "properties": {
            "item": {"$ref": "#/components/schemas/Item"},
            "address": {"$ref": "#/components/schemas/Address"},
        },
        "required": ["item", "address"],
    }
    body = {"item": {"name": "a", "price": 1}, "address": {"street": "s", "zip": "12345"}}
    response = client_for(app).put("/embed", json=body)
    assert response.json() == {"zip": "12345"}


def test_a_body_read_by_dependencies_is_documented_as_the_server_reads_it() -> None:
    app = Tachyon()

    def payload(item: Item) -> Item:
        return item

    def first(p: Item = Depends(payload)) -> str:
        return p.name

    def second(p: Item = Depends(payload)) -> str:
        return p.name

    @app.post("/shared")
    def shared(a: str = Depends(first), b: str = Depends(second)) -> dict:
        return {"a": a, "b": b}

    @app.post("/both")
    def both(address: Address, name: str = Depends(first)) -> dict:
        return {"zip": address.zip, "name": name}

    doc = app.openapi()
    # `payload` runs once per request (cached), so its body is documented once.
    assert doc["paths"]["/shared"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Item"
    }
    # The dependency and the endpoint each decode the whole body: it must satisfy both.
    assert doc["paths"]["/both"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "allOf": [{"$ref": "#/components/schemas/Address"}, {"$ref": "#/components/schemas/Item"}]
    }
    both_ok = client_for(app).post("/both", json={"name": "n", "price": 1, "street": "s", "zip": "12345"})
    assert both_ok.json() == {"zip": "12345", "name": "n"}


def test_uploads_are_multipart_with_binary_files(doc: dict[str, Any]) -> None:
    body = operation(doc, "post", "/upload")["requestBody"]
    assert body == {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "note": {"type": "string", "default": ""},
                        "more": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                    "required": ["file"],
                }
            }
        },
        "required": True,
    }


def test_form_fields_alone_accept_both_form_encodings(app: Tachyon, doc: dict[str, Any]) -> None:
    content = operation(doc, "post", "/login")["requestBody"]["content"]
    assert list(content) == ["application/x-www-form-urlencoded", "multipart/form-data"]
    client = client_for(app)
    assert client.post("/login", data={"username": "ada", "password": "x"}).json() == {"user": "ada"}
    answer = client.post("/login", data={"username": "ada", "password": "x"}, files={"f": ("a", b"")})
    assert answer.json() == {"user": "ada"}


def test_a_model_beside_files_is_a_json_field_of_the_multipart_form(app: Tachyon, doc: dict[str, Any]) -> None:
    schema = operation(doc, "post", "/upload-meta")["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["meta"] == {"$ref": "#/components/schemas/Item"}
    assert schema["required"] == ["meta", "file"]
    client = client_for(app)
    files = {"file": ("a.txt", b"abc", "text/plain")}
    ok = client.post("/upload-meta", data={"meta": '{"name": "lamp", "price": 2.5}'}, files=files)
    assert ok.json() == {"name": "lamp", "file": "a.txt", "size": 3}
    bad = client.post("/upload-meta", data={"meta": '{"name": "lamp", "price": -1}'}, files=files)
    assert_validation_error(bad, [["body", "meta", "price"]])
    assert_documented(doc, "post", "/upload-meta", bad)
    missing = client.post("/upload-meta", files=files)
    assert_validation_error(missing, [["body", "meta"]])
    # Malformed JSON in the field is a 422 too, never a 500 (it was one before this test existed).
    broken = client.post("/upload-meta", data={"meta": '{"name": '}, files=files)
    assert [e["type"] for e in assert_validation_error(broken, [["body", "meta"]])] == ["json_invalid"]


# --- responses ---------------------------------------------------------------------------------------------
def test_responses_status_model_errors_and_extras(app: Tachyon, doc: dict[str, Any]) -> None:
    create = operation(doc, "post", "/items")["responses"]
    assert list(create) == ["201", "409", "413", "422", "500"]
    assert create["201"] == {
        "description": "Created",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ItemOut"}}},
    }
    assert create["409"] == {"description": "Exists"}
    assert doc["components"]["schemas"]["ItemOut"]["properties"]["id"] == {"type": "string", "format": "uuid"}
    assert operation(doc, "delete", "/items/{item_id}")["responses"]["204"] == {"description": "No Content"}
    assert operation(doc, "get", "/old")["responses"] == {
        "200": {"description": "The old thing", "content": {"application/json": {"schema": {}}}},
        "500": {
            "description": "Internal Server Error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResponseValidationError"}}},
        },
    }  # no parameters: no 422
    # The router's entry applies to its routes; a route's own entry for the same status replaces it.
    assert operation(doc, "get", "/admin/again")["responses"]["403"] == {
        "description": "Forbidden",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ItemOut"}}},
    }
    assert operation(doc, "get", "/admin/stats")["responses"]["403"] == {"description": "Not an admin"}


def test_error_bodies_are_the_ones_sent(app: Tachyon, doc: dict[str, Any]) -> None:
    client = client_for(app)
    created = client.post("/items", json={"name": "lamp", "price": 3})
    assert created.status_code == 201
    assert_documented(doc, "post", "/items", created)
    invalid = client.post("/items", json={"name": "", "price": 3})
    assert_validation_error(invalid, [["body", "name"]])
    assert_documented(doc, "post", "/items", invalid)
    crash = client.get("/crash")
    assert crash.status_code == 500
    assert_documented(doc, "get", "/crash", crash)
    small = Tachyon(max_body_size=10)

    @small.post("/items")
    def create(item: Item) -> dict:
        return {}

    too_large = client_for(small).post("/items", json={"name": "x" * 20, "price": 1})
    assert too_large.status_code == 413
    assert_documented(small.openapi(), "post", "/items", too_large)


def test_malformed_form_body_400_is_documented(app: Tachyon, doc: dict[str, Any]) -> None:
    """A form body the parser cannot read is a 400 with the framework's error body; schemathesis found it
    undocumented (only 413 and 422 were), so a client generated from the schema did not expect it."""
    client = client_for(app)
    for path in ("/upload", "/login"):
        broken = client.post(
            path, content=b"--x\r\nTrue--x--\r\n", headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert broken.status_code == 400, broken.text
        assert_documented(doc, "post", path, broken)
    assert "400" not in operation(doc, "post", "/items")["responses"]  # a JSON body: bad JSON is a 422


# --- operation metadata ------------------------------------------------------------------------------------
def test_tags_summary_description_operation_ids_and_deprecation(doc: dict[str, Any]) -> None:
    get = operation(doc, "get", "/items/{item_id}")
    assert get["tags"] == ["items"]
    assert get["summary"] == "Read one item."
    assert get["description"] == "With a longer description."
    assert operation(doc, "post", "/items")["summary"] == "Create"
    assert operation(doc, "get", "/admin/stats")["tags"] == ["admin", "stats"]
    assert operation(doc, "get", "/admin/stats")["summary"] == "Stats"  # no docstring: the name in words
    assert operation(doc, "get", "/old")["deprecated"] is True
    assert "deprecated" not in get
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert get["operationId"] == "get_item_items__item_id__get"
    assert operation(doc, "get", "/items-copy/{item_id}")["operationId"] == "get_item_items_copy__item_id__get"
    assert build_app().openapi() == doc  # stable: the same app gives the same document


def test_security_schemes_and_requirements(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"] == {
        "BearerAuth": {"type": "http", "scheme": "bearer"},
        "ApiKey": {"type": "apiKey", "in": "header", "name": "x-key"},
    }
    assert operation(doc, "get", "/items/{item_id}")["security"] == [{"BearerAuth": []}]
    assert operation(doc, "get", "/admin/stats")["security"] == [{"BearerAuth": []}]  # the router's guard
    assert operation(doc, "delete", "/items/{item_id}")["security"] == [{"ApiKey": []}]  # the route's guard
    assert "security" not in operation(doc, "post", "/items")


# --- serving -----------------------------------------------------------------------------------------------
def test_openapi_json_is_built_once_and_rebuilt_when_routes_are_added() -> None:
    app = build_app()
    client = client_for(app)
    first = client.get("/openapi.json")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.json() == app.openapi()
    assert app.openapi() is app.openapi()  # built once
    schema = app.openapi()
    assert app.openapi_generator.encode(schema) is app.openapi_generator.encode(schema)  # encoded once

    @app.get("/late")
    def late() -> dict:
        return {}

    assert app.openapi() is not schema
    assert "/late" in client.get("/openapi.json").json()["paths"]


def test_a_replaced_openapi_method_is_what_is_served() -> None:
    app = build_app()
    original = app.openapi

    def custom() -> dict:
        schema = original()
        schema["info"]["x-logo"] = {"url": "/logo.png"}
        return schema

    app.openapi = custom  # type: ignore[method-assign]
    assert client_for(app).get("/openapi.json").json()["info"]["x-logo"] == {"url": "/logo.png"}


def test_docs_pages_and_offline_swagger_assets(app: Tachyon) -> None:
    client = client_for(app)
    scalar = client.get("/docs")
    assert scalar.headers["content-type"].startswith("text/html")
    assert '<script id="api-reference" data-url="/openapi.json"></script>' in scalar.text
    redoc = client.get("/redoc")
    assert '<redoc spec-url="/openapi.json"></redoc>' in redoc.text
    swagger = client.get("/swagger")
    assert '<script src="/swagger/swagger-ui-bundle.js"></script>' in swagger.text
    assert '"url": "/openapi.json"' in swagger.text
    assets = swagger_ui_assets()
    assert assets is not None, "the test extra installs swagger-ui-py"
    bundle = client.get("/swagger/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert bundle.content == (assets / "swagger-ui-bundle.js").read_bytes()
    assert b'PACKAGE_VERSION:"5.' in bundle.content  # Swagger UI 5: the first to render OpenAPI 3.1
    assert client.get("/swagger/swagger-ui.css").status_code == 200
    assert client.get("/swagger/core.py").status_code == 404  # only the listed files
    assert client.get("/swagger/..%2Fcore.py").status_code == 404
    assert client.head("/swagger").status_code == 200


def test_cdn_urls_are_configurable() -> None:
    app = build_app(
        swagger_js_url="https://cdn.example/sw.js",
        swagger_css_url="https://cdn.example/sw.css",
        redoc_js_url="https://cdn.example/redoc.js",
        scalar_js_url="https://cdn.example/scalar.js",
        swagger_ui_parameters={"docExpansion": "none"},
    )
    client = client_for(app)
    swagger = client.get("/swagger").text
    assert '<script src="https://cdn.example/sw.js" onerror=' in swagger
    assert "loads its script from a CDN (cdn.example)" in swagger  # the line shown when it cannot be loaded
    assert '<link rel="stylesheet" href="https://cdn.example/sw.css">' in swagger
    assert '"docExpansion": "none"' in swagger
    assert 'src="https://cdn.example/redoc.js"' in client.get("/redoc").text
    assert 'src="https://cdn.example/scalar.js"' in client.get("/docs").text


def test_each_docs_url_can_be_turned_off() -> None:
    for off in ("docs_url", "redoc_url", "swagger_url"):
        app = build_app(**{off: None})
        client = client_for(app)
        statuses = {url: client.get(url).status_code for url in ("/docs", "/redoc", "/swagger", "/openapi.json")}
        expected = {"/docs": 200, "/redoc": 200, "/swagger": 200, "/openapi.json": 200}
        expected[{"docs_url": "/docs", "redoc_url": "/redoc", "swagger_url": "/swagger"}[off]] = 404
        assert statuses == expected, off
    app = build_app(openapi_url=None)  # no schema URL: no page at all, the schema is still there for code
    client = client_for(app)
    assert {client.get(u).status_code for u in ("/docs", "/redoc", "/swagger", "/openapi.json")} == {404}
    assert "/items" in app.openapi()["paths"]


def test_docs_at_other_urls() -> None:
    app = build_app(openapi_url="/api/schema.json", docs_url="/reference", swagger_url="/try/", redoc_url="/read")
    client = client_for(app)
    assert client.get("/api/schema.json").json()["openapi"] == "3.1.0"
    assert 'data-url="/api/schema.json"' in client.get("/reference").text
    assert '<script src="/try/swagger-ui-bundle.js"></script>' in client.get("/try").text
    assert client.get("/try/swagger-ui.css").status_code == 200
    assert 'spec-url="/api/schema.json"' in client.get("/read").text


def test_a_user_route_on_a_docs_url_wins_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    app = Tachyon()
    with caplog.at_level(logging.WARNING, logger="tachyon_api.docs"):

        @app.get("/docs")
        def my_docs() -> dict:
            return {"mine": True}

        router = Router()

        @router.get("/swagger/{page}")
        def my_pages(page: str) -> dict:
            return {"page": page}

        app.include_router(router)
    assert [r.getMessage().split(" instead")[0] for r in caplog.records] == [
        "GET /docs is served by my_docs",
        "GET /swagger/{page} is served by my_pages",
    ]
    client = client_for(app)
    assert client.get("/docs").json() == {"mine": True}
    assert client.get("/swagger/swagger-ui.css").json() == {"page": "swagger-ui.css"}
    assert client.get("/swagger").headers["content-type"].startswith("text/html")  # the page itself stays
    assert client.get("/redoc").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/docs", "/swagger/{page}"}  # the user's routes are documented; docs pages are not
    # A POST route on a docs URL takes nothing away.
    caplog.clear()

    @app.post("/redoc")
    def post_redoc() -> dict:
        return {}

    assert not caplog.records
    assert client.get("/redoc").headers["content-type"].startswith("text/html")


def test_configured_strings_are_escaped_in_every_page() -> None:
    evil = "</title><script>alert(1)</script>"
    app = Tachyon(
        openapi_config=create_openapi_config(
            title=evil,
            swagger_ui_parameters={"x": "</script><script>alert(2)</script>"},
            openapi_url='/o.json"><script>alert(3)</script>',
        )
    )
    client = client_for(app)
    for page in ("/docs", "/swagger", "/redoc"):
        text = client.get(page).text
        assert "<script>alert" not in text, page
        assert "<title>&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;</title>" in text
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(2)" in client.get("/swagger").text


async def test_pages_follow_the_root_path_of_a_mounted_app(app: Tachyon) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        swagger = (await client.get("/swagger")).text
    assert '"url": "/api/openapi.json"' in swagger
    assert '<script src="/api/swagger/swagger-ui-bundle.js"></script>' in swagger


# --- configuration and the generator's public methods ------------------------------------------------------
def test_info_contact_license_servers_and_manual_additions() -> None:
    config = create_openapi_config(
        title="T",
        description=None,
        version="1",
        terms_of_service="https://t.example/terms",
        contact={"name": "Ada", "email": "ada@example.com"},
        license=License("MIT", identifier="MIT"),
        servers=[Server("https://api.example", "prod"), {"url": "http://localhost:8000"}],
    )
    app = Tachyon(openapi_config=config)
    assert isinstance(app.openapi_config, OpenAPIConfig)
    assert isinstance(app.openapi_generator, OpenAPIGenerator)
    assert config.info.contact == Contact("Ada", None, "ada@example.com")
    app.openapi_generator.add_schema("Extra", {"type": "string"})
    app.openapi_generator.add_path(
        "/external", "GET", {"summary": "Served elsewhere", "responses": {"200": {"description": "OK"}}}
    )
    doc = app.openapi()
    validate_spec(doc)
    assert doc["info"] == {
        "title": "T",
        "version": "1",
        "termsOfService": "https://t.example/terms",
        "contact": {"name": "Ada", "email": "ada@example.com"},
        "license": {"name": "MIT", "identifier": "MIT"},
    }
    assert doc["servers"] == [{"url": "https://api.example", "description": "prod"}, {"url": "http://localhost:8000"}]
    assert doc["components"]["schemas"]["Extra"] == {"type": "string"}
    assert doc["paths"]["/external"]["get"]["summary"] == "Served elsewhere"
    generator = OpenAPIGenerator(config)
    assert '"url": "/o.json"' in generator.get_swagger_ui_html("/o.json", "T")
    assert 'spec-url="/o.json"' in generator.get_redoc_html("/o.json", "T")
    assert 'data-url="/o.json"' in generator.get_scalar_html("/o.json", "T")


def test_schema_helpers() -> None:
    assert build_param_schema(Optional[int]) == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert build_param_schema(Optional[int], "3.0.3") == {"type": "integer", "nullable": True}
    components = build_components_for_struct(Item)
    assert set(components) == {"Item", "Address"}


# --- the command line and the example shop -----------------------------------------------------------------
def run_tachyon(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tachyon_api", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_example_shop_schema_is_valid(tmp_path: Path) -> None:
    target = tmp_path / "shop.json"
    exported = run_tachyon("openapi", "export", "examples.shop.app:app", "-o", str(target))
    assert exported.returncode == 0, exported.stderr
    checked = run_tachyon("openapi", "validate", str(target))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{target}: valid OpenAPI 3.1.0"
    doc = json.loads(target.read_text())
    validate_spec(doc)
    assert doc["paths"]["/signup"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SignupIn"
    }
    assert "201" in doc["paths"]["/signup"]["post"]["responses"]
    upload = doc["paths"]["/import"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["file"] == {"type": "string", "format": "binary"}
    status = doc["paths"]["/imports/{import_id}"]["get"]["parameters"]
    assert [(p["in"], p["name"]) for p in status] == [("path", "import_id"), ("query", "max_errors")]
    signature = doc["paths"]["/webhooks/receiver"]["post"]["parameters"]
    assert ("header", "x-shop-signature") in [(p["in"], p["name"]) for p in signature]  # from a dependency


def test_export_to_stdout_with_indent_and_validate_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "oa_cli_app.py").write_text(
        "from tachyon_api import Tachyon\napp = Tachyon()\n@app.get('/ping')\ndef ping() -> str:\n    return 'pong'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["openapi", "export", "oa_cli_app:app", "--indent", "4"])
    out = capsys.readouterr().out
    assert out.startswith('{\n    "openapi": "3.1.0"')
    assert list(json.loads(out)["paths"]) == ["/ping"]
    main(["openapi", "export", "oa_cli_app:app", "--indent", "0"])
    assert capsys.readouterr().out.count("\n") == 1
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"openapi": "3.1.0", "info": {"title": "x"}, "paths": {}}))
    with pytest.raises(SystemExit) as exc:
        main(["openapi", "validate", str(broken)])
    # openapi-spec-validator quotes the name as its backend does: jsonschema 'version', jsonschema-rs "version"
    # (installed with schemathesis).
    assert re.search(r"is not a valid OpenAPI document: ['\"]version['\"] is a required property", str(exc.value))
    with pytest.raises(SystemExit) as exc:
        main(["openapi", "validate", str(tmp_path / "missing.json")])
    assert "Cannot read" in str(exc.value)


def test_path_segments_are_required_parameters() -> None:
    """OpenAPI requires ``required: true`` for every path parameter: one the endpoint reads (typed), and a
    segment of the path that no parameter reads (declared as a string)."""
    app = Tachyon()

    @app.get("/folders/{folder}/files/{file_id}")
    def read_file(file_id: int):
        return {}

    schema = app.openapi()
    parameters = {p["name"]: p for p in schema["paths"]["/folders/{folder}/files/{file_id}"]["get"]["parameters"]}
    assert parameters["file_id"] == {
        "name": "file_id",
        "in": "path",
        "required": True,
        "schema": parameters["file_id"]["schema"],
    }
    assert parameters["file_id"]["schema"]["type"] == "integer"
    assert parameters["folder"] == {"name": "folder", "in": "path", "required": True, "schema": {"type": "string"}}

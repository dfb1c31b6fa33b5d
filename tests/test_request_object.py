"""The injected ``Request``: scope views, body readers, state, and sharing the body with parameters
(issue "Parameters, validation, uploads and DI", point 8)."""

import asyncio
import json

import pytest
import starlette.requests

from tachyon_api import Body, Depends, File, Form, Request, Struct, Tachyon, UploadFile
from tachyon_api.testing import TachyonTestClient, create_client

from .conftest import assert_validation_error


class Item(Struct):
    name: str
    price: float


def test_request_scope_properties():
    app = Tachyon()
    seen = {}

    @app.get("/users/{user_id}/files/{name}")
    async def endpoint(request: Request):
        seen["request"] = request
        return {
            "method": request.method,
            "url": str(request.url),
            "scheme": request.url.scheme,
            "netloc": request.url.netloc,
            "path": request.url.path,
            "query": request.url.query,
            "path_params": request.path_params,
            "q": request.query_params.get("q"),
            "tags": request.query_params.getlist("tag"),
            "missing": request.query_params.get("nope"),
            "header": request.headers["x-custom"],
            "header_ci": request.headers.get("X-CUSTOM"),
            "has_header": "x-custom" in request.headers,
            "cookies": request.cookies,
            "client": [request.client.host, request.client.port],
            "is_app": request.app is app,
        }

    with TachyonTestClient(app) as client:
        response = client.get(
            "/users/5/files/report.pdf?q=hello&tag=a&tag=b",
            headers={"X-Custom": "value", "cookie": "session=abc; theme=dark"},
        )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "method": "GET",
        "url": "http://testserver/users/5/files/report.pdf?q=hello&tag=a&tag=b",
        "scheme": "http",
        "netloc": "testserver",
        "path": "/users/5/files/report.pdf",
        "query": "q=hello&tag=a&tag=b",
        "path_params": {"user_id": "5", "name": "report.pdf"},
        "q": "hello",
        "tags": ["a", "b"],
        "missing": None,
        "header": "value",
        "header_ci": "value",
        "has_header": True,
        "cookies": {"session": "abc", "theme": "dark"},
        "client": ["testclient", 50000],
        "is_app": True,
    }
    assert isinstance(seen["request"], Request)


def test_request_in_sync_endpoint_and_method_names():
    app = Tachyon()

    @app.api_route("/m", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def endpoint(request: Request):
        return {"method": request.method}

    with TachyonTestClient(app) as client:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            assert client.request(method, "/m").json() == {"method": method}


def test_body_and_json():
    app = Tachyon()

    @app.post("/raw")
    async def raw(request: Request):
        first = await request.body()
        second = await request.body()
        return {"len": len(first), "same": first == second, "text": first.decode()}

    @app.post("/json")
    async def as_json(request: Request):
        data = await request.json()
        again = await request.json()
        return {"data": data, "same": data == again, "body": (await request.body()).decode()}

    with TachyonTestClient(app) as client:
        assert client.post("/raw", content=b"hello bytes").json() == {"len": 11, "same": True, "text": "hello bytes"}
        assert client.post("/raw").json() == {"len": 0, "same": True, "text": ""}
        payload = {"a": [1, 2], "b": {"c": None}}
        raw = json.dumps(payload)
        response = client.post("/json", content=raw, headers={"content-type": "application/json"})
        assert response.json() == {"data": payload, "same": True, "body": raw}


def test_malformed_json_through_request_is_422_json_invalid():
    app = Tachyon()

    @app.post("/json")
    async def as_json(request: Request):
        return {"data": await request.json()}

    with TachyonTestClient(app) as client:
        response = client.post("/json", content=b"{not json", headers={"content-type": "application/json"})
    errors = assert_validation_error(response, [["body"]])
    assert errors[0]["type"] == "json_invalid"


def test_form_urlencoded_and_multipart():
    app = Tachyon()
    kept = []

    @app.post("/form")
    async def form(request: Request):
        data = await request.form()
        upload = data.get("file")
        kept.append(upload)
        return {
            "name": data["name"],
            "colors": data.getlist("color"),
            "file": None if upload is None else [upload.filename, (await upload.read()).decode()],
            "same": data is await request.form(),
        }

    with TachyonTestClient(app) as client:
        response = client.post("/form", data={"name": "ada", "color": ["red", "blue"]})
        assert response.json() == {"name": "ada", "colors": ["red", "blue"], "file": None, "same": True}
        response = client.post(
            "/form", data={"name": "bob", "color": "green"}, files={"file": ("n.txt", b"notes", "text/plain")}
        )
        assert response.json() == {"name": "bob", "colors": ["green"], "file": ["n.txt", "notes"], "same": True}
    assert isinstance(kept[1], UploadFile)
    assert kept[1].file.closed


def test_form_with_non_form_content_type_is_422_content_type():
    app = Tachyon()

    @app.post("/form")
    async def form(request: Request):
        return {"n": len(await request.form())}

    with TachyonTestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/form", content=b"<a/>", headers={"content-type": "application/xml"})
    errors = assert_validation_error(response, [["body"]])
    assert errors[0]["type"] == "content_type"


def test_request_state_shared_between_dependency_and_endpoint():
    app = Tachyon()

    async def authenticate(request: Request):
        request.state.user = "ada"
        request.state.roles = ["admin"]

    @app.get("/", dependencies=[Depends(authenticate)])
    async def endpoint(request: Request):
        return {"user": request.state.user, "roles": request.state.roles}

    @app.get("/fresh")
    async def fresh(request: Request):
        return {"has_user": hasattr(request.state, "user")}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"user": "ada", "roles": ["admin"]}
        # state does not leak into the next request
        assert client.get("/fresh").json() == {"has_user": False}


def test_same_request_object_for_endpoint_and_dependencies():
    app = Tachyon()
    seen = []

    def dep(request: Request):
        seen.append(request)

    @app.get("/")
    async def endpoint(request: Request, _=Depends(dep)):
        seen.append(request)
        return {}

    with TachyonTestClient(app) as client:
        client.get("/")
    assert len(seen) == 2 and seen[0] is seen[1]


# --- the body is read once and shared --------------------------------------------------------------------
def test_body_after_struct_parameter_returns_same_bytes():
    app = Tachyon()

    @app.post("/item")
    async def create(item: Item, request: Request):
        raw = await asyncio.wait_for(request.body(), 2)
        parsed = await asyncio.wait_for(request.json(), 2)
        return {"name": item.name, "raw": raw.decode(), "parsed": parsed}

    raw = '{"name": "pen",  "price": 1.5}'
    with TachyonTestClient(app) as client:
        response = client.post("/item", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "pen", "raw": raw, "parsed": {"name": "pen", "price": 1.5}}


def test_body_after_explicit_body_marker_and_embedded_bodies():
    app = Tachyon()

    class User(Struct):
        username: str

    @app.post("/embed")
    async def embed(request: Request, item: Item = Body(), user: User = Body()):
        return {"raw": (await asyncio.wait_for(request.body(), 2)).decode(), "user": user.username}

    raw = '{"item": {"name": "a", "price": 1}, "user": {"username": "ada"}}'
    with TachyonTestClient(app) as client:
        response = client.post("/embed", content=raw, headers={"content-type": "application/json"})
    assert response.json() == {"raw": raw, "user": "ada"}


def test_body_available_to_dependency_and_struct_param():
    app = Tachyon()

    async def signature(request: Request) -> int:
        return len(await asyncio.wait_for(request.body(), 2))

    @app.post("/item")
    async def create(item: Item, size: int = Depends(signature)):
        return {"name": item.name, "size": size}

    raw = b'{"name": "pen", "price": 2}'
    with TachyonTestClient(app) as client:
        response = client.post("/item", content=raw, headers={"content-type": "application/json"})
    assert response.json() == {"name": "pen", "size": len(raw)}


def test_form_after_form_and_file_parameters():
    app = Tachyon()

    @app.post("/f")
    async def handler(request: Request, title: str = Form(), doc: UploadFile = File()):
        form = await asyncio.wait_for(request.form(), 2)
        return {"title": title, "form_title": form["title"], "same_file": form["doc"] is doc}

    with TachyonTestClient(app) as client:
        response = client.post("/f", data={"title": "T"}, files={"doc": ("d.txt", b"d", "text/plain")})
    assert response.json() == {"title": "T", "form_title": "T", "same_file": True}


async def test_request_with_async_client():
    app = Tachyon()

    @app.post("/echo/{kind}")
    async def echo(kind: str, request: Request):
        return {"kind": kind, "body": (await request.body()).decode(), "agent": request.headers.get("user-agent")}

    async with create_client(app, headers={"user-agent": "tests/1"}) as client:
        response = await client.post("/echo/text", content=b"payload")
    assert response.json() == {"kind": "text", "body": "payload", "agent": "tests/1"}


# --- Starlette's Request annotation ----------------------------------------------------------------------
def test_starlette_request_annotation_is_injected():
    app = Tachyon()
    seen = {}

    @app.post("/s/{key}")
    async def endpoint(key: str, request: starlette.requests.Request):
        seen["type"] = type(request)
        data = await request.json()
        return {
            "key": key,
            "method": request.method,
            "path": request.url.path,
            "q": request.query_params.get("q"),
            "header": request.headers.get("x-h"),
            "data": data,
        }

    with TachyonTestClient(app) as client:
        response = client.post("/s/abc?q=1", json={"x": 1}, headers={"x-h": "v"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "key": "abc",
        "method": "POST",
        "path": "/s/abc",
        "q": "1",
        "header": "v",
        "data": {"x": 1},
    }
    assert issubclass(seen["type"], starlette.requests.Request)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_starlette_request_in_sync_endpoint(method):
    app = Tachyon()

    @app.api_route("/s", methods=[method])
    def endpoint(request: starlette.requests.Request):
        return {"method": request.method, "cookie": request.cookies.get("c")}

    with TachyonTestClient(app) as client:
        response = client.request(method, "/s", headers={"cookie": "c=1"})
    assert response.json() == {"method": method, "cookie": "1"}


def test_cookie_header_is_parsed_leniently_as_browsers_send_it():
    """A malformed pair is skipped, not the rest of the header; the value is everything after the first
    ``=``; surrounding double quotes go; escapes decode; a later duplicate wins. (Mutants of
    ``parse_cookies`` caught: ``rpartition``, ``break`` instead of ``continue``, ``and`` instead of ``or``,
    the quote check off by one.)"""
    app = Tachyon()

    @app.get("/cookies")
    async def cookies(request: Request):
        return request.cookies

    header = 'a=1; junk; =nokey; b="quoted"; c=x=y; d=%20sp; e=""; f="; a=2'
    with TachyonTestClient(app) as client:
        response = client.get("/cookies", headers={"cookie": header})
    assert response.json() == {"a": "2", "b": "quoted", "c": "x=y", "d": " sp", "e": "", "f": '"'}

"""Responses: rendering of return values, the response classes, cookies, response_model, encoding failures."""

import dataclasses
import datetime
import decimal
import enum
import logging
import threading
import uuid

import httpx
import pytest

from tachyon_api import Struct, Tachyon
from tachyon_api.background import BackgroundTask, BackgroundTasks
from tachyon_api.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from .conftest import client_for, serve

INTERNAL = {"success": False, "error": "Internal Server Error", "code": "INTERNAL_SERVER_ERROR"}
RESPONSE_INVALID = {"success": False, "error": "Internal Server Error", "code": "RESPONSE_VALIDATION_ERROR"}


class Item(Struct):
    name: str
    price: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Status(enum.Enum):
    ACTIVE = "active"
    OFF = "off"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


def one_route(value, **route_kwargs):
    """An app whose GET /v returns ``value``."""
    app = Tachyon()

    @app.get("/v", **route_kwargs)
    def endpoint():
        return value

    return app


# --- plain return values ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}),
        ([1, "two", None], [1, "two", None]),
        (Item(name="pen", price=1.5), {"name": "pen", "price": 1.5}),
        ([Item(name="a", price=1.0)], [{"name": "a", "price": 1.0}]),
        (Point(1, 2), {"x": 1, "y": 2}),
        (None, None),
        ("hello", "hello"),
        (42, 42),
        (True, True),
        ({"nested": {"point": Point(3, 4)}}, {"nested": {"point": {"x": 3, "y": 4}}}),
    ],
)
def test_return_values_become_json(value, expected):
    response = client_for(one_route(value)).get("/v")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected
    assert response.headers["content-length"] == str(len(response.content))


def test_json_is_compact():
    response = client_for(one_route({"a": 1, "b": [1, 2]})).get("/v")
    assert response.content == b'{"a":1,"b":[1,2]}'


def test_async_endpoint_return_value_rendered_the_same():
    app = Tachyon()

    @app.get("/v")
    async def endpoint():
        return Item(name="async", price=2.0)

    response = client_for(app).get("/v")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"name": "async", "price": 2.0}


def test_bytes_become_octet_stream():
    response = client_for(one_route(b"\x00\x01binary\xff")).get("/v")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"\x00\x01binary\xff"
    assert response.headers["content-length"] == "9"


def test_special_types_encode():
    value = {
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "when_utc": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 1, 2),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "amount": decimal.Decimal("12.50"),
        "status": Status.ACTIVE,
        "level": Level.HIGH,
    }
    response = client_for(one_route(value)).get("/v")
    assert response.status_code == 200
    data = response.json()
    assert data["when"] == "2024-01-02T03:04:05"
    assert data["when_utc"] == "2024-01-02T03:04:05Z"
    assert data["day"] == "2024-01-02"
    assert data["id"] == "12345678-1234-5678-1234-567812345678"
    assert data["amount"] == 12.5
    assert data["status"] == "active"
    assert data["level"] == 2


def test_object_with_json_hook_is_encoded():
    class Custom:
        def __json__(self):
            return {"custom": True}

    response = client_for(one_route({"c": Custom()})).get("/v")
    assert response.status_code == 200
    assert response.json() == {"c": {"custom": True}}


# --- unserialisable values -------------------------------------------------------------------------------
class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [Opaque(), {"obj": Opaque()}, {Opaque()}, [1, {"deep": [Opaque()]}]],
    ids=["object", "dict-with-object", "set-of-objects", "deeply-nested"],
)
def test_unserialisable_return_value_is_logged_500(value, caplog):
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    response = client_for(one_route(value)).get("/v")
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert "Traceback" not in response.text
    records = [r for r in caplog.records if r.name == "tachyon_api.errors" and r.levelno == logging.ERROR]
    assert records, "the failure must be logged"
    assert records[0].exc_info is not None


def test_unserialisable_then_next_request_fine():
    app = Tachyon()

    @app.get("/bad")
    def bad():
        return Opaque()

    @app.get("/good")
    def good():
        return {"ok": True}

    client = client_for(app)
    assert client.get("/bad").status_code == 500
    assert client.get("/good").json() == {"ok": True}


# --- response classes ------------------------------------------------------------------------------------
def test_plain_response_with_status_headers_media_type():
    app = Tachyon()

    @app.get("/r")
    def r():
        return Response("a,b\n1,2", status_code=203, headers={"X-Custom": "yes"}, media_type="text/csv")

    response = client_for(app).get("/r")
    assert response.status_code == 203
    assert response.text == "a,b\n1,2"
    assert response.headers["x-custom"] == "yes"
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-length"] == "7"


def test_response_bytes_content_and_non_text_media_type():
    app = Tachyon()

    @app.get("/r")
    def r():
        return Response(b"\x89PNG", media_type="image/png")

    response = client_for(app).get("/r")
    assert response.content == b"\x89PNG"
    assert response.headers["content-type"] == "image/png"


def test_explicit_content_type_header_wins_over_media_type():
    app = Tachyon()

    @app.get("/r")
    def r():
        return PlainTextResponse("x", headers={"Content-Type": "text/x-special"})

    response = client_for(app).get("/r")
    assert response.headers.get_list("content-type") == ["text/x-special"]


def test_json_response():
    app = Tachyon()

    @app.post("/j")
    async def j():
        return JSONResponse({"made": Item(name="x", price=1.0)}, status_code=201, headers={"X-Id": "9"})

    response = client_for(app).post("/j")
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-id"] == "9"
    assert response.json() == {"made": {"name": "x", "price": 1.0}}


def test_html_and_plain_text_responses():
    app = Tachyon()

    @app.get("/html")
    def html():
        return HTMLResponse("<h1>Hi ü</h1>")

    @app.get("/text")
    def text():
        return PlainTextResponse("plain ü", status_code=202)

    client = client_for(app)
    html_response = client.get("/html")
    assert html_response.headers["content-type"] == "text/html; charset=utf-8"
    assert html_response.text == "<h1>Hi ü</h1>"
    text_response = client.get("/text")
    assert text_response.status_code == 202
    assert text_response.headers["content-type"] == "text/plain; charset=utf-8"
    assert text_response.text == "plain ü"
    assert text_response.headers["content-length"] == str(len("plain ü".encode()))


def test_redirect_response():
    app = Tachyon()

    @app.get("/old")
    def old():
        return RedirectResponse("/new")

    @app.get("/moved")
    def moved():
        return RedirectResponse("/new?x=1", status_code=301, headers={"X-Why": "moved"})

    @app.get("/new")
    def new():
        return {"at": "new"}

    client = client_for(app)
    response = client.get("/old")
    assert response.status_code == 307
    assert response.headers["location"] == "/new"
    moved_response = client.get("/moved")
    assert moved_response.status_code == 301
    assert moved_response.headers["location"] == "/new?x=1"
    assert moved_response.headers["x-why"] == "moved"
    followed = client.get("/old", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.json() == {"at": "new"}


def test_redirect_quotes_unsafe_characters():
    app = Tachyon()

    @app.get("/go")
    def go():
        return RedirectResponse("/a path/ü")

    response = client_for(app).get("/go")
    assert response.headers["location"] == "/a%20path/%C3%BC"


def test_streaming_response_sync_iterable():
    app = Tachyon()

    def numbers():
        for i in range(5):
            yield f"{i},"

    @app.get("/s")
    def s():
        return StreamingResponse(numbers(), media_type="text/plain", headers={"X-Stream": "sync"})

    response = client_for(app).get("/s")
    assert response.status_code == 200
    assert response.text == "0,1,2,3,4,"
    assert response.headers["x-stream"] == "sync"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_streaming_response_async_iterable_with_bytes():
    app = Tachyon()

    async def chunks():
        yield b"alpha-"
        yield "beta-"
        yield b"gamma"

    @app.get("/s")
    async def s():
        return StreamingResponse(chunks(), status_code=206, media_type="application/octet-stream")

    response = client_for(app).get("/s")
    assert response.status_code == 206
    assert response.content == b"alpha-beta-gamma"
    assert response.headers["content-type"] == "application/octet-stream"


def test_streaming_response_over_real_server_arrives_in_chunks():
    app = Tachyon()

    async def chunks():
        for i in range(3):
            yield f"chunk{i}\n".encode()

    @app.get("/s")
    async def s():
        return StreamingResponse(chunks(), media_type="text/plain")

    with serve(app) as url, httpx.stream("GET", f"{url}/s") as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        body = b"".join(response.iter_bytes())
    assert body == b"chunk0\nchunk1\nchunk2\n"


def test_file_response(tmp_path):
    path = tmp_path / "report.txt"
    path.write_bytes(b"file contents\n" * 10000)  # more than one 64 KiB chunk
    app = Tachyon()

    @app.get("/f")
    def f():
        return FileResponse(path)

    @app.get("/download")
    def download():
        return FileResponse(path, filename="my report.csv", headers={"X-File": "1"})

    @app.get("/typed")
    def typed():
        return FileResponse(path, media_type="application/x-custom", status_code=200)

    client = client_for(app)
    response = client.get("/f")
    assert response.status_code == 200
    assert response.content == path.read_bytes()
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == str(path.stat().st_size)
    assert "last-modified" in response.headers
    assert "content-disposition" not in response.headers

    download_response = client.get("/download")
    assert download_response.content == path.read_bytes()
    assert download_response.headers["content-disposition"] == "attachment; filename*=utf-8''my%20report.csv"
    assert download_response.headers["content-type"] == "text/csv; charset=utf-8"
    assert download_response.headers["x-file"] == "1"

    assert client.get("/typed").headers["content-type"] == "application/x-custom"

    head = client.head("/f")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(path.stat().st_size)


# --- background= -----------------------------------------------------------------------------------------
def test_background_on_each_response_class_runs(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"data")
    ran: list[str] = []
    app = Tachyon()

    async def async_task(label):
        ran.append(label)

    def sync_task(label):
        ran.append(label)

    @app.get("/plain")
    def plain():
        return Response("x", background=BackgroundTask(sync_task, "plain"))

    @app.get("/json")
    def json():
        return JSONResponse({}, background=BackgroundTask(async_task, "json"))

    @app.get("/html")
    def html():
        return HTMLResponse("<p/>", background=BackgroundTask(sync_task, "html"))

    @app.get("/text")
    def text():
        return PlainTextResponse("t", background=BackgroundTask(sync_task, "text"))

    @app.get("/redirect")
    def redirect():
        return RedirectResponse("/plain", background=BackgroundTask(sync_task, "redirect"))

    @app.get("/stream")
    def stream():
        return StreamingResponse(iter([b"a"]), background=BackgroundTask(async_task, "stream"))

    @app.get("/file")
    def file():
        return FileResponse(path, background=BackgroundTask(sync_task, "file"))

    @app.get("/many")
    def many():
        tasks = BackgroundTasks()
        tasks.add_task(sync_task, "many-1")
        tasks.add_task(async_task, "many-2")
        return Response("m", background=tasks)

    client = client_for(app)
    for name in ("plain", "json", "html", "text", "redirect", "stream", "file"):
        response = client.get(f"/{name}")
        assert response.status_code in (200, 307), name
        assert ran[-1] == name
    client.get("/many")
    assert ran[-2:] == ["many-1", "many-2"]


def test_background_runs_after_the_response_is_sent_over_real_server():
    release = threading.Event()
    finished = threading.Event()
    app = Tachyon()

    def slow_task():
        release.wait(5)
        finished.set()

    @app.get("/bg")
    def bg():
        return PlainTextResponse("sent", background=BackgroundTask(slow_task))

    with serve(app) as url:
        response = httpx.get(f"{url}/bg", timeout=3)
        # The response arrived while the task is still blocked.
        assert response.text == "sent"
        assert not finished.is_set()
        release.set()
        assert finished.wait(5)


# --- cookies ---------------------------------------------------------------------------------------------
def test_set_cookie_and_delete_cookie():
    app = Tachyon()

    @app.get("/login")
    def login():
        response = JSONResponse({"ok": True})
        response.set_cookie("session", "abc123", max_age=3600, httponly=True, secure=True, samesite="strict")
        response.set_cookie("theme", "dark")
        return response

    @app.get("/logout")
    def logout():
        response = Response("bye")
        response.delete_cookie("session")
        return response

    client = client_for(app)
    response = client.get("/login")
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2
    session = next(c for c in cookies if c.startswith("session="))
    assert session.startswith("session=abc123")
    lowered = session.lower()
    for part in ("max-age=3600", "httponly", "secure", "samesite=strict", "path=/"):
        assert part in lowered, part
    theme = next(c for c in cookies if c.startswith("theme="))
    assert "samesite=lax" in theme.lower()
    assert client.cookies.get("theme") == "dark"

    logged_out = client.get("/logout")
    deleted = logged_out.headers["set-cookie"].lower()
    assert deleted.startswith("session=")
    assert "max-age=0" in deleted


def test_response_headers_are_mutable():
    app = Tachyon()

    @app.get("/h")
    def h():
        response = PlainTextResponse("x", headers={"X-Remove": "1"})
        response.headers["X-Added"] = "2"
        response.headers.append("X-Multi", "a")
        response.headers.append("X-Multi", "b")
        del response.headers["x-remove"]
        return response

    response = client_for(app).get("/h")
    assert response.headers["x-added"] == "2"
    assert response.headers.get_list("x-multi") == ["a", "b"]
    assert "x-remove" not in response.headers


def test_response_object_reused_across_requests_does_not_accumulate_headers():
    shared = PlainTextResponse("shared")

    class AppendHeader:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def wrapped(message):
                if message["type"] == "http.response.start":
                    message["headers"].append((b"x-mw", b"1"))
                await send(message)

            await self.app(scope, receive, wrapped)

    app = Tachyon()

    @app.get("/shared")
    def endpoint():
        return shared

    app.add_middleware(AppendHeader)
    client = client_for(app)
    for _ in range(3):
        assert client.get("/shared").headers.get_list("x-mw") == ["1"]


# --- response_model --------------------------------------------------------------------------------------
class PublicUser(Struct):
    id: int
    name: str


def test_response_model_drops_unknown_keys():
    app = one_route({"id": 1, "name": "ann", "password": "secret"}, response_model=PublicUser)
    response = client_for(app).get("/v")
    assert response.status_code == 200
    assert response.json() == {"id": 1, "name": "ann"}


def test_response_model_converts_objects_by_attribute():
    class Row:
        def __init__(self):
            self.id = 5
            self.name = "bob"
            self.password_hash = "x"

    app = one_route(Row(), response_model=PublicUser)
    assert client_for(app).get("/v").json() == {"id": 5, "name": "bob"}


def test_response_model_list():
    app = one_route([{"id": 1, "name": "a", "extra": 1}, {"id": 2, "name": "b"}], response_model=list[PublicUser])
    assert client_for(app).get("/v").json() == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_response_model_with_status_code():
    app = Tachyon()

    @app.post("/u", response_model=PublicUser, status_code=201)
    async def create():
        return {"id": 9, "name": "new", "token": "t"}

    response = client_for(app).post("/u")
    assert response.status_code == 201
    assert response.json() == {"id": 9, "name": "new"}


@pytest.mark.parametrize(
    "value",
    [{"id": "not-an-int", "name": "x"}, {"name": "missing id"}, None, [1, 2]],
    ids=["wrong-type", "missing-field", "none", "list"],
)
def test_response_model_mismatch_is_logged_500(value, caplog):
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    app = one_route(value, response_model=PublicUser)
    response = client_for(app).get("/v")
    assert response.status_code == 500
    assert response.json() == RESPONSE_INVALID
    errors = [r for r in caplog.records if r.name == "tachyon_api.errors" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


def test_response_model_mismatch_in_async_endpoint(caplog):
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    app = Tachyon()

    @app.get("/v", response_model=PublicUser)
    async def endpoint():
        return {"id": 1}

    response = client_for(app).get("/v")
    assert response.status_code == 500
    assert response.json()["code"] == "RESPONSE_VALIDATION_ERROR"
    assert any(r.name == "tachyon_api.errors" for r in caplog.records)


def test_returned_response_bypasses_response_model():
    app = one_route(PlainTextResponse("raw"), response_model=PublicUser)
    response = client_for(app).get("/v")
    assert response.status_code == 200
    assert response.text == "raw"

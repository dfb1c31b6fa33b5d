"""tachyon_api.testing: TachyonTestClient, AsyncTachyonTestClient and create_client."""

import contextlib
import threading

import httpx
import pytest
from starlette.middleware.gzip import GZipMiddleware

from tachyon_api import Cookie, File, Form, Header, Query, Request, Struct, Tachyon, UploadFile
from tachyon_api.background import BackgroundTasks
from tachyon_api.responses import JSONResponse, RedirectResponse, Response
from tachyon_api.testing import AsyncTachyonTestClient, TachyonTestClient, create_client

from .conftest import client_for

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Payload(Struct):
    name: str
    count: int = 0


def build_app() -> Tachyon:
    app = Tachyon()

    @app.route("/echo", methods=METHODS)
    async def echo(request: Request):
        body = await request.body()
        return {
            "method": request.method,
            "headers": {k: v for k, v in request.headers.items() if k.startswith("x-")},
            "query": request.query_params.multi_items(),
            "cookies": request.cookies,
            "body": body.decode(),
            "client": request.client.host if request.client else None,
        }

    @app.get("/params")
    def params(
        q: str,
        tags: list[str] = Query([]),
        limit: int = 10,
        x_token: str | None = Header(None),
        session: str | None = Cookie(None),
    ):
        return {"q": q, "tags": tags, "limit": limit, "token": x_token, "session": session}

    @app.post("/json")
    def json_body(payload: Payload):
        return {"got": payload}

    @app.post("/form")
    def form(username: str = Form(), remember: bool = Form(False)):
        return {"username": username, "remember": remember}

    @app.post("/upload")
    async def upload(note: str = Form(), doc: UploadFile = File(), extra: list[UploadFile] = File([])):
        content = await doc.read()
        extras = [{"name": f.filename, "data": (await f.read()).decode()} for f in extra]
        return {
            "note": note,
            "filename": doc.filename,
            "content_type": doc.content_type,
            "size": len(content),
            "text": content.decode(),
            "extra": extras,
        }

    @app.get("/set-cookie")
    def set_cookie():
        response = JSONResponse({"set": True})
        response.set_cookie("session", "s3cr3t")
        return response

    @app.get("/redirect")
    def redirect():
        return RedirectResponse("/echo?from=redirect")

    @app.head("/only-head")
    def only_head():
        return Response(headers={"X-Head": "yes"})

    return app


# --- TachyonTestClient -----------------------------------------------------------------------------------
def test_test_client_is_a_sync_httpx_client():
    client = client_for(build_app())
    assert isinstance(client, httpx.Client)
    response = client.get("/echo")
    assert isinstance(response, httpx.Response)
    assert response.json()["client"] == "testclient"
    client.close()


@pytest.mark.parametrize("method", METHODS)
def test_test_client_all_verbs(method):
    client = client_for(build_app())
    response = client.request(method, "/echo")
    assert response.status_code == 200
    assert response.json()["method"] == method


def test_test_client_verb_helpers_and_head():
    client = client_for(build_app())
    assert client.get("/echo").json()["method"] == "GET"
    assert client.post("/echo", content=b"p").json()["body"] == "p"
    assert client.put("/echo", content=b"u").json()["body"] == "u"
    assert client.patch("/echo", content=b"a").json()["body"] == "a"
    assert client.delete("/echo").json()["method"] == "DELETE"
    assert client.options("/echo").json()["method"] == "OPTIONS"
    head = client.head("/only-head")
    assert head.status_code == 200
    assert head.headers["x-head"] == "yes"
    head_of_get = client.head("/echo")
    assert head_of_get.status_code == 200
    assert head_of_get.content == b""


def test_test_client_headers_query_cookies():
    client = client_for(build_app(), headers={"X-Default": "d"}, cookies={"base": "1"})
    response = client.get(
        "/echo",
        params=[("a", "1"), ("a", "2"), ("b", "x y")],
        headers={"X-Custom": "c"},
    )
    data = response.json()
    assert data["headers"] == {"x-default": "d", "x-custom": "c"}
    assert data["query"] == [["a", "1"], ["a", "2"], ["b", "x y"]]
    assert data["cookies"] == {"base": "1"}


def test_test_client_typed_params():
    client = client_for(build_app())
    client.cookies.set("session", "abc")
    response = client.get(
        "/params", params={"q": "search", "tags": ["a", "b"], "limit": "5"}, headers={"X-Token": "tok"}
    )
    assert response.status_code == 200
    assert response.json() == {"q": "search", "tags": ["a", "b"], "limit": 5, "token": "tok", "session": "abc"}
    missing = client.get("/params")
    assert missing.status_code == 422


def test_test_client_cookie_round_trip():
    client = client_for(build_app())
    response = client.get("/set-cookie")
    assert response.json() == {"set": True}
    assert client.cookies.get("session") == "s3cr3t"
    assert client.get("/echo").json()["cookies"] == {"session": "s3cr3t"}


def test_test_client_json():
    client = client_for(build_app())
    response = client.post("/json", json={"name": "widget", "count": 3})
    assert response.status_code == 200
    assert response.json() == {"got": {"name": "widget", "count": 3}}
    invalid = client.post("/json", json={"count": "three"})
    assert invalid.status_code == 422
    assert invalid.json()["code"] == "VALIDATION_ERROR"


def test_test_client_form():
    client = client_for(build_app())
    response = client.post("/form", data={"username": "ann", "remember": "true"})
    assert response.status_code == 200
    assert response.json() == {"username": "ann", "remember": True}


def test_test_client_file_uploads():
    client = client_for(build_app())
    response = client.post(
        "/upload",
        data={"note": "hello"},
        files=[
            ("doc", ("report.txt", b"file body", "text/plain")),
            ("extra", ("a.txt", b"A", "text/plain")),
            ("extra", ("b.txt", b"BB", "text/plain")),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "note": "hello",
        "filename": "report.txt",
        "content_type": "text/plain",
        "size": 9,
        "text": "file body",
        "extra": [{"name": "a.txt", "data": "A"}, {"name": "b.txt", "data": "BB"}],
    }


def test_test_client_large_file_upload():
    client = client_for(build_app())
    data = b"0123456789" * 150_000  # 1.5 MB: past the 1 MiB spool, under the 2 MiB default limit
    response = client.post("/upload", data={"note": "big"}, files={"doc": ("big.bin", data)})
    assert response.status_code == 200
    assert response.json()["size"] == len(data)


def test_test_client_redirects():
    client = client_for(build_app())
    response = client.get("/redirect")
    assert response.status_code == 307
    followed = client.get("/redirect", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.json()["query"] == [["from", "redirect"]]


def test_test_client_context_manager_runs_lifespan():
    events = []
    app = Tachyon()

    @app.on_event("startup")
    def start():
        events.append("startup")

    @app.on_event("shutdown")
    def stop():
        events.append("shutdown")

    with client_for(app) as client:
        assert events == ["startup"]
        assert client.get("/nope").status_code == 404
    assert events == ["startup", "shutdown"]


def test_test_client_waits_for_background_tasks():
    done = []
    app = Tachyon()

    async def task(value):
        done.append(value)

    @app.post("/work")
    def work(tasks: BackgroundTasks):
        tasks.add_task(task, "ran")
        return "accepted"

    client = client_for(app)
    assert client.post("/work").json() == "accepted"
    assert done == ["ran"]


def test_test_client_raises_server_exceptions_by_default():
    class Broken:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                raise KeyError("middleware failure")
            await self.app(scope, receive, send)

    app = Tachyon()
    app.add_middleware(Broken)
    with pytest.raises(KeyError):
        client_for(app).get("/")
    response = client_for(app, raise_server_exceptions=False).get("/")
    assert response.status_code == 500


def test_test_client_handles_content_encoded_responses():
    """A gzip-encoded response (e.g. from GZipMiddleware) must be decoded once, not twice."""
    app = Tachyon()

    @app.get("/big")
    def big():
        return {"data": "z" * 2000}

    app.add_middleware(GZipMiddleware, minimum_size=10)
    client = client_for(app)
    response = client.get("/big", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.json() == {"data": "z" * 2000}


def _portal_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "tachyon-testclient" and t.is_alive())


def _tiny_app(lifespan=None) -> Tachyon:
    app = Tachyon(lifespan=lifespan)

    @app.get("/")
    def root():
        return 1

    return app


def test_close_stops_the_client_thread():
    before = _portal_threads()
    client = TachyonTestClient(_tiny_app())
    assert client.get("/").json() == 1
    assert _portal_threads() == before + 1
    client.close()
    assert _portal_threads() == before


def test_leaving_the_with_block_stops_the_client_thread():
    """``with TachyonTestClient(app)`` must release its event-loop thread on exit, as ``close()`` does."""
    before = _portal_threads()
    client = TachyonTestClient(_tiny_app())
    try:
        with client:
            assert client.get("/").json() == 1
        assert _portal_threads() == before
    finally:
        client.close()


def test_failed_startup_releases_the_client_thread():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("startup failed")
        yield  # pragma: no cover

    before = _portal_threads()
    client = TachyonTestClient(_tiny_app(lifespan))
    try:
        with pytest.raises(RuntimeError, match="startup failed"), client:
            pass  # pragma: no cover
        assert _portal_threads() == before
    finally:
        client.close()


# --- AsyncTachyonTestClient ------------------------------------------------------------------------------
async def test_async_client_yields_httpx_async_client():
    async with AsyncTachyonTestClient(build_app()) as client:
        assert isinstance(client, httpx.AsyncClient)
        for method in METHODS:
            response = await client.request(method, "/echo")
            assert response.json()["method"] == method
        head = await client.head("/echo")
        assert head.status_code == 200
        assert head.content == b""


async def test_async_client_headers_cookies_query_json_form_files():
    async with AsyncTachyonTestClient(build_app(), headers={"X-Default": "d"}, cookies={"base": "1"}) as client:
        echoed = (await client.get("/echo", params={"k": "v"}, headers={"X-More": "m"})).json()
        assert echoed["headers"] == {"x-default": "d", "x-more": "m"}
        assert echoed["cookies"] == {"base": "1"}
        assert echoed["query"] == [["k", "v"]]

        assert (await client.post("/json", json={"name": "n"})).json() == {"got": {"name": "n", "count": 0}}
        assert (await client.post("/form", data={"username": "bo"})).json() == {"username": "bo", "remember": False}
        uploaded = await client.post("/upload", data={"note": "x"}, files={"doc": ("d.txt", b"data", "text/plain")})
        assert uploaded.json()["text"] == "data"

        await client.get("/set-cookie")
        assert client.cookies.get("session") == "s3cr3t"
        assert (await client.get("/echo")).json()["cookies"] == {"base": "1", "session": "s3cr3t"}


async def test_async_client_follow_redirects_option():
    async with AsyncTachyonTestClient(build_app(), follow_redirects=True) as client:
        response = await client.get("/redirect")
        assert response.status_code == 200
        assert response.json()["query"] == [["from", "redirect"]]


async def test_async_client_lifespan_option():
    events = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("enter")
        yield
        events.append("exit")

    app = Tachyon(lifespan=lifespan)
    async with AsyncTachyonTestClient(app):
        pass
    assert events == []
    async with AsyncTachyonTestClient(app, lifespan=True) as client:
        assert events == ["enter"]
        assert (await client.get("/missing")).status_code == 404
    assert events == ["enter", "exit"]


async def test_async_client_waits_for_background_tasks():
    done = []
    app = Tachyon()

    def task():
        done.append(True)

    @app.get("/t")
    async def t(tasks: BackgroundTasks):
        tasks.add_task(task)
        return 1

    async with AsyncTachyonTestClient(app) as client:
        await client.get("/t")
        assert done == [True]


# --- create_client ---------------------------------------------------------------------------------------
async def test_create_client():
    async with create_client(build_app()) as client:
        assert isinstance(client, httpx.AsyncClient)
        response = await client.post("/echo", content=b"body", headers={"X-A": "1"}, params={"p": "q"})
        data = response.json()
        assert data["method"] == "POST"
        assert data["body"] == "body"
        assert data["headers"] == {"x-a": "1"}
        assert data["query"] == [["p", "q"]]


async def test_create_client_passes_httpx_options():
    async with create_client(
        build_app(),
        base_url="http://example.org",
        headers={"X-Api": "key"},
        cookies={"session": "c"},
        follow_redirects=True,
        timeout=2.0,
    ) as client:
        assert str(client.base_url) == "http://example.org"
        response = await client.get("/redirect")
        assert response.status_code == 200
        data = response.json()
        assert data["headers"] == {"x-api": "key"}
        assert data["cookies"] == {"session": "c"}
        assert client.timeout.read == 2.0


async def test_create_client_extra_httpx_kwargs():
    seen = []

    async def hook(request):
        seen.append(request.url.path)

    async with create_client(build_app(), event_hooks={"request": [hook]}) as client:
        await client.get("/echo")
        await client.put("/json", json={})
    assert seen == ["/echo", "/json"]

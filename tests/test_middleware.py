"""Middleware: add_middleware with Starlette middleware and plain ASGI middleware; ordering for http and lifespan."""

import gzip

import httpx
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import PlainTextResponse as StarlettePlainText

from tachyon_api import HTTPException, Tachyon
from tachyon_api.testing import AsyncTachyonTestClient

from .conftest import client_for, serve


class Recorder:
    """A plain ASGI middleware that records entering and leaving, per scope type."""

    def __init__(self, app, name: str, log: list):
        self.app = app
        self.name = name
        self.log = log

    async def __call__(self, scope, receive, send):
        self.log.append((scope["type"], f"{self.name}-in"))

        async def wrapped(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-order", self.name.encode())]
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.log.append((scope["type"], f"{self.name}-out"))


def test_last_added_middleware_is_outermost_for_http_and_lifespan():
    log: list = []
    app = Tachyon()

    @app.on_event("startup")
    def startup():
        log.append(("lifespan", "app-startup"))

    @app.get("/")
    def root():
        log.append(("http", "endpoint"))
        return "ok"

    app.add_middleware(Recorder, name="first", log=log)
    app.add_middleware(Recorder, name="second", log=log)

    with client_for(app) as client:
        response = client.get("/")
        assert response.json() == "ok"
        # Headers are appended on the way out: the inner middleware (first) adds its header first.
        assert response.headers.get_list("x-order") == ["first", "second"]
    http_log = [entry for kind, entry in log if kind == "http"]
    lifespan_log = [entry for kind, entry in log if kind == "lifespan"]
    assert http_log == ["second-in", "first-in", "endpoint", "first-out", "second-out"]
    assert lifespan_log == ["second-in", "first-in", "app-startup", "first-out", "second-out"]


def test_middleware_order_under_real_uvicorn():
    log: list = []
    app = Tachyon()

    @app.get("/")
    async def root():
        return "ok"

    app.add_middleware(Recorder, name="inner", log=log)
    app.add_middleware(Recorder, name="outer", log=log)
    with serve(app) as url:
        response = httpx.get(url + "/")
        assert response.headers.get_list("x-order") == ["inner", "outer"]
    assert [e for k, e in log if k == "lifespan"][:2] == ["outer-in", "inner-in"]
    assert [e for k, e in log if k == "http"] == ["outer-in", "inner-in", "inner-out", "outer-out"]


def test_middleware_added_after_first_request_takes_effect():
    log: list = []
    app = Tachyon()

    @app.get("/")
    def root():
        return "ok"

    client = client_for(app)
    assert "x-order" not in client.get("/").headers
    app.add_middleware(Recorder, name="late", log=log)
    assert client.get("/").headers["x-order"] == "late"
    assert ("http", "late-in") in log


def test_middleware_sees_framework_errors():
    log: list = []
    app = Tachyon()

    @app.get("/crash")
    def crash():
        raise RuntimeError("x")

    app.add_middleware(Recorder, name="mw", log=log)
    client = client_for(app)
    for path, status in (("/crash", 500), ("/missing", 404)):
        response = client.get(path)
        assert response.status_code == status
        assert response.headers["x-order"] == "mw"


# --- Starlette middleware --------------------------------------------------------------------------------
def _cors_app() -> Tachyon:
    app = Tachyon()

    @app.get("/data")
    def data():
        return {"data": 1}

    @app.post("/data")
    def post_data():
        return {"posted": True}

    app.add_middleware(
        CORSMiddleware,
        allow_origins=["https://allowed.example"],
        allow_methods=["GET", "POST"],
        allow_headers=["X-Custom"],
        expose_headers=["X-Exposed"],
    )
    return app


def test_cors_simple_request():
    client = client_for(_cors_app())
    response = client.get("/data", headers={"Origin": "https://allowed.example"})
    assert response.status_code == 200
    assert response.json() == {"data": 1}
    assert response.headers["access-control-allow-origin"] == "https://allowed.example"
    assert response.headers["access-control-expose-headers"] == "X-Exposed"

    other = client.get("/data", headers={"Origin": "https://evil.example"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


def test_cors_preflight():
    client = client_for(_cors_app())
    response = client.options(
        "/data",
        headers={
            "Origin": "https://allowed.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Custom",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://allowed.example"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "x-custom" in response.headers["access-control-allow-headers"].lower()

    denied = client.options(
        "/data", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert denied.status_code == 400


def test_cors_headers_on_error_responses():
    app = Tachyon()

    @app.get("/fail")
    def fail():
        raise HTTPException(403, "no")

    app.add_middleware(CORSMiddleware, allow_origins=["*"])
    client = client_for(app)
    for path, status in (("/fail", 403), ("/missing", 404)):
        response = client.get(path, headers={"Origin": "https://x.example"})
        assert response.status_code == status
        assert response.headers["access-control-allow-origin"] == "*"


async def test_gzip_middleware():
    app = Tachyon()
    big = {"items": [f"value-{i}" for i in range(500)]}

    @app.get("/big")
    def big_route():
        return big

    @app.get("/small")
    def small():
        return {"a": 1}

    app.add_middleware(GZipMiddleware, minimum_size=100)
    async with AsyncTachyonTestClient(app) as client:
        compressed = await client.get("/big", headers={"Accept-Encoding": "gzip"})
        small_response = await client.get("/small", headers={"Accept-Encoding": "gzip"})
        identity = await client.get("/big", headers={"Accept-Encoding": "identity"})
    assert compressed.status_code == 200
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.json() == big  # httpx decompresses
    assert int(compressed.headers["content-length"]) < len(str(big))

    assert "content-encoding" not in small_response.headers
    assert small_response.json() == {"a": 1}

    assert "content-encoding" not in identity.headers
    assert identity.json() == big


def test_gzip_over_real_server_raw_bytes():
    app = Tachyon()

    @app.get("/text")
    def text():
        return "x" * 5000

    app.add_middleware(GZipMiddleware, minimum_size=500)
    with serve(app) as url, httpx.stream("GET", f"{url}/text", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == b'"' + b"x" * 5000 + b'"'


class TimingHeader(BaseHTTPMiddleware):
    def __init__(self, app, header_value: str = "default"):
        super().__init__(app)
        self.header_value = header_value

    async def dispatch(self, request, call_next):
        if request.url.path == "/blocked":
            return StarlettePlainText("blocked by middleware", status_code=403)
        request.state.seen_by_middleware = True
        response = await call_next(request)
        response.headers["X-Processed"] = self.header_value
        response.headers["X-Path"] = request.url.path
        return response


def test_base_http_middleware_subclass():
    app = Tachyon()

    @app.get("/hello")
    def hello():
        return {"hello": "world"}

    @app.post("/echo")
    async def echo(payload: dict):
        return payload

    @app.get("/blocked")
    def blocked():
        raise AssertionError("must not be reached")

    @app.get("/crash")
    def crash():
        raise RuntimeError("boom")

    app.add_middleware(TimingHeader, header_value="yes")
    client = client_for(app)
    response = client.get("/hello")
    assert response.json() == {"hello": "world"}
    assert response.headers["x-processed"] == "yes"
    assert response.headers["x-path"] == "/hello"

    echoed = client.post("/echo", json={"a": [1, 2]})
    assert echoed.json() == {"a": [1, 2]}
    assert echoed.headers["x-processed"] == "yes"

    refused = client.get("/blocked")
    assert refused.status_code == 403
    assert refused.text == "blocked by middleware"

    crashed = client.get("/crash")
    assert crashed.status_code == 500
    assert crashed.json()["code"] == "INTERNAL_SERVER_ERROR"
    assert crashed.headers["x-processed"] == "yes"

    missing = client.get("/missing")
    assert missing.status_code == 404
    assert missing.headers["x-processed"] == "yes"


async def test_stack_of_starlette_and_plain_middleware_with_lifespan():
    log: list = []
    app = Tachyon()
    started = []

    @app.on_event("startup")
    async def start():
        started.append(True)

    @app.get("/x")
    def x():
        return {"x": 1}

    app.add_middleware(TimingHeader)
    app.add_middleware(GZipMiddleware, minimum_size=1)
    app.add_middleware(CORSMiddleware, allow_origins=["*"])
    app.add_middleware(Recorder, name="rec", log=log)

    async with AsyncTachyonTestClient(app, lifespan=True) as client:
        assert started == [True]
        response = await client.get("/x", headers={"Origin": "https://a.example", "Accept-Encoding": "gzip"})
    assert response.json() == {"x": 1}
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["x-processed"] == "default"
    assert ("lifespan", "rec-in") in log
    assert ("http", "rec-in") in log

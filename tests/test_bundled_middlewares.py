"""The bundled middlewares (CORS, security headers, logger) and @app.middleware in both signatures: over real
HTTP, with streaming responses, WebSocket and lifespan scopes, and without touching shared header lists."""

import asyncio
import logging
import threading

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tachyon_api import Depends, HTTPException, Tachyon
from tachyon_api.background import BackgroundTasks
from tachyon_api.middlewares import CORSMiddleware, LoggerMiddleware, SecurityHeadersMiddleware
from tachyon_api.middlewares.core import apply_middleware_to_router, create_decorated_middleware_class
from tachyon_api.responses import HTMLResponse, JSONResponse, StreamingResponse

from .conftest import client_for, serve, wait_until

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"}


def _app(**cors) -> Tachyon:
    app = Tachyon()

    @app.get("/data")
    def data():
        return {"data": 1}

    @app.put("/data")
    def put_data():
        return {"put": True}

    @app.get("/fail")
    def fail():
        raise HTTPException(409, "taken")

    app.add_middleware(CORSMiddleware, **cors)
    return app


# --- CORS --------------------------------------------------------------------------------------------------
def test_cors_preflight_and_simple_requests_over_http():
    app = _app(
        allow_origins=["https://app.example"],
        allow_methods=["GET", "PUT"],
        allow_headers=["X-Token"],
        expose_headers=["X-Total"],
        max_age=120,
    )
    with serve(app) as url:
        asked = {**PREFLIGHT, "Access-Control-Request-Headers": "x-token, content-type"}
        ok = httpx.options(url + "/data", headers=asked)
        assert ok.status_code == 200 and ok.content == b""
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert ok.headers["access-control-allow-methods"] == "GET, PUT"
        # The requested headers are echoed: a browser sends only what is listed, and JSON's Content-Type is
        # not CORS-safelisted.
        assert ok.headers["access-control-allow-headers"] == "x-token, content-type"
        assert ok.headers["access-control-max-age"] == "120"
        assert ok.headers["vary"] == "Origin, Access-Control-Request-Headers"
        assert "access-control-allow-credentials" not in ok.headers

        for headers, problem in (
            ({**PREFLIGHT, "Origin": "https://evil.example"}, "origin"),
            ({**PREFLIGHT, "Access-Control-Request-Method": "DELETE"}, "method"),
            ({**PREFLIGHT, "Access-Control-Request-Headers": "X-Other"}, "headers"),
        ):
            denied = httpx.options(url + "/data", headers=headers)
            assert (denied.status_code, denied.json()) == (400, {"detail": f"Disallowed CORS {problem}"})
            assert "access-control-allow-origin" not in denied.headers
            assert denied.headers["vary"] == "Origin"

        simple = httpx.get(url + "/data", headers={"Origin": "https://app.example"})
        assert simple.json() == {"data": 1}
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert simple.headers["access-control-expose-headers"] == "X-Total"
        assert simple.headers["vary"] == "Origin"

        error = httpx.get(url + "/fail", headers={"Origin": "https://app.example"})
        assert error.status_code == 409
        assert error.headers["access-control-allow-origin"] == "https://app.example"

        # The answer depends on the origin even when there is none, or when it is refused.
        for headers in ({}, {"Origin": "https://evil.example"}):
            response = httpx.get(url + "/data", headers=headers)
            assert response.headers["vary"] == "Origin"
            assert "access-control-allow-origin" not in response.headers


def test_cors_wildcard_without_credentials_is_not_origin_dependent():
    client = client_for(_app(allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]))
    simple = client.get("/data", headers={"Origin": "https://any.example"})
    assert simple.headers["access-control-allow-origin"] == "*"
    assert "vary" not in simple.headers
    assert "vary" not in client.get("/data").headers
    preflight = client.options("/data", headers={**PREFLIGHT, "Access-Control-Request-Headers": "Authorization"})
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert preflight.headers["access-control-allow-methods"] == "*"
    assert preflight.headers["access-control-allow-headers"] == "authorization"  # "*" would not cover it
    assert preflight.headers["vary"] == "Access-Control-Request-Headers"


def test_cors_credentials_never_with_a_wildcard():
    app = _app(allow_origins=["https://app.example"], allow_methods=["*"], allow_headers=["*"], allow_credentials=True)
    with serve(app) as url:
        preflight = httpx.options(url + "/data", headers={**PREFLIGHT, "Access-Control-Request-Headers": "X-A"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert preflight.headers["access-control-allow-methods"] == "PUT"
        assert preflight.headers["access-control-allow-headers"] == "x-a"
        assert "*" not in "".join(v for k, v in preflight.headers.items() if k.startswith("access-control"))
        assert preflight.headers["vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        simple = httpx.get(url + "/data", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert simple.headers["access-control-allow-credentials"] == "true"
        assert simple.headers["vary"] == "Origin"
        other = httpx.get(url + "/data", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        assert "access-control-allow-credentials" not in other.headers


def test_cors_refuses_every_origin_with_credentials():
    # Echoing any origin (even "null") with credentials would let every site read a logged-in user's answers.
    with pytest.raises(ValueError, match="list the allowed origins"):
        CORSMiddleware(_shared_list_app, allow_origins=["*"], allow_credentials=True)
    with pytest.raises(ValueError, match="list the allowed origins"):  # also through add_middleware, at startup
        client_for(_app(allow_origins=["*"], allow_credentials=True)).get("/data")


def test_cors_json_post_from_another_origin_in_a_browser(page):
    """Chromium on one origin POSTs JSON to the API on another: the preflight must announce Content-Type."""
    site = Tachyon()

    @site.get("/page")
    def home():
        return HTMLResponse("<!doctype html><title>site</title>")

    with serve(site) as site_url:
        api = Tachyon()

        @api.post("/items")
        def create(item: dict) -> dict:
            return {"created": item}

        api.add_middleware(CORSMiddleware, allow_origins=[site_url])
        with serve(api) as api_url:
            page.goto(site_url + "/page")
            result = page.evaluate(
                """async (url) => {
                    try {
                        const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                                    body: JSON.stringify({name: "a"})});
                        return [r.status, await r.json()];
                    } catch (e) { return ["blocked", String(e)]; }
                }""",
                api_url + "/items",
            )
    assert result == [200, {"created": {"name": "a"}}]


def test_cors_accepts_a_lone_string():
    client = client_for(_app(allow_origins="https://app.example", allow_methods="PUT"))
    response = client.options("/data", headers=PREFLIGHT)
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["access-control-allow-methods"] == "PUT"


def test_cors_merges_vary_with_the_apps_own():
    app = Tachyon()

    @app.get("/v")
    def v():
        return JSONResponse({"v": 1}, headers={"Vary": "Accept-Encoding"})

    app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"])
    response = client_for(app).get("/v", headers={"Origin": "https://app.example"})
    assert response.headers.get_list("vary") == ["Accept-Encoding, Origin"]


SHARED_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def _shared_list_app(scope, receive, send):
    """A raw ASGI app that sends the same header list every time (as tachyon-api 1.3's pre-built messages)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": SHARED_HEADERS})
    await send({"type": "http.response.body", "body": b"ok"})


def test_middlewares_never_mutate_the_header_list_they_are_sent():
    app = CORSMiddleware(
        SecurityHeadersMiddleware(LoggerMiddleware(_shared_list_app), hsts="max-age=60"),
        allow_origins=["https://app.example"],
        allow_credentials=True,
    )
    before = list(SHARED_HEADERS)
    with serve(app, lifespan="off") as url:
        for _ in range(3):
            response = httpx.get(url, headers={"Origin": "https://app.example"})
            assert response.headers.get_list("access-control-allow-origin") == ["https://app.example"]
            assert response.headers.get_list("x-frame-options") == ["DENY"]
    assert before == SHARED_HEADERS


# --- security headers ---------------------------------------------------------------------------------------
def _streaming_app(gate: threading.Event) -> Tachyon:
    app = Tachyon()

    @app.get("/stream")
    async def stream():
        async def chunks():
            yield b"first;"
            while not gate.is_set():  # the second chunk waits until the client has read the first
                await asyncio.sleep(0.01)
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/framed")
    def framed():
        return JSONResponse({"ok": True}, headers={"X-Frame-Options": "SAMEORIGIN"})

    return app


def test_security_headers_on_streaming_responses_over_http():
    gate = threading.Event()
    app = _streaming_app(gate)
    app.add_middleware(
        SecurityHeadersMiddleware,
        hsts="max-age=63072000",
        csp="default-src 'self'",
        extra_headers={"Permissions-Policy": "camera=()"},
        referrer_policy=None,
    )
    with serve(app) as url:
        with httpx.stream("GET", url + "/stream", timeout=5) as response:
            chunks = response.iter_raw()
            assert next(chunks) == b"first;"  # streamed, not buffered by the middleware
            gate.set()
            assert b"".join(chunks) == b"second"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-permitted-cross-domain-policies"] == "none"
        assert response.headers["strict-transport-security"] == "max-age=63072000"
        assert response.headers["content-security-policy"] == "default-src 'self'"
        assert response.headers["permissions-policy"] == "camera=()"
        assert "referrer-policy" not in response.headers
        framed = httpx.get(url + "/framed")
        assert framed.headers.get_list("x-frame-options") == ["SAMEORIGIN"]  # the endpoint's own value is kept
        assert httpx.get(url + "/missing").headers["x-content-type-options"] == "nosniff"


def test_security_header_values_cannot_inject_headers():
    with pytest.raises(ValueError):
        SecurityHeadersMiddleware(_shared_list_app, csp="x\r\nSet-Cookie: a=b")


# --- logger -----------------------------------------------------------------------------------------------
def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tachyon_api.access"]


def test_logger_lines_redaction_and_body_preview(caplog):
    app = Tachyon()

    @app.post("/login")
    async def login(payload: dict):
        return JSONResponse({"ok": True}, headers={"Set-Cookie": "sid=secret-session"})

    app.add_middleware(LoggerMiddleware, include_headers=True, redact_headers=["X-Private"], log_request_body=True)
    caplog.set_level(logging.INFO, logger="tachyon_api.access")
    client = client_for(app)
    response = client.post(
        "/login?api_key=in-the-url",
        json={"user": "ada", "pad": "x" * 5000},
        headers={"Authorization": "Bearer tok-123", "X-Private": "p", "X-Public": "visible"},
    )
    assert response.status_code == 200
    text = caplog.text
    assert "--> POST /login" in text
    assert "<-- POST /login 200 (" in text
    assert "in-the-url" not in text
    for secret in ("tok-123", "secret-session", "'p'"):
        assert secret not in text
    assert text.count("<redacted>") == 3
    assert "visible" in text
    body_lines = [line for line in _access_lines(caplog) if "req body" in line]
    assert len(body_lines) == 1 and '{"user":"ada"' in body_lines[0]
    assert len(body_lines[0]) < 2100


def test_logger_keeps_the_1_3_line_format_and_order(caplog):
    """tachyon-api 1.3's labels and order: ``req headers`` and ``req body`` after ``-->``, ``res headers`` after
    ``<--`` (log parsers written for 1.3 read these lines)."""
    app = Tachyon()

    @app.post("/items")
    async def create(payload: dict):
        return JSONResponse({"ok": True}, headers={"X-Served": "yes"})

    app.add_middleware(LoggerMiddleware, include_headers=True, log_request_body=True)
    caplog.set_level(logging.INFO, logger="tachyon_api.access")
    with serve(app) as url:
        assert httpx.post(url + "/items", json={"name": "pen"}, headers={"X-Trace": "t1"}).status_code == 200
    lines = _access_lines(caplog)
    assert [line.split(":")[0].split(" (")[0] for line in lines] == [
        "--> POST /items",
        "    req headers",
        "    req body",
        "<-- POST /items 200",
        "    res headers",
    ]
    assert "('x-trace', 't1')" in lines[1]
    assert lines[2] == '    req body: {"name":"pen"}'
    assert "('x-served', 'yes')" in lines[4]


def test_logger_escapes_what_the_client_sent_over_http(caplog):
    """A CR LF (or any control character) in the URL, a header or the body cannot start a forged log line."""
    app = Tachyon()

    @app.post("/{anything}")
    async def anything(anything: str, payload: dict):
        return {}

    app.add_middleware(LoggerMiddleware, include_headers=True, log_request_body=True)
    caplog.set_level(logging.INFO, logger="tachyon_api.access")
    forged = "%0d%0a<-- GET admin 200 (0.0001s)%1b[2J%e2%80%a8"
    with serve(app) as url:
        response = httpx.post(
            url + "/x" + forged,
            content=b'{"note": "a\\r\\nb", "\\u001b": 1}',
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200
    records = [r for r in caplog.records if r.name == "tachyon_api.access"]
    for record in records:
        message = record.getMessage()
        assert not any(ch in message for ch in "\r\n\x1b\u2028"), message
    assert records[0].getMessage() == "--> POST /x\\r\\n<-- GET admin 200 (0.0001s)\\x1b[2J\\u2028"
    assert sum(r.getMessage().startswith("<-- ") for r in records) == 1


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json", b'{"user": "ada", "password": "hunter2", "profile": {"api_key": "k-hunter2"}}'),
        ("application/x-www-form-urlencoded", b"user=ada&password=hunter2&apiKey=k-hunter2"),
        (
            "multipart/form-data; boundary=XX",
            (
                b'--XX\r\nContent-Disposition: form-data; name="user"\r\n\r\nada\r\n'
                b'--XX\r\nContent-Disposition: form-data; name="password"\r\n\r\nhunter2\r\n--XX--\r\n'
            ),
        ),
        ("text/plain", b'{"user": "ada", "password": "hunter2"'),  # not parsed: redacted by pattern
        ("application/json", b'{"user": "ada", "password": "hunter2", "pad": "' + b"x" * 70_000 + b'"}'),
    ],
)
def test_logger_redacts_secret_fields_in_bodies(caplog, content_type, body):
    app = Tachyon()

    @app.post("/login")
    async def login(request):
        await request.body()
        return {}

    app.add_middleware(LoggerMiddleware, log_request_body=True)
    caplog.set_level(logging.INFO, logger="tachyon_api.access")
    with serve(app) as url:
        assert httpx.post(url + "/login", content=body, headers={"Content-Type": content_type}).status_code == 200
    (line,) = [line for line in _access_lines(caplog) if "req body" in line]
    assert "hunter2" not in line
    assert "ada" in line and "<redacted>" in line


def test_logger_logs_no_body_unless_asked(caplog):
    app = Tachyon()

    @app.post("/echo")
    async def echo(payload: dict):
        return payload

    app.add_middleware(LoggerMiddleware)
    caplog.set_level(logging.INFO, logger="tachyon_api.access")
    assert client_for(app).post("/echo", json={"card": "4111-1111"}).json() == {"card": "4111-1111"}
    assert "4111" not in caplog.text
    assert "<-- POST /echo 200" in caplog.text


# --- WebSocket and lifespan scopes pass through ---------------------------------------------------------------
async def _ws_echo(scope, receive, send):
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "headers": [(b"x-ws", b"1")]})
    message = await receive()
    await send({"type": "websocket.send", "text": "echo:" + message["text"]})
    await send({"type": "websocket.close", "code": 1000})


def test_bundled_middlewares_pass_websockets_through():
    seen = []

    async def spy(scope, receive, send, app):
        seen.append(scope["type"])
        await app(scope, receive, send)

    stack = create_decorated_middleware_class(spy, "*")(_ws_echo)
    stack = create_decorated_middleware_class(_call_next_header, "http")(stack)
    stack = CORSMiddleware(SecurityHeadersMiddleware(LoggerMiddleware(stack)), allow_origins=["https://a.example"])
    with serve(stack, lifespan="off") as url:
        with ws_connect(url.replace("http", "ws") + "/ws", origin="https://a.example", open_timeout=5) as ws:
            assert ws.response.headers["x-ws"] == "1"
            ws.send("hi")
            assert ws.recv(timeout=5) == "echo:hi"
    assert seen == ["websocket"]


# --- @app.middleware ---------------------------------------------------------------------------------------
async def _call_next_header(request, call_next):
    response = await call_next(request)
    response.headers["X-Seen"] = request.url.path
    return response


def test_both_middleware_signatures_over_http_with_streaming():
    gate = threading.Event()
    app = _streaming_app(gate)
    log = []

    @app.middleware("http")
    async def asgi_style(scope, receive, send, next_app):
        log.append(("asgi", scope["type"]))

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-asgi", b"1")]}
            await send(message)

        await next_app(scope, receive, tagged)

    @app.middleware("*")
    async def every_scope(scope, receive, send, next_app):
        log.append(("star", scope["type"]))
        await next_app(scope, receive, send)

    app.middleware("http")(_call_next_header)

    @app.middleware()
    async def short_circuit(request, call_next):
        if request.headers.get("x-block"):
            return JSONResponse({"blocked": True}, 403)
        if request.url.path == "/boom":
            raise HTTPException(418, "from middleware")
        return await call_next(request)

    with serve(app) as url:
        with httpx.stream("GET", url + "/stream", timeout=5) as response:
            chunks = response.iter_raw()
            assert next(chunks) == b"first;"
            gate.set()
            assert b"".join(chunks) == b"second"
        assert response.headers["x-seen"] == "/stream"
        assert response.headers["x-asgi"] == "1"

        blocked = httpx.get(url + "/framed", headers={"X-Block": "1"})
        assert (blocked.status_code, blocked.json()) == (403, {"blocked": True})
        assert "x-seen" not in blocked.headers  # the inner middlewares were not reached
        boom = httpx.get(url + "/boom")
        assert (boom.status_code, boom.json()) == (418, {"detail": "from middleware"})
    assert ("star", "lifespan") in log and ("star", "http") in log
    assert ("asgi", "lifespan") not in log


def test_call_next_sees_a_body_the_middleware_read():
    app = Tachyon()

    @app.post("/echo")
    async def echo(payload: dict):
        return payload

    @app.middleware("http")
    async def read_body(request, call_next):
        body = await request.body()
        response = await call_next(request)
        response.headers["X-Body-Length"] = str(len(body))
        return response

    response = client_for(app).post("/echo", json={"a": [1, 2, 3]})
    assert response.json() == {"a": [1, 2, 3]}
    assert response.headers["x-body-length"] == str(len(b'{"a":[1,2,3]}'))


def test_call_next_keeps_background_tasks_after_the_response():
    done = []
    app = Tachyon()

    @app.post("/signup")
    def signup(tasks: BackgroundTasks):
        tasks.add_task(done.append, "welcome")
        return {"ok": True}

    app.middleware("http")(_call_next_header)
    client = client_for(app)
    response = client.post("/signup")
    assert response.headers["x-seen"] == "/signup"
    assert done == ["welcome"]  # the test client returns after the tasks ran, through call_next too


def test_call_next_lets_awaiting_dependency_cleanups_finish_over_http():
    """A yield dependency's cleanup that awaits (closing a session, returning a connection) runs after the
    response; call_next must not cancel it once the middleware has read the whole body."""
    events = []
    app = Tachyon()

    async def session():
        yield "s"
        await asyncio.sleep(0.05)
        events.append("closed")

    @app.get("/")
    async def index(s: str = Depends(session)) -> dict:
        return {"session": s}

    app.middleware("http")(_call_next_header)
    with serve(app) as url:
        response = httpx.get(url + "/")
        assert response.json() == {"session": "s"} and response.headers["x-seen"] == "/"
        assert wait_until(lambda: events == ["closed"], timeout=2)


def test_middleware_registration_errors():
    app = Tachyon()

    async def two(request, call_next):
        return await call_next(request)

    def sync(scope, receive, send, app):
        return None

    async def three(a, b, c):
        return None

    with pytest.raises(TypeError, match="HTTP only"):
        app.middleware("websocket")(two)
    with pytest.raises(TypeError, match="async"):
        app.middleware("http")(sync)
    with pytest.raises(TypeError, match="3 parameters"):
        app.middleware("http")(three)
    with pytest.raises(ValueError):
        app.middleware("https")(two)
    apply_middleware_to_router(app, SecurityHeadersMiddleware, x_frame_options="SAMEORIGIN")
    assert app.middleware_stack == [{"func": SecurityHeadersMiddleware, "options": {"x_frame_options": "SAMEORIGIN"}}]

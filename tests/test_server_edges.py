"""Edges of real HTTP over uvicorn (httptools and h11) that reach the app: odd but parseable requests, clients
that go away mid-body, error responses on kept-alive connections, HEAD errors."""

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tachyon_api import Header, Request, Tachyon

from .conftest import raw_exchange, serve, status_of


def build_app() -> Tachyon:
    app = Tachyon()
    app.state.bodies = []  # the length of every body an endpoint read completely

    @app.get("/ok")
    async def ok():
        return {"ok": True}

    @app.get("/echo/{name}")
    async def echo(name: str, q: str = "", x_tag: str = Header("")):
        return {"name": name, "q": q, "tag": x_tag}

    @app.post("/body")
    async def body(request: Request):
        data = await request.body()
        app.state.bodies.append(len(data))
        return {"length": len(data)}

    return app


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request):
    """One server per HTTP implementation for the whole module: every test also checks it survived the previous."""
    app = build_app()
    with serve(app, http=request.param) as url:
        yield url, app


@pytest.fixture
def server_url(server):
    return server[0]


def assert_still_serving(url: str) -> None:
    response = httpx.get(f"{url}/ok", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"ok": True}


# Requests that uvicorn's parsers (httptools and h11) accept but that are odd at our level: percent-escapes
# that are invalid or decode to non-UTF-8 bytes or NUL, a Latin-1 header value, a chunk extension. They reach
# the app, and the router, the parameter decoding and the body reader must give a clean answer, never a 500.
# (Requests that the parsers reject, such as garbage request lines or conflicting Content-Length headers,
# never reach the app: uvicorn answers them itself, so they are not tested here.)
ODD_REQUESTS = {
    "invalid-escape-in-path": (b"GET /ok%zz HTTP/1.1\r\nHost: t\r\n", 404, {"detail": "Not Found"}),
    "non-utf8-path-value": (
        b"GET /echo/%ff%fe HTTP/1.1\r\nHost: t\r\n",
        200,
        {"name": "\ufffd\ufffd", "q": "", "tag": ""},
    ),
    "nul-in-path-value": (b"GET /echo/a%00b HTTP/1.1\r\nHost: t\r\n", 200, {"name": "a\x00b", "q": "", "tag": ""}),
    "encoded-slash-in-path-value": (b"GET /echo/a%2fb HTTP/1.1\r\nHost: t\r\n", 404, {"detail": "Not Found"}),
    "invalid-escapes-in-query": (
        b"GET /echo/x?q=%ff%zz&%fe=1 HTTP/1.1\r\nHost: t\r\n",
        200,
        {"name": "x", "q": "\ufffd%zz", "tag": ""},
    ),
    "plus-and-escaped-space-in-query": (
        b"GET /echo/x?q=a+b%20c HTTP/1.1\r\nHost: t\r\n",
        200,
        {"name": "x", "q": "a b c", "tag": ""},
    ),
    "latin1-header-value": (
        b"GET /echo/x HTTP/1.1\r\nHost: t\r\nX-Tag: caf\xe9\r\n",
        200,
        {"name": "x", "q": "", "tag": "caf\xe9"},
    ),
    "chunk-extension": (
        b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n",
        200,
        {"length": 5},
        b"5;ext=1\r\nhello\r\n0\r\n\r\n",
    ),
}


@pytest.mark.parametrize("case", list(ODD_REQUESTS), ids=list(ODD_REQUESTS))
def test_odd_requests_that_reach_the_app_get_a_clean_answer(server_url, case):
    head, status, body, *content = ODD_REQUESTS[case]
    response = raw_exchange(server_url, head + b"Connection: close\r\n\r\n" + b"".join(content))
    assert status_of(response) == status, response[:300]
    assert json.loads(response.partition(b"\r\n\r\n")[2]) == body
    assert_still_serving(server_url)


def test_client_disconnecting_mid_body_never_hands_a_partial_body_to_the_endpoint(server):
    """Mutant caught (requests.py, ``Request.stream``): the ``http.disconnect`` message not recognised, so the
    7 bytes received are returned as if they were the whole body and the endpoint acts on them."""
    server_url, app = server
    parts = urlsplit(server_url)
    before = list(app.state.bodies)
    with socket.create_connection((parts.hostname, parts.port), timeout=2) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\npartial")
        time.sleep(0.05)
    assert_still_serving(server_url)
    response = httpx.post(f"{server_url}/body", content=b"x" * 1000, timeout=5)
    assert response.json() == {"length": 1000}
    assert app.state.bodies == [*before, 1000]


def test_keep_alive_connection_after_error_responses(server_url):
    # One connection, several requests including error statuses produced by the app.
    with httpx.Client(base_url=server_url, timeout=5) as client:
        assert client.get("/missing").status_code == 404
        assert client.put("/ok").status_code == 405
        assert client.get("/ok").json() == {"ok": True}
        assert client.post("/body", content=b"abc").json() == {"length": 3}


def test_head_error_responses_have_no_body_on_a_kept_alive_connection(server_url):
    # If a body were sent after a HEAD response, the next response on the connection would be garbled.
    parts = urlsplit(server_url)
    requests = (
        b"HEAD /missing HTTP/1.1\r\nHost: test\r\n\r\n"
        b"HEAD /body HTTP/1.1\r\nHost: test\r\n\r\n"
        b"HEAD /ok HTTP/1.1\r\nHost: test\r\n\r\n"
        b"GET /ok HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=3) as sock:
        sock.sendall(requests)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    statuses = [int(line.split(b" ")[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [404, 405, 200, 200]
    assert data.endswith(b'{"ok":true}')
    assert data.count(b'{"detail"') == 0

"""Edges of real HTTP over uvicorn: malformed requests on raw sockets get a 4xx and the server keeps serving."""

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tachyon_api import Request, Tachyon

from .conftest import raw_exchange, serve, status_of


def build_app() -> Tachyon:
    app = Tachyon()

    @app.get("/ok")
    async def ok():
        return {"ok": True}

    @app.post("/body")
    async def body(request: Request):
        return {"length": len(await request.body())}

    return app


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server_url(request):
    """One server per HTTP implementation for the whole module: every test also checks it survived the previous."""
    with serve(build_app(), http=request.param) as url:
        yield url


def assert_still_serving(url: str) -> None:
    response = httpx.get(f"{url}/ok", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_well_formed_raw_request_control(server_url):
    response = raw_exchange(server_url, b"GET /ok HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    assert response.endswith(b'{"ok":true}')


@pytest.mark.parametrize(
    "payload",
    [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /ok HTTP/1.1 extra\r\nHost: test\r\n\r\n",
        b"\x00\x01\x02\x03 binary junk\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: test\r\nHeader Without Colon\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: test\r\nBad Name: value\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: test\r\nX-Bad: a\x00b\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\nhello",
        b"POST /body HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ],
    ids=[
        "garbage-line",
        "method-only",
        "extra-token",
        "binary",
        "header-without-colon",
        "space-in-header-name",
        "nul-in-header-value",
        "non-numeric-content-length",
        "conflicting-content-length",
    ],
)
def test_malformed_request_gets_4xx_and_server_keeps_serving(server_url, payload):
    response = raw_exchange(server_url, payload)
    status = status_of(response)
    assert 400 <= status < 500, response[:200]
    assert_still_serving(server_url)


def test_many_malformed_requests_then_normal_traffic(server_url):
    for _ in range(5):
        assert status_of(raw_exchange(server_url, b"NOT HTTP AT ALL\r\n\r\n")) == 400
    with httpx.Client(base_url=server_url, timeout=5) as client:
        for _ in range(5):
            assert client.get("/ok").json() == {"ok": True}
        assert client.post("/body", content=b"12345").json() == {"length": 5}


def test_client_that_connects_and_leaves_does_not_hurt(server_url):
    parts = urlsplit(server_url)
    for _ in range(3):
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    assert_still_serving(server_url)


def test_client_disconnecting_mid_body_does_not_hurt(server_url):
    parts = urlsplit(server_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=2) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\npartial")
        time.sleep(0.05)
    assert_still_serving(server_url)
    response = httpx.post(f"{server_url}/body", content=b"x" * 1000, timeout=5)
    assert response.json() == {"length": 1000}


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

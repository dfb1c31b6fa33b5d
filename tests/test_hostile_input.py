"""Hostile input over real HTTP (uvicorn on loopback; raw sockets where httpx refuses to send it): each case is
a clean 4xx with the framework's JSON error body, or the documented normalisation, never a 500 or a hang."""

from __future__ import annotations

import json
from typing import Iterator
from urllib.parse import quote

import httpx
import pytest

from .conftest import assert_error_shape, assert_validation_error, raw_exchange, serve, status_of
from .kitchen_sink import create_app

LIMIT = 64 * 1024  # the kitchen sink's max_body_size


@pytest.fixture(scope="module", params=["httptools", "h11"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uploads = tmp_path_factory.mktemp("uploads")
    with serve(create_app(uploads), http=request.param) as base_url:
        yield base_url


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client


def response_of(raw: bytes) -> httpx.Response:
    """Parse a raw HTTP/1.1 response with a Content-Length into an httpx.Response (for the shape helpers)."""
    body = raw.partition(b"\r\n\r\n")[2]
    return httpx.Response(status_of(raw), content=body, headers={"content-type": "application/json"})


# --- 1. deeply nested JSON ------------------------------------------------------------------------------
DEEP = b"[" * 5000 + b"]" * 5000  # 10 KB, far past Python's recursion limit


@pytest.mark.parametrize(
    "path, body",
    [
        ("/json/any", DEEP),
        ("/request/json", DEEP),
        ("/json/order", b'{"customer": "a", "lines": [], "extra": {"a": ' + DEEP + b"}}"),
        ("/json/embed", b'{"line": {"sku": "a", "qty": 1}, "count": 1, "extra": ' + DEEP + b"}"),
    ],
)
def test_json_nested_too_deeply_is_a_422(http: httpx.Client, path: str, body: bytes) -> None:
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    errors = assert_validation_error(response, [["body"]])
    assert errors[0]["type"] == "json_invalid"
    assert "nested too deeply" in errors[0]["msg"]


def test_json_nested_within_the_limit_is_accepted(http: httpx.Client) -> None:
    response = http.post("/json/any", content=b"[" * 200 + b"]" * 200, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.json() == {"type": "list"}


# --- 3. a declared Content-Length over max_body_size: 413 before any byte of the body ---------------------
OVERSIZE = [
    ("/json/order", "application/json"),
    ("/json/any", "application/json"),
    ("/form", "application/x-www-form-urlencoded"),
    ("/request/body", "application/octet-stream"),
    ("/request/json", "application/json"),
    ("/request/stream", "application/octet-stream"),
    ("/upload", "multipart/form-data; boundary=xyz"),
]


@pytest.mark.parametrize("path, content_type", OVERSIZE)
@pytest.mark.parametrize("expect", [True, False], ids=["expect-100-continue", "headers-alone"])
def test_oversized_content_length_is_refused_before_the_body(url: str, path: str, content_type: str, expect: bool):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {LIMIT * 100}\r\n" + ("Expect: 100-continue\r\n" if expect else "") + "\r\n"
    )
    raw = raw_exchange(url, head.encode())  # no body follows: the server must answer without it
    assert not raw.startswith(b"HTTP/1.1 100"), "invited a body it will refuse"
    body = assert_error_shape(response_of(raw), {413}, "PAYLOAD_TOO_LARGE")
    assert str(LIMIT) in body["error"]


def test_a_body_within_the_limit_with_expect_100_continue_is_read(url: str) -> None:
    payload = b'{"a": 1}'
    head = (
        "POST /json/dict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(payload)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    raw = raw_exchange(url, head + payload)
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), raw[:200]
    assert raw.endswith(b'{"a":1}')


# --- 4. multipart parser errors --------------------------------------------------------------------------
@pytest.mark.parametrize("boundary_length", [257, 300, 2000])
def test_a_boundary_the_parser_refuses_is_a_400(http: httpx.Client, boundary_length: int) -> None:
    boundary = "b" * boundary_length
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--{boundary}--\r\n'
    response = http.post("/upload", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    body_json = assert_error_shape(response, {400}, "BAD_REQUEST")
    assert "boundary" in body_json["error"].lower()


# --- 5. numbers: ASCII digits and an optional sign only -------------------------------------------------
@pytest.mark.parametrize("kind", ["int", "float", "decimal"])
@pytest.mark.parametrize("value", ["５", "٣", "1_000", " 1", "1 ", "nan", "inf", "0x10", "+", "", "1.5\n"])
def test_path_numbers_accept_ascii_digits_only(http: httpx.Client, kind: str, value: str) -> None:
    response = http.get(f"/path/{kind}/{quote(value)}")
    assert response.status_code == 404, response.text


@pytest.mark.parametrize(
    "kind, value, expected",
    [
        ("int", "-12", -12),
        ("int", "+7", 7),
        ("float", "1.5e3", 1500.0),
        ("float", "-.5", -0.5),
        ("decimal", "2.50", "2.50"),
    ],
)
def test_path_numbers_in_ascii_convert(http: httpx.Client, kind: str, value: str, expected: object) -> None:
    response = http.get(f"/path/{kind}/{quote(value)}")
    assert response.status_code == 200, response.text
    assert response.json() == {"value": expected}


@pytest.mark.parametrize("name", ["n", "x", "d", "tags"])
@pytest.mark.parametrize("value", ["５", "٣", "1_000", " 1", "nan"])
def test_query_numbers_accept_ascii_digits_only(http: httpx.Client, name: str, value: str) -> None:
    params = {"n": "1", name: value}
    response = http.get("/query", params=params)
    assert_validation_error(response, [["query", name, 0] if name == "tags" else ["query", name]])


def test_a_float_that_overflows_to_infinity_is_invalid(http: httpx.Client) -> None:
    assert_validation_error(http.get("/query", params={"n": "1", "x": "1e999"}), [["query", "x"]])
    assert http.get("/query", params={"n": "1", "d": "1e999"}).json()["d"] == "1E+999"  # a finite Decimal


def test_query_numbers_in_ascii_convert(http: httpx.Client) -> None:
    response = http.get("/query", params={"n": "-3", "x": "2.5", "d": "+0.10", "tags": ["1", "-2"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["n"], body["x"], body["d"], body["tags"]) == (-3, 2.5, "0.10", [1, -2])


def test_header_and_form_numbers_accept_ascii_digits_only(url: str, http: httpx.Client) -> None:
    assert_validation_error(http.get("/headers", headers={"x-count": "1_000"}), [["header", "x-count"]])
    assert_validation_error(http.get("/headers", headers={"x-count": "1", "x-ratio": "1_0.5"}), [["header", "x-ratio"]])
    # A non-ASCII header value: httpx only sends latin-1, so the UTF-8 bytes go over a raw socket.
    raw = raw_exchange(url, "GET /headers HTTP/1.1\r\nHost: t\r\nX-Count: ٣\r\nConnection: close\r\n\r\n".encode())
    assert [e["loc"] for e in assert_error_shape(response_of(raw), {422})["errors"]] == [["header", "x-count"]]
    assert http.get("/headers", headers={"x-count": "-4", "x-ratio": "0.5"}).json()["count"] == -4
    assert_validation_error(http.post("/form", data={"name": "a", "age": "٣"}), [["body", "age"]])
    assert_validation_error(http.post("/form", data={"name": "a", "age": "1_000"}), [["body", "age"]])
    assert http.post("/form", data={"name": "a", "age": "30"}).json()["age"] == 30


# --- 6. upload file names within 255 bytes ---------------------------------------------------------------
@pytest.mark.parametrize("stem", ["a" * 300, "é" * 200, "文" * 120])
def test_a_long_upload_name_is_cut_to_255_bytes_keeping_the_extension(http: httpx.Client, stem: str) -> None:
    response = http.post("/upload", files={"file": (f"{stem}.txt", b"hello", "text/plain")})
    assert response.status_code == 200, response.text
    name = response.json()["filename"]
    assert name.endswith(".txt") and name[:-4] == stem[: len(name) - 4]
    assert 250 <= len(name.encode()) <= 255
    assert response.json()["saved"] == name  # the app could open(folder / filename)


# --- 7. a validation error inside a dict names the key --------------------------------------------------
@pytest.mark.parametrize(
    "path, payload, loc",
    [
        ("/json/order", {"customer": "a", "lines": [], "meta": {"ok": 1, "bad key": "x"}}, ["body", "meta", "bad key"]),
        (
            "/json/order",
            {"customer": "a", "lines": [], "groups": {"g": [{"a": 1.0}], "h": [{"a": 2.0}, {"b": 1, "c": "no"}]}},
            ["body", "groups", "h", 1, "c"],
        ),
        ("/json/order", {"customer": "a", "lines": [], "counts": {"1": 2, "x": 3}}, ["body", "counts", "x"]),
        ("/json/order", {"customer": "a", "lines": [{"sku": "s", "qty": "one"}]}, ["body", "lines", 0, "qty"]),
        ("/json/dict", {"a": 1, "b]": "x"}, ["body", "b]"]),
    ],
)
def test_errors_inside_a_dict_name_the_key(http: httpx.Client, path: str, payload: dict, loc: list) -> None:
    assert_validation_error(http.post(path, content=json.dumps(payload)), [loc])


# --- 8. urlencoded forms are UTF-8 -----------------------------------------------------------------------
def test_raw_utf8_in_an_urlencoded_form_decodes_as_utf8(http: httpx.Client) -> None:
    content = "name=café 文&age=3&tags=naïve&tags=%C3%A9".encode()
    response = http.post("/form", content=content, headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "café 文", "age": 3, "tags": ["naïve", "é"]}


def test_invalid_utf8_in_a_form_is_replaced_not_a_500(http: httpx.Client) -> None:
    content = b"name=caf\xe9&age=3"
    response = http.post("/form", content=content, headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "caf\ufffd"


# --- what reaches the request log ------------------------------------------------------------------------------
@pytest.mark.parametrize("http_impl", ["httptools", "h11"])
def test_raw_control_bytes_never_reach_the_log_unescaped(http_impl: str, caplog: pytest.LogCaptureFixture) -> None:
    """Bytes httpx would refuse to send, on a raw socket: escaped CR LF and a raw ESC, DEL and 0x85 in the
    path, a raw ESC in a header, a JSON body with a password and a CR LF. Each server either refuses the request
    itself (400) or the app logs it one record per line, with the password redacted."""
    import logging

    from tachyon_api import Tachyon
    from tachyon_api.middlewares import LoggerMiddleware

    app = Tachyon()

    @app.post("/{anything}")
    async def anything(anything: str, payload: dict) -> dict:
        return {}

    app.add_middleware(LoggerMiddleware, include_headers=True, log_request_body=True)
    caplog.set_level(logging.INFO, logger="tachyon_api.access")
    body = b'{"password": "hunter2-raw", "note": "a\\r\\nb"}'
    requests = [
        b"POST /x%0d%0a<--%20GET%20admin%20200 HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n",
        b"POST /x\x1b[2J\x7f\x85 HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n",
        b"POST /x HTTP/1.1\r\nHost: t\r\nX-Note: a\x1b[31mb\r\nContent-Type: application/json\r\n",
    ]
    with serve(app, http=http_impl) as url:
        for head in requests:
            raw = head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
            assert status_of(raw_exchange(url, raw)) in (200, 400, 404)
    lines = [r.getMessage() for r in caplog.records if r.name == "tachyon_api.access"]
    assert lines  # the first request always reaches the app
    for line in lines:
        assert not any(ch in line for ch in "\r\n\x1b\x7f\x85"), line
        assert "hunter2-raw" not in line

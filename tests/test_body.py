"""JSON bodies: decoding and validation by msgspec, embedding of several body parameters, malformed and
oversized bodies (issue "Parameters, validation, uploads and DI", points 4 and 5)."""

import dataclasses
import json
from typing import Optional

import httpx
import pytest

from tachyon_api import Body, Query, Request, Struct, Tachyon
from tachyon_api.testing import TachyonTestClient, create_client

from .conftest import assert_error_shape, assert_validation_error, client_for, serve


class Item(Struct):
    name: str
    price: float
    tags: list[str] = []  # noqa: RUF012 - msgspec gives each instance its own copy


class User(Struct):
    username: str
    email: Optional[str] = None


class Address(Struct):
    city: str
    zip: str


class Customer(Struct):
    name: str
    address: Address


class Line(Struct):
    sku: str
    qty: int


class Order(Struct):
    customer: Customer
    lines: list[Line]


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@pytest.fixture(scope="module")
def client():
    app = Tachyon()

    @app.post("/item")
    def create_item(item: Item):
        assert isinstance(item, Item)
        return {"name": item.name, "price": item.price, "tags": item.tags}

    @app.post("/items")
    def create_items(items: list[Item]):
        assert all(isinstance(i, Item) for i in items)
        return {"names": [i.name for i in items], "count": len(items)}

    @app.post("/maybe")
    def maybe_item(item: Optional[Item] = None):
        return {"item": None if item is None else item.name}

    @app.post("/order")
    def create_order(order: Order):
        assert isinstance(order.customer, Customer)
        assert isinstance(order.customer.address, Address)
        assert all(isinstance(line, Line) for line in order.lines)
        return {
            "city": order.customer.address.city,
            "total_qty": sum(line.qty for line in order.lines),
        }

    @app.post("/dict")
    def take_dict(payload: dict):
        return {"payload": payload, "type": type(payload).__name__}

    @app.post("/typed-dict")
    def take_typed_dict(payload: dict[str, int]):
        return {"sum": sum(payload.values())}

    @app.post("/point")
    def take_point(point: Point):
        assert isinstance(point, Point)
        return {"x": point.x, "y": point.y}

    @app.post("/marker")
    def explicit_marker(data: Item = Body(..., description="an item")):
        return {"name": data.name}

    @app.post("/scalar-body")
    def scalar_body(count: int = Body()):
        return {"count": count}

    @app.post("/embed")
    def embedded(item: Item, user: User):
        assert isinstance(item, Item) and isinstance(user, User)
        return {"item": item.name, "user": user.username}

    @app.post("/embed-default")
    def embedded_default(item: Item, note: str = Body(default="none"), count: int = Body(1)):
        return {"item": item.name, "note": note, "count": count}

    @app.put("/items/{item_id}")
    def update(item_id: int, item: Item, q: Optional[str] = None):
        return {"item_id": item_id, "name": item.name, "q": q}

    with TachyonTestClient(app) as test_client:
        yield test_client


# --- decoding --------------------------------------------------------------------------------------------
def test_struct_body(client):
    response = client.post("/item", json={"name": "pen", "price": 1.25, "tags": ["office"]})
    assert response.status_code == 200
    assert response.json() == {"name": "pen", "price": 1.25, "tags": ["office"]}
    # struct defaults apply
    assert client.post("/item", json={"name": "pen", "price": 2}).json() == {"name": "pen", "price": 2.0, "tags": []}


def test_list_of_structs(client):
    response = client.post("/items", json=[{"name": "a", "price": 1}, {"name": "b", "price": 2}])
    assert response.status_code == 200
    assert response.json() == {"names": ["a", "b"], "count": 2}
    assert client.post("/items", json=[]).json() == {"names": [], "count": 0}


def test_optional_struct_null_and_missing_give_none(client):
    assert client.post("/maybe", json={"name": "x", "price": 1}).json() == {"item": "x"}
    null = client.post("/maybe", content=b"null", headers={"content-type": "application/json"})
    assert null.status_code == 200
    assert null.json() == {"item": None}
    missing = client.post("/maybe")
    assert missing.status_code == 200
    assert missing.json() == {"item": None}


def test_nested_structs(client):
    payload = {
        "customer": {"name": "Ada", "address": {"city": "London", "zip": "N1"}},
        "lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}],
    }
    response = client.post("/order", json=payload)
    assert response.status_code == 200
    assert response.json() == {"city": "London", "total_qty": 5}


def test_dict_and_dataclass_bodies(client):
    payload = {"a": 1, "nested": {"b": [1, 2]}}
    assert client.post("/dict", json=payload).json() == {"payload": payload, "type": "dict"}
    assert client.post("/typed-dict", json={"a": 1, "b": 2}).json() == {"sum": 3}
    assert_validation_error(client.post("/typed-dict", json={"a": "one"}))
    assert client.post("/point", json={"x": 4}).json() == {"x": 4, "y": 0}
    errors = assert_validation_error(client.post("/point", json={"y": 1}), [["body", "x"]])
    assert errors[0]["type"] == "missing"


def test_explicit_body_marker(client):
    assert client.post("/marker", json={"name": "m", "price": 0}).json() == {"name": "m"}
    assert client.post("/scalar-body", json=5).json() == {"count": 5}
    assert_validation_error(client.post("/scalar-body", json="five"), [["body"]])


def test_json_content_type_variants_accepted(client):
    payload = json.dumps({"name": "pen", "price": 1}).encode()
    for content_type in ("application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
        response = client.post("/item", content=payload, headers={"content-type": content_type})
        assert response.status_code == 200, (content_type, response.text)
        assert response.json()["name"] == "pen"


def test_several_body_params_are_embedded_by_name(client):
    response = client.post("/embed", json={"item": {"name": "pen", "price": 1}, "user": {"username": "ada"}})
    assert response.status_code == 200
    assert response.json() == {"item": "pen", "user": "ada"}
    # the non-embedded form is not accepted
    flat = client.post("/embed", json={"name": "pen", "price": 1, "username": "ada"})
    errors = assert_validation_error(flat)
    assert errors[0]["loc"][0] == "body"
    missing_user = client.post("/embed", json={"item": {"name": "pen", "price": 1}})
    errors = assert_validation_error(missing_user, [["body", "user"]])
    assert errors[0]["type"] == "missing"
    bad_nested = client.post("/embed", json={"item": {"name": "pen", "price": "x"}, "user": {"username": "ada"}})
    assert_validation_error(bad_nested, [["body", "item", "price"]])


def test_embedded_body_params_with_defaults(client):
    response = client.post("/embed-default", json={"item": {"name": "pen", "price": 1}})
    assert response.json() == {"item": "pen", "note": "none", "count": 1}
    response = client.post("/embed-default", json={"item": {"name": "pen", "price": 1}, "note": "hi", "count": 3})
    assert response.json() == {"item": "pen", "note": "hi", "count": 3}


def test_body_with_path_and_query(client):
    response = client.put("/items/9?q=search", json={"name": "pen", "price": 1})
    assert response.status_code == 200
    assert response.json() == {"item_id": 9, "name": "pen", "q": "search"}


# --- validation errors -----------------------------------------------------------------------------------
def test_wrong_field_type_located(client):
    errors = assert_validation_error(client.post("/item", json={"name": "pen", "price": "cheap"}), [["body", "price"]])
    assert errors[0]["type"] != "missing"


def test_missing_field_located(client):
    errors = assert_validation_error(client.post("/item", json={"price": 1}), [["body", "name"]])
    assert errors[0]["type"] == "missing"


def test_nested_list_error_located(client):
    payload = {
        "customer": {"name": "Ada", "address": {"city": "London", "zip": "N1"}},
        "lines": [{"sku": "a", "qty": "two"}],
    }
    assert_validation_error(client.post("/order", json=payload), [["body", "lines", 0, "qty"]])
    payload["lines"] = [{"sku": "a", "qty": 1}, {"qty": 1}]
    errors = assert_validation_error(client.post("/order", json=payload), [["body", "lines", 1, "sku"]])
    assert errors[0]["type"] == "missing"
    payload["lines"] = [{"sku": "a", "qty": 1}]
    payload["customer"]["address"] = {"city": 5, "zip": "x"}
    assert_validation_error(client.post("/order", json=payload), [["body", "customer", "address", "city"]])


def test_list_of_structs_error_located(client):
    errors = assert_validation_error(client.post("/items", json=[{"name": "a", "price": 1}, {"name": "b"}]))
    assert errors[0]["loc"] == ["body", 1, "price"]
    assert errors[0]["type"] == "missing"
    assert_validation_error(client.post("/items", json={"name": "a", "price": 1}), [["body"]])


def test_missing_required_body_is_422(client):
    errors = assert_validation_error(client.post("/item"), [["body"]])
    assert errors[0]["type"] == "missing"


@pytest.mark.parametrize("raw", [b"{", b"{'name': 'pen'}", b'{"name": "pen", "price": 1', b"not json", b"\xff\xfe"])
def test_malformed_json_is_422_json_invalid(client, raw):
    """The documented status and ``type`` exactly (a changed ``type`` or status breaks clients that match on
    them, so a test must notice)."""
    response = client.post("/item", content=raw, headers={"content-type": "application/json"})
    errors = assert_validation_error(response, [["body"]])
    assert errors[0]["type"] == "json_invalid"
    assert errors[0]["msg"].startswith("Invalid JSON: ")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type_is_422_content_type(client, content_type):
    payload = json.dumps({"name": "pen", "price": 1}).encode()
    response = client.post("/item", content=payload, headers={"content-type": content_type})
    errors = assert_validation_error(response, [["body"]])
    assert errors[0]["type"] == "content_type"


def test_body_error_summary_mentions_field(client):
    response = client.post("/item", json={"name": "pen", "price": "cheap"})
    assert "price" in response.json()["error"]


# --- size limits -----------------------------------------------------------------------------------------
def limited_app(limit):
    app = Tachyon(max_body_size=limit)
    calls = []

    @app.post("/item")
    def create_item(item: Item):
        calls.append(item)
        return {"name": item.name}

    @app.post("/dict")
    async def take_dict(payload: dict):
        calls.append(payload)
        return {"n": len(payload)}

    @app.post("/raw")
    async def raw(request: Request):
        data = await request.body()
        calls.append(data)
        return {"n": len(data)}

    return app, calls


def big_payload(size):
    return json.dumps({"name": "x" * size, "price": 1}).encode()


def test_body_over_limit_is_413():
    app, calls = limited_app(100)
    with TachyonTestClient(app) as client:
        small = client.post("/item", content=big_payload(10), headers={"content-type": "application/json"})
        assert small.status_code == 200
        response = client.post("/item", content=big_payload(200), headers={"content-type": "application/json"})
        assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")
        response = client.post("/raw", content=b"x" * 101)
        assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")
        exact = client.post("/raw", content=b"x" * 100)
        assert exact.status_code == 200 and exact.json() == {"n": 100}
    assert len(calls) == 2


def test_chunked_body_without_content_length_over_limit_is_413():
    app, calls = limited_app(100)
    sent_headers = {}

    def chunks():
        for _ in range(10):
            yield b'{"name": "' + b"x" * 20
        yield b'", "price": 1}'

    def record(request):
        sent_headers.update(request.headers)

    with TachyonTestClient(app, event_hooks={"request": [record]}) as client:
        response = client.post("/item", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in sent_headers
    assert sent_headers.get("transfer-encoding") == "chunked"
    assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")
    assert calls == []


async def test_chunked_async_body_over_limit_is_413():
    app, calls = limited_app(64)

    async def chunks():
        for _ in range(8):
            yield b"[" + b"1," * 10

    async with create_client(app) as client:
        response = await client.post("/dict", content=chunks(), headers={"content-type": "application/json"})
        assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")

        async def small():
            yield b'{"a": '
            yield b"1}"

        ok = await client.post("/dict", content=small(), headers={"content-type": "application/json"})
        assert ok.status_code == 200
        assert ok.json() == {"n": 1}
    assert calls == [{"a": 1}]


def test_chunked_body_over_limit_over_real_http_is_413():
    app, calls = limited_app(1000)

    def chunks():
        for _ in range(50):
            yield b"y" * 100

    with serve(app) as url:
        response = httpx.post(f"{url}/raw", content=chunks(), timeout=10)
        ok = httpx.post(f"{url}/raw", content=iter([b"a" * 500, b"b" * 500]), timeout=10)
    assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")
    assert ok.status_code == 200
    assert ok.json() == {"n": 1000}
    assert calls == [b"a" * 500 + b"b" * 500]


def test_bodies_in_one_message_over_real_http():
    """uvicorn hands a small body over in one ASGI message, which ``Request.body`` reads without the stream
    generator; the test clients send the body and then an empty last message, so only a real server takes
    that path. The limit is inclusive there too.

    Mutants caught (requests.py, ``Request.body``): the one-message body not kept (``None`` returned); the
    size check written ``>=``; the one-message test inverted or reading ``more_body`` as true by default.
    """
    app, calls = limited_app(100)
    with serve(app) as url:
        exact = httpx.post(f"{url}/raw", content=b"x" * 100, timeout=10)
        over = httpx.post(f"{url}/raw", content=b"x" * 101, timeout=10)
        item = httpx.post(f"{url}/item", json={"name": "pen", "price": 1}, timeout=10)
        empty = httpx.post(f"{url}/raw", timeout=10)
    assert exact.json() == {"n": 100}
    assert over.json() == {  # the documented body, word for word
        "success": False,
        "error": "Request body too large (max 100 bytes)",
        "code": "PAYLOAD_TOO_LARGE",
        "errors": [],
    }
    assert item.json() == {"name": "pen"}
    assert empty.json() == {"n": 0}
    assert calls == [b"x" * 100, Item(name="pen", price=1), b""]


def test_default_limit_is_two_mebibytes():
    default_app = Tachyon()
    assert default_app.max_body_size == 2 * 1024 * 1024

    @default_app.post("/raw")
    async def raw(request: Request):
        return {"n": len(await request.body())}

    with TachyonTestClient(default_app) as client:
        assert client.post("/raw", content=b"x" * (2 * 1024 * 1024)).json() == {"n": 2 * 1024 * 1024}
        too_big = client.post("/raw", content=b"x" * (2 * 1024 * 1024 + 1))
        assert_error_shape(too_big, {413}, "PAYLOAD_TOO_LARGE")
        too_big_json = client.post(
            "/raw", content=big_payload(2 * 1024 * 1024), headers={"content-type": "application/json"}
        )
        assert_error_shape(too_big_json, {413}, "PAYLOAD_TOO_LARGE")


def test_413_with_body_and_query_params():
    app = Tachyon(max_body_size=50)
    called = []

    @app.post("/x")
    def handler(item: Item, page: int = Query(1)):
        called.append(page)

    with TachyonTestClient(app) as client:
        response = client.post("/x?page=2", content=big_payload(100), headers={"content-type": "application/json"})
    assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")
    assert called == []


class Price(Struct):
    name: str
    price: float
    active: bool = True


def test_lax_mode_coerces_body_values_app_wide_and_per_route() -> None:
    """``Tachyon(strict=False)`` and ``strict=False`` on a route decode bodies laxly, as pydantic coerces."""
    strict_app, lax_app = Tachyon(), Tachyon(strict=False)

    def create(item: Price):
        return item

    for app in (strict_app, lax_app):
        app.post("/items")(create)
    strict_app.post("/lax-items", strict=False)(create)
    lax_app.post("/strict-items", strict=True)(create)
    payload = {"name": "Lamp", "price": "9.5", "active": "false"}

    strict_client, lax_client = client_for(strict_app), client_for(lax_app)
    assert_validation_error(strict_client.post("/items", json=payload), [["body", "price"]])
    assert strict_client.post("/lax-items", json=payload).json() == {"name": "Lamp", "price": 9.5, "active": False}
    assert lax_client.post("/items", json=payload).json() == {"name": "Lamp", "price": 9.5, "active": False}
    assert_validation_error(lax_client.post("/strict-items", json=payload), [["body", "price"]])
    # Lax is not anything-goes: a value that cannot be a float is still a 422.
    assert_validation_error(lax_client.post("/items", json={"name": "Lamp", "price": "cheap"}), [["body", "price"]])


def _answer_while_client_stalls(url: str, head: bytes, sent_body: bytes) -> tuple[bytes, float]:
    """Send ``head`` and the first ``sent_body`` bytes over a raw socket, then send nothing more (the client
    stalls, keeping the connection open); return what the server answered within 5 s and how long it took."""
    import socket
    import time

    host, port = url.removeprefix("http://").split(":")
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + sent_body)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
    return answer, time.perf_counter() - start


def _assert_prompt_413(answer: bytes, took: float) -> None:
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert answer.endswith(
        b'{"success":false,"error":"Request body too large (max 1000 bytes)","code":"PAYLOAD_TOO_LARGE","errors":[]}'
    ), answer
    assert took < 3, f"the 413 took {took:.2f}s: the server waited for more of the body"


def test_413_comes_before_the_rest_of_an_oversized_body_is_sent():
    """The doc's promise, over real HTTP: a declared ``Content-Length`` over the limit is refused without
    waiting for the body, and a chunked body is refused as soon as it passes the limit, not at its end. The
    client here sends only part of the body and then stalls, so a server that waited would never answer.

    Mutants caught (requests.py ``Request.stream``): the ``Content-Length`` pre-check removed (the raw body
    and the upload wait for the rest of the declared 10 MB); the running ``received > limit`` check moved to
    the end of the body (the chunked body waits for its last chunk, which never comes).
    """
    app, calls = limited_app(1000)

    @app.post("/upload")
    async def upload(request: Request):
        form = await request.form()
        calls.append(list(form))
        return {}

    declared = 10 * 1024 * 1024
    with serve(app) as url:
        kinds = [("/raw", b"application/octet-stream"), ("/upload", b"multipart/form-data; boundary=x")]
        for path, content_type in kinds:
            head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
                path.encode(),
                content_type,
                declared,
            )
            _assert_prompt_413(*_answer_while_client_stalls(url, head, b"--x\r\n" + b"y" * 95))
        chunked_head = b"POST /raw HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunks = b"".join(b"%x\r\n%s\r\n" % (300, b"z" * 300) for _ in range(4))  # 1200 bytes, no last chunk
        _assert_prompt_413(*_answer_while_client_stalls(url, chunked_head, chunks))
    assert calls == []

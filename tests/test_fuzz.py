"""Property-based fuzzing (hypothesis) over real HTTP: the kitchen-sink app (tests/kitchen_sink.py) and the
example shop, each under ``tachyon run``, get generated hostile requests: every answer is below 500, every
4xx carries the framework's JSON error body (or the ``{"detail": ...}`` of an ``HTTPException`` the route
raises), and the server logs no unhandled error.

The number of examples is bounded (100 per test) so that the module runs in seconds; each run draws new
examples, so the suite keeps exploring (a failure prints the ``@reproduce_failure`` blob to replay it). For a
longer hunt: ``TACHYON_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py --timeout 0``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import assert_error_shape, kitchen_sink
from .test_example_shop import Shop

FUZZ = settings(
    max_examples=int(os.environ.get("TACHYON_FUZZ_EXAMPLES", "100")),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values known to break naive parsers, mixed with arbitrary text.
NASTY = [
    "",
    " ",
    "0",
    "-1",
    "+1",
    "1_000",
    "٣",
    "５",
    "1e999",
    "-0.0",
    "nan",
    "inf",
    "9" * 5000,
    "0x10",
    "../../etc/passwd",
    "..",
    "%00",
    "\x00",
    "null",
    "true",
    "[]",
    "{}",
    "'",
    '"',
    "\\",
    "<script>",
    "\u202e",
    "a" * 300,
    "😀",
    "\ufeff1",
    "1\n",
    "\r\n",
]
TEXT = st.one_of(st.sampled_from(NASTY), st.text(max_size=30))
FILENAMES = st.one_of(  # long names (file systems take 255 bytes), paths, odd characters
    st.sampled_from(["a" * 300 + ".txt", "é" * 200 + ".csv", "../../x.txt", "C:\\x.txt", ".", "..", "a\x00b"]), TEXT
)
# httpx sends printable ASCII without surrounding spaces (HTTP parsers strip them anyway).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/vnd.api+json",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
    ]
)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BODIES = st.one_of(
    JSON.map(json_bytes),
    st.binary(max_size=200),
    (st.sampled_from([999, 1000, 1001, 5000]) | st.integers(1, 3000)).map(nested),
    st.sampled_from([b"", b" "]),
)


def assert_clean(response: httpx.Response, detail_statuses: set[int] | None = None) -> None:
    """Below 500; a 4xx is our error body, or ``{"detail": ...}`` with one of ``detail_statuses`` (every 4xx
    if None: the app raises its own HTTPExceptions)."""
    request = response.request
    where = f"{request.method} {request.url} -> {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, where
    if response.status_code < 400:
        return
    body = response.json()
    if set(body) == {"detail"}:
        assert detail_statuses is None or response.status_code in detail_statuses, where
        return
    error = assert_error_shape(response, {response.status_code})
    for item in error["errors"]:  # a location names real fields, keys and indexes
        assert all(isinstance(part, (str, int)) for part in item["loc"]), where


def multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


MULTIPART = st.builds(
    lambda boundary, parts, cut: (boundary, multipart(boundary, parts)[: cut or None]),
    st.integers(1, 300).flatmap(  # the parser takes boundaries of at most 256 bytes
        lambda size: st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='";'), min_size=size, max_size=size
        )
    ),
    st.lists(
        st.tuples(st.sampled_from(["file", "note", "files", "x"]) | TEXT, st.none() | TEXT, st.binary(max_size=50)),
        max_size=3,
    ),
    st.integers(0, 400),
)


# --- the kitchen sink ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with kitchen_sink(tmp_path_factory.mktemp("sink")) as server:
        with httpx.Client(base_url=server.url, timeout=20) as client:
            yield client


PATH_KINDS = st.sampled_from(["int", "float", "decimal", "uuid", "str"])
QUERY_NAMES = st.sampled_from(["n", "x", "d", "flag", "day", "color", "tags", "text"]) | TEXT


@FUZZ
@given(kind=PATH_KINDS, value=TEXT)
def test_sink_path_parameters(sink: httpx.Client, kind: str, value: str) -> None:
    assert_clean(sink.get(f"/path/{kind}/{quote(value, safe='')}"), {404, 405})


@FUZZ
@given(params=st.lists(st.tuples(QUERY_NAMES, TEXT), max_size=8))
def test_sink_query_parameters(sink: httpx.Client, params: list[tuple[str, str]]) -> None:
    assert_clean(sink.get("/query", params=params), set())


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(["x-count", "x-ratio", "x-tags", "cookie", "content-length-x"]), HEADER_TEXT
    ),
    path=st.sampled_from(["/headers", "/cookies"]),
)
def test_sink_headers_and_cookies(sink: httpx.Client, headers: dict[str, str], path: str) -> None:
    assert_clean(sink.get(path, headers=headers), set())


ORDER = st.fixed_dictionaries(
    {
        "customer": JSON,
        "lines": st.lists(st.fixed_dictionaries({"sku": TEXT, "qty": st.integers() | JSON}), max_size=3),
    },
    optional={
        "meta": st.dictionaries(TEXT, st.integers() | JSON, max_size=4),
        "groups": st.dictionaries(
            TEXT, st.lists(st.dictionaries(TEXT, st.floats(allow_nan=False) | JSON, max_size=3), max_size=3)
        ),
        "counts": st.dictionaries(st.integers().map(str) | TEXT, st.integers() | JSON, max_size=4),
        "extra": JSON,
        "note": JSON,
    },
)


@FUZZ
@given(
    path=st.sampled_from(
        ["/json/order", "/json/dict", "/json/any", "/json/embed", "/request/body", "/request/json", "/request/stream"]
    ),
    body=st.one_of(BODIES, ORDER.map(json_bytes)),
    content_type=CONTENT_TYPES,
)
def test_sink_json_bodies(sink: httpx.Client, path: str, body: bytes, content_type: str) -> None:
    assert_clean(sink.post(path, content=body, headers={"content-type": content_type}), set())


@FUZZ
@given(
    path=st.sampled_from(["/form", "/upload", "/uploads"]),
    fields=st.lists(st.tuples(st.sampled_from(["name", "age", "tags", "note"]) | TEXT, TEXT), max_size=5),
    raw=st.none() | st.binary(max_size=100),
)
def test_sink_urlencoded_forms(sink: httpx.Client, path: str, fields: list[tuple[str, str]], raw: bytes | None) -> None:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if raw is not None:
        assert_clean(sink.post(path, content=raw, headers=headers), set())
    else:
        assert_clean(sink.post(path, data=dict(fields)), set())


@FUZZ
@given(
    path=st.sampled_from(["/upload", "/uploads", "/form"]),
    filename=FILENAMES,
    content=st.binary(max_size=100),
    note=st.none() | TEXT,
    raw=st.none() | MULTIPART,
)
def test_sink_multipart(
    sink: httpx.Client, path: str, filename: str, content: bytes, note: str | None, raw: Any
) -> None:
    if raw is not None:
        boundary, body = raw
        response = sink.post(path, content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    else:
        field = "files" if path == "/uploads" else "file"
        response = sink.post(path, files={field: (filename, content)}, data={} if note is None else {"note": note})
    assert_clean(response, set())
    if path == "/upload" and response.status_code == 200 and response.json()["filename"] is not None:
        assert len(response.json()["filename"].encode()) <= 255
        assert response.json()["saved"] == response.json()["filename"]


# --- the example shop ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    running = Shop(tmp_path_factory.mktemp("shop-fuzz"))
    running.unusable_imports_expected = True
    try:
        yield running.http
        running.stop()  # drains the tasks; fails on an unhandled error or a failed task in the log
    finally:
        running.server.stop()


# Every route but POST /orders/{id}/complete, whose webhook goes to the order's URL: an order made valid by
# chance would send it to an address on the internet.
SHOP_ROUTES = st.sampled_from(
    [
        ("GET", "/"),
        ("POST", "/signup"),
        ("POST", "/reset-password"),
        ("POST", "/reset-password/verify"),
        ("POST", "/import"),
        ("GET", "/imports/{}"),
        ("POST", "/products"),
        ("GET", "/products/{}"),
        ("GET", "/stats"),
        ("POST", "/orders"),
        ("GET", "/orders/{}"),
        ("POST", "/webhooks/receiver"),
        ("GET", "/webhooks/received"),
    ]
)
SHOP_BODIES = st.one_of(
    BODIES,
    st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(
            (
                "email",
                "name",
                "token",
                "id",
                "price",
                "stock",
                "customer_email",
                "total",
                "webhook_url",
                "delivery_id",
            ),
            TEXT | JSON,
        ),
    ).map(json_bytes),
)


@FUZZ
@given(
    route=SHOP_ROUTES,
    path_value=TEXT,
    params=st.lists(st.tuples(st.sampled_from(["email", "max_errors", "fail_times"]) | TEXT, TEXT), max_size=4),
    body=SHOP_BODIES,
    content_type=CONTENT_TYPES,
    signature=st.none() | HEADER_TEXT,
)
def test_shop(
    shop: httpx.Client,
    route: tuple[str, str],
    path_value: str,
    params: list,
    body: bytes,
    content_type: str,
    signature: str | None,
) -> None:
    method, template = route
    headers = {"content-type": content_type}
    if signature is not None:
        headers["x-shop-signature"] = signature
    url = template.format(quote(path_value, safe=""))
    assert_clean(shop.request(method, url, params=params, content=body, headers=headers))


@FUZZ
@given(filename=FILENAMES, content=st.binary(max_size=200), raw=st.none() | MULTIPART)
def test_shop_uploads(shop: httpx.Client, filename: str, content: bytes, raw: Any) -> None:
    if raw is not None:
        boundary, body = raw
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        response = shop.post("/import", content=body, headers=headers)
    else:
        response = shop.post("/import", files={"file": (filename, content)})
    assert_clean(response)


# --- the security surfaces: cache keys, idempotency keys, WebSocket sizes, log lines ---------------------------
SURFACES_APP = '''
import os

from tachyon_api import Depends, Header, Struct, Tachyon, cache
from tachyon_api.background import BackgroundTasks, RQBackend
from tachyon_api.middlewares import LoggerMiddleware
from tachyon_api.requests import Request
from tachyon_api.security import APIKeyHeader

app = Tachyon(task_backend=RQBackend(os.environ["REDIS_URL"], queue=os.environ["QUEUE"]))
app.add_middleware(LoggerMiddleware, include_headers=True, log_request_body=True)


class Account:  # no __repr__: an identity
    def __init__(self, name):
        self.name = name


class Member(Struct):  # a repr of its own: a value
    name: str


def account(x_user: str = Header()):
    return Account(x_user)


def member(x_user: str = Header()):
    return Member(x_user)


@app.get("/cached/request")
@cache(ttl=60)
async def by_request(request: Request):
    return {"user": request.headers["x-user"]}


@app.get("/cached/account")
@cache(ttl=60)
def by_account(user: Account = Depends(account)):
    return {"user": user.name}


@app.get("/cached/member")
@cache(ttl=60)
async def by_member(user: Member = Depends(member)):
    return {"user": user.name}


def record(what):
    """Stored for RQ workers (none run here: the test counts the jobs)."""


@app.post("/order")
async def order(body: dict, background_tasks: BackgroundTasks, note: str = "",
                tenant: str | None = Depends(APIKeyHeader("X-Tenant-Key", auto_error=False))):
    background_tasks.add_task(record, [tenant, body, note])
    return {"stored": True}


@app.post("/echo/{anything}")
async def echo(anything: str, request: Request):
    await request.body()
    return {}


async def sizes(websocket):
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        await websocket.send_text(str(len(message.get("bytes") or b"")))


app.add_websocket_route("/ws", sizes, max_message_size=64 * 1024)
'''
WS_LIMIT = 64 * 1024
SECRET = "s3cr3t-Value-that-must-never-be-logged"
LOG_LINE = __import__("re").compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


class Surfaces:
    def __init__(self, server: Any, redis_url: str, queue: str) -> None:
        from redis import Redis
        from rq import Queue

        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=20)
        self.queue = Queue(queue, connection=Redis.from_url(redis_url))
        self.ws_baseline: float | None = None


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Surfaces]:
    """The app above under ``tachyon run``. When the module is done: every line the server logged is one record
    (starts with its timestamp: no client forged a line), no secret was logged, nothing failed."""
    from .conftest import ServerProcess

    folder = tmp_path_factory.mktemp("surfaces")
    (folder / "surfaces_app.py").write_text(SURFACES_APP)
    server = ServerProcess("surfaces_app:app", folder, {"REDIS_URL": redis_url, "QUEUE": "fuzz-surfaces"})
    try:
        running = Surfaces(server, redis_url, "fuzz-surfaces")
        running.queue.empty()
        yield running
        running.http.close()
        server.terminate()
        server.wait(30)
        log = server.output()
        forged = [line for line in log.splitlines() if line and not LOG_LINE.match(line)]
        assert not forged, forged[:5]
        assert SECRET not in log and "Traceback" not in log
        running.queue.empty()
    finally:
        server.stop()


USERS = st.sampled_from(["ada", "bob"]) | HEADER_TEXT.filter(bool)


@FUZZ
@given(calls=st.lists(st.tuples(st.sampled_from(["request", "account", "member"]), USERS), min_size=1, max_size=12))
def test_cached_answers_never_cross_clients(surfaces: Surfaces, calls: list[tuple[str, str]]) -> None:
    for endpoint, user in calls:
        response = surfaces.http.get(f"/cached/{endpoint}", headers={"X-User": user})
        assert response.json() == {"user": user}, (endpoint, user)


IDEMPOTENCY_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["k1", "k2"]),  # the Idempotency-Key
        st.sampled_from([None, "t1", "t2"]),  # X-Tenant-Key, declared by the route's scheme
        st.sampled_from([None, "Bearer a", "Bearer b"]),  # Authorization
        st.sampled_from([None, "sid=1", "sid=2"]),  # Cookie
        st.sampled_from([{"n": 1}, {"n": 2}]),  # the body
        st.sampled_from(["", "x", "y"]),  # the query
    ),
    min_size=1,
    max_size=10,
)


_RUNS = __import__("itertools").count()  # a fresh key space per example (hypothesis may draw a value twice)


@FUZZ
@given(steps=IDEMPOTENCY_STEPS)
def test_idempotency_keys_never_swallow_another_request(surfaces: Surfaces, steps: list) -> None:
    """Two payloads, two queries, two credentials of each kind: the first request of a (key, credentials) pair
    is stored; its retry answers 2xx and stores nothing; another request under it is a 422. So a 2xx always
    means this request's task is in Redis."""
    seen: dict[tuple, tuple] = {}
    run = f"{os.getpid()}-{next(_RUNS)}"
    before = surfaces.queue.count
    for key, tenant, authorization, cookie, body, note in steps:
        headers = {"Idempotency-Key": f"{run}-{key}"}
        for name, value in (("X-Tenant-Key", tenant), ("Authorization", authorization), ("Cookie", cookie)):
            if value is not None:
                headers[name] = value
        response = surfaces.http.post("/order", params={"note": note}, json=body, headers=headers)
        scope, request = (key, tenant, authorization, cookie), (json.dumps(body), note)
        expected = 200 if seen.setdefault(scope, request) == request else 422
        assert response.status_code == expected, (scope, request, response.text)
    assert surfaces.queue.count - before == len(seen)


WS_SIZES = st.one_of(
    st.integers(0, WS_LIMIT),  # accepted
    st.integers(WS_LIMIT + 1, 4 * WS_LIMIT),  # refused
    st.sampled_from([WS_LIMIT, WS_LIMIT + 1, 15 * 1024 * 1024]),  # the edges, and an attacker's 15 MiB
)


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 40))
@given(sizes=st.lists(WS_SIZES, min_size=1, max_size=4))
def test_oversize_websocket_messages_are_refused_without_buffering(surfaces: Surfaces, sizes: list[int]) -> None:
    """Each message within the route's limit is received whole; each one over it closes the socket with 1009;
    the server's peak memory stays flat (the 15 MiB messages are refused from their frame header)."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    url = surfaces.server.url.replace("http://", "ws://", 1) + "/ws"

    async def one(size: int) -> Any:
        async with connect(url, max_size=None, write_limit=2**24) as ws:
            try:
                await ws.send(b"x" * size)
                return int(await ws.recv())
            except ConnectionClosed:
                return ws.close_code

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(one(size) for size in sizes))

    if surfaces.ws_baseline is None:  # the server's peak before the first message of the first example
        surfaces.ws_baseline = _peak_rss_mib(surfaces.server.proc.pid)
    results = asyncio.run(all_at_once())
    assert results == [size if size <= WS_LIMIT else 1009 for size in sizes]
    # Buffering even one 15 MiB message would raise the peak by more than that.
    assert _peak_rss_mib(surfaces.server.proc.pid) - surfaces.ws_baseline < 12


HOSTILE_TEXT = st.one_of(
    st.sampled_from(["\r\n<-- GET admin 200 (0.0001s)", "\n", "\x1b[2J", "\u2028", "\x00", "\x85"]),
    st.text(max_size=20),
)


@FUZZ
@given(
    path=HOSTILE_TEXT,
    header=HEADER_TEXT,
    field=st.sampled_from(["password", "api_key", "Token", "client-secret"]),
    text=HOSTILE_TEXT,
    as_form=st.booleans(),
)
def test_request_logs_cannot_be_forged_and_hide_secrets(
    surfaces: Surfaces, path: str, header: str, field: str, text: str, as_form: bool
) -> None:
    """Control characters anywhere a client writes end up escaped in the log (checked on the whole log when the
    module ends), and secret-looking fields of JSON and form bodies never appear in it."""
    payload = {"note": text, field: SECRET}
    options: dict[str, Any] = {"data": payload} if as_form else {"json": payload}
    response = surfaces.http.post("/echo/x" + quote(path, safe=""), headers={"X-Note": header}, **options)
    assert response.status_code in (200, 404, 422)

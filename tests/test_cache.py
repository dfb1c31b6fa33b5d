"""@cache: hits, expiry and single flight under concurrent requests over real HTTP; errors never cached; backend
failures degrade; the bounded in-memory backend; Redis and Memcached backends on real servers."""

import asyncio
import functools
import logging
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
import pytest
import redis
from pymemcache.client.base import Client as MemcacheClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from tachyon_api import (
    CacheConfig,
    HTTPException,
    InMemoryCacheBackend,
    MemcachedCacheBackend,
    Query,
    RedisCacheBackend,
    Tachyon,
    cache,
    create_cache_config,
    get_cache_config,
    set_cache_config,
)
from tachyon_api.cache import _default_key_builder

from .conftest import client_for, serve, wait_until


class Point(msgspec.Struct):
    x: int
    y: int


@pytest.fixture(autouse=True)
def fresh_config():
    """Every test starts from its own in-memory configuration; the previous one is restored after."""
    previous = get_cache_config()
    create_cache_config()
    yield
    set_cache_config(previous)


def _burst(url: str, n: int = 8) -> list:
    """``n`` concurrent GETs (one connection each); their JSON bodies."""
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=n)) as client, ThreadPoolExecutor(n) as pool:
        return [r.json() for r in pool.map(lambda _: client.get(url), range(n))]


class Arrivals:
    """ASGI middleware counting the requests that reached the app, per path: a test then knows that its
    concurrent requests are all in flight (not merely sent) before it lets the computation finish."""

    def __init__(self, app, seen: list):
        self.app = app
        self.seen = seen

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


def _gated_burst(url: str, path: str, seen: list, gate: threading.Event, n: int = 8) -> list:
    """``n`` concurrent GETs of ``path``, released (``gate``) only once all of them reached the app."""
    gate.clear()
    before = seen.count(path)
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=n)) as client, ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(client.get, url + path) for _ in range(n)]
        assert wait_until(lambda: seen.count(path) - before == n, 10)
        time.sleep(0.1)  # from the middleware to the cache lookup: no I/O, but give a loaded machine a moment
        gate.set()
        return [future.result() for future in futures]


def test_single_flight_hits_and_expiry_under_concurrent_requests():
    calls = {"sync": 0, "async": 0}
    seen: list = []
    gate = threading.Event()
    app = Tachyon()

    @app.get("/sync/{item}")
    @cache(TTL=1.5)
    def slow_sync(item: int):
        calls["sync"] += 1
        gate.wait(10)
        return {"item": item, "n": calls["sync"]}

    @app.get("/async/{item}")
    @cache(ttl=1.5)
    async def slow_async(item: int, q: str = Query("x")):
        calls["async"] += 1
        while not gate.is_set():
            await asyncio.sleep(0.005)
        return {"item": item, "q": q, "n": calls["async"]}

    app.add_middleware(Arrivals, seen=seen)
    with serve(app) as url:
        for kind in ("sync", "async"):
            first = [r.json() for r in _gated_burst(url, f"/{kind}/1", seen, gate)]
            assert calls[kind] == 1, kind  # eight concurrent misses computed once
            assert all(body == first[0] for body in first)
            assert httpx.get(f"{url}/{kind}/1").json() == first[0]  # a hit
            assert httpx.get(f"{url}/{kind}/2").json()["item"] == 2  # another key computes
            assert calls[kind] == 2
        time.sleep(1.6)
        for kind in ("sync", "async"):
            again = [r.json() for r in _gated_burst(url, f"/{kind}/1", seen, gate)]
            assert calls[kind] == 3  # expired: computed once more, by one of the eight
            assert all(body["n"] == 3 for body in again)
        assert httpx.get(f"{url}/async/1?q=other").json()["q"] == "other"


def test_errors_are_never_cached_and_reach_every_waiter():
    attempts = []
    seen: list = []
    gate = threading.Event()
    app = Tachyon()

    @app.get("/flaky")
    @cache(TTL=60)
    async def flaky():
        attempts.append(1)
        while not gate.is_set():
            await asyncio.sleep(0.005)
        if len(attempts) == 1:
            raise HTTPException(503, "warming up")
        return {"ok": len(attempts)}

    app.add_middleware(Arrivals, seen=seen)
    with serve(app) as url:
        responses = _gated_burst(url, "/flaky", seen, gate, 4)
        assert [r.status_code for r in responses] == [503] * 4 and len(attempts) == 1  # one flight, its error shared
        assert httpx.get(url + "/flaky").json() == {"ok": 2}
        assert httpx.get(url + "/flaky").json() == {"ok": 2}
    assert len(attempts) == 2


def test_sync_error_in_flight_is_not_cached():
    calls = []

    @cache(TTL=60)
    def divide(a: int, b: int) -> float:
        calls.append((a, b))
        return a / b

    with pytest.raises(ZeroDivisionError):
        divide(1, 0)
    with pytest.raises(ZeroDivisionError):
        divide(1, 0)
    assert divide(4, 2) == 2 and divide(4, 2) == 2
    assert calls == [(1, 0), (1, 0), (4, 2)]


def test_none_is_cached_key_builder_and_unless():
    calls = []

    @cache(
        TTL=60,
        key_builder=lambda func, args, kwargs: f"user:{kwargs['user_id']}",
        unless=lambda args, kwargs: kwargs.get("fresh", False),
    )
    def lookup(user_id: int, fresh: bool = False):
        calls.append(user_id)
        return None if user_id == 0 else {"id": user_id}

    assert lookup(user_id=0) is None and lookup(user_id=0) is None
    assert lookup(user_id=1) == {"id": 1} and lookup(user_id=1) == {"id": 1}
    assert lookup(user_id=1, fresh=True) == {"id": 1}
    assert calls == [0, 1, 1]
    assert get_cache_config().backend.get("user:1") == {"id": 1}


def _traced(func):
    """A user's sync decorator (functools.wraps) around an async function: calls return its coroutine."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def test_async_function_under_a_sync_decorator_over_http():
    calls = []
    app = Tachyon()

    @app.get("/price/{item}")
    @cache(TTL=60)
    @_traced
    async def price(item: int) -> dict:
        calls.append(item)
        return {"price": item * 2}

    with serve(app) as url:
        for _ in range(3):  # the result is cached, not the (single-use) coroutine
            response = httpx.get(url + "/price/4")
            assert (response.status_code, response.json()) == (200, {"price": 8})
    assert calls == [4]


def test_sync_function_returning_an_awaitable_is_refused():
    async def compute():
        return 1

    @cache(TTL=60)
    def hidden():  # no functools.wraps: nothing tells that it is async
        return compute()

    with pytest.raises(TypeError, match="returned an awaitable"):
        hidden()
    with pytest.raises(TypeError, match="returned an awaitable"):  # nothing was cached by the first call
        hidden()


def test_ttl_spelling_and_config():
    with pytest.raises(TypeError):
        cache(TTL=1, ttl=2)
    with pytest.raises(TypeError):
        set_cache_config("not a config")  # type: ignore[arg-type]
    calls = []

    @cache()
    def f(x):
        calls.append(x)
        return x

    backend = InMemoryCacheBackend()
    config = CacheConfig(backend=backend, default_ttl=30, enabled=False)
    Tachyon(cache_config=config)  # 1.3: the app's cache_config becomes the active one
    assert get_cache_config() is config
    f(1), f(1)
    assert calls == [1, 1]  # disabled
    config.enabled = True
    f(1), f(1)
    assert calls == [1, 1, 1]  # the configuration is read per call, not at decoration
    assert len(backend) == 1
    assert _default_key_builder(f, (1,), {}) != _default_key_builder(f, (2,), {})
    assert _default_key_builder(f, (), {"a": 1, "b": 2}) == _default_key_builder(f, (), {"b": 2, "a": 1})


def test_in_memory_backend_is_bounded_lru():
    backend = InMemoryCacheBackend(max_size=3)
    for key in "abc":
        backend.set(key, key.upper())
    assert backend.get("a") == "A"  # now the most recently used
    backend.set("d", "D")
    assert len(backend) == 3
    assert backend.get("b") is None  # least recently used, evicted
    assert [backend.get(k) for k in "acd"] == ["A", "C", "D"]
    backend.set("e", "E", ttl=0.05)
    time.sleep(0.06)
    assert backend.get("e") is None
    with pytest.raises(ValueError):
        InMemoryCacheBackend(max_size=0)

    own = InMemoryCacheBackend(max_size=100)  # empty, so falsy: still the one used

    @cache(TTL=60, backend=own)
    def square(x: int) -> int:
        return x * x

    for x in range(1000):
        square(x)
    assert len(own) == 100
    assert len(get_cache_config().backend) == 0
    assert create_cache_config(backend=own).backend is own


def test_backend_failure_degrades_with_a_warning(caplog):
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    calls = []
    app = Tachyon()

    @app.get("/sync")
    @cache(TTL=60, backend=RedisCacheBackend(dead))
    def sync_endpoint():
        calls.append("sync")
        return {"ok": True}

    @app.get("/async")
    @cache(TTL=60, backend=RedisCacheBackend(dead))
    async def async_endpoint():
        calls.append("async")
        return {"ok": True}

    caplog.set_level(logging.WARNING, logger="tachyon_api.cache")
    client = client_for(app)
    for path in ("/sync", "/async"):
        assert client.get(path).json() == {"ok": True}
        assert client.get(path).json() == {"ok": True}
    assert calls == ["sync", "sync", "async", "async"]
    warnings = [r for r in caplog.records if r.name == "tachyon_api.cache"]
    assert any("on get" in r.getMessage() for r in warnings)
    assert any("on set" in r.getMessage() for r in warnings)
    assert all(r.exc_info for r in warnings)


def test_redis_backend_on_a_real_server(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.set("someone-else", b"keep me")
    backend = RedisCacheBackend(client)
    backend.set("p", Point(1, 2), ttl=60)
    assert backend.get("p") == Point(1, 2)
    assert client.pttl("tachyon:cache:p") > 59_000
    backend.set("short", "v", ttl=0.3)  # under a second: milliseconds, not "no expiry"
    assert backend.get("short") == "v"
    assert wait_until(lambda: backend.get("short") is None, 3)
    backend.set("forever", 1)
    assert client.ttl("tachyon:cache:forever") == -1
    backend.delete("p")
    assert backend.get("p") is None
    for i in range(1200):
        backend.set(f"k{i}", i)
    backend.clear()
    assert client.keys("tachyon:cache:*") == []
    assert client.get("someone-else") == b"keep me"  # clear() is not FLUSHDB

    calls = []
    app = Tachyon(cache_config=CacheConfig(backend=backend, default_ttl=60))

    @app.get("/points/{x}")
    @cache()
    async def point(x: int):
        calls.append(x)
        return Point(x, x * 2)

    with serve(app) as url:
        assert _burst(f"{url}/points/3", 4) == [{"x": 3, "y": 6}] * 4
        assert httpx.get(f"{url}/points/3").json() == {"x": 3, "y": 6}
    assert calls == [3]
    assert len(client.keys("tachyon:cache:*")) == 1


def test_memcached_backend_on_a_real_server(memcached_address):
    client = MemcacheClient(memcached_address, connect_timeout=2, timeout=2)
    backend = MemcachedCacheBackend(client)
    backend.set("p", Point(3, 4), ttl=60)
    assert backend.get("p") == Point(3, 4)
    long_key = "k" * 300 + " with spaces"
    backend.set(long_key, [1, 2])
    assert backend.get(long_key) == [1, 2]
    # Non-ASCII keys (memcached's protocol is ASCII) and keys over 250 bytes though fewer characters are hashed;
    # a 250-byte ASCII key is stored as it is.
    for key, value in (("user:josé", 1), ("user:josè", 2), ("é" * 200, 3), ("a" * 250, 4)):
        backend.set(key, value)
    assert [backend.get(k) for k in ("user:josé", "user:josè", "é" * 200, "a" * 250)] == [1, 2, 3, 4]
    assert pickle.loads(client.get("a" * 250)) == 4
    backend.set("short", "v", ttl=0.2)  # rounded up to one second, never 0 (= no expiry)
    assert backend.get("short") == "v"
    assert wait_until(lambda: backend.get("short") is None, 4)
    backend.set("far", "v", ttl=40 * 24 * 3600)  # past 30 days memcached wants a timestamp
    assert backend.get("far") == "v"
    backend.delete("p")
    assert backend.get("p") is None
    backend.clear()
    assert backend.get(long_key) is None

    calls = []
    lock = threading.Lock()
    app = Tachyon()

    @app.get("/slow")
    @cache(TTL=30, backend=backend)
    def slow():
        with lock:
            calls.append(1)
        time.sleep(0.2)
        return {"calls": len(calls)}

    names = []

    @app.get("/hello")
    @cache(TTL=30, backend=backend, key_builder=lambda f, args, kwargs: f"user:{kwargs['name']}")
    def hello(name: str = Query()):
        names.append(name)
        return {"hello": name}

    with serve(app) as url:
        assert _burst(f"{url}/slow", 6) == [{"calls": 1}] * 6
        for _ in range(2):
            assert httpx.get(f"{url}/hello", params={"name": "josé"}).json() == {"hello": "josé"}
    assert len(calls) == 1
    assert names == ["josé"]  # cached under its hashed key (an unhashed one failed: computed on every call)


def test_memcached_backend_shares_one_socket_client_between_threads(memcached_address):
    """pymemcache's base Client is one socket: without the backend's lock, threads calling at once read each
    other's replies (a wrong value) or break the socket. Each thread reads back only its own values."""
    client = MemcacheClient(memcached_address, connect_timeout=2, timeout=2, no_delay=True)
    backend = MemcachedCacheBackend(client)
    wrong: list[tuple[str, object]] = []

    def hammer(thread: int) -> None:
        for i in range(50):
            key = f"t{thread}:{i}"
            try:
                backend.set(key, key, ttl=60)
                found = backend.get(key)
            except Exception as exc:  # a broken socket: as wrong as a crossed reply
                found = exc
            if found != key:
                wrong.append((key, found))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert wrong == [] and not any(thread.is_alive() for thread in threads)


# --- keys never built from an identity; only complete, successful answers cached -----------------------------
class Account:
    """A dependency's value without a ``__repr__``: its default ``repr`` is its memory address."""

    def __init__(self, name: str) -> None:
        self.name = name


class Member(msgspec.Struct):
    """A dependency's value with a ``repr`` of its own (its fields): the key of the documented kind."""

    name: str


def _two_users_app(calls: dict) -> Tachyon:
    from tachyon_api import Depends, Header
    from tachyon_api.requests import Request

    app = Tachyon()

    def account(x_user: str = Header()) -> Account:
        return Account(x_user)

    def member(x_user: str = Header()) -> Member:
        return Member(x_user)

    @app.get("/request")
    @cache(ttl=60)
    async def by_request(request: Request):
        calls["request"] = calls.get("request", 0) + 1
        return {"user": request.headers["x-user"]}

    @app.get("/account")
    @cache(ttl=60)
    def by_account(user: Account = Depends(account)):
        calls["account"] = calls.get("account", 0) + 1
        return {"user": user.name}

    @app.get("/member")
    @cache(ttl=60)
    async def by_member(user: Member = Depends(member)):
        calls["member"] = calls.get("member", 0) + 1
        return {"user": user.name}

    return app


def test_two_users_never_get_each_others_cached_answer_over_http(caplog):
    """1,000 requests from two users over real HTTP, 50 at a time (200 on the other endpoints): every answer is the
    requesting user's. A Request or an object without ``__repr__`` is never part of a key (every call computes,
    with one warning per function); a dependency value with its own ``repr`` is keyed by it (one computation
    per user)."""
    calls: dict = {}
    caplog.set_level(logging.WARNING, logger="tachyon_api.cache")

    async def hammer(url: str, path: str, n: int) -> int:
        crossed = 0
        async with httpx.AsyncClient(base_url=url, timeout=20, limits=httpx.Limits(max_connections=20)) as client:
            for start in range(0, n, 50):
                users = ["ada" if (start + i) % 2 else "bob" for i in range(50)]
                answers = await asyncio.gather(*(client.get(path, headers={"X-User": u}) for u in users))
                crossed += sum(a.json() != {"user": u} for a, u in zip(answers, users, strict=True))
        return crossed

    with serve(_two_users_app(calls)) as url:
        for path, n in (("/request", 1000), ("/account", 200), ("/member", 200)):
            assert asyncio.run(hammer(url, path, n)) == 0, path
    assert calls["request"] == 1000 and calls["account"] == 200  # a miss every time, never a wrong hit
    assert calls["member"] == 2  # keyed by the value's own repr: one entry per user
    warnings = [r.getMessage() for r in caplog.records if r.name == "tachyon_api.cache"]
    assert len(warnings) == 2
    assert "by_request" in warnings[0] and "'request'" in warnings[0] and "key_builder" in warnings[0]
    assert "by_account" in warnings[1] and "'user'" in warnings[1]


def test_the_default_key_refuses_identities_and_keys_values():
    from tachyon_api.cache import UncacheableArgument
    from tachyon_api.requests import Request

    def f(*args, **kwargs):
        return None

    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""})
    for value in (request, Account("ada"), [Account("ada")], {"k": object()}, f):
        with pytest.raises(UncacheableArgument):
            _default_key_builder(f, (), {"value": value})
    assert _default_key_builder(f, (Member("ada"),), {}) == _default_key_builder(f, (Member("ada"),), {})
    assert _default_key_builder(f, (Member("ada"),), {}) != _default_key_builder(f, (Member("bob"),), {})


def test_error_responses_and_streams_are_never_cached_over_http():
    """A returned error response is not kept for the TTL; a streaming response (its iterator can be sent once)
    is never cached: each request gets the whole body. Successful plain responses are cached as before."""
    from tachyon_api.responses import JSONResponse, StreamingResponse

    app = Tachyon()
    state = {"up": False, "errors": 0, "streams": 0, "ok": 0}

    @app.get("/upstream")
    @cache(ttl=60)
    async def upstream():
        if not state["up"]:
            state["errors"] += 1
            return JSONResponse({"error": "upstream down"}, status_code=503)
        return JSONResponse({"rate": 1.08})

    @app.get("/stream")
    @cache(ttl=60)
    def stream():
        state["streams"] += 1
        return StreamingResponse(iter([b"part1;", b"part2"]), media_type="text/plain")

    @app.get("/ok")
    @cache(ttl=60)
    def ok():
        state["ok"] += 1
        return JSONResponse({"ok": True}, headers={"X-Once": "1"})

    with serve(app) as url:
        assert [httpx.get(url + "/upstream").status_code for _ in range(3)] == [503, 503, 503]
        assert state["errors"] == 3
        state["up"] = True
        assert httpx.get(url + "/upstream").json() == {"rate": 1.08}  # the 503 was not served from the cache
        state["up"] = False
        assert httpx.get(url + "/upstream").json() == {"rate": 1.08}  # the 200 was
        assert [httpx.get(url + "/stream").text for _ in range(3)] == ["part1;part2"] * 3
        assert state["streams"] == 3
        for _ in range(3):
            response = httpx.get(url + "/ok")
            assert response.json() == {"ok": True} and response.headers["x-once"] == "1"
        assert state["ok"] == 1
        # Concurrent misses of a stream: each waiter computes its own instead of sharing the consumed one.
        state["streams"] = 0
        with httpx.Client(timeout=10) as client, ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _: client.get(url + "/stream").text, range(8)))
        assert bodies == ["part1;part2"] * 8

"""``@cache``: remember what a function (an endpoint, or any sync or async function) returned for its arguments,
for a time-to-live, in a pluggable backend: in memory (bounded, least recently used evicted), Redis or Memcached.

What it guarantees beyond tachyon-api 1.3, whose API it keeps:

- **Single flight**: concurrent calls that miss on the same key compute once; the others wait for that result.
- **Errors are never cached**: an exception (``HTTPException`` included) reaches the callers of that flight
  and the next call computes again; so does a returned error response (status outside 2xx, or 206). A
  streaming response is never cached nor shared: each caller gets its own.
- **A key is never built from an identity**: an argument whose ``repr`` shows a memory address (a ``Request``,
  an object without a ``__repr__``) would match another object later allocated at the same address, so the
  default key builder refuses it and the call is a miss (with a warning once per function).
- **A backend failure never fails the call**: it is logged as a warning (``tachyon_api.cache``, with the
  traceback) and the function is called as if there were no cache.
- ``None`` is cached like any other value; the in-memory backend cannot grow without bound; Redis and
  Memcached store pickled values under their own keys (``clear`` never empties a whole Redis database).
- Async callers never block the event loop on a network backend: its calls run in a worker thread.

The configuration (backend, default TTL, key builder, enabled) is read from :func:`get_cache_config` at call
time, so ``set_cache_config`` (or ``Tachyon(cache_config=...)``) also applies to functions decorated before it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import inspect
import logging
import math
import pickle
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._utils import is_starlette_class
from .concurrency import run_in_threadpool
from .requests import HTTPConnection
from .responses import Response, StreamingResponse, is_foreign_response

__all__ = [
    "cache",
    "CacheConfig",
    "create_cache_config",
    "set_cache_config",
    "get_cache_config",
    "BaseCacheBackend",
    "InMemoryCacheBackend",
    "RedisCacheBackend",
    "MemcachedCacheBackend",
]

logger = logging.getLogger("tachyon_api.cache")

F = TypeVar("F", bound=Callable[..., Any])
KeyBuilder = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], str]
Unless = Callable[[tuple[Any, ...], dict[str, Any]], bool]


# --- backends ---------------------------------------------------------------------------------------------
class BaseCacheBackend:
    """What a backend implements: ``get`` (None when absent), ``set`` with a TTL in seconds (None or <= 0:
    no expiry), ``delete`` and ``clear``. ``blocking`` says whether its calls do I/O, in which case async
    callers run them in a worker thread."""

    blocking = True

    def get(self, key: str) -> Any:
        raise NotImplementedError

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError


class InMemoryCacheBackend(BaseCacheBackend):
    """A dict in this process, bounded to ``max_size`` entries: the least recently used is evicted first.

    Expiry uses a monotonic clock; expired entries are dropped when read or evicted. Thread-safe (sync
    endpoints run in threads). Values are kept as they are, not copied: do not mutate what you cache.
    """

    blocking = False

    def __init__(self, max_size: int = 10_000) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._store: OrderedDict[str, tuple[float | None, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._store.get(key)
            if item is None:
                return None
            expires, value = item
            if expires is not None and time.monotonic() >= expires:
                del self._store[key]
                return None
            self._store.move_to_end(key)
            return value

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        expires = time.monotonic() + ttl if ttl and ttl > 0 else None
        with self._lock:
            self._store[key] = (expires, value)
            self._store.move_to_end(key)
            while len(self._store) > self.max_size:
                self._store.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._store.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def _decodes_responses(client: Any) -> bool:
    """Whether a redis-py client turns replies into ``str`` (``decode_responses=True``)."""
    get_encoder = getattr(client, "get_encoder", None)
    if callable(get_encoder):
        return bool(getattr(get_encoder(), "decode_responses", False))
    pool = getattr(client, "connection_pool", None)
    return bool(getattr(pool, "connection_kwargs", {}).get("decode_responses", False))


class RedisCacheBackend(BaseCacheBackend):
    """Redis through a redis-py client (``redis.Redis.from_url(url)``). Values are pickled, so any picklable
    return value round-trips (Structs included); point it only at a Redis you trust, as with any pickle cache.
    Keys are stored under ``prefix``, and ``clear`` deletes those keys only.

    A client made with ``decode_responses=True`` (a common setting, which would turn the pickled bytes into
    text and fail every read) works too: its values are stored as base64 text of the pickle.
    """

    def __init__(self, client: Any, prefix: str = "tachyon:cache:") -> None:
        self.client = client
        self.prefix = prefix
        self._as_text = _decodes_responses(client)

    def get(self, key: str) -> Any:
        raw = self.client.get(self.prefix + key)
        if raw is None:
            return None
        return pickle.loads(base64.b64decode(raw) if isinstance(raw, str) else raw)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        # Milliseconds, at least 1: a TTL under a second must not become "no expiry" or an error.
        expiry = {"px": max(1, int(ttl * 1000))} if ttl and ttl > 0 else {}
        raw = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        data: bytes | str = base64.b64encode(raw).decode("ascii") if self._as_text else raw
        self.client.set(self.prefix + key, data, **expiry)

    def delete(self, key: str) -> None:
        self.client.delete(self.prefix + key)

    def clear(self) -> None:
        batch = []
        for key in self.client.scan_iter(match=self.prefix + "*", count=500):
            batch.append(key)
            if len(batch) == 500:
                self.client.delete(*batch)
                batch = []
        if batch:
            self.client.delete(*batch)


class MemcachedCacheBackend(BaseCacheBackend):
    """Memcached through a pymemcache client (``pymemcache.client.base.Client(("127.0.0.1", 11211))``), or any
    client with the same ``get``/``set``/``delete``/``flush_all``: python-memcached and python-binary-memcached
    name the expiry ``time=`` rather than ``expire=``, and the backend switches to it when a client refuses
    ``expire=``, as tachyon-api 1.3 did. Values are pickled. Keys that memcached would refuse (non-ASCII, over
    250 bytes, spaces, control characters) are hashed. ``clear`` flushes the whole server: memcached cannot
    list keys.

    Cached functions call the backend from several threads at once (sync endpoints, and the thread an async one
    hands the network call to). pymemcache's ``base.Client`` is one socket and not thread-safe: two threads'
    replies cross (one reads the other's value) or the socket breaks. So calls through such a client take a lock;
    pass a ``pymemcache.client.base.PooledClient`` (a connection per concurrent caller) to run them at once."""

    MAX_RELATIVE_EXPIRY = 30 * 24 * 3600  # memcached reads larger expiry values as a Unix timestamp

    def __init__(self, client: Any) -> None:
        self.client = client
        self._expiry_keyword = "expire"  # becomes "time" for the clients that name it so
        self._lock = threading.Lock() if _single_socket(client) else contextlib.nullcontext()

    @staticmethod
    def _key(key: str) -> str:
        """``key`` itself when memcached's text protocol takes it (ASCII, at most 250 bytes, no space or
        control character), else a fixed-length hash of it: a refused key would make every call a miss."""
        if key.isascii() and len(key) <= 250 and key.isprintable() and " " not in key:
            return key
        return "h:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str) -> Any:
        with self._lock:
            raw = self.client.get(self._key(key))
        return None if raw is None else pickle.loads(raw)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        expire = 0  # no expiry
        if ttl and ttl > 0:
            expire = math.ceil(ttl)
            if expire > self.MAX_RELATIVE_EXPIRY:
                expire = int(time.time()) + expire
        key, data = self._key(key), pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        with self._lock:
            try:
                self.client.set(key, data, **{self._expiry_keyword: expire})
            except TypeError as exc:
                if self._expiry_keyword != "expire" or "expire" not in str(exc):
                    raise
                self._expiry_keyword = "time"
                self.client.set(key, data, time=expire)

    def delete(self, key: str) -> None:
        with self._lock:
            self.client.delete(self._key(key))

    def clear(self) -> None:
        with self._lock:
            self.client.flush_all()


def _single_socket(client: Any) -> bool:
    """Whether ``client`` is pymemcache's one-socket ``base.Client`` (not its pooled or hashing clients, nor
    python-memcached's, whose connections are per thread)."""
    try:
        from pymemcache.client.base import Client  # type: ignore[import-untyped]  # pymemcache ships no types
    except ImportError:  # then the client is another library's
        return False
    return type(client) is Client


# --- configuration ----------------------------------------------------------------------------------------
@dataclass
class CacheConfig:
    """The process-wide defaults of ``@cache``: backend, TTL in seconds, key builder, and a master switch."""

    backend: BaseCacheBackend
    default_ttl: float = 60.0
    key_builder: KeyBuilder | None = None
    enabled: bool = True


_config: CacheConfig | None = None


def create_cache_config(
    backend: BaseCacheBackend | None = None,
    default_ttl: float = 60.0,
    key_builder: KeyBuilder | None = None,
    enabled: bool = True,
) -> CacheConfig:
    """Create a configuration (an in-memory backend by default) **and make it the active one**, as in 1.3."""
    config = CacheConfig(InMemoryCacheBackend() if backend is None else backend, default_ttl, key_builder, enabled)
    set_cache_config(config)
    return config


def set_cache_config(config: CacheConfig) -> None:
    """Make ``config`` the active configuration of every ``@cache`` in the process."""
    global _config
    if not isinstance(config, CacheConfig):
        raise TypeError(f"Expected a CacheConfig, got {type(config).__name__}")
    _config = config


def get_cache_config() -> CacheConfig:
    """The active configuration; an in-memory one with a 60 s TTL is created on first use."""
    return _config if _config is not None else create_cache_config()


class UncacheableArgument(TypeError):
    """Raised by :func:`_default_key_builder` for an argument that has no value to key on; the call is then
    a miss."""

    def __init__(self, name: str, value: Any) -> None:
        super().__init__(f"argument {name!r} ({type(value).__name__}) has no value to key on")
        self.name = name


# How Python writes an object's identity: ``<Foo object at 0x7f...>``, ``<function f at 0x...>``. A key holding
# one would match another object allocated later at the same address: another user's request.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _key_part(name: str, value: Any) -> str:
    # Starlette's Request and WebSocket too (whose ``repr`` is not needed to refuse them).
    if isinstance(value, HTTPConnection) or is_starlette_class(type(value), "HTTPConnection"):
        raise UncacheableArgument(name, value)
    text = repr(value)
    if _ADDRESS.search(text):
        raise UncacheableArgument(name, value)
    return text


def _default_key_builder(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """sha256 of the function's module and qualified name and the ``repr`` of its arguments.

    An argument that has no value of its own to key on raises :class:`UncacheableArgument` (the call is then a
    miss): a request or WebSocket, and any object whose ``repr`` shows its memory address (objects without a
    ``__repr__``), since that address is reused by later objects. Give such functions a ``key_builder``.
    """
    parts = [getattr(func, "__module__", ""), getattr(func, "__qualname__", "")]
    parts.extend(_key_part(str(index), value) for index, value in enumerate(args))
    parts.extend(f"{name}={_key_part(name, value)}" for name, value in sorted(kwargs.items()))
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


# What a call's result may become: stored (and shared with the calls waiting for it), shared only (an error
# response: like an exception, the waiters get it, the next call computes again), or neither (a streaming
# response can be sent once: every waiter computes its own).
STORE, SHARE, ALONE = range(3)


def _verdict(value: Any) -> int:
    if isinstance(value, StreamingResponse) or (is_foreign_response(value) and hasattr(value, "body_iterator")):
        return ALONE
    if isinstance(value, Response) or is_foreign_response(value):
        status = value.status_code
        return STORE if 200 <= status < 300 and status != 206 else SHARE
    return STORE


# --- the decorator ----------------------------------------------------------------------------------------
class _CachedNone:
    """Stands for a cached ``None`` (a backend's ``get`` returns None for "absent")."""


_MISS = object()
_ALONE = object()  # a flight's result that its waiters cannot share: each computes its own


def _warn(operation: str, func: Callable[..., Any], exc: BaseException) -> None:
    logger.warning(
        "Cache backend failed on %s for %s; calling it without the cache", operation, func.__qualname__, exc_info=exc
    )


def _read(hit: Any) -> Any:
    if hit is None:
        return _MISS
    return None if isinstance(hit, _CachedNone) else hit


def cache(
    TTL: float | None = None,  # noqa: N803 (the existing framework's parameter name)
    *,
    ttl: float | None = None,
    key_builder: KeyBuilder | None = None,
    unless: Unless | None = None,
    backend: BaseCacheBackend | None = None,
) -> Callable[[F], F]:
    """Cache a sync or async function's results for ``TTL`` (or ``ttl``) seconds, default the config's.

    ``key_builder(func, args, kwargs) -> str`` replaces the default key (see :func:`_default_key_builder` for
    the arguments it refuses); ``unless(args, kwargs) -> bool``
    bypasses the cache for a call; ``backend`` replaces the config's backend for this function. On an
    endpoint, put ``@cache`` below the route decorator: the route then serves the cached function.
    """
    if TTL is not None and ttl is not None:
        raise TypeError("Give the time-to-live as TTL or as ttl, not both")
    chosen_ttl = TTL if TTL is not None else ttl

    def decorator(func: F) -> F:
        warned: set[str] = set()

        def settings(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[BaseCacheBackend, str, float] | None:
            """The backend, key and TTL of this call; None to bypass the cache."""
            config = get_cache_config()
            if not config.enabled or (unless is not None and unless(args, kwargs)):
                return None
            build = key_builder or config.key_builder or _default_key_builder
            try:
                key = build(func, args, kwargs)
            except UncacheableArgument as exc:
                if exc.name not in warned:
                    warned.add(exc.name)
                    logger.warning(
                        "@cache on %s: %s, so every call is a miss; give @cache a key_builder= that keys on what "
                        "the answer depends on",
                        func.__qualname__,
                        exc,
                    )
                return None
            return (
                config.backend if backend is None else backend,
                key,
                (config.default_ttl if chosen_ttl is None else chosen_ttl),
            )

        # unwrap: an async function under a sync decorator (functools.wraps) still returns a coroutine,
        # which the sync path would cache and hand out again, already awaited.
        if inspect.iscoroutinefunction(inspect.unwrap(func)):
            flights: dict[tuple[Any, str], asyncio.Future[Any]] = {}

            async def call(store: BaseCacheBackend, method: str, *args: Any) -> Any:
                operation = getattr(store, method)
                return await run_in_threadpool(operation, *args) if store.blocking else operation(*args)

            async def lookup(store: BaseCacheBackend, key: str) -> Any:
                try:
                    return _read(await call(store, "get", key))
                except Exception as exc:
                    _warn("get", func, exc)
                    return _MISS

            async def compute(
                store: BaseCacheBackend, key: str, seconds: float, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> tuple[Any, int]:
                found = await lookup(store, key)  # filled by a flight that ended since our first look
                if found is not _MISS:
                    return found, STORE
                value = await func(*args, **kwargs)
                verdict = _verdict(value)
                if verdict == STORE:
                    try:
                        await call(store, "set", key, _CachedNone() if value is None else value, seconds)
                    except Exception as exc:
                        _warn("set", func, exc)
                return value, verdict

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                chosen = settings(args, kwargs)
                if chosen is None:
                    return await func(*args, **kwargs)
                store, key, seconds = chosen
                found = await lookup(store, key)
                if found is not _MISS:
                    return found
                flight_key = (asyncio.get_running_loop(), key)
                while (flight := flights.get(flight_key)) is not None:
                    await asyncio.wait({flight})
                    if not flight.cancelled():  # a cancelled leader: the waiters compute again
                        shared = flight.result()
                        return await func(*args, **kwargs) if shared is _ALONE else shared
                flight = flights[flight_key] = flight_key[0].create_future()
                try:
                    value, verdict = await compute(store, key, seconds, args, kwargs)
                except Exception as exc:
                    flight.set_exception(exc)
                    flight.exception()  # the waiters raise it; nobody else has to retrieve it
                    raise
                except BaseException:
                    flight.cancel()
                    raise
                else:
                    flight.set_result(_ALONE if verdict == ALONE else value)
                    return value
                finally:
                    del flights[flight_key]

            return async_wrapper  # type: ignore[return-value]

        lock = threading.Lock()
        sync_flights: dict[str, _Flight] = {}

        def sync_lookup(store: BaseCacheBackend, key: str) -> Any:
            try:
                return _read(store.get(key))
            except Exception as exc:
                _warn("get", func, exc)
                return _MISS

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen = settings(args, kwargs)
            if chosen is None:
                return func(*args, **kwargs)
            store, key, seconds = chosen
            found = sync_lookup(store, key)
            if found is not _MISS:
                return found
            with lock:
                running = sync_flights.get(key)
                if running is None:
                    flight = sync_flights[key] = _Flight()
            if running is not None:
                shared = running.wait()
                return func(*args, **kwargs) if shared is _ALONE else shared
            verdict = STORE
            try:
                found = sync_lookup(store, key)
                if found is not _MISS:
                    value = found
                else:
                    value = func(*args, **kwargs)
                    if inspect.isawaitable(value):
                        if inspect.iscoroutine(value):
                            value.close()  # never awaited: no "was never awaited" warning on top of ours
                        raise TypeError(
                            f"@cache: {func.__qualname__} returned an awaitable, whose result cannot be cached "
                            "from a sync function; make the function (or its decorator) async"
                        )
                    verdict = _verdict(value)
                    if verdict == STORE:
                        try:
                            store.set(key, _CachedNone() if value is None else value, seconds)
                        except Exception as exc:
                            _warn("set", func, exc)
            except BaseException as exc:
                flight.error = exc
                raise
            else:
                flight.value = _ALONE if verdict == ALONE else value
                return value
            finally:
                with lock:
                    del sync_flights[key]
                flight.done.set()

        return wrapper  # type: ignore[return-value]

    return decorator


class _Flight:
    """One computation in progress in a thread, that other threads wanting the same key wait for."""

    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def wait(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value

"""Hand-written ASGI app: the ceiling for the benchmark.

Implements the same routes and responses as tachyon_app.py / fastapi_app.py
without any framework: a dict/prefix dispatch, msgspec for JSON decoding
(with typed Structs, so the bodies are validated like in the frameworks) and
encoding, and a hand-written query-string parser.

Background tasks (documented in bench/README.md): the response is sent
first, then, still inside the same ASGI call,
  * /task-sync  runs the cheap sync function inline,
  * /task-async awaits the cheap coroutine,
  * /task-slow  awaits loop.run_in_executor(None, slow_task), so the 50 ms
    sleep happens in the default thread pool and the event loop stays free.
"""

import asyncio
import collections
import threading
import time
from urllib.parse import unquote_plus

import msgspec


class Item(msgspec.Struct):
    name: str
    price: float
    in_stock: bool = True


class OrderLine(msgspec.Struct):
    item_id: int
    qty: int


class Order(msgspec.Struct):
    customer: str
    lines: list[OrderLine]


class UserOut(msgspec.Struct):
    id: int
    username: str
    email: str


class Database:
    def query(self, id: int):
        return {"id": id, "source": "db"}


_db = Database()
_item_decoder = msgspec.json.Decoder(Item)
_order_decoder = msgspec.json.Decoder(Order)
_encode = msgspec.json.Encoder().encode

_JSON_HEADERS = [(b"content-type", b"application/json")]


def _start(status: int, body: bytes):
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())],
    }


async def _send_json(send, obj, status: int = 200) -> None:
    body = _encode(obj)
    await send(_start(status, body))
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _parse_qs(raw: bytes) -> dict:
    out = {}
    if not raw:
        return out
    for part in raw.decode("latin-1").split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        out[key] = value
    return out


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _to_bool(value: str) -> bool:
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(value)


_HELLO = _encode({"message": "Hello, World!"})
_OK = _encode({"ok": True})
_PONG = _encode({"pong": True})
_NOT_FOUND = _encode({"detail": "Not Found"})

_log = collections.deque(maxlen=1024)
_stats = {"sync": 0, "async": 0, "slow_added": 0, "slow_done": 0}
_slow_lock = threading.Lock()


def record_sync(value: int) -> None:
    _log.append(value)
    _stats["sync"] += 1


async def record_async(value: int) -> None:
    _log.append(value)
    _stats["async"] += 1


def slow_task() -> None:
    time.sleep(0.05)
    with _slow_lock:
        _stats["slow_done"] += 1


async def _send_bytes(send, body: bytes, status: int = 200) -> None:
    await send(_start(status, body))
    await send({"type": "http.response.body", "body": body})


async def _unprocessable(send, msg: str) -> None:
    await _send_json(send, {"detail": msg}, 422)


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return

    method = scope["method"]
    path = scope["path"]

    if method == "GET":
        if path == "/hello" or path == "/hello-async":
            return await _send_bytes(send, _HELLO)
        if path == "/ping":
            return await _send_bytes(send, _PONG)
        if path == "/block":  # the blocking neighbour: 50 ms in the default executor
            await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.05)
            return await _send_bytes(send, _OK)
        if path == "/search":
            qs = _parse_qs(scope["query_string"])
            if "q" not in qs:
                return await _unprocessable(send, "missing q")
            try:
                page = int(qs.get("page", 1))
                size = int(qs.get("size", 20))
                active = _to_bool(qs["active"]) if "active" in qs else True
            except ValueError:
                return await _unprocessable(send, "bad query")
            return await _send_json(
                send,
                {"q": qs["q"], "page": page, "size": size, "active": active, "tags": []},
            )
        if path == "/auth":
            key = None
            for name, value in scope["headers"]:
                if name == b"x-api-key":
                    key = value.decode("latin-1")
                    break
            if key is None:
                return await _unprocessable(send, "missing x-api-key")
            if key != "secret":
                return await _send_json(send, {"detail": "Forbidden"}, 403)
            return await _send_json(send, {"authenticated": True})
        if path.startswith("/items/"):
            try:
                item_id = int(path[7:])
                qs = _parse_qs(scope["query_string"])
                q: str | None = qs.get("q")
                limit = int(qs.get("limit", 10))
            except ValueError:
                return await _unprocessable(send, "bad parameter")
            return await _send_json(send, {"item_id": item_id, "q": q, "limit": limit})
        if path.startswith("/users/"):
            rest = path[7:]
            profile = rest.endswith("/profile")
            if profile:
                rest = rest[:-8]
            try:
                user_id = int(rest)
            except ValueError:
                return await _unprocessable(send, "bad user_id")
            if profile:
                return await _send_json(send, _db.query(user_id))
            return await _send_json(
                send,
                UserOut(
                    id=user_id,
                    username=f"user_{user_id}",
                    email=f"user_{user_id}@example.com",
                ),
            )
        if path == "/stats":
            return await _send_json(send, _stats)
    elif method == "POST":
        if path == "/items":
            try:
                item = _item_decoder.decode(await _read_body(receive))
            except msgspec.ValidationError as exc:
                return await _unprocessable(send, str(exc))
            except msgspec.DecodeError as exc:
                return await _unprocessable(send, str(exc))
            return await _send_json(send, {"created": item.name, "price": item.price})
        if path == "/orders":
            try:
                order = _order_decoder.decode(await _read_body(receive))
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                return await _unprocessable(send, str(exc))
            return await _send_json(
                send,
                {"customer": order.customer, "total_items": sum(line.qty for line in order.lines)},
            )
        if path == "/notask":
            return await _send_bytes(send, _OK)
        if path == "/task-sync":
            await _send_bytes(send, _OK)
            record_sync(1)
            return
        if path == "/task-async":
            await _send_bytes(send, _OK)
            await record_async(1)
            return
        if path == "/task-slow":
            with _slow_lock:
                _stats["slow_added"] += 1
            await _send_bytes(send, _OK)
            await asyncio.get_running_loop().run_in_executor(None, slow_task)
            return

    await _send_bytes(send, _NOT_FOUND, 404)

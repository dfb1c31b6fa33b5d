"""WebSockets: the ``WebSocket`` a handler talks through, its errors, and the app's list of open sockets.

The API is Starlette's (``accept``, ``receive_text``, ``send_json``, ``iter_text``, ``close``, the two states),
so handlers written for Starlette or for tachyon-api 1.3 run unchanged. Three things are ours:

- a message larger than the app's ``websocket_max_size`` closes the socket with 1009 (message too big) and
  the handler sees :class:`WebSocketDisconnect` with that code;
- a message of the wrong kind (bytes for ``receive_text``, invalid JSON) closes with 1003 / 1007 instead of
  crashing the handler with a ``KeyError`` and a 1011;
- :class:`OpenSockets` lets the app close every open socket with 1001 (going away) at shutdown, before the
  server drops them, and cancel the handlers that do not stop within ``shutdown_timeout``.

The routes and the handler runner live in ``routing.py``, like HTTP routes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec

from ._utils import is_starlette_class
from .requests import HTTPConnection
from .responses import send_any

__all__ = ["WebSocket", "WebSocketDisconnect", "WebSocketException", "WebSocketState", "WebSocketClose"]

logger = logging.getLogger("tachyon_api.websockets")

try:  # Code written for Starlette or tachyon-api 1.3 catches Starlette's class: ours must be one of them.
    from starlette.websockets import WebSocketDisconnect as _ForeignDisconnect
except ImportError:  # pragma: no cover - Starlette is optional
    _ForeignDisconnect = Exception  # type: ignore[assignment,misc]

_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.decode


class WebSocketState(enum.Enum):
    CONNECTING = 0
    CONNECTED = 1
    DISCONNECTED = 2
    RESPONSE = 3


CONNECTING = WebSocketState.CONNECTING
CONNECTED = WebSocketState.CONNECTED
DISCONNECTED = WebSocketState.DISCONNECTED
RESPONSE = WebSocketState.RESPONSE


class WebSocketDisconnect(_ForeignDisconnect):
    """The connection is over: the client closed it (``code`` is its close code), vanished (1006), the app
    closed it for the handler (1009 message too big, 1001 server going away).

    A subclass of Starlette's ``WebSocketDisconnect`` when Starlette is installed, so ``except`` clauses
    written for Starlette catch it too.
    """

    def __init__(self, code: int = 1000, reason: str | None = None) -> None:
        Exception.__init__(self, code, reason or "")
        self.code = code
        self.reason = reason or ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, reason={self.reason!r})"


class WebSocketException(Exception):
    """Raise it in a handler or dependency to close the socket on purpose with ``code`` and ``reason``
    (before ``accept``, the server turns a close into an HTTP 403 rejection)."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(code, reason or "")
        self.code = code
        self.reason = reason or ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, reason={self.reason!r})"


# Close codes (RFC 6455 section 7.4.1) the framework sends.
class WebSocketClose(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


def close_reason(reason: str) -> str:
    """A close reason must fit the control frame: 123 bytes of UTF-8 at most."""
    encoded = reason.encode()
    if len(encoded) <= 123:
        return reason
    return encoded[:120].decode(errors="ignore") + "..."


class WebSocket(HTTPConnection):
    """One WebSocket connection, as the handler sees it. Inject it by annotating a parameter ``WebSocket``
    (ours or Starlette's) or by naming it ``websocket``."""

    __slots__ = ("_receive", "_send", "client_state", "application_state", "max_size", "closed_by_app")

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any, max_size: int | None = None) -> None:
        assert scope["type"] == "websocket"
        self.scope = scope
        self._headers = self._query = self._cookies = None
        self._receive = receive
        self._send = send
        self.client_state = CONNECTING
        self.application_state = CONNECTING
        self.max_size = max_size
        # The code the framework closed the socket with on the handler's behalf (1009, 1001): the handler's
        # next send or receive raises WebSocketDisconnect with it.
        self.closed_by_app: int | None = None

    # --- raw ASGI messages ------------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        """The next ASGI message. A data message over ``max_size`` closes the socket with 1009 and comes back
        as a ``websocket.disconnect`` message with that code."""
        if self.client_state is CONNECTED:
            message: dict[str, Any] = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if self.max_size is not None and self._too_big(message):
                    return await self._refuse_message()
                return message
            if kind == "websocket.disconnect":
                self.client_state = DISCONNECTED
                return message
            raise RuntimeError(f'Expected "websocket.receive" or "websocket.disconnect", got {kind!r}')
        if self.client_state is CONNECTING:
            message = await self._receive()
            if message["type"] != "websocket.connect":
                raise RuntimeError(f'Expected "websocket.connect", got {message["type"]!r}')
            self.client_state = CONNECTED
            return message
        if self.closed_by_app is not None:
            raise WebSocketDisconnect(self.closed_by_app)
        raise RuntimeError('Cannot call "receive" once a disconnect message has been received.')

    def _too_big(self, message: dict[str, Any]) -> bool:
        limit = self.max_size
        data = message.get("bytes")
        if data is not None:
            return len(data) > limit  # type: ignore[operator]
        text = message.get("text") or ""
        if len(text) * 4 <= limit:  # type: ignore[operator]  # UTF-8 uses at most 4 bytes per character
            return False
        return len(text) > limit or len(text.encode()) > limit  # type: ignore[operator]

    async def _refuse_message(self) -> dict[str, Any]:
        await self.close_for_handler(WebSocketClose.MESSAGE_TOO_BIG, f"Message larger than {self.max_size} bytes")
        self.client_state = DISCONNECTED
        return {"type": "websocket.disconnect", "code": 1009, "reason": "Message too big"}

    async def send(self, message: dict[str, Any]) -> None:
        """Send an ASGI message, checking it fits the connection's state. A client that is gone raises
        :class:`WebSocketDisconnect` (1006)."""
        state = self.application_state
        kind = message["type"]
        if state is CONNECTED:
            if kind == "websocket.close":
                self.application_state = DISCONNECTED
            elif kind != "websocket.send":
                raise RuntimeError(f'Expected "websocket.send" or "websocket.close", got {kind!r}')
        elif state is CONNECTING:
            if kind == "websocket.accept":
                self.application_state = CONNECTED
            elif kind == "websocket.close":
                self.application_state = DISCONNECTED
            elif kind == "websocket.http.response.start":
                self.application_state = RESPONSE
            else:
                raise RuntimeError(f'Expected "websocket.accept", "websocket.close" or a denial response, got {kind!r}')
        elif state is RESPONSE:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f'Expected "websocket.http.response.body", got {kind!r}')
            if not message.get("more_body", False):
                self.application_state = DISCONNECTED
        elif self.closed_by_app is not None:
            raise WebSocketDisconnect(self.closed_by_app)
        else:
            raise RuntimeError('Cannot call "send" once a close message has been sent.')
        try:
            await self._send(message)
        except OSError:  # the server's "client disconnected" (uvicorn's ClientDisconnected is an OSError)
            self.application_state = DISCONNECTED
            raise WebSocketDisconnect(WebSocketClose.ABNORMAL) from None

    # --- the handshake ----------------------------------------------------------------------------------
    async def accept(
        self,
        subprotocol: str | None = None,
        headers: Iterable[tuple[bytes | str, bytes | str]] | dict[str, str] | None = None,
    ) -> None:
        """Complete the handshake, choosing ``subprotocol`` among ``scope["subprotocols"]`` and adding
        ``headers`` to the response."""
        if self.client_state is CONNECTING:
            await self.receive()  # the "websocket.connect" message
        raw: list[tuple[bytes, bytes]] = []
        for name, value in headers.items() if isinstance(headers, dict) else headers or ():
            raw.append(
                (
                    name.encode("latin-1") if isinstance(name, str) else name,
                    value.encode("latin-1") if isinstance(value, str) else value,
                )
            )
        await self.send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": raw})

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.send({"type": "websocket.close", "code": code, "reason": close_reason(reason or "")})

    async def send_denial_response(self, response: Any) -> None:
        """Reject the handshake with an HTTP response (ours or Starlette's), where the server supports it."""
        if "websocket.http.response" not in (self.scope.get("extensions") or {}):
            raise RuntimeError("The server does not support denial responses (websocket.http.response)")

        async def send(message: dict[str, Any]) -> None:
            await self.send({**message, "type": "websocket." + message["type"]})

        await send_any(response, self.scope, self._receive, send)

    async def close_for_handler(self, code: int, reason: str = "") -> None:
        """Close on the handler's behalf; its next send or receive raises ``WebSocketDisconnect(code)``.
        Never raises: the client may be gone already."""
        self.closed_by_app = code
        if self.application_state is CONNECTED:
            self.application_state = DISCONNECTED
            try:
                await self._send({"type": "websocket.close", "code": code, "reason": close_reason(reason)})
            except Exception:  # gone already: nothing to tell it
                pass

    # --- data -------------------------------------------------------------------------------------------
    async def _data(self) -> dict[str, Any]:
        """The next data message, or ``WebSocketDisconnect``. The usual case inline, without receive()."""
        if self.client_state is CONNECTED and self.application_state is CONNECTED:
            message: dict[str, Any] = await self._receive()
            if message["type"] == "websocket.receive":
                limit = self.max_size
                if limit is None:
                    return message
                text = message.get("text")
                size = len(text) * 4 if text is not None else len(message.get("bytes") or b"")
                if size <= limit or not self._too_big(message):  # *4: the most UTF-8 can take
                    return message
                message = await self._refuse_message()
            elif message["type"] == "websocket.disconnect":
                self.client_state = DISCONNECTED
            else:
                raise RuntimeError(f'Expected "websocket.receive" or "websocket.disconnect", got {message["type"]!r}')
        else:
            if self.application_state is not CONNECTED and self.closed_by_app is None:
                raise RuntimeError('WebSocket is not connected. Need to call "accept" first.')
            message = await self.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        return message

    async def receive_text(self) -> str:
        text: str | None = (await self._data()).get("text")
        if text is None:
            raise WebSocketException(WebSocketClose.UNSUPPORTED_DATA, "Expected a text message")
        return text

    async def receive_bytes(self) -> bytes:
        data: bytes | None = (await self._data()).get("bytes")
        if data is None:
            raise WebSocketException(WebSocketClose.UNSUPPORTED_DATA, "Expected a binary message")
        return data

    async def receive_json(self, mode: str = "text") -> Any:
        """One JSON message, text (``mode="text"``) or binary (``mode="binary"``); invalid JSON closes with 1007."""
        if mode not in ("text", "binary"):
            raise RuntimeError('The "mode" argument should be "text" or "binary".')
        message = await self._data()
        data = message.get("text") if mode == "text" else message.get("bytes")
        if data is None:
            raise WebSocketException(WebSocketClose.UNSUPPORTED_DATA, f"Expected a {mode} message")
        try:
            return _DECODE(data)
        except msgspec.DecodeError as exc:
            raise WebSocketException(WebSocketClose.INVALID_PAYLOAD, f"Invalid JSON: {exc}") from None

    async def iter_text(self) -> AsyncIterator[str]:
        """Text messages until the client disconnects."""
        try:
            while True:
                yield await self.receive_text()
        except WebSocketDisconnect:
            pass

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield await self.receive_bytes()
        except WebSocketDisconnect:
            pass

    async def iter_json(self) -> AsyncIterator[Any]:
        try:
            while True:
                yield await self.receive_json()
        except WebSocketDisconnect:
            pass

    async def send_text(self, data: str) -> None:
        await self.send({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self.send({"type": "websocket.send", "bytes": data})

    async def send_json(self, data: Any, mode: str = "text") -> None:
        """Send ``data`` as compact JSON (msgspec: Structs, dataclasses, datetimes...), text or binary."""
        if mode not in ("text", "binary"):
            raise RuntimeError('The "mode" argument should be "text" or "binary".')
        encoded = _ENCODE(data)
        if mode == "text":
            await self.send({"type": "websocket.send", "text": encoded.decode()})
        else:
            await self.send({"type": "websocket.send", "bytes": encoded})


DISCONNECTS: tuple[type[BaseException], ...] = (
    (WebSocketDisconnect, _ForeignDisconnect) if (_ForeignDisconnect is not Exception) else (WebSocketDisconnect,)
)


def is_foreign_websocket_exception(exc: BaseException) -> bool:
    """Starlette's ``WebSocketException`` (code written for 1.3 raises it), without importing Starlette."""
    return is_starlette_class(type(exc), "WebSocketException")


def warn_if_the_server_cannot_serve(paths: Iterable[str]) -> None:
    """Say at startup what uvicorn says only when a client tries: without ``websockets`` or ``wsproto``, its
    default ``ws="auto"`` serves a WebSocket handshake as a plain HTTP request (the client sees "rejected:
    HTTP 200" or a 404), so no WebSocket route of the app can be reached. uvicorn's own hint names
    ``uvicorn[standard]``; ours names this package's extra, installed from where this package came from.

    Only under uvicorn (imported by this process: the in-process test clients need no library)."""
    if "uvicorn" not in sys.modules:
        return
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    if AutoWebSocketsProtocol is not None:
        return
    from .origin import install_hint

    logger.warning(
        "This app has WebSocket routes (%s), but no WebSocket library is installed for uvicorn (websockets or "
        "wsproto): every WebSocket connection will be refused. Install the websockets extra: %s",
        ", ".join(paths),
        install_hint("websockets"),
    )


class OpenSockets:
    """The app's open WebSockets and their handler tasks, so shutdown can close them with 1001.

    uvicorn answers SIGTERM by dropping every WebSocket with 1012 (service restart) before the app hears of
    the shutdown, and then waits for their handlers without limit. So while the app runs (between lifespan
    startup and shutdown) and only if it has WebSocket routes, SIGTERM and SIGINT first close the open
    sockets with 1001 (going away), then reach the server's own handler. Handlers still running
    ``shutdown_timeout`` seconds later are cancelled (their dependency cleanups still run).
    """

    def __init__(self, shutdown_timeout: float) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.sockets: dict[WebSocket, asyncio.Task[Any] | None] = {}
        self.going_away = False
        self._previous: dict[int, tuple[Any, Any]] = {}
        self._cancel_timer: asyncio.TimerHandle | None = None
        self._cancelled: set[WebSocket] = set()
        self._all_closed: asyncio.Event | None = None  # set when the last socket ends, during shutdown()

    def add(self, websocket: WebSocket) -> None:
        self.sockets[websocket] = asyncio.current_task()

    def discard(self, websocket: WebSocket) -> None:
        self.sockets.pop(websocket, None)
        self._cancelled.discard(websocket)
        if not self.sockets and self._all_closed is not None:
            self._all_closed.set()

    def cancelled(self, websocket: WebSocket) -> bool:
        """Whether the app cancelled this socket's handler (at the shutdown deadline). The cancellation is
        then withdrawn, so the handler's ASGI call can end normally after its cleanups."""
        if websocket not in self._cancelled:
            return False
        task = self.sockets.get(websocket)
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        return True

    # --- shutdown ---------------------------------------------------------------------------------------
    async def close_all(self) -> None:
        """Close every open socket with 1001 and cancel the handlers still running after ``shutdown_timeout``."""
        self.going_away = True
        sockets = list(self.sockets.items())
        await asyncio.gather(
            *(ws.close_for_handler(WebSocketClose.GOING_AWAY, "Server shutting down") for ws, _ in sockets)
        )
        if self._cancel_timer is None and self.sockets:
            loop = asyncio.get_running_loop()
            self._cancel_timer = loop.call_later(self.shutdown_timeout, self._cancel_handlers)

    def _cancel_handlers(self) -> None:
        self._cancel_timer = None
        if self.sockets:
            logger.error(
                "%d WebSocket handler(s) still running %.1fs after shutdown began; cancelling",
                len(self.sockets),
                self.shutdown_timeout,
            )
        for websocket, task in self.sockets.items():
            if task is not None:
                self._cancelled.add(websocket)
                task.cancel()

    async def shutdown(self) -> None:
        """At lifespan shutdown: close what is still open and wait (at most ``shutdown_timeout``) for the
        handlers to end."""
        self.uninstall()
        self._all_closed = asyncio.Event()
        await self.close_all()
        if self.sockets:
            try:  # the cancel timer fires at shutdown_timeout; cancelled handlers still run their cleanups
                await asyncio.wait_for(self._all_closed.wait(), self.shutdown_timeout + 1)
            except asyncio.TimeoutError:
                logger.error("%d WebSocket handler(s) did not end after being cancelled", len(self.sockets))
        self._all_closed = None
        if self._cancel_timer is not None:
            self._cancel_timer.cancel()
            self._cancel_timer = None
        self.going_away = False

    # --- signals ----------------------------------------------------------------------------------------
    def install(self) -> None:
        """Chain SIGTERM and SIGINT (main thread only; a server in a thread keeps its own behaviour)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if not callable(previous):  # SIG_DFL / SIG_IGN: no server is listening; leave it alone
                continue
            handler = self._handler(loop, previous)
            self._previous[signum] = (previous, handler)
            signal.signal(signum, handler)

    def _handler(self, loop: asyncio.AbstractEventLoop, previous: Callable[..., Any]) -> Callable[..., None]:
        def on_signal(signum: int, frame: Any) -> None:
            if self.going_away or not self.sockets:  # a second signal (force quit) goes straight through
                previous(signum, frame)
                return
            loop.call_soon_threadsafe(lambda: loop.create_task(self._close_then(previous, signum, frame)))

        return on_signal

    async def _close_then(self, previous: Callable[..., Any], signum: int, frame: Any) -> None:
        try:
            await asyncio.wait_for(self.close_all(), 5)
        except Exception:  # the server must hear the signal whatever happened here
            logger.exception("Closing the open WebSockets at shutdown failed")
        finally:
            previous(signum, frame)

    def uninstall(self) -> None:
        """Put the server's handlers back (unless someone replaced ours meanwhile)."""
        if threading.current_thread() is threading.main_thread():
            for signum, (previous, handler) in self._previous.items():
                if signal.getsignal(signum) is handler:
                    signal.signal(signum, previous)
        self._previous.clear()

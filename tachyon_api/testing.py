"""Test clients over httpx that call the app in-process.

Every client here returns only after the request's background tasks have run, so a test can assert on their
effects right after the call. ``TachyonTestClient`` used as a context manager also runs the app's lifespan
(startup and shutdown, including the background drain).

``client.websocket_connect(path)`` opens an in-process WebSocket session (sync on ``TachyonTestClient``,
``async with`` on the client of ``AsyncTachyonTestClient``), with the methods of Starlette's test session.
Leaving the block closes the socket (1000) and waits for the handler, its cleanups and its tasks to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from .routing import WAIT_FOR_TASKS
from .websockets import WebSocketDisconnect

__all__ = [
    "TachyonTestClient",
    "AsyncTachyonTestClient",
    "create_client",
    "WebSocketTestSession",
    "AsyncWebSocketTestSession",
    "WebSocketDenialResponse",
    "TachyonAsyncClient",
]

T = TypeVar("T")
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _waiting_for_tasks(app: ASGIApp) -> Callable[[Any, Any, Any], Awaitable[None]]:
    """Mark each HTTP request so the app finishes its background tasks before the call returns. (For httpx's
    ``ASGITransport``, whose declared scope type is a ``MutableMapping``: the scope it sends is a dict.)"""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["extensions"] = {**(scope.get("extensions") or {}), WAIT_FOR_TASKS: True}
        await app(scope, receive, send)

    return wrapped


class WebSocketDenialResponse(httpx.Response, Exception):  # type: ignore[misc]  # both have a __setstate__
    """Raised by ``websocket_connect`` when the app refused the handshake with an HTTP response (a guard's
    401, say): an ``httpx.Response`` (``status_code``, ``json()``) and an exception."""


def _websocket_scope(
    client: httpx.Client | httpx.AsyncClient,
    path: str,
    subprotocols: Sequence[str] | None,
    headers: dict[str, str] | None,
) -> dict[str, Any]:
    url = client.base_url.join(path)
    request = client.build_request("GET", url, headers=headers)  # the client's headers and cookies
    raw_headers = [(k.lower(), v) for k, v in request.headers.raw if k.lower() not in (b"accept-encoding", b"accept")]
    raw_headers += [
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    if subprotocols:
        raw_headers.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode()))
    parts = urlsplit(str(url))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "wss" if parts.scheme == "https" else "ws",
        "server": (parts.hostname, port),
        "client": ("testclient", 50000),
        "root_path": "",
        "path": url.path,
        "raw_path": url.raw_path.split(b"?", 1)[0],
        "query_string": url.query,
        "headers": raw_headers,
        "subprotocols": list(subprotocols or ()),
        "state": {},
        "extensions": {"websocket.http.response": {}, WAIT_FOR_TASKS: True},
    }


class AsyncWebSocketTestSession:
    """An in-process WebSocket conversation with the app: ``async with client.websocket_connect(path) as ws``.

    Entering sends the handshake and raises ``WebSocketDisconnect`` if the app closes instead of accepting,
    ``WebSocketDenialResponse`` if it answers with an HTTP response. ``receive_*`` raise ``WebSocketDisconnect``
    when the app closes the socket. Leaving closes it (1000) and waits for the handler to finish.
    """

    def __init__(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        self.app = app
        self.scope = scope
        self.accepted_subprotocol: str | None = None
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[Any] | None = None
        self.accepted = False
        self._closed = False

    async def __aenter__(self) -> AsyncWebSocketTestSession:
        self._task = asyncio.ensure_future(self.app(self.scope, self._to_app.get, self._app_send))
        await self._to_app.put({"type": "websocket.connect"})
        message = await self._next()
        if message["type"] == "websocket.accept":
            self.accepted = True
            self.accepted_subprotocol = message.get("subprotocol")
            self.extra_headers = list(message.get("headers") or ())
            return self
        self._closed = True
        if message["type"] == "websocket.http.response.start":
            body = b""
            while True:
                part = await self._next()
                body += part.get("body", b"")
                if not part.get("more_body", False):
                    break
            await self._finish()
            raise WebSocketDenialResponse(message["status"], headers=message.get("headers") or [], content=body)
        await self._finish()
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))

    async def __aexit__(self, *exc_info: Any) -> None:
        if not self._closed:
            await self.close()
        await self._finish()

    async def _app_send(self, message: dict[str, Any]) -> None:
        await self._from_app.put(message)
        if message["type"] == "websocket.close" and self.accepted and not self._closed:
            # A real client answers a close frame with its own at once, read or not: the app's next
            # receive() gets the disconnect.
            self._closed = True
            await self._to_app.put({"type": "websocket.disconnect", "code": message.get("code", 1000)})

    async def _finish(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await task  # re-raises what escaped the app

    async def _next(self) -> dict[str, Any]:
        """The app's next message; if the app returned without one, its error or a 1006 disconnect."""
        if self._from_app.empty() and self._task is not None:
            get = asyncio.ensure_future(self._from_app.get())
            done, _ = await asyncio.wait({get, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                return get.result()
            get.cancel()
            if self._from_app.empty():
                self._task.result()
                raise WebSocketDisconnect(1006, "The app returned without closing the socket")
        return self._from_app.get_nowait()

    # --- the conversation -------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        await self._to_app.put(message)

    async def send_text(self, data: str) -> None:
        await self.send({"type": "websocket.receive", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self.send({"type": "websocket.receive", "bytes": data})

    async def send_json(self, data: Any, mode: str = "text") -> None:
        encoded = msgspec.json.encode(data)
        if mode == "text":
            await self.send_text(encoded.decode())
        else:
            await self.send_bytes(encoded)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close from the client's side: the handler's next receive raises ``WebSocketDisconnect(code)``."""
        self._closed = True
        await self.send({"type": "websocket.disconnect", "code": code, "reason": reason or ""})

    async def receive(self) -> dict[str, Any]:
        message = await self._next()
        if message["type"] == "websocket.close":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        return message

    async def receive_text(self) -> str:
        text: str = (await self.receive())["text"]
        return text

    async def receive_bytes(self) -> bytes:
        data: bytes = (await self.receive())["bytes"]
        return data

    async def receive_json(self, mode: str = "text") -> Any:
        message = await self.receive()
        return msgspec.json.decode(message["text"] if mode == "text" else message["bytes"])


class WebSocketTestSession:
    """The sync form of :class:`AsyncWebSocketTestSession`, driven through the test client's event loop."""

    def __init__(self, client: TachyonTestClient, session: AsyncWebSocketTestSession) -> None:
        self._call = client._portal_call
        self._session = session

    def __enter__(self) -> WebSocketTestSession:
        self._call(self._session.__aenter__())
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._call(self._session.__aexit__(*exc_info))

    @property
    def accepted_subprotocol(self) -> str | None:
        return self._session.accepted_subprotocol

    @property
    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return self._session.extra_headers

    def send(self, message: dict[str, Any]) -> None:
        self._call(self._session.send(message))

    def send_text(self, data: str) -> None:
        self._call(self._session.send_text(data))

    def send_bytes(self, data: bytes) -> None:
        self._call(self._session.send_bytes(data))

    def send_json(self, data: Any, mode: str = "text") -> None:
        self._call(self._session.send_json(data, mode))

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        self._call(self._session.close(code, reason))

    def receive(self) -> dict[str, Any]:
        return self._call(self._session.receive())

    def receive_text(self) -> str:
        return self._call(self._session.receive_text())

    def receive_bytes(self) -> bytes:
        return self._call(self._session.receive_bytes())

    def receive_json(self, mode: str = "text") -> Any:
        return self._call(self._session.receive_json(mode))


class _Lifespan:
    """Drive an ASGI app's lifespan protocol from the outside, as a server does."""

    task: asyncio.Task[None]  # the app's lifespan call, from startup() on

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def _next(self, expected: str) -> None:
        get = asyncio.ensure_future(self._from_app.get())
        done, _ = await asyncio.wait({get, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if get not in done:
            get.cancel()
            self.task.result()  # re-raise the app's error
            raise RuntimeError("The app's lifespan returned early")
        message = get.result()
        if message["type"] != expected:
            with contextlib.suppress(Exception):  # the app re-raises after reporting: collect it
                await self.task
            raise RuntimeError(f"Lifespan failed: {message.get('message', message['type'])}")

    async def startup(self) -> None:
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        await self._next("lifespan.startup.complete")

    async def shutdown(self) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._next("lifespan.shutdown.complete")
        await self.task


class _Portal:
    """An event loop in a daemon thread, so sync tests can drive the async app."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tachyon-testclient", daemon=True)
        self.thread.start()

    def call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class _PortalTransport(httpx.BaseTransport):
    def __init__(self, client: TachyonTestClient, transport: httpx.ASGITransport) -> None:
        self.client = client
        self.transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a sync body stream cannot be iterated from the loop's thread

        async def call() -> tuple[int, httpx.Headers, bytes]:
            response = await self.transport.handle_async_request(request)
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream)  # what an ASGITransport answers with
            raw = b"".join([chunk async for chunk in stream])  # still encoded: httpx decodes it once
            return response.status_code, response.headers, raw

        status, headers, content = self.client._portal_call(call())
        return httpx.Response(status, headers=headers, content=content, request=request)


class TachyonTestClient(httpx.Client):
    """A sync httpx client for the app. ``with TachyonTestClient(app) as client:`` runs the lifespan.

    With ``raise_server_exceptions`` (the default), an exception that escapes the app (from a middleware, say)
    is raised in the test instead of becoming a 500.
    """

    def __init__(
        self,
        app: ASGIApp,
        base_url: str = "http://testserver",  # Starlette's and the async clients' default too
        raise_server_exceptions: bool = True,
        **kwargs: Any,
    ) -> None:
        self.app = app
        self._portal: _Portal | None = None
        self._lifespan: _Lifespan | None = None
        transport = httpx.ASGITransport(
            app=_waiting_for_tasks(app), raise_app_exceptions=raise_server_exceptions, client=("testclient", 50000)
        )
        super().__init__(base_url=base_url, transport=_PortalTransport(self, transport), **kwargs)

    def websocket_connect(
        self, path: str, subprotocols: Sequence[str] | None = None, headers: dict[str, str] | None = None
    ) -> WebSocketTestSession:
        """``with client.websocket_connect("/ws") as ws: ws.send_text(...); ws.receive_text()``."""
        scope = _websocket_scope(self, path, subprotocols, headers)
        return WebSocketTestSession(self, AsyncWebSocketTestSession(self.app, scope))

    def _portal_call(self, coro: Awaitable[T]) -> T:
        if self._portal is None:
            self._portal = _Portal()
        return self._portal.call(coro)

    def __enter__(self) -> TachyonTestClient:
        super().__enter__()
        self._lifespan = _Lifespan(self.app)
        try:
            self._portal_call(self._lifespan.startup())
        except BaseException:
            self._lifespan = None
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self._lifespan is not None:
                lifespan, self._lifespan = self._lifespan, None
                self._portal_call(lifespan.shutdown())
        finally:
            super().__exit__(*exc_info)
            self.close()

    def close(self) -> None:
        super().close()
        if self._portal is not None:
            portal, self._portal = self._portal, None
            portal.close()


class TachyonAsyncClient(httpx.AsyncClient):
    """The ``httpx.AsyncClient`` of :class:`AsyncTachyonTestClient`, plus ``websocket_connect``."""

    def __init__(self, app: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app

    def websocket_connect(
        self, path: str, subprotocols: Sequence[str] | None = None, headers: dict[str, str] | None = None
    ) -> AsyncWebSocketTestSession:
        """``async with client.websocket_connect("/ws") as ws: await ws.send_text(...)``."""
        return AsyncWebSocketTestSession(self.app, _websocket_scope(self, path, subprotocols, headers))


def _async_client(
    app: ASGIApp,
    base_url: str,
    headers: dict[str, str] | None,
    cookies: dict[str, str] | None,
    auth: Any,
    follow_redirects: bool,
    timeout: float,
    kwargs: dict[str, Any],
) -> TachyonAsyncClient:
    options: dict[str, Any] = {"base_url": base_url, "follow_redirects": follow_redirects, "timeout": timeout}
    if headers:
        options["headers"] = headers
    if cookies:
        options["cookies"] = cookies
    if auth is not None:
        options["auth"] = auth
    transport = httpx.ASGITransport(app=_waiting_for_tasks(app), client=("testclient", 50000))
    return TachyonAsyncClient(app, transport=transport, **options, **kwargs)


class AsyncTachyonTestClient:
    """``async with AsyncTachyonTestClient(app) as client:`` gives an ``httpx.AsyncClient`` bound to the app.

    ``lifespan=True`` also runs the app's startup and shutdown around the block.
    """

    def __init__(
        self,
        app: ASGIApp,
        base_url: str = "http://testserver",
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        auth: Any = None,
        follow_redirects: bool = False,
        timeout: float = 5.0,
        lifespan: bool = False,
        **kwargs: Any,
    ) -> None:
        self._app = app
        self._lifespan = _Lifespan(app) if lifespan else None
        self._client = _async_client(app, base_url, headers, cookies, auth, follow_redirects, timeout, kwargs)

    async def __aenter__(self) -> TachyonAsyncClient:
        if self._lifespan is not None:
            await self._lifespan.startup()
        return await self._client.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._client.__aexit__(*exc_info)
        finally:
            if self._lifespan is not None:
                await self._lifespan.shutdown()


@contextlib.asynccontextmanager
async def create_client(
    app: ASGIApp,
    base_url: str = "http://testserver",
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    auth: Any = None,
    follow_redirects: bool = False,
    timeout: float = 5.0,
    **kwargs: Any,
) -> AsyncIterator[TachyonAsyncClient]:
    """The function form of :class:`AsyncTachyonTestClient`: ``async with create_client(app) as client``."""
    async with AsyncTachyonTestClient(
        app, base_url, headers, cookies, auth, follow_redirects, timeout, **kwargs
    ) as client:
        yield client

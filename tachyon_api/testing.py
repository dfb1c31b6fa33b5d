"""Test clients over httpx that call the app in-process.

Every client here returns only after the request's background tasks have run, so a test can assert on their
effects right after the call. ``TachyonTestClient`` used as a context manager also runs the app's lifespan
(startup and shutdown, including the background drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import httpx

from .routing import WAIT_FOR_TASKS

__all__ = ["TachyonTestClient", "AsyncTachyonTestClient", "create_client"]

T = TypeVar("T")
ASGIApp = Callable[[dict, Any, Any], Awaitable[None]]


def _waiting_for_tasks(app: ASGIApp) -> ASGIApp:
    """Mark each HTTP request so the app finishes its background tasks before the call returns."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["extensions"] = {**(scope.get("extensions") or {}), WAIT_FOR_TASKS: True}
        await app(scope, receive, send)

    return wrapped


class _Lifespan:
    """Drive an ASGI app's lifespan protocol from the outside, as a server does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.task: asyncio.Task | None = None

    async def _next(self, expected: str) -> None:
        get = asyncio.ensure_future(self._from_app.get())
        done, _ = await asyncio.wait({get, self.task}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[arg-type]
        if get not in done:
            get.cancel()
            self.task.result()  # type: ignore[union-attr]  # re-raise the app's error
            raise RuntimeError("The app's lifespan returned early")
        message = get.result()
        if message["type"] != expected:
            with contextlib.suppress(Exception):  # the app re-raises after reporting: collect it
                await self.task  # type: ignore[misc]
            raise RuntimeError(f"Lifespan failed: {message.get('message', message['type'])}")

    async def startup(self) -> None:
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._from_app: asyncio.Queue = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        await self._next("lifespan.startup.complete")

    async def shutdown(self) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._next("lifespan.shutdown.complete")
        await self.task  # type: ignore[misc]


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
    def __init__(self, client: "TachyonTestClient", transport: httpx.ASGITransport) -> None:
        self.client = client
        self.transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a sync body stream cannot be iterated from the loop's thread

        async def call() -> tuple[int, httpx.Headers, bytes]:
            response = await self.transport.handle_async_request(request)
            raw = b"".join([chunk async for chunk in response.stream])  # still encoded: httpx decodes it once
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

    def _portal_call(self, coro: Awaitable[T]) -> T:
        if self._portal is None:
            self._portal = _Portal()
        return self._portal.call(coro)

    def __enter__(self) -> "TachyonTestClient":
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


def _async_client(
    app: ASGIApp,
    base_url: str,
    headers: dict[str, str] | None,
    cookies: dict[str, str] | None,
    auth: Any,
    follow_redirects: bool,
    timeout: float,
    kwargs: dict[str, Any],
) -> httpx.AsyncClient:
    options: dict[str, Any] = {"base_url": base_url, "follow_redirects": follow_redirects, "timeout": timeout}
    if headers:
        options["headers"] = headers
    if cookies:
        options["cookies"] = cookies
    if auth is not None:
        options["auth"] = auth
    transport = httpx.ASGITransport(app=_waiting_for_tasks(app), client=("testclient", 50000))
    return httpx.AsyncClient(transport=transport, **options, **kwargs)


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

    async def __aenter__(self) -> httpx.AsyncClient:
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
) -> AsyncIterator[httpx.AsyncClient]:
    """The function form of :class:`AsyncTachyonTestClient`: ``async with create_client(app) as client``."""
    async with AsyncTachyonTestClient(
        app, base_url, headers, cookies, auth, follow_redirects, timeout, **kwargs
    ) as client:
        yield client

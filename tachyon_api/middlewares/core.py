"""Function middlewares (``@app.middleware("http")``) and the header helpers the bundled middlewares share.

Two signatures are accepted, told apart by the number of parameters:

- tachyon-api 1.3's ASGI form, ``async def mw(scope, receive, send, app)``, where ``app`` is the next ASGI
  app. It runs for the scope type it was registered for (``"http"``, ``"websocket"``, ``"lifespan"``) or for
  every scope with ``"*"``; other scopes go straight to ``app``.
- Starlette's and FastAPI's form, ``async def mw(request, call_next)``, returning a response. HTTP only.
  ``call_next(request)`` returns as soon as the inner app has started its response; the body is streamed
  through afterwards, so streaming responses stay streaming.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..requests import Request
from ..responses import Response

__all__ = ["apply_middleware_to_router", "create_decorated_middleware_class"]

logger = logging.getLogger("tachyon_api.errors")
SCOPE_TYPES = ("http", "websocket", "lifespan", "*")
_END = object()


def with_headers(message: dict[str, Any], extra: list[tuple[bytes, bytes]], vary: str = "") -> dict[str, Any]:
    """A copy of an ``http.response.start`` message with ``extra`` headers appended and ``vary`` merged into its
    ``Vary`` header. The message's own list is never changed: the response that sent it may send it again."""
    headers = list(message.get("headers", ()))
    if vary:
        for index, (key, value) in enumerate(headers):
            if key.lower() == b"vary":
                present = {part.strip().lower() for part in value.decode("latin-1").split(",")}
                missing = [v for v in vary.split(", ") if v.lower() not in present and "*" not in present]
                if missing:
                    headers[index] = (key, value + (", " + ", ".join(missing)).encode("latin-1"))
                break
        else:
            headers.append((b"vary", vary.encode("latin-1")))
    headers.extend(extra)
    return {**message, "headers": headers}


def apply_middleware_to_router(app: Any, middleware_class: type, **options: Any) -> None:
    """Add ``middleware_class`` to ``app`` (the existing framework's helper; ``app.add_middleware`` is the same)."""
    app.add_middleware(middleware_class, **options)


def create_decorated_middleware_class(func: Callable[..., Awaitable[Any]], middleware_type: str = "http") -> type:
    """Wrap a middleware function (either signature, see the module docstring) as an ASGI middleware class."""
    if middleware_type not in SCOPE_TYPES:
        raise ValueError(f"middleware_type must be one of {', '.join(SCOPE_TYPES)}, not {middleware_type!r}")
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"Middleware {func.__qualname__} must be an async function")
    positional = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) == 4:
        return type(func.__name__, (_ASGIFunctionMiddleware,), {"func": staticmethod(func), "kind": middleware_type})
    if len(positional) == 2:
        if middleware_type != "http":
            raise TypeError(
                f"Middleware {func.__qualname__}(request, call_next) serves HTTP only; for {middleware_type!r} "
                "scopes write it as (scope, receive, send, app)"
            )
        return type(func.__name__, (_CallNextMiddleware,), {"func": staticmethod(func)})
    raise TypeError(
        f"Middleware {func.__qualname__} must take (scope, receive, send, app) or (request, call_next), "
        f"not {len(positional)} parameters"
    )


class _ASGIFunctionMiddleware:
    func: Callable[..., Awaitable[Any]]
    kind: str

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.kind == "*" or scope["type"] == self.kind:
            await self.func(scope, receive, send, self.app)
        else:
            await self.app(scope, receive, send)


class _InnerResponse(Response):
    """The inner app's response as ``call_next`` returns it: status and headers (editable, a copy), and the
    body as ``body_iterator``, forwarded as the inner app produces it."""

    def __init__(self, status_code: int, raw_headers: list[Any], body_iterator: Any) -> None:
        self.status_code = status_code
        self.raw_headers = list(raw_headers)
        self.body_iterator = body_iterator
        self.background = None

    async def send(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": list(self.raw_headers)})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class _CallNextMiddleware:
    func: Callable[..., Awaitable[Any]]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inner: list[asyncio.Task[Any]] = []
        read_to_end: set[asyncio.Task[Any]] = set()  # inner apps whose last body message the middleware received
        started = False

        async def call_next(request: Request) -> Response:
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)  # the inner app waits for the client: backpressure
            start: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            async def capture(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    start.set_result(message)
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        await queue.put(message["body"])
                    if not message.get("more_body", False):
                        await queue.put(_END)

            async def run() -> None:
                try:
                    await self.app(request.scope, request.replay_receive(), capture)
                except Exception as exc:
                    if not start.done():
                        start.set_exception(exc)
                    raise
                except BaseException:
                    start.cancel()
                    raise
                if not start.done():
                    start.set_exception(RuntimeError("The application did not start a response"))

            task = asyncio.ensure_future(run())
            inner.append(task)
            message = await start

            async def body() -> Any:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():  # the inner app ended without the last body message
                        getter.cancel()
                        if task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
                        return
                    chunk = getter.result()
                    if chunk is _END:
                        read_to_end.add(task)
                        return
                    yield chunk

            return _InnerResponse(message["status"], message.get("headers", []), body())

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        request = Request(scope, receive)
        try:
            response = await self.func(request, call_next)
            await response(scope, receive, tracking_send)
        except Exception as exc:
            app: Any = scope.get("app")
            if started or not hasattr(app, "send_error"):
                raise
            # Before the response: the app's exception handlers answer (an HTTPException keeps its status),
            # and anything unexpected is logged there.
            await app.send_error(scope, receive, send, exc)
        finally:
            for task in inner:
                # After its last body message the inner app is still finishing its own work (dependency
                # cleanups that await, background tasks): it is awaited, as without a middleware. It is
                # cancelled only when the middleware answered without its response or stopped reading it.
                if task not in read_to_end and not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)

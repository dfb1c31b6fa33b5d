"""The ``Tachyon`` application: the ASGI entry point, route registration, middleware, errors and lifespan."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ._utils import is_async_callable
from .backends.base import TaskBackend
from .cache import CacheConfig, set_cache_config
from .compiler import Dependency, compile_dependency
from .concurrency import ThreadPool
from .datastructures import State
from .dependencies import SCOPE_SINGLETON, Depends, injectable_scope
from .docs import docs_routes
from .exceptions import HTTPException, RequestError, ResponseValidationError
from .handlers import build_handler, build_websocket_handler
from .middlewares.core import create_decorated_middleware_class
from .openapi import OpenAPIConfig, OpenAPIGenerator
from .requests import DEFAULT_MAX_BODY_SIZE, ClientDisconnect, Request
from .responses import (
    JSONResponse,
    Response,
    internal_server_error_response,
    is_foreign_response,
    response_validation_error_response,
    send_any,
)
from .routing import (
    PathTree,
    Route,
    RouteDecorators,
    Router,
    WebSocketRoute,
    prefixed_route,
)
from .tasks import BackgroundRunner, ErrorHook, MemoryTaskStore, TaskControl
from .tasks.schedule import PeriodicJob, Scheduler
from .websockets import OpenSockets, warn_if_the_server_cannot_serve

__all__ = ["Tachyon"]

logger = logging.getLogger("tachyon_api.errors")
docs_logger = logging.getLogger("tachyon_api.docs")
lifespan_logger = logging.getLogger("tachyon_api.lifespan")

F = TypeVar("F", bound=Callable[..., Any])
# ``handler(request, exc)``: ``exc`` is an instance of the class it was registered for (Any: no static type says
# which), or the HTTPException of a status code; it returns a response, or an awaitable of one.
ExceptionHandler = Callable[[Request, Any], Any]
# An ``@asynccontextmanager`` function, or an undecorated ``async def`` generator function (as 1.3 accepted).
Lifespan = Callable[["Tachyon"], contextlib.AbstractAsyncContextManager[Any] | AsyncIterator[Any]]


def _normal(path: str) -> str:
    """A path as the matcher sees it: no empty segments, parameter names left out."""
    return "/" + "/".join("{}" if part.startswith("{") else part for part in path.split("/") if part)


async def _nothing() -> None:
    """What the app does with a scope type it does not know."""


def _http_exception(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)


def _request_error(request: Request, exc: RequestError) -> Response:
    return JSONResponse(exc.body(), exc.status_code, exc.headers())


def _response_invalid(request: Request, exc: ResponseValidationError) -> Response:
    return response_validation_error_response(f"{request.method} {request.scope['path']}", exc_info=exc)


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Collect once, then move every object alive after startup (modules, routes, the user's pools and caches)
    out of the cyclic garbage collector's reach, once per process.

    Why: under load, a request that waits for a worker thread is alive when the collector runs, so its objects
    get promoted, and every few hundred promotions trigger a full collection that scans the whole heap while
    the GIL is held: 15-20 ms on a small app, which became the p99 of every ``def`` endpoint (bench/README.md).
    Frozen objects are still freed by reference counting; only a reference cycle among them that becomes
    garbage later is never collected, which is why it is done after startup and can be turned off.
    """
    global _heap_frozen
    if _heap_frozen:  # a second app (or test client) in the same process: the first one froze the imports
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()


class Tachyon(RouteDecorators):
    """An ASGI 3 application.

    ``max_body_size`` bounds every request body (JSON, forms and uploads) and is enforced while reading.
    ``thread_pool_size`` bounds the threads of sync endpoints and dependencies. The ``background_*`` options
    and ``shutdown_timeout`` configure the in-process task runner, ``app.background`` (see ``tasks/runner.py``);
    ``task_backend=RQBackend(...)`` makes every background task of the app durable instead.
    ``app.tasks`` reads, watches and cancels tasks by id (see ``tasks/status.py`` and docs/task-status.md):
    ``task_status=True`` keeps a status record for every in-process task (otherwise only for tasks whose
    handle an endpoint took), ``task_results=True`` keeps every task's return value in it, and
    ``task_store`` says where in-process records live (``MemoryTaskStore()`` by default; a
    ``RedisTaskStore`` shares them between web processes).
    ``strict=False`` decodes JSON bodies laxly (msgspec's ``strict=False``: ``"9.5"`` for a float), for apps
    moving over from FastAPI; a route can choose for itself with ``@app.post(..., strict=False)``.
    ``cache_config`` becomes the active configuration of ``@cache`` (process-wide, see ``cache.py``).
    ``openapi_config`` (see ``openapi.py``) sets the schema's info and the URLs of ``/openapi.json`` and the
    docs pages; a route of yours on one of those URLs replaces that page.
    ``websocket_max_size`` bounds one WebSocket message (bytes; larger ones close the socket with 1009); at
    shutdown open WebSockets are closed with 1001 and their handlers cancelled after ``shutdown_timeout``.
    ``sync_to_thread=False`` runs ``def`` endpoints on the event loop instead of a worker thread: faster, and
    for code that never blocks only, since one blocking call then stalls every request (per route:
    ``@app.get(..., sync_to_thread=False)``).
    The first four arguments may be given by position, in tachyon-api 1.3's order (``openapi_config``,
    ``cache_config``, ``lifespan``, ``max_body_size``); the others are keyword-only.
    ``gc_freeze=False`` keeps the objects alive at startup under the cyclic garbage collector's full scans (see
    :func:`_freeze_startup_heap` for why the default moves them out of its way).
    ``schedule_lease`` (seconds) is how long a process holds a periodic job's lease in Redis without renewing
    it: the bound on a takeover when it dies (see :meth:`periodic` and ``tasks/schedule.py``).
    """

    def __init__(
        self,
        openapi_config: OpenAPIConfig | None = None,
        cache_config: CacheConfig | None = None,
        lifespan: Lifespan | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        *,
        dependencies: Sequence[Depends] | None = None,
        thread_pool_size: int = 40,
        background_concurrency: int = 64,
        background_queue: int = 1_000,
        background_overflow: str = "wait",
        background_threads: int = 16,
        shutdown_timeout: float = 25.0,
        task_backend: TaskBackend | None = None,
        strict: bool = True,
        task_statistics: bool = True,
        task_status: bool = False,
        task_results: bool = False,
        task_store: MemoryTaskStore | None = None,
        websocket_max_size: int = DEFAULT_MAX_BODY_SIZE,
        sync_to_thread: bool = True,
        gc_freeze: bool = True,
        schedule_lease: float = 10.0,
    ) -> None:
        if cache_config is not None:
            set_cache_config(cache_config)  # process-wide, as in 1.3: @cache has no app to look at
        self.cache_config = cache_config
        self.state = State()
        # False: JSON bodies decode laxly ("9.5" for a float), as pydantic coerces; a route may override it.
        self.strict = strict
        # False: `def` endpoints run on the event loop (no thread hop); only for code that never blocks. A route
        # can choose for itself with @app.get(..., sync_to_thread=...).
        self.sync_to_thread = sync_to_thread
        self.gc_freeze = gc_freeze
        self.max_body_size = max_body_size
        self.websocket_max_size = websocket_max_size
        self.open_websockets = OpenSockets(shutdown_timeout)
        self.dependency_overrides: dict[Any, Any] = {}
        self.singletons: dict[Any, Any] = {}
        self.singletons_pending: dict[Any, Any] = {}  # futures of singletons being built
        self.dependencies = list(dependencies or ())
        self.task_backend = task_backend
        self.tasks = TaskControl(self, track_all=task_status, keep_results=task_results, store=task_store)
        self.endpoint_pool = ThreadPool(thread_pool_size, "tachyon-endpoint")
        self.background = BackgroundRunner(
            concurrency=background_concurrency,
            queue_size=background_queue,
            overflow=background_overflow,
            threads=background_threads,
            shutdown_timeout=shutdown_timeout,
            statistics=task_statistics,
            lock=self.tasks.store.lock,
        )
        self.scheduler = Scheduler(self, schedule_lease)
        self._lifespan = lifespan
        self._lifespan_context: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._on_startup: list[Callable[[], Any]] = []
        self._on_shutdown: list[Callable[[], Any]] = []
        self._routes: list[Route] = []
        self._tree = PathTree()
        self._websocket_routes: list[WebSocketRoute] = []
        self._websocket_tree = PathTree()
        self._middleware: list[tuple[type, dict[str, Any]]] = []
        self._stack: Callable[..., Any] | None = None
        self._overrides: dict[tuple[Callable[..., Any], str | None, bool], Dependency] = {}
        self._exception_handlers: dict[Any, ExceptionHandler] = {
            HTTPException: _http_exception,
            RequestError: _request_error,
            ResponseValidationError: _response_invalid,
        }
        self.openapi_config = openapi_config or OpenAPIConfig()
        self.openapi_generator = OpenAPIGenerator(self.openapi_config)
        self._docs_routes: dict[tuple[str, str], Route] = {}
        for route in docs_routes(self):
            self._add(route)
            self._docs_routes[(_normal(route.path), "GET")] = route

    # --- ASGI ------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["app"] = self
        if self._stack is None:
            self._stack = self._build_stack()
        await self._stack(scope, receive, send)

    def _build_stack(self) -> Callable[..., Any]:
        app: Callable[..., Any] = self._dispatch
        for cls, options in self._middleware:  # the last added ends up outermost, as in Starlette
            app = cls(app, **options)
        return app

    def _dispatch(
        self, scope: dict[str, Any], receive: Any, send: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> Awaitable[None]:
        """The innermost ASGI app. A plain function returning the handler's coroutine: one frame less per
        request than awaiting it here."""
        kind = scope["type"]
        if kind == "http":
            route, values, allowed = self._tree.lookup(scope["method"], scope["path"])
            if route is not None:
                scope["route"] = route  # as in Starlette: for middlewares (metrics, logs) that want the template
                return route.handler(scope, receive, send, values)  # type: ignore[misc]
            if allowed:
                exc = HTTPException(405, "Method Not Allowed", {"Allow": ", ".join(allowed)})
                return self.send_error(scope, receive, send, exc)
            return self.send_error(scope, receive, send, HTTPException(404, "Not Found"))
        if kind == "lifespan":
            return self._run_lifespan(receive, send)
        if kind == "websocket":
            route, values, _ = self._websocket_tree.lookup("WEBSOCKET", scope["path"])
            if route is not None:
                return route.handler(scope, receive, send, values)  # type: ignore[misc]
            return send({"type": "websocket.close", "code": 1000, "reason": ""})  # servers answer 403
        return _nothing()

    # --- routes ----------------------------------------------------------------------------------------
    def add_api_route(self, path: str, endpoint: Callable[..., Any], methods: Sequence[str], **kwargs: Any) -> Route:
        """Register ``endpoint``; its signature is compiled now, so a bad parameter fails here."""
        route = Route(path, endpoint, methods, **kwargs)
        if self.dependencies:
            route.dependencies[:0] = self.dependencies
        self._add(route)
        return route

    def add_websocket_route(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        name: str | None = None,
        dependencies: Sequence[Depends] | None = None,
        max_message_size: int | None = None,
    ) -> WebSocketRoute:
        """Register an ``async def`` WebSocket handler; its signature is compiled now, so a bad parameter
        fails here. ``max_message_size`` overrides ``websocket_max_size`` for this route."""
        route = WebSocketRoute(path, endpoint, name=name, dependencies=dependencies, max_message_size=max_message_size)
        if self.dependencies:
            route.dependencies[:0] = self.dependencies
        self._add(route)
        return route

    def route_for(self, method: str, path: str) -> Route | None:
        """The HTTP route that serves ``method`` on ``path``, or None: what the app's own dispatch would pick,
        for code that sees a request without its matched route (the metrics middleware, outside the app)."""
        route: Route | None = self._tree.lookup(method, path)[0]
        return route

    def _add(self, route: Route | WebSocketRoute) -> None:
        if isinstance(route, WebSocketRoute):
            route.handler = build_websocket_handler(route, self)
            self._websocket_tree.insert(route)  # type: ignore[arg-type]
            self._websocket_routes.append(route)
            return
        route.handler = build_handler(route, self)
        if self._docs_routes:
            self._give_way(route)
        self._tree.insert(route)
        self._routes.append(route)
        self.openapi_generator.add_route(route)

    def _give_way(self, route: Route) -> None:
        """A route of the user's on the URL of a docs page replaces that page (with a warning), rather than
        being shadowed by it: the docs are a convenience, the user's route is the API."""
        path = _normal(route.path)
        for method in route.methods:
            docs = self._docs_routes.pop((path, method), None)
            if docs is None:
                continue
            self._tree.remove(docs)
            self._routes.remove(docs)
            self.openapi_generator.remove_route(docs)
            docs_logger.warning(
                "%s %s is served by %s instead of the docs page %s; set that URL to None or another path in "
                "openapi_config to silence this",
                method,
                route.path,
                route.name,
                docs.name,
            )

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI schema as a dict (built once; rebuilt after routes are added). ``/openapi.json`` serves
        what this returns, so assigning ``app.openapi = custom_function`` customises it, as in FastAPI."""
        return self.openapi_generator.get_openapi_schema()

    @property
    def websocket_routes(self) -> list[WebSocketRoute]:
        """The WebSocket routes (kept apart from ``routes``: they have no method and no OpenAPI entry)."""
        return list(self._websocket_routes)

    def include_router(
        self,
        router: Router,
        *,
        prefix: str = "",
        tags: Sequence[str] | str = (),
        dependencies: Sequence[Depends] = (),
    ) -> None:
        """Add the router's routes as they are now (routes added to it later are not seen)."""
        if not isinstance(router, Router):
            raise TypeError("Expected Router instance")
        for route in router.routes:
            route = prefixed_route(router, route, prefix, tags, [*self.dependencies, *dependencies])
            self._add(route)

    @property
    def routes(self) -> list[dict[str, Any]]:
        """One dict per path and method: ``{"path", "method", "func", "name", ...}`` (as the existing framework)."""
        return [route.as_dict(method) for route in self._routes for method in route.methods]

    # --- dependencies ----------------------------------------------------------------------------------
    def override_dependency(
        self, override: Callable[..., Any], exit_scope: str | None = None, websocket: bool = False
    ) -> Dependency:
        """The compiled form of an entry of ``dependency_overrides`` (compiled once, on first use), with the
        ``Depends(scope=...)`` of the dependency it replaces, for the kind of route (HTTP or WebSocket)."""
        key = (override, exit_scope, websocket)
        compiled = self._overrides.get(key)
        if compiled is None:
            compiled = self._overrides[key] = compile_dependency(
                override, frozenset(), strict=self.strict, exit_scope=exit_scope, websocket=websocket
            )
        return compiled

    def register_instance(self, cls: type, instance: Any) -> None:
        """Make ``instance`` the app's one instance of the singleton ``@injectable`` class ``cls`` (built
        outside, e.g. with configuration the constructor cannot get). Other scopes build a new object per
        request or per use, so an instance given here would never be used: that is a TypeError."""
        if injectable_scope(cls) != SCOPE_SINGLETON:
            raise TypeError(
                f"register_instance needs an @injectable singleton class, not {getattr(cls, '__qualname__', cls)!r}; "
                "use app.dependency_overrides for other dependencies"
            )
        self.singletons[cls] = instance

    def get_instance(self, cls: type) -> Any:
        """The app's instance of the singleton class ``cls``, if registered or built already; else None."""
        return self.singletons.get(cls)

    # --- middleware ------------------------------------------------------------------------------------
    def add_middleware(self, middleware_class: type, **options: Any) -> None:
        """Wrap the app in a standard ASGI middleware (``cls(app, **options)``); the last added runs first."""
        self._middleware.append((middleware_class, options))
        self._stack = None

    def middleware(self, middleware_type: str = "http") -> Callable[[F], F]:
        """Register an async middleware function, ``(request, call_next)`` or ``(scope, receive, send, app)``,
        for ``"http"``, ``"websocket"``, ``"lifespan"`` or every (``"*"``) scope; see ``middlewares/core.py``."""

        def decorator(func: F) -> F:
            self.add_middleware(create_decorated_middleware_class(func, middleware_type))
            return func

        return decorator

    @property
    def middleware_stack(self) -> list[dict[str, Any]]:
        """The registered middlewares, as the existing framework listed them: ``{"func": cls, "options": {...}}``."""
        return [{"func": cls, "options": options} for cls, options in self._middleware]

    # --- errors ----------------------------------------------------------------------------------------
    def exception_handler(self, exc_class_or_status: type[BaseException] | int) -> Callable[[F], F]:
        """Register ``handler(request, exc)`` (sync or async) for an exception class or an HTTP status code.

        The most specific class in the exception's MRO wins, whatever the registration order.
        """

        def decorator(func: F) -> F:
            self.add_exception_handler(exc_class_or_status, func)
            return func

        return decorator

    def add_exception_handler(self, exc_class_or_status: type[BaseException] | int, handler: ExceptionHandler) -> None:
        self._exception_handlers[exc_class_or_status] = handler

    def _handler_for(self, exc: BaseException) -> ExceptionHandler | None:
        handlers = self._exception_handlers
        starlette = sys.modules.get("starlette.exceptions")
        foreign_http = starlette is not None and isinstance(exc, starlette.HTTPException)
        if isinstance(exc, HTTPException) or foreign_http:
            handler = handlers.get(exc.status_code)  # type: ignore[attr-defined]
            if handler is not None:
                return handler
        for cls in type(exc).__mro__:
            if foreign_http and cls in (Exception, BaseException):
                return handlers[HTTPException]  # Starlette's HTTPException is served like ours
            if cls in handlers:
                return handlers[cls]
        return None

    async def handle_exception(self, request: Request, exc: Exception) -> Any:
        """The one place an exception becomes a response. Unexpected ones are logged with their traceback."""
        handler = self._handler_for(exc)
        if handler is None or handler in (self._exception_handlers.get(Exception),):
            logger.error("Unhandled error in %s %s", request.method, request.scope["path"], exc_info=exc)
        if handler is None:
            return internal_server_error_response()
        try:
            if is_async_callable(handler):
                response = await handler(request, exc)
            else:
                response = await self.endpoint_pool.run(handler, request, exc)
            if isinstance(response, Response) or is_foreign_response(response):
                return response
            raise TypeError(f"Exception handler {handler!r} returned {type(response).__name__}, not a Response")
        except Exception as error:
            logger.error("Exception handler failed while handling %r", exc, exc_info=error)
            return internal_server_error_response()

    async def send_error(self, scope: dict[str, Any], receive: Any, send: Any, exc: Exception) -> None:
        if isinstance(exc, ClientDisconnect):
            return
        response = await self.handle_exception(Request(scope, receive), exc)
        try:
            await send_any(response, scope, receive, send)
        except Exception as error:
            logger.error("Sending the error response of %s %s failed", scope["method"], scope["path"], exc_info=error)

    # --- background tasks ------------------------------------------------------------------------------
    def on_task_error(self, hook: ErrorHook) -> ErrorHook:
        """Register ``hook(failure)`` (sync or async), called for every background task that finally fails."""
        return self.background.on_error(hook)

    def periodic(
        self,
        every: float | dt.timedelta | None = None,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        name: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        retry_delay: float | None = None,
        overlap: bool = False,
        catch_up: bool = False,
        jitter: float | dt.timedelta | None = None,
        durable: bool | None = None,
    ) -> Callable[[F], F]:
        """Run the decorated function (sync or async, no arguments) at every tick of a schedule, once per tick
        for the whole deployment: ``every=timedelta(minutes=5)`` (ticks on multiples of the interval since the
        Unix epoch) or ``cron="0 3 * * *"`` read in ``timezone`` (UTC by default; cron needs the ``cron`` extra).

        Each run is a background task with the task options ``name``, ``timeout``, ``retries`` and
        ``retry_delay``: in this app's runner, or a durable job when the app has a ``task_backend`` (unless
        ``durable=False``). A tick is skipped (logged, counted) while the previous run still runs, unless
        ``overlap=True``; ticks missed while no process ran the schedule are not run later unless
        ``catch_up=True`` (which runs the latest one); ``jitter`` delays each tick by up to that many seconds.
        Mistakes raise here, at declaration. See docs/scheduling.md for the guarantees.
        """
        given = {"timeout": timeout, "retries": retries, "retry_delay": retry_delay}
        options = {key: value for key, value in given.items() if value is not None}

        def decorator(func: F) -> F:
            self.scheduler.add(
                PeriodicJob.declare(
                    func,
                    every=every,
                    cron=cron,
                    timezone=timezone,
                    name=name,
                    options=options,
                    overlap=overlap,
                    catch_up=catch_up,
                    jitter=jitter,
                    durable=durable,
                )
            )
            return func

        return decorator

    # --- lifespan --------------------------------------------------------------------------------------
    def on_event(self, event_type: str) -> Callable[[F], F]:
        """Register a sync or async ``startup`` or ``shutdown`` handler."""

        def decorator(func: F) -> F:
            self.add_event_handler(event_type, func)
            return func

        return decorator

    def add_event_handler(self, event_type: str, func: Callable[[], Any]) -> None:
        if event_type == "startup":
            self._on_startup.append(func)
        elif event_type == "shutdown":
            self._on_shutdown.append(func)
        else:
            raise ValueError(f"Invalid event type: {event_type}. Use 'startup' or 'shutdown'.")

    async def _call_hook(self, func: Callable[[], Any]) -> None:
        result = func() if is_async_callable(func) else await self.endpoint_pool.run(func)
        if inspect.isawaitable(result):
            await result

    async def startup(self) -> None:
        """Startup handlers in order, then the ``lifespan`` context; then background tasks detach from requests."""
        for func in self._on_startup:
            await self._call_hook(func)
        if self._lifespan is not None:
            made = self._lifespan(self)
            if inspect.isasyncgen(made):  # an undecorated ``async def`` generator function's generator
                context: contextlib.AbstractAsyncContextManager[Any] = contextlib.asynccontextmanager(lambda: made)()
            else:
                context = made  # type: ignore[assignment]  # not an async generator: a context manager
            value = await context.__aenter__()
            self._lifespan_context = context
            if isinstance(value, dict):
                for key, item in value.items():
                    setattr(self.state, key, item)
        self.background.start()
        self.tasks.start()
        self.scheduler.start()
        if self._websocket_routes:
            self.open_websockets.install()
            warn_if_the_server_cannot_serve(route.path for route in self._websocket_routes)

    async def shutdown(self) -> None:
        """Close open WebSockets (1001), drain background tasks (each up to ``shutdown_timeout``), exit the
        lifespan, then shutdown handlers.

        Tasks drain first because they may use what the lifespan set up. Every shutdown handler runs even if
        the lifespan exit or another handler fails; the first failure is re-raised at the end.
        """
        errors: list[BaseException] = []
        await self.scheduler.stop()  # no tick starts from now on
        if self._websocket_routes:
            await self.open_websockets.shutdown()
        unfinished = self.background.unfinished()
        if unfinished:  # else the silence of a long drain looks like a hang
            timeout = self.background.shutdown_timeout
            lifespan_logger.info(
                "Waiting up to %.1fs (until %s) for %d background task(s) to finish: %s%s",
                timeout,
                time.strftime("%H:%M:%S", time.localtime(time.time() + timeout)),
                len(unfinished),
                ", ".join(unfinished[:10]),
                f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else "",
            )
        try:
            await self.background.shutdown()
        except Exception as exc:
            errors.append(exc)
        await self.scheduler.release()  # drained: another process may take the periodic jobs over now
        for close in (getattr(self.task_backend, "aclose", None), self.tasks.aclose):
            if close is not None:  # every request has been answered: its Redis connections can go
                try:
                    await close()
                except Exception as exc:
                    errors.append(exc)
        if self._lifespan_context is not None:
            context, self._lifespan_context = self._lifespan_context, None
            try:
                await context.__aexit__(None, None, None)
            except Exception as exc:
                lifespan_logger.error("The lifespan failed on exit", exc_info=exc)
                errors.append(exc)
        for func in self._on_shutdown:
            try:
                await self._call_hook(func)
            except Exception as exc:
                lifespan_logger.error("Shutdown handler %s failed", getattr(func, "__name__", func), exc_info=exc)
                errors.append(exc)
        if errors:
            raise errors[0]

    async def _run_lifespan(self, receive: Any, send: Any) -> None:
        await receive()
        try:
            await self.startup()
        except BaseException as exc:
            lifespan_logger.error("Application startup failed", exc_info=exc)
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            raise
        if self.gc_freeze:
            _freeze_startup_heap()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        try:
            await self.shutdown()
        except BaseException as exc:
            await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
            raise
        await send({"type": "lifespan.shutdown.complete"})

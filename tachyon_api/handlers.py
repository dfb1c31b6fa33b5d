"""The handler that serves one matched request or WebSocket connection, built once per route.

The life of a request after the app matched it (:func:`build_handler`): run the compiled plan (extract the
parameters, resolve dependencies), call the endpoint (off the loop if it is sync), render the return value,
store its durable tasks, run the exit code of ``Depends(..., scope="function")`` dependencies (commit, or
roll back with the failure raised at their ``yield``), send the response, run the other dependency cleanups,
then hand the in-process tasks to the app's runner. A failure up to the exits of the function scope still
chooses the response; after that it can only be logged. :func:`build_websocket_handler` does the same for a
connection, and chooses how it closes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._utils import is_async_callable
from .compiler import (
    Context,
    WebSocketContext,
    compile_dependency,
    compile_endpoint,
)
from .exceptions import HTTPException, RequestError, RequestValidationError
from .extractors import PathNotFound
from .idempotency import Credentials, credentials_of
from .requests import HTTPConnection, Request
from .responses import PLAIN_DATA, JSONResponse, Response, is_foreign_response, make_renderer, send_any
from .routing import WAIT_FOR_TASKS, Handler, Route, WebSocketRoute
from .tasks import BackgroundTask, BackgroundTasks, collect, has_durable, store_durable
from .websockets import (
    CONNECTED,
    CONNECTING,
    DISCONNECTS,
    WebSocket,
    WebSocketClose,
    WebSocketException,
    close_reason,
    is_foreign_websocket_exception,
)

if TYPE_CHECKING:
    from .applications import Tachyon
    from .tasks import BackgroundRunner

__all__ = ["build_handler", "build_websocket_handler", "send_response", "ResponseFailed"]

logger = logging.getLogger("tachyon_api.errors")
task_logger = logging.getLogger("tachyon_api.background")


class ResponseFailed(Exception):
    """Sending a response object failed; the failure has been answered (500) or logged."""


async def send_response(app: Tachyon, response: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Send a response object (ours or Starlette's). A failure before the first byte becomes an error
    response through the app's exception handlers; a failure after it can only be logged."""
    started = False

    async def tracking_send(message: dict[str, Any]) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await send_any(response, scope, receive, tracking_send)
    except Exception as exc:
        if not started:
            await app.send_error(scope, receive, send, exc)
        else:
            logger.error("Sending the response of %s %s failed", scope["method"], scope["path"], exc_info=exc)
        raise ResponseFailed() from exc


def build_handler(route: Route, app: Tachyon) -> Handler:
    """Compile ``route`` for ``app``: everything decided here is not paid again per request."""
    func = route.endpoint
    path_names = frozenset(route.param_names)
    strict = route.options.get("strict", app.strict)  # per route: @app.post(..., strict=False)
    plan = route.plan = compile_endpoint(func, path_names, strict)
    guards = route.guards = [
        compile_dependency(dep.dependency, path_names, use_cache=dep.use_cache, strict=strict, exit_scope=dep.scope)
        for dep in route.dependencies
        if dep.dependency is not None
    ]
    is_async = is_async_callable(func)
    # sync_to_thread=False (per route, or Tachyon(sync_to_thread=False)): a `def` endpoint the user knows never
    # blocks runs on the loop, saving the thread hop; one that blocks then stalls every request (docs).
    on_loop = not is_async and not route.options.get("sync_to_thread", app.sync_to_thread)
    status = route.status_code or 200
    render = make_renderer(status, route.response_model)
    names = route.param_names
    no_params = not plan.steps and not guards
    # An endpoint whose only parameter is BackgroundTasks (the seed chapter's shape): no per-request Context.
    tasks_only = not guards and not names and len(plan.steps) == 1 and plan.steps[0][1] is Context.tasks
    tasks_param = plan.steps[0][0] if tasks_only else ""
    pool = app.endpoint_pool
    runner = app.background
    holds = app.tasks
    credentials = credentials_of(plan, guards)  # where its requests carry credentials: an idempotency key's scope

    async def handle(scope: dict[str, Any], receive: Any, send: Any, values: Sequence[str]) -> None:
        ctx: Context | None = None
        background: BackgroundTasks | None = None
        try:
            if no_params:
                if is_async:
                    result = await func()
                elif on_loop:
                    result = func()
                else:
                    result = await pool.run_merging_context(func)
            else:
                if tasks_only:
                    background = BackgroundTasks(backend=app.task_backend)  # read now: it may be set after routes
                    kwargs = {tasks_param: background}
                else:
                    # The tree matched these names, one value each; strict= would cost the request path a check.
                    scope["path_params"] = path_params = dict(zip(names, values))  # noqa: B905
                    ctx = Context(app, scope, receive, path_params)
                    for guard in guards:
                        await guard.resolve(ctx)
                    kwargs = await plan.solve(ctx) if plan.is_async else plan.solve_now(ctx)
                    if ctx.errors:
                        raise RequestValidationError(ctx.errors)
                if is_async:
                    result = await func(**kwargs)
                elif on_loop:
                    result = func(**kwargs)
                else:
                    result = await pool.run_merging_context(func, **kwargs)
            if ctx is not None:
                background = ctx.background
            if type(result) in PLAIN_DATA or not (isinstance(result, Response) or is_foreign_response(result)):
                headers, body = render(result)
                response = None
                # The injected tasks, copied (a list, never None when a task was added)
                tasks = background.batch() if background is not None else None
            else:
                response = result
                tasks = collect(result.background, background)
            durable = tasks if tasks and has_durable(tasks) else None
            if durable:  # stored now, before the response: a 2xx means they are stored
                joined: list[BackgroundTask] = []
                request = ctx.request if ctx is not None else Request(scope, receive)
                held = ctx.held if ctx is not None and ctx.held else ()  # the request's transaction, to join
                tasks = await store_durable(durable, request, scope["method"], credentials, held=held, joined=joined)
                if joined:  # they commit or roll back with the data: nothing to warn about below
                    durable = [task for task in durable if task not in joined]
            if ctx is not None and ctx.early is not None:  # commit, now that the tasks are safe
                await _exit_function_scope(ctx, durable)
            if tasks and (holds.always or BackgroundTask.held) and (pending := holds.accept(tasks)) is not None:
                await pending  # held tasks get their status record before the response
            if tasks and runner.full and not await runner.admit(tasks, scope["method"], scope["path"]):
                tasks = []  # dropped by the overflow policy (logged)
        except Exception as exc:
            if ctx is not None and ctx.early is not None:  # roll back, with the failure raised at the yield
                try:
                    await ctx.exit_function_scope(exc)
                except Exception as error:  # what the exit code raised (e.g. an HTTPException) is the answer
                    exc = error
            try:
                await app.send_error(scope, receive, send, exc)
            finally:
                if ctx is not None:
                    await ctx.close(exc)
            return
        except BaseException as exc:  # cancelled (client gone, a timeout, shutdown): unwind both stacks now
            if ctx is not None:
                try:
                    if ctx.early is not None:  # roll back: the cancellation is raised at their yield
                        await ctx.exit_function_scope(exc)
                finally:
                    await ctx.close(exc)
            raise

        try:
            if response is None:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
            else:
                await send_response(app, response, scope, receive, send)
        except ResponseFailed:  # logged or answered already; the request failed, so its tasks do not run
            if tasks:
                holds.abandon(tasks, "its request's response could not be sent")
            tasks = None
        finally:
            try:
                # Cleanups and uploaded files close before the tasks are handed over, with or without a
                # lifespan, so a task sees the same thing in tests as in production.
                if ctx is not None and ctx.needs_close:
                    await ctx.close()
            finally:
                if tasks:
                    wait = WAIT_FOR_TASKS in (scope.get("extensions") or ())
                    inline = runner.submit(tasks, scope["method"], scope["path"], wait=wait)
                    if inline is not None:
                        await inline

    return handle


async def _exit_function_scope(ctx: Context, stored: list[BackgroundTask] | None) -> None:
    """The exits of the function scope after success. If one fails (a commit), the client gets the error, and
    the durable tasks stored just before run against data that was never committed: say so in the log."""
    try:
        await ctx.exit_function_scope(None)
    except Exception:
        if stored:
            task_logger.warning(
                "Durable task(s) %s of request %s %s were stored, then a scope='function' dependency failed on "
                "exit: they will not find what this request wrote (tasks load data by id and do nothing when "
                "it is absent)",
                ", ".join(task.name for task in stored if task.backend is not None),
                ctx.scope["method"],
                ctx.scope["path"],
            )
        raise


# --- WebSockets ----------------------------------------------------------------------------------------------
ws_logger = logging.getLogger("tachyon_api.websockets")
_INTERNAL_ERROR = {"success": False, "error": "Internal Server Error", "code": "INTERNAL_SERVER_ERROR"}


def build_websocket_handler(route: WebSocketRoute, app: Tachyon) -> Handler:
    """Compile a WebSocket route for ``app``: parameters and dependencies are classified here, once.

    Per connection: dependencies and parameters are solved before the handler runs (a path value that does
    not convert closes with 1008 before ``accept``); the handler runs; whatever way it ends, the socket is
    closed (1000 if the handler left it open, 1011 for an error), then dependency cleanups run, then the
    injected background tasks go to the app's runner.
    """
    func = route.endpoint
    if not is_async_callable(func):
        raise TypeError(f"WebSocket handler {route.name} must be an 'async def' function")
    path_names = frozenset(route.param_names)
    plan = compile_endpoint(func, path_names, websocket=True)
    guards = [
        compile_dependency(dep.dependency, path_names, use_cache=dep.use_cache, websocket=True)
        for dep in route.dependencies
        if dep.dependency is not None
    ]
    names = route.param_names
    max_size = route.max_message_size if route.max_message_size is not None else app.websocket_max_size
    sockets = app.open_websockets
    runner = app.background
    credentials = credentials_of(plan, guards)

    async def handle(scope: dict[str, Any], receive: Any, send: Any, values: Sequence[str]) -> None:
        scope["path_params"] = path_params = dict(zip(names, values))  # noqa: B905 - one value per name
        websocket = WebSocket(scope, receive, send, max_size)
        ctx = WebSocketContext(app, websocket, path_params)
        sockets.add(websocket)
        failure: BaseException | None = None
        try:
            for guard in guards:
                await guard.resolve(ctx)
            kwargs = await plan.solve(ctx)
            if ctx.errors:
                raise RequestValidationError(ctx.errors)
            await func(**kwargs)
            if ctx.early is not None:  # scope="function" dependencies exit as the handler ends (a commit)
                await ctx.exit_function_scope(None)
            state = websocket.application_state
            if state is CONNECTED:
                await websocket.close_for_handler(WebSocketClose.NORMAL)
            elif state is CONNECTING:  # returned without accepting: refuse the handshake
                await _reject(websocket, WebSocketClose.NORMAL, "")
        except BaseException as exc:
            if ctx.early is not None:
                try:  # a client that left is a normal end (commit); an error is raised at their yield
                    await ctx.exit_function_scope(None if isinstance(exc, DISCONNECTS) else exc)
                except Exception as error:  # what the exit code raised is how the socket ends
                    if isinstance(exc, Exception):
                        exc = error
                    else:
                        ws_logger.error("Dependency exit failed in WEBSOCKET %s", scope["path"], exc_info=error)
            failure = exc
            await _close_after(app, websocket, exc)
            # Cancelled by someone else, or interrupted: propagate (the cleanups below still run). Cancelled
            # by the app at the shutdown deadline: logged there already, the call ends quietly.
            if not isinstance(exc, Exception) and not sockets.cancelled(websocket):
                raise
        finally:
            sockets.discard(websocket)
            ended_well = failure is None or isinstance(failure, DISCONNECTS)  # a client leaving is no error
            try:
                await ctx.close(None if ended_well or not isinstance(failure, Exception) else failure)
            finally:
                if ended_well and ctx.background is not None and len(ctx.background):
                    await _hand_over(runner, list(ctx.background), scope, credentials)

    return handle


async def _hand_over(
    runner: BackgroundRunner, tasks: list[BackgroundTask], scope: dict[str, Any], credentials: Credentials
) -> None:
    """The handler's injected background tasks, after the socket is closed and cleanups ran."""
    path = scope["path"]
    try:
        if has_durable(tasks):
            tasks = await store_durable(tasks, HTTPConnection(scope), "WEBSOCKET", credentials)
        holds = scope["app"].tasks
        if holds.always or BackgroundTask.held:
            pending = holds.accept(tasks)
            if pending is not None:
                await pending
        if runner.full and not await runner.admit(tasks, "WEBSOCKET", path):
            return
    except Exception as exc:  # the socket is closed: nobody to answer, so log it
        ws_logger.error("Background tasks of WEBSOCKET %s could not be handed over", path, exc_info=exc)
        return
    wait = WAIT_FOR_TASKS in (scope.get("extensions") or ())
    inline = runner.submit(tasks, "WEBSOCKET", path, wait=wait)
    if inline is not None:
        await inline


async def _reject(websocket: WebSocket, code: int, reason: str) -> None:
    """Refuse a handshake: a close before ``accept`` (servers answer it with HTTP 403)."""
    try:
        await websocket.send({"type": "websocket.close", "code": code, "reason": reason})
    except Exception:
        pass


async def _deny(app: Tachyon, websocket: WebSocket, exc: BaseException | None) -> bool:
    """Refuse a handshake with an HTTP response, where the server supports denial responses (False if it
    does not): the one the app's exception handlers give an HTTP exception ``exc``, else a plain 500."""
    if "websocket.http.response" not in (websocket.scope.get("extensions") or {}):
        return False
    if exc is not None:
        response = await app.handle_exception(Request(websocket.scope), exc)  # type: ignore[arg-type]
    else:
        response = JSONResponse(_INTERNAL_ERROR, 500)
    try:
        await websocket.send_denial_response(response)
    except Exception as error:
        ws_logger.error("Sending the denial response of WEBSOCKET %s failed", websocket.scope["path"], exc_info=error)
    return True


async def _close_after(app: Tachyon, websocket: WebSocket, exc: BaseException) -> None:
    """Close the socket the way ``exc`` calls for; never raises, never hangs.

    - the client left (``WebSocketDisconnect``): nothing to send;
    - ``WebSocketException(code, reason)``: that close;
    - a path value that does not convert, an invalid query/header/cookie: 1008 before ``accept``;
    - ``HTTPException`` before ``accept`` (a guard saying 401, say): the app's HTTP error response where the
      server supports denial responses, else 1008; after ``accept``: 1008 for a 4xx, 1011 for a 5xx;
    - cancellation (the shutdown deadline): 1001;
    - anything else: logged with its traceback, then 1011 (an HTTP 500 before ``accept`` where supported).
    """
    if isinstance(exc, DISCONNECTS):
        return
    state = websocket.application_state
    path = websocket.scope["path"]
    if state is not CONNECTED and state is not CONNECTING:  # closed (or denied) already: only log errors
        if isinstance(exc, Exception) and not isinstance(exc, WebSocketException):
            ws_logger.error("Error in WEBSOCKET %s after it was closed", path, exc_info=exc)
        return
    if isinstance(exc, WebSocketException) or is_foreign_websocket_exception(exc):
        code, reason = exc.code, getattr(exc, "reason", "") or ""  # type: ignore[attr-defined]
    elif isinstance(exc, asyncio.CancelledError):
        code, reason = WebSocketClose.GOING_AWAY, "Server shutting down"
    elif isinstance(exc, (PathNotFound, RequestError)):
        reason = str(exc) if isinstance(exc, RequestError) else f"Invalid path parameter '{exc.parameter}'"
        code = WebSocketClose.POLICY_VIOLATION
    elif isinstance(exc, HTTPException) or (
        (starlette := sys.modules.get("starlette.exceptions")) is not None and isinstance(exc, starlette.HTTPException)
    ):
        status = exc.status_code
        if state is CONNECTING and await _deny(app, websocket, exc):
            return
        if status >= 500:
            ws_logger.error("HTTPException %d in WEBSOCKET %s", status, path, exc_info=exc)
        code = WebSocketClose.POLICY_VIOLATION if status < 500 else WebSocketClose.INTERNAL_ERROR
        reason = str(exc.detail)
    else:
        ws_logger.error("Unhandled error in WEBSOCKET %s", path, exc_info=exc)
        if state is CONNECTING and isinstance(exc, Exception) and await _deny(app, websocket, None):
            return
        code, reason = WebSocketClose.INTERNAL_ERROR, "Internal Server Error"
    if state is CONNECTING:
        await _reject(websocket, code, close_reason(reason))
    else:
        await websocket.close_for_handler(code, reason)

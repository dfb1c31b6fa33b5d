"""Signature to plan: everything about a handler that can be decided before the first request.

When a route is registered, :func:`compile_endpoint` classifies every parameter of the handler (and,
recursively, of its dependencies) once, and turns each into a small *extractor*. A request then runs the
plan (:meth:`Plan.solve`) and nothing else; an endpoint without parameters runs an empty plan.

Classification of a parameter, first rule that matches:

1. annotated ``WebSocket`` (ours or Starlette's), or named ``websocket`` without annotation, on a WebSocket
   route: the socket; annotated ``Request`` (ours or Starlette's) on an HTTP route: the request; annotated
   ``HTTPConnection``: either;
2. annotated ``BackgroundTasks`` (or ``Optional[...]`` of it, or a subclass): the request's shared tasks;
3. default ``Depends(...)``, or an ``@injectable`` class annotation: a dependency;
4. default is a marker (``Query``, ``Path``, ``Header``, ``Cookie``, ``Body``, ``Form``, ``File``): that source;
5. without a marker, as FastAPI does: a name of the path template is a path parameter; ``UploadFile`` (or a
   list of them) is a file field; a scalar, ``Optional`` scalar or list of scalars is a query parameter; a
   ``Struct``, dataclass or ``dict`` (or a list/Optional of one) is the JSON body;
6. anything else is a ``TypeError`` at registration naming the function and the parameter; so is a request
   body, a form, a file or a ``Request`` asked for on a WebSocket route, and a ``WebSocket`` on an HTTP route.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from ._utils import callable_name, is_async_callable
from .converters import describe_validation_error, effective_type
from .datastructures import Headers, QueryParams
from .dependencies import SCOPE_FUNCTION, SCOPE_REQUEST, SCOPE_SINGLETON, SCOPE_TRANSIENT, Depends, injectable_scope
from .extractors import (
    MAX_LIST_ITEMS,
    Extractor,
    FieldError,
    PathNotFound,
    body_extractor,
    foreign_websocket,
    form_extractor,
    form_json_extractor,
    path_extractor,
    value_extractor,
)
from .introspection import (
    EMPTY,
    is_background_type,
    is_http_only,
    is_model,
    is_request_type,
    is_scalar,
    is_upload,
    is_websocket_type,
    list_item,
    split_annotated,
    type_hints,
    type_name,
    unwrap_optional,
)
from .params import Param
from .requests import HTTPConnection, Request, parsed_request
from .tasks import BackgroundTasks
from .websockets import WebSocket

if typing.TYPE_CHECKING:
    from .applications import Tachyon

# describe_validation_error, MAX_LIST_ITEMS and PathNotFound live in converters.py and extractors.py; they stay
# importable from here, where they were (the docs name tachyon_api.compiler.PathNotFound).
__all__ = [
    "Plan",
    "Parameter",
    "Context",
    "WebSocketContext",
    "Dependency",
    "compile_endpoint",
    "compile_dependency",
    "describe_validation_error",
    "MAX_LIST_ITEMS",
    "PathNotFound",
]

logger = logging.getLogger("tachyon_api.errors")


# --- the request-time context ---------------------------------------------------------------------------
class Context:
    """What one request's plan works with: the request, its errors, its dependency cache and cleanups.

    ``stack`` holds the exit code that runs after the response; ``early`` that of the dependencies declared
    ``Depends(..., scope="function")``, which runs before it (see :meth:`exit_function_scope`); ``held`` the
    values those dependencies yielded (a database session whose transaction they commit on exit), so that a
    durable backend can store the request's tasks in that same transaction.
    """

    __slots__ = (
        "app",
        "scope",
        "receive",
        "path_params",
        "_request",
        "_query",
        "_headers",
        "errors",
        "cache",
        "stack",
        "early",
        "held",
        "background",
    )
    is_websocket = False

    def __init__(self, app: Tachyon, scope: dict[str, Any], receive: Any, path_params: dict[str, str]) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.path_params = path_params
        self._request: Request | None = None
        self._query: QueryParams | None = None
        self._headers: Headers | None = None
        # Made on first use: most requests have no invalid field and no cached dependency.
        self.errors: list[dict[str, Any]] | None = None
        self.cache: dict[Any, Any] | None = None
        self.stack: contextlib.AsyncExitStack | None = None
        self.early: contextlib.AsyncExitStack | None = None
        self.held: list[Any] | None = None
        self.background: BackgroundTasks | None = None

    @property
    def request(self) -> Request:
        if self._request is None:
            self._request = parsed_request(self.scope, self.receive, self._query, self._headers)
        return self._request

    # Query and header parameters read these, not ``request``: no Request object (and nothing to close) for an
    # endpoint that only takes parameters.
    def query_params(self) -> QueryParams:
        """The query string, parsed once per request."""
        query = self._query
        if query is None:
            query = self._query = QueryParams(self.scope.get("query_string", b""))
        return query

    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers(self.scope["headers"])
        return headers

    def cookies(self) -> QueryParams:
        """The cookies as a multi-dict (one value per name)."""
        return QueryParams(list(self.request.cookies.items()))

    def fail(self, error: dict[str, Any]) -> None:
        """Record one invalid field; the request is answered 422 with every one recorded."""
        if self.errors is None:
            self.errors = [error]
        else:
            self.errors.append(error)

    def tasks(self) -> BackgroundTasks:
        if self.background is None:
            self.background = BackgroundTasks(backend=self.app.task_backend)
        return self.background

    def exit_stack(self, early: bool) -> contextlib.AsyncExitStack:
        """The stack a ``yield`` dependency's exit code goes on: before the response (early) or after it."""
        if early:
            if self.early is None:
                self.early = contextlib.AsyncExitStack()
            return self.early
        if self.stack is None:
            self.stack = contextlib.AsyncExitStack()
        return self.stack

    def hold(self, value: Any) -> None:
        """Keep what a ``scope="function"`` dependency yielded: its exit (a commit) runs after the durable
        store, so a backend may store the request's tasks in that transaction (see ``tasks/durable.py``)."""
        if self.held is None:
            self.held = [value]
        else:
            self.held.append(value)

    async def exit_function_scope(self, exc: BaseException | None) -> None:
        """Run the exit code of the ``scope="function"`` dependencies, before the response is chosen for good.

        ``exc`` (the endpoint's error, or the durable store's) is raised at their ``yield``, so they roll back.
        Whatever their exit code raises (a failed commit, an ``HTTPException`` it translates to) propagates:
        the response has not been sent, so the client gets it.
        """
        stack, self.early, self.held = self.early, None, None
        if stack is None:
            return
        if exc is None:
            await stack.aclose()
        else:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)

    @property
    def needs_close(self) -> bool:
        """Whether :meth:`close` has anything to do (cleanups, or uploaded files: a request without them skips
        its await)."""
        return self.stack is not None or (self._request is not None and self._request.parsed_form is not None)

    async def close(self, exc: BaseException | None = None) -> None:
        """Run dependency cleanups (after the response), then close uploaded files.

        The response is gone by now, so a failing cleanup can only be logged (with its traceback).
        """
        try:
            if self.stack is not None:
                stack, self.stack = self.stack, None
                if exc is None:
                    await stack.aclose()
                else:
                    await stack.__aexit__(type(exc), exc, exc.__traceback__)
        except Exception as error:
            if error is not exc:
                logger.error(
                    "Dependency cleanup failed after %s %s",
                    self.scope.get("method", "WEBSOCKET"),
                    self.scope["path"],
                    exc_info=error,
                )
        finally:
            if self._request is not None:
                await self._request.close()


class WebSocketContext(Context):
    """The context of one WebSocket connection: query, header and cookie parameters read the socket's scope,
    and there is no request body to close."""

    __slots__ = ("websocket",)
    is_websocket = True

    def __init__(self, app: Tachyon, websocket: WebSocket, path_params: dict[str, str]) -> None:
        super().__init__(app, websocket.scope, websocket.receive, path_params)
        self.websocket = websocket

    @property
    def request(self) -> WebSocket:  # type: ignore[override]
        return self.websocket


class Parameter:
    """What registration decided about one request parameter, for code that describes the API (OpenAPI).

    ``type`` is the effective type (see :func:`effective_type`): the one validation uses, constraints
    included, so ``msgspec.json.schema(parameter.type)`` shows them. ``key`` is the name in the request
    (alias, header spelling); ``marker`` is the ``Query()``/``Path()``/... it was declared with, if any.
    """

    __slots__ = ("name", "source", "key", "type", "default", "required", "marker")

    def __init__(
        self, name: str, source: str, key: str, type_: Any, default: Any, required: bool, marker: Param | None
    ) -> None:
        self.name = name
        self.source = source
        self.key = key
        self.type = type_
        self.default = default
        self.required = required
        self.marker = marker

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, source={self.source!r}, key={self.key!r}, type={self.type!r})"


class Plan:
    """The compiled parameters of one callable: ``(name, extractor, is_async)`` steps.

    The body step has an empty name: it returns a dict of every body parameter at once. ``params`` records
    the request parameters of this callable, ``dependencies`` the dependencies it calls (each with its plan).
    """

    __slots__ = ("steps", "params", "dependencies", "is_async")

    def __init__(
        self,
        steps: list[tuple[str, Extractor, bool]],
        params: list[Parameter] | None = None,
        dependencies: list[Dependency] | None = None,
    ) -> None:
        self.steps = steps
        self.params = params or []
        self.dependencies = dependencies or []
        # No body and no async dependency: solve_now() gets the arguments without a coroutine.
        self.is_async = any(is_async or not name for name, _, is_async in steps)

    def solve_now(self, ctx: Context) -> dict[str, Any]:
        """:meth:`solve` for a plan whose steps are all synchronous (``is_async`` False)."""
        values: dict[str, Any] = {}
        for name, extract, _ in self.steps:
            try:
                values[name] = extract(ctx)
            except FieldError as exc:
                ctx.fail(exc.error)
        return values

    async def solve(self, ctx: Context) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, extract, is_async in self.steps:
            try:
                if not name:
                    values.update(await extract(ctx))
                else:
                    values[name] = await extract(ctx) if is_async else extract(ctx)
            except FieldError as exc:
                ctx.fail(exc.error)
        return values


# Where each source's values are: a multi-dict with ``get(key)`` (the last value) and ``getlist(key)``.
_SOURCES: dict[str, Callable[[Context], Any]] = {
    "query": Context.query_params,
    "header": Context.headers,
    "cookie": Context.cookies,
}


# --- dependencies ----------------------------------------------------------------------------------------
class Dependency:
    """A compiled dependency: its callable, kind, scope and the plan of its own parameters.

    ``scope`` is the @injectable scope (how many instances); ``exit_scope`` the ``Depends(scope=...)`` (when
    its exit code runs). ``early`` is true for a ``yield`` dependency whose exit code runs before the response,
    ``uses_early`` when it or anything it depends on has such exit code.
    """

    __slots__ = (
        "call",
        "plan",
        "is_async",
        "is_gen",
        "is_asyncgen",
        "scope",
        "use_cache",
        "name",
        "exit_scope",
        "early",
        "uses_early",
        "cache_key",
    )
    uses_early: bool  # set at the end of __init__, after the plan's dependencies were read

    def __init__(
        self, call: Any, plan: Plan, scope: str | None, use_cache: bool, exit_scope: str | None = None
    ) -> None:
        self.call = call
        self.plan = plan
        # A callable object: its __call__ method says whether it is a (async) generator.
        target = call if inspect.isroutine(call) or isinstance(call, type) else getattr(type(call), "__call__", call)  # noqa: B004
        self.is_asyncgen = inspect.isasyncgenfunction(target)
        self.is_gen = inspect.isgeneratorfunction(target)
        self.is_async = is_async_callable(call)
        self.scope = scope
        self.use_cache = use_cache
        self.name = callable_name(call)
        self.exit_scope = exit_scope
        has_exit = self.is_gen or self.is_asyncgen
        self.early = has_exit and exit_scope == SCOPE_FUNCTION
        # The same generator asked for with both scopes gives two values (two sessions), as in FastAPI.
        self.cache_key: Any = (call, SCOPE_FUNCTION) if self.early else call
        inner = next((dep for dep in plan.dependencies if dep.uses_early), None)
        if has_exit and not self.early and inner is not None:
            raise TypeError(
                f"{self.name} has exit code that runs after the response (scope 'request'), so it cannot depend "
                f"on {inner.name}, whose exit code runs before the response (scope 'function')"
            )
        self.uses_early = self.early or inner is not None

    async def resolve(self, ctx: Context) -> Any:
        app = ctx.app
        if app.dependency_overrides:
            override = app.dependency_overrides.get(self.call)
            if override is not None:
                if not callable(override):
                    return override
                return await app.override_dependency(override, self.exit_scope, ctx.is_websocket).resolve(ctx)
        if self.scope == SCOPE_SINGLETON:
            try:
                return app.singletons[self.call]
            except KeyError:
                return await self._create_singleton(ctx)
        elif self.use_cache and self.scope != SCOPE_TRANSIENT:
            cache = ctx.cache
            if cache is not None and self.cache_key in cache:
                return cache[self.cache_key]
        plan = self.plan
        kwargs = await plan.solve(ctx) if plan.is_async else plan.solve_now(ctx)
        if ctx.errors:
            # The request is invalid already: do not call anything, but let the remaining parameters be
            # checked too, so the 422 lists every failing field.
            return None
        value = await self._call(ctx, kwargs)
        if self.use_cache and self.scope != SCOPE_TRANSIENT:
            if ctx.cache is None:
                ctx.cache = {}
            ctx.cache[self.cache_key] = value
        return value

    async def _create_singleton(self, ctx: Context) -> Any:
        """Build the app's one instance; concurrent first requests wait for the same construction."""
        app = ctx.app
        pending = app.singletons_pending.get(self.call)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = app.singletons_pending[self.call] = asyncio.get_running_loop().create_future()
        try:
            kwargs = await self.plan.solve(ctx)
            if ctx.errors:  # this request is invalid; the ones waiting cannot tell, so they fail too
                raise RuntimeError(f"{self.name} could not be built: its parameters were invalid")
            value = await self._call(ctx, kwargs)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else RuntimeError(f"building {self.name} was interrupted")
            pending.set_exception(error)
            pending.exception()  # retrieved: the waiters get it, nobody else needs to
            if ctx.errors and isinstance(exc, RuntimeError):
                return None
            raise
        finally:
            del app.singletons_pending[self.call]
        app.singletons[self.call] = value
        pending.set_result(value)
        return value

    async def _call(self, ctx: Context, kwargs: dict[str, Any]) -> Any:
        if self.is_asyncgen:
            stack = ctx.exit_stack(self.early)
            value = await stack.enter_async_context(contextlib.asynccontextmanager(self.call)(**kwargs))
            if self.early:
                ctx.hold(value)
            return value
        if self.is_gen:
            stack = ctx.exit_stack(self.early)
            manager = contextlib.contextmanager(self.call)(**kwargs)
            pool = ctx.app.endpoint_pool
            value = await pool.run_merging_context(manager.__enter__)

            async def exit_in_thread(*exc_info: Any) -> bool:
                return bool(await pool.run(manager.__exit__, *exc_info))

            stack.push_async_exit(exit_in_thread)
            if self.early:
                ctx.hold(value)
            return value
        if self.is_async:
            return await self.call(**kwargs)
        value = await ctx.app.endpoint_pool.run_merging_context(self.call, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value


def compile_dependency(
    call: Any,
    path_names: frozenset[str],
    stack: tuple[Any, ...] = (),
    scope: str | None = None,
    use_cache: bool = True,
    strict: bool = True,
    exit_scope: str | None = None,
    websocket: bool = False,
) -> Dependency:
    """Compile ``call`` and, recursively, its own dependencies; a cycle, or exit code after the response that
    needs a value closed before it, is a TypeError here, not later.

    ``websocket``: for a WebSocket route (the socket can be injected; a request body cannot)."""
    if call in stack:
        chain = " -> ".join(callable_name(c) for c in (*stack, call))
        raise TypeError(f"Circular dependency detected while resolving '{callable_name(call)}': {chain}")
    if scope is None:
        scope = injectable_scope(call) or SCOPE_REQUEST
    plan = _compile_plan(call, path_names, (*stack, call), strict, websocket)
    return Dependency(call, plan, scope, use_cache, exit_scope)


# --- classification --------------------------------------------------------------------------------------
def _compile_plan(
    func: Any, path_names: frozenset[str], stack: tuple[Any, ...], strict: bool = True, websocket: bool = False
) -> Plan:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Cannot read the signature of {callable_name(func)}: {exc}") from exc
    hints = type_hints(func)
    where = callable_name(func)
    steps: list[tuple[str, Extractor, bool]] = []
    params: list[Parameter] = []
    dependencies: list[Dependency] = []
    body_params: list[tuple[str, Any, Any]] = []
    body_index = -1
    has_form = False
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        name = param.name
        annotation = hints.get(name, param.annotation)
        tp, extras = split_annotated(annotation)  # classify on T; Meta in Annotated[T, ...] is kept in `annotation`
        default = param.default
        # FastAPI's spelling: `q: Annotated[str, Query(max_length=3)] = "x"`, `db: Annotated[DB, Depends(get_db)]`.
        annotated_marker = next((e for e in extras if isinstance(e, (Param, Depends))), None)
        if annotated_marker is not None and not isinstance(default, (Param, Depends)):
            if isinstance(annotated_marker, Depends):
                default = annotated_marker
        else:
            annotated_marker = None
        if is_websocket_type(tp) or (websocket and tp is EMPTY and name == "websocket" and default is EMPTY):
            if not websocket:
                raise TypeError(f"{where}: parameter '{name}' asks for a WebSocket, but this is an HTTP route")
            if tp is not EMPTY and not issubclass(tp, WebSocket):
                steps.append((name, foreign_websocket(tp), False))
            else:
                # A WebSocket route's plan (``websocket`` true here) is only ever solved with a WebSocketContext.
                steps.append((name, lambda ctx: ctx.websocket, False))  # type: ignore[attr-defined]
            continue
        if is_request_type(tp) or (tp is EMPTY and name == "request" and default is EMPTY):
            if websocket and is_http_only(tp):
                raise TypeError(
                    f"{where}: parameter '{name}' asks for a Request, but this is a WebSocket route; annotate it "
                    f"WebSocket, or HTTPConnection to serve both kinds of route"
                )
            if tp is not EMPTY and isinstance(tp, type) and not issubclass(tp, HTTPConnection):

                def connection(ctx: Context, cls: type = tp) -> Any:  # the user's HTTPConnection-like class
                    return cls(ctx.scope, ctx.receive)

                steps.append((name, connection, False))
            else:
                steps.append((name, lambda ctx: ctx.request, False))
            continue
        if is_background_type(tp):
            steps.append((name, Context.tasks, False))
            continue
        if isinstance(default, Depends) or (default is EMPTY and injectable_scope(tp) is not None):
            target = default.dependency if isinstance(default, Depends) else None
            if target is None:
                target = unwrap_optional(tp)[0]
                if not callable(target) or tp is EMPTY:
                    raise TypeError(f"{where}: Depends() on parameter '{name}' needs a class annotation")
            use_cache, exit_scope = (default.use_cache, default.scope) if isinstance(default, Depends) else (True, None)
            dep = compile_dependency(
                target,
                path_names,
                stack,
                use_cache=use_cache,
                strict=strict,
                exit_scope=exit_scope,
                websocket=websocket,
            )
            dependencies.append(dep)
            steps.append((name, dep.resolve, True))
            continue
        if isinstance(default, Param):
            marker: Param | None = default
            value_default = default.default
        elif annotated_marker is not None:
            marker = annotated_marker
            value_default = annotated_marker.default if default is EMPTY else default
        else:
            marker = None
            value_default = ... if default is EMPTY else default
        key = marker.alias if marker is not None else None
        source = marker.source if marker is not None else _implicit_source(name, tp, path_names, where)
        if websocket and source in ("form", "file", "body"):
            raise TypeError(
                f"{where}: parameter '{name}' would be read from a request body ({source}), but a WebSocket route "
                f"has none; receive messages with websocket.receive_json() and friends"
            )
        if tp is EMPTY:
            annotation = Any if source == "body" else str
        try:
            tp = effective_type(annotation, marker)
            if split_annotated(unwrap_optional(tp)[0])[1]:
                msgspec.json.Decoder(tp)  # msgspec checks the constraints fit the type (no max_length on int)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{where}: the constraints of parameter '{name}' do not fit its type: {exc}") from exc
        if source == "path":
            key = key or name
            if key not in path_names:
                raise TypeError(f"{where}: path parameter '{key}' is not in the route's path")
            steps.append((name, path_extractor(key, tp), False))
        elif source in _SOURCES:
            key = (key or name.replace("_", "-")).lower() if source == "header" else key or name
            steps.append((name, value_extractor(source, key, tp, value_default, _SOURCES[source]), False))
        elif source in ("form", "file"):
            key = key or name
            want_file = source == "file" or is_upload(tp)
            steps.append((name, form_extractor(key, tp, value_default, want_file), True))
            has_form = True
        elif source == "body":
            key = name
            try:
                msgspec.json.Decoder(tp)
            except TypeError as exc:
                raise TypeError(f"{where}: body parameter '{name}' has a type msgspec cannot decode: {exc}") from exc
            if body_index < 0:
                body_index = len(steps)
                # A placeholder: the one step of all body parameters, put in its place below.
                steps.append(("", None, True))  # type: ignore[arg-type]
            body_params.append((name, tp, value_default))
        required = value_default is ... or source == "path"
        # Each source above set key (a str); "or name" only says so to mypy, once per parameter at registration.
        params.append(Parameter(name, source, key or name, tp, value_default, required, marker))
    if body_params and has_form:
        # Files and a model together: the model travels as a JSON-valued field of the same multipart form.
        steps[body_index : body_index + 1] = [
            (name, form_json_extractor(name, tp, default, strict), True) for name, tp, default in body_params
        ]
        for parameter in params:
            if parameter.source == "body":
                parameter.source = "form"
    elif body_params:
        steps[body_index] = ("", body_extractor(body_params, strict), True)
    return Plan(steps, params, dependencies)


def _implicit_source(name: str, tp: Any, path_names: frozenset[str], where: str) -> str:
    if name in path_names:
        return "path"
    if tp is EMPTY:
        return "query"
    if is_upload(tp):
        return "file"
    inner, _ = unwrap_optional(tp)
    item = list_item(inner)
    if is_scalar(inner) or (item is not None and is_scalar(item)):
        return "query"
    if is_model(tp):
        return "body"
    raise TypeError(
        f"{where}: cannot tell where parameter '{name}: {type_name(tp)}' comes from. Annotate it with a scalar "
        f"(query), a Struct/dataclass/dict (JSON body), UploadFile, Request or BackgroundTasks, or give it a "
        f"marker such as Query(), Header(), Body() or Depends()"
    )


def compile_endpoint(
    func: Callable[..., Any], path_names: frozenset[str], strict: bool = True, websocket: bool = False
) -> Plan:
    """Compile an endpoint whose route has the parameters ``path_names`` (a WebSocket handler with
    ``websocket``); TypeError for a parameter it cannot serve. ``strict=False`` decodes JSON bodies laxly
    (see :func:`body_extractor`)."""
    return _compile_plan(func, path_names, (func,), strict, websocket)

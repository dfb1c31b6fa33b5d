"""Routes, routers and the path tree that matches them; :mod:`tachyon_api.handlers` serves what matched."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .compiler import (
    Dependency,
    Plan,
)
from .dependencies import Depends

if TYPE_CHECKING:
    pass

__all__ = ["Route", "WebSocketRoute", "Router", "PathTree"]

F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[[dict[str, Any], Any, Any, Sequence[str]], Awaitable[None]]
logger = logging.getLogger("tachyon_api.errors")
WAIT_FOR_TASKS = "tachyon.wait_for_background"  # scope["extensions"] key our test clients set
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_NONE: list[str] = []  # shared "no values / no allowed methods" result of a lookup; never mutated


def _segments(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _path_params(path: str) -> list[str]:
    """Check a route path and return its parameter names (each ``{name}`` is a whole segment)."""
    if not path.startswith("/"):
        raise ValueError(f"Route paths must start with '/': {path!r}")
    for segment in _segments(path):
        if ("{" in segment or "}" in segment) and not _PARAM.match(segment):
            raise ValueError(f"Invalid path segment {segment!r} in {path!r}: use a whole segment like '{{name}}'")
    return [m.group(1) for s in _segments(path) if (m := _PARAM.match(s))]


class _ReadsLikeADict(Mapping[str, Any]):
    """A read-only mapping over ``as_dict()`` (``route["path"]``, ``"path" in route``, ``dict(route)``), so code
    written for tachyon-api 1.3's route dicts keeps working; the mapping is built on access only."""

    __slots__ = ()

    def as_dict(self, method: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    # A route is one registration, not a value: Mapping's by-content equality (which also makes it unhashable)
    # would make two routes of the same endpoint and path equal.
    __eq__ = object.__eq__
    __hash__ = object.__hash__


def tag_list(tags: Sequence[str] | str | None) -> list[str]:
    """Tags as a list; one string is one tag (``tags="admin"``), not its characters."""
    return [tags] if isinstance(tags, str) else list(tags or ())


class Route(_ReadsLikeADict):
    """One path and method set bound to an endpoint, with the options given to the decorator."""

    __slots__ = (
        "path",
        "methods",
        "endpoint",
        "name",
        "status_code",
        "response_model",
        "dependencies",
        "tags",
        "options",
        "param_names",
        "handler",
        "plan",
        "guards",
    )

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        methods: Sequence[str],
        *,
        name: str | None = None,
        status_code: int | None = None,
        response_model: Any = None,
        dependencies: Sequence[Depends] | None = None,
        tags: Sequence[str] | str | None = None,
        **options: Any,
    ) -> None:
        self.param_names = _path_params(path)
        self.path = path
        self.methods = tuple(dict.fromkeys(m.upper() for m in methods))
        self.endpoint = endpoint
        self.name = name or getattr(endpoint, "__name__", None)
        self.status_code = status_code
        self.response_model = response_model
        self.dependencies = list(dependencies or ())
        self.tags = tag_list(tags)
        self.options = options
        self.handler: Handler | None = None
        self.plan: Plan | None = None  # set when compiled for an app; the OpenAPI schema reads them
        self.guards: list[Dependency] = []

    def copy_with(
        self,
        path: str,
        tags: Sequence[str] = (),
        dependencies: Sequence[Depends] = (),
        responses: dict[int | str, Any] | None = None,
    ) -> Route:
        """This route at another path, with the tags, dependencies and extra OpenAPI ``responses`` of the
        routers it was included through (the route's own responses win)."""
        options = self.options
        if responses:
            options = {**options, "responses": {**responses, **(options.get("responses") or {})}}
        return Route(
            path,
            self.endpoint,
            self.methods,
            name=self.name,
            status_code=self.status_code,
            response_model=self.response_model,
            dependencies=[*dependencies, *self.dependencies],
            tags=list(dict.fromkeys([*tag_list(tags), *self.tags])),  # a router's own routes carry its tags already
            **options,
        )

    def as_dict(self, method: str | None = None) -> dict[str, Any]:
        """The route as tachyon-api 1.3 listed it (one dict per method): ``{"path", "method", "func", ...}``."""
        return {
            "path": self.path,
            "method": method or self.methods[0],
            "func": self.endpoint,
            "name": self.name,
            "status_code": self.status_code,
            "response_model": self.response_model,
            "tags": self.tags,
            "dependencies": self.dependencies,
            **self.options,
        }

    def __repr__(self) -> str:
        return f"Route({self.path!r}, methods={list(self.methods)}, endpoint={self.name})"


class WebSocketRoute(_ReadsLikeADict):
    """A path bound to an ``async def`` WebSocket handler. A class of its own, not a ``Route``: it has no
    methods, no response and no place in the OpenAPI schema."""

    __slots__ = ("path", "endpoint", "name", "dependencies", "max_message_size", "param_names", "handler")
    methods = ("WEBSOCKET",)  # the key of its node in the app's WebSocket PathTree

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        name: str | None = None,
        dependencies: Sequence[Depends] | None = None,
        max_message_size: int | None = None,
    ) -> None:
        self.param_names = _path_params(path)
        self.path = path
        self.endpoint = endpoint
        self.name = name or getattr(endpoint, "__name__", None)
        self.dependencies = list(dependencies or ())
        self.max_message_size = max_message_size
        self.handler: Handler | None = None

    def copy_with(
        self,
        path: str,
        tags: Sequence[str] = (),
        dependencies: Sequence[Depends] = (),
        responses: dict[int | str, Any] | None = None,
    ) -> WebSocketRoute:
        """This route at another path, behind the dependencies of the routers it was included through (tags
        and OpenAPI ``responses`` do not apply to a WebSocket)."""
        return WebSocketRoute(
            path,
            self.endpoint,
            name=self.name,
            dependencies=[*dependencies, *self.dependencies],
            max_message_size=self.max_message_size,
        )

    def as_dict(self, method: str | None = None) -> dict[str, Any]:
        """As a route dict: ``method`` is ``"WEBSOCKET"``."""
        return {
            "path": self.path,
            "method": "WEBSOCKET",
            "func": self.endpoint,
            "name": self.name,
            "dependencies": self.dependencies,
        }

    def __repr__(self) -> str:
        return f"WebSocketRoute({self.path!r}, endpoint={self.name})"


class RouteDecorators:
    """``get/post/put/patch/delete/head/options/route`` for anything with an ``add_api_route``."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], methods: Sequence[str], **kwargs: Any) -> Route:
        raise NotImplementedError

    def add_websocket_route(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        name: str | None = None,
        dependencies: Sequence[Depends] | None = None,
        max_message_size: int | None = None,
    ) -> WebSocketRoute:
        raise NotImplementedError

    def websocket(
        self,
        path: str,
        *,
        name: str | None = None,
        dependencies: Sequence[Depends] | None = None,
        max_message_size: int | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated ``async def`` as the WebSocket handler of ``path``; returns it unchanged.

        ``max_message_size`` (bytes) overrides the app's ``websocket_max_size`` for this route.
        """

        def decorator(func: F) -> F:
            self.add_websocket_route(
                path, func, name=name, dependencies=dependencies, max_message_size=max_message_size
            )
            return func

        return decorator

    websocket_route = websocket

    def route(self, path: str, methods: Sequence[str] = ("GET",), **kwargs: Any) -> Callable[[F], F]:
        """Register the decorated function for several methods at once; returns it unchanged."""

        def decorator(func: F) -> F:
            self.add_api_route(path, func, methods, **kwargs)
            return func

        return decorator

    api_route = route

    def get(self, path: str, **kwargs: Any) -> Callable[[F], F]:
        return self.route(path, ("GET",), **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[F], F]:
        return self.route(path, ("POST",), **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[F], F]:
        return self.route(path, ("PUT",), **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[F], F]:
        return self.route(path, ("PATCH",), **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[F], F]:
        return self.route(path, ("DELETE",), **kwargs)

    def head(self, path: str, **kwargs: Any) -> Callable[[F], F]:
        return self.route(path, ("HEAD",), **kwargs)

    def options(self, path: str, **kwargs: Any) -> Callable[[F], F]:
        return self.route(path, ("OPTIONS",), **kwargs)


class Router(RouteDecorators):
    """A group of routes with a common prefix, tags and dependencies, added to an app by ``include_router``."""

    def __init__(
        self,
        prefix: str = "",
        tags: Sequence[str] | str | None = None,
        dependencies: Sequence[Depends] | None = None,
        responses: dict[int | str, Any] | None = None,
    ) -> None:
        prefix = prefix or ""
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        self.prefix = prefix
        self.tags = tag_list(tags)
        self.dependencies = list(dependencies or [])
        self.responses = responses or {}
        self.routes: list[Route | WebSocketRoute] = []

    def add_api_route(self, path: str, endpoint: Callable[..., Any], methods: Sequence[str], **kwargs: Any) -> Route:
        """Add a route; its ``tags`` are the router's followed by its own, as tachyon-api 1.3 listed them."""
        kwargs["tags"] = list(dict.fromkeys([*self.tags, *tag_list(kwargs.get("tags"))]))
        route = Route(path, endpoint, methods, **kwargs)
        self.routes.append(route)
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
        route = WebSocketRoute(path, endpoint, name=name, dependencies=dependencies, max_message_size=max_message_size)
        self.routes.append(route)
        return route

    def include_router(self, router: Router, prefix: str = "", **kwargs: Any) -> None:
        for route in router.routes:
            self.routes.append(prefixed_route(router, route, prefix, **kwargs))

    def get_full_path(self, path: str) -> str:
        if not self.prefix:
            return path
        if path == "/":
            return self.prefix
        return self.prefix.rstrip("/") + ("" if path.startswith("/") else "/") + path


def prefixed_route(
    router: Router,
    route: Route | WebSocketRoute,
    prefix: str = "",
    tags: Sequence[str] | str = (),
    dependencies: Sequence[Depends] = (),
) -> Route | WebSocketRoute:
    """``route`` as included through ``router`` (and ``prefix``): its full path, the router's tags, dependencies
    and OpenAPI ``responses`` added."""
    path = router.get_full_path(route.path)
    if prefix:
        prefix = prefix if prefix.startswith("/") else "/" + prefix
        path = prefix.rstrip("/") + (path if path != "/" else "") or "/"
    tags = [*tag_list(tags), *router.tags]
    return route.copy_with(path, tags, [*dependencies, *router.dependencies], router.responses)


class _Node:
    __slots__ = ("static", "param", "routes")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.routes: dict[str, Route] = {}


class PathTree:
    """Routes keyed by path segment. Static segments win over parameters, with backtracking.

    Lookup cost depends on the depth of the path, not on the number of routes. Paths without parameters are
    also kept in a dict, so the common case is one dict lookup.
    """

    def __init__(self) -> None:
        self.root = _Node()
        self._static: dict[str, _Node] = {}

    def insert(self, route: Route) -> None:
        node = self.root
        for segment in _segments(route.path):
            if _PARAM.match(segment):
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.static.setdefault(segment, _Node())
        for method in route.methods:
            if method in node.routes:
                logger.warning(
                    "%s %s is already served by %s; %s is not reachable there",
                    method,
                    route.path,
                    node.routes[method].name,
                    route.name,
                )
                continue
            node.routes[method] = route
        if not route.param_names:
            self._static["/" + "/".join(_segments(route.path))] = node

    def remove(self, route: Route) -> None:
        """Stop serving ``route`` (a docs page giving way to a user's route on the same URL)."""
        node = self.root
        for segment in _segments(route.path):
            found = node.param if _PARAM.match(segment) else node.static.get(segment)
            if found is None:
                return
            node = found
        for method in route.methods:
            if node.routes.get(method) is route:
                del node.routes[method]

    def lookup(self, method: str, path: str) -> tuple[Route | None, list[str], list[str]]:
        """Return ``(route, parameter values, allowed methods)``; no route and some methods means 405."""
        node = self._static.get(path)
        if node is not None:
            route = node.routes.get(method)
            if route is not None:
                return route, _NONE, _NONE
        segments = _segments(path)
        # Greedy descent first (static before parameter): the answer for nearly every request.
        node, values = self.root, []
        for segment in segments:
            child = node.static.get(segment)
            if child is None:
                child = node.param
                if child is None:
                    break
                values.append(segment)
            node = child
        else:
            route = node.routes.get(method)
            if route is None and method == "HEAD":
                route = node.routes.get("GET")
            if route is not None:
                return route, values, []
        # Dead end or wrong method: walk every candidate, with backtracking, in priority order.
        allowed: list[str] = []
        for node, values in self._walk(self.root, segments, 0, []):
            route = node.routes.get(method)
            if route is None and method == "HEAD":
                route = node.routes.get("GET")
            if route is not None:
                return route, values, []
            allowed.extend(node.routes)
        if allowed and "GET" in allowed:
            allowed.append("HEAD")
        return None, [], sorted(set(allowed))

    def _walk(
        self, node: _Node, segments: list[str], index: int, values: list[str]
    ) -> Iterator[tuple[_Node, list[str]]]:
        if index == len(segments):
            if node.routes:
                yield node, values
            return
        child = node.static.get(segments[index])
        if child is not None:
            yield from self._walk(child, segments, index + 1, values)
        if node.param is not None:
            yield from self._walk(node.param, segments, index + 1, [*values, segments[index]])

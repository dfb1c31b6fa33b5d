"""What makes a request *this* request for its ``Idempotency-Key``: who sent it, and what it asked.

A durable backend stores a request's tasks once per key. Two things keep a key from swallowing another
request (a 2xx for tasks that were never stored):

- **the client's scope**: the same key from another client is another key. By default the scope is every
  credential the request carries: the ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``X-API-Key``
  headers, and the headers and query parameters named by the API-key security schemes of the route
  (``APIKeyHeader("X-Tenant-Key")``, ``APIKeyQuery("key")``). A backend's ``idempotency_scope`` function
  replaces it (for example the user id, so a retry after a token refresh is still a retry).
- **the fingerprint**: a hash of the method, path, query string, content type and body. The same key and
  scope with another fingerprint is refused (422), never answered 2xx.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .compiler import Dependency, Plan
    from .requests import HTTPConnection

__all__ = ["CREDENTIAL_HEADERS", "Credentials", "IdempotencyScope", "client_scope", "credentials_of", "fingerprint"]

# Headers that carry credentials whatever the app declares.
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key")

# A backend's explicit scope: the connection in, the client's identity out (sync or async).
IdempotencyScope = Callable[["HTTPConnection"], str | Awaitable[str]]


class Credentials(NamedTuple):
    """Where a route's requests carry credentials: header names (lower case) and query parameter names."""

    headers: frozenset[str]
    query: frozenset[str]


DEFAULT_CREDENTIALS = Credentials(frozenset(CREDENTIAL_HEADERS), frozenset())


def credentials_of(plan: Plan, guards: Iterable[Dependency] = ()) -> Credentials:
    """The credential places of a route: the defaults plus what the API-key schemes among its dependencies
    (at any depth, guards included) read. Computed once, when the route is compiled."""
    from .openapi import OperationInputs  # the walk the OpenAPI schema makes to find a route's security schemes

    found = OperationInputs()
    found.add_plan(plan)
    for guard in guards:
        found.add_dependency(guard)
    headers, query = set(CREDENTIAL_HEADERS), set()
    for scheme in found.security.values():
        model = scheme.model if isinstance(scheme.model, dict) else {}
        if model.get("type") == "apiKey" and isinstance(model.get("name"), str):
            if model.get("in") == "header":
                headers.add(model["name"].lower())
            elif model.get("in") == "query":
                query.add(model["name"])  # "cookie": the whole Cookie header is in the scope already
    return Credentials(frozenset(headers), frozenset(query))


def _frame(*parts: bytes) -> bytes:
    """Length-prefixed parts: no two different lists of parts frame to the same bytes."""
    return b"".join(b"%d:%s" % (len(part), part) for part in parts)


async def client_scope(
    connection: HTTPConnection, credentials: Credentials | None, scope: IdempotencyScope | None = None
) -> str:
    """Who sent the request, for its idempotency key: ``scope(connection)`` when given, else a hash of every
    credential it carries (empty when it carries none: anonymous requests share one scope)."""
    if scope is not None:
        value: Any = scope(connection)
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str):
            raise TypeError(f"idempotency_scope returned {type(value).__name__}, expected str")
        return "scope:" + value
    places = credentials or DEFAULT_CREDENTIALS
    found = [
        b"h",
        *(
            name + b"=" + value
            for name, value in connection.scope["headers"]
            if name.decode("latin-1").lower() in places.headers
        ),
    ]
    if places.query:
        found.append(b"q")
        for name, value in connection.query_params.multi_items():
            if name in places.query:
                found.append(f"{name}={value}".encode("utf-8", "surrogatepass"))
    if len(found) == 1:
        return ""
    return hashlib.sha256(_frame(*found)).hexdigest()


async def fingerprint(connection: HTTPConnection, method: str) -> bytes:
    """A hash of what the request asks: method, path, query string, content type and body (read now if the
    endpoint did not). A body parsed as a stream (multipart) is not kept: its declared length stands in for it.
    A WebSocket's handshake has no body."""
    scope = connection.scope
    digest = hashlib.sha256(
        _frame(
            method.encode("latin-1"),
            scope.get("raw_path") or scope["path"].encode("utf-8", "surrogatepass"),
            scope.get("query_string", b""),
            connection.headers.get("content-type", "").encode("latin-1"),
        )
    )
    body = getattr(connection, "body", None)
    if body is not None:
        try:
            digest.update(b"body:" + await body())
        except RuntimeError:  # already streamed by a form parameter
            digest.update(b"stream:" + connection.headers.get("content-length", "").encode("latin-1"))
    return digest.hexdigest().encode()

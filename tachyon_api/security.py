"""Security schemes: callables used as dependencies (``user = Depends(HTTPBearer())``) that read credentials
from the request and reject it when they are missing.

They only *extract* credentials; checking them (``secrets.compare_digest`` against a stored key, verifying a
token) is the application's job, in a dependency built on top (see docs/security.md). Statuses, details and
``WWW-Authenticate`` headers are those of tachyon-api 1.3; with ``auto_error=False`` a missing or malformed
credential gives ``None`` instead, so an endpoint can serve anonymous users too.

They read only headers, the query string and cookies, so they take an :class:`HTTPConnection` and guard
WebSocket routes as well as HTTP ones (directly, through another dependency, or in ``dependencies=``). On a
WebSocket a rejection closes the handshake with 1008 (policy violation) and the detail as the reason, rather
than an HTTP 401/403 body: a WebSocket client sees a close code, not a response body.

Each scheme also describes itself for OpenAPI, as FastAPI's do: ``.model`` is the ``securityScheme`` object
(a dict) and ``.scheme_name`` its name in ``components.securitySchemes``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from .exceptions import HTTPException
from .requests import HTTPConnection
from .websockets import WebSocketClose, WebSocketException

__all__ = [
    "SecurityBase",
    "HTTPBearer",
    "HTTPBasic",
    "OAuth2PasswordBearer",
    "APIKeyHeader",
    "APIKeyQuery",
    "APIKeyCookie",
    "HTTPAuthorizationCredentials",
    "HTTPBasicCredentials",
]

NOT_AUTHENTICATED = "Not authenticated"
INVALID_CREDENTIALS = "Invalid authentication credentials"


class HTTPAuthorizationCredentials(msgspec.Struct):
    """The two parts of ``Authorization: <scheme> <credentials>``."""

    scheme: str
    credentials: str


class HTTPBasicCredentials(msgspec.Struct):
    """The decoded ``username:password`` of HTTP Basic authentication."""

    username: str
    password: str


class SecurityBase:
    """What every scheme shares: ``auto_error``, and its OpenAPI description (``model``, ``scheme_name``)."""

    model: dict[str, Any]
    scheme_name: str

    def __init__(self, model: dict[str, Any], auto_error: bool, scheme_name: str | None, description: str | None):
        self.auto_error = auto_error
        self.scheme_name = scheme_name or type(self).__name__
        self.model = {**model, "description": description} if description else model

    def _reject(
        self, connection: HTTPConnection, status_code: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        """Raise the rejection (an HTTP error, or a 1008 close on a WebSocket), or return None (anonymous) when
        ``auto_error`` is off."""
        if not self.auto_error:
            return None
        if connection.scope.get("type") == "websocket":
            raise WebSocketException(WebSocketClose.POLICY_VIOLATION, detail)
        raise HTTPException(status_code, detail, headers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"


def _authorization(request: HTTPConnection, scheme: str) -> tuple[str, str] | None:
    """``(scheme as sent, credentials)`` of an ``Authorization`` header of exactly two parts whose first part
    is ``scheme`` (any case); None otherwise."""
    parts = request.headers.get("authorization", "").split()
    if len(parts) != 2 or parts[0].lower() != scheme:
        return None
    return parts[0], parts[1]


class HTTPBearer(SecurityBase):
    """``Authorization: Bearer <token>``; returns :class:`HTTPAuthorizationCredentials`.

    Missing or malformed: 403 ``Not authenticated`` (as in tachyon-api 1.3).
    """

    def __init__(
        self,
        auto_error: bool = True,
        *,
        bearerFormat: str | None = None,  # noqa: N803 (the OpenAPI field name, as in FastAPI)
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        model: dict[str, Any] = {"type": "http", "scheme": "bearer"}
        if bearerFormat:
            model["bearerFormat"] = bearerFormat
        super().__init__(model, auto_error, scheme_name, description)

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        found = _authorization(request, "bearer")
        if found is None:
            self._reject(request, 403, NOT_AUTHENTICATED)
            return None
        return HTTPAuthorizationCredentials(scheme=found[0], credentials=found[1])


class OAuth2PasswordBearer(SecurityBase):
    """The bearer token of the OAuth2 password flow (``tokenUrl`` is where clients get one); returns the token.

    Missing or malformed: 401 ``Not authenticated`` with ``WWW-Authenticate: Bearer``.
    """

    def __init__(
        self,
        tokenUrl: str,  # noqa: N803 (the existing framework's and FastAPI's parameter name)
        auto_error: bool = True,
        *,
        scopes: dict[str, str] | None = None,
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.tokenUrl = tokenUrl
        model = {"type": "oauth2", "flows": {"password": {"tokenUrl": tokenUrl, "scopes": dict(scopes or {})}}}
        super().__init__(model, auto_error, scheme_name, description)

    async def __call__(self, request: HTTPConnection) -> str | None:
        found = _authorization(request, "bearer")
        if found is None:
            self._reject(request, 401, NOT_AUTHENTICATED, {"WWW-Authenticate": "Bearer"})
            return None
        return found[1]


class HTTPBasic(SecurityBase):
    """``Authorization: Basic base64(username:password)``; returns :class:`HTTPBasicCredentials`.

    Missing: 401 ``Not authenticated``; another scheme, bad base64, bad UTF-8 or no colon: 401 ``Invalid
    authentication credentials``. Both with ``WWW-Authenticate: Basic realm="<realm>"`` (``simple`` by
    default), which makes browsers ask for a password.
    """

    def __init__(
        self,
        auto_error: bool = True,
        realm: str | None = None,
        *,
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.realm = realm or "simple"
        if any(ch in self.realm for ch in "\r\n\0"):
            raise ValueError("realm must not contain line breaks or NUL")
        quoted = self.realm.replace("\\", "\\\\").replace('"', '\\"')
        self._challenge = {"WWW-Authenticate": f'Basic realm="{quoted}"'}
        super().__init__({"type": "http", "scheme": "basic"}, auto_error, scheme_name, description)

    async def __call__(self, request: HTTPConnection) -> HTTPBasicCredentials | None:
        if not request.headers.get("authorization"):
            self._reject(request, 401, NOT_AUTHENTICATED, self._challenge)
            return None
        found = _authorization(request, "basic")
        try:
            if found is None:
                raise ValueError("not Basic")
            username, colon, password = base64.b64decode(found[1], validate=True).decode("utf-8").partition(":")
            if not colon:
                raise ValueError("no colon")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            self._reject(request, 401, INVALID_CREDENTIALS, self._challenge)
            return None
        return HTTPBasicCredentials(username=username, password=password)


class _APIKey(SecurityBase):
    """An API key read from one place of the request; missing or empty: 403 ``Not authenticated``."""

    location = ""

    def __init__(
        self,
        name: str,
        auto_error: bool = True,
        *,
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.name = name
        super().__init__({"type": "apiKey", "in": self.location, "name": name}, auto_error, scheme_name, description)

    def _read(self, request: HTTPConnection) -> str | None:
        raise NotImplementedError

    async def __call__(self, request: HTTPConnection) -> str | None:
        key = self._read(request)
        if not key:
            self._reject(request, 403, NOT_AUTHENTICATED)
            return None
        return key


class APIKeyHeader(_APIKey):
    """An API key in a header (``APIKeyHeader("X-API-Key")``; the name is case-insensitive)."""

    location = "header"

    def _read(self, request: HTTPConnection) -> str | None:
        return request.headers.get(self.name)


class APIKeyQuery(_APIKey):
    """An API key in the query string. Prefer a header: URLs end up in logs, browser history and Referer."""

    location = "query"

    def _read(self, request: HTTPConnection) -> str | None:
        return request.query_params.get(self.name)


class APIKeyCookie(_APIKey):
    """An API key in a cookie."""

    location = "cookie"

    def _read(self, request: HTTPConnection) -> str | None:
        return request.cookies.get(self.name)

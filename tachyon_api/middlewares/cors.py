"""Cross-origin resource sharing, as the Fetch standard defines it.

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here: 200 with
  the allow headers when the origin, method and headers are allowed, otherwise 400 without them (the browser
  then blocks the real request). It never reaches the app.
- Other requests go to the app; an allowed origin gets ``Access-Control-Allow-Origin`` (and the credentials
  and exposed headers) on the response, whatever its status.
- ``Vary: Origin`` is sent whenever the answer depends on the origin (anything but "every origin, no
  credentials"), also on answers to requests without an ``Origin``, so a shared cache never hands one
  origin's answer to another.
- With credentials, ``*`` is never sent (browsers do not read it as a wildcard then): the method and headers
  are echoed. ``allow_origins=["*"]`` with credentials is refused at construction: echoing every origin with
  credentials would let any site read a logged-in user's answers.
- The requested headers a preflight passes are echoed in ``Access-Control-Allow-Headers``: a browser only
  sends what is listed there, and ``Content-Type: application/json`` is not CORS-safelisted (only the three
  form types are), so listing just ``allow_headers`` would block every cross-origin JSON POST. ``*`` is never
  sent for headers, because it never covers ``Authorization``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..datastructures import scope_header
from ..responses import JSONResponse
from .core import with_headers

__all__ = ["CORSMiddleware"]

DEFAULT_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Request headers a browser sends without asking (CORS-safelisted); always allowed.
SAFELISTED = frozenset(("accept", "accept-language", "content-language", "content-type"))


class CORSMiddleware:
    """``CORSMiddleware(app, allow_origins=["https://app.example"], allow_credentials=True, ...)``.

    ``"*"`` in ``allow_origins``, ``allow_methods`` or ``allow_headers`` allows any; ``allow_origins=["*"]``
    with ``allow_credentials=True`` raises ``ValueError`` (list the origins).
    """

    def __init__(
        self,
        app: Any,
        allow_origins: Sequence[str] = (),
        allow_methods: Sequence[str] = DEFAULT_METHODS,
        allow_headers: Sequence[str] = (),
        allow_credentials: bool = False,
        expose_headers: Sequence[str] = (),
        max_age: int = 600,
    ) -> None:
        self.app = app
        # A lone string is one name, not a sequence of characters (allow_origins="https://app.example").
        allow_origins, allow_methods, allow_headers, expose_headers = (
            [value] if isinstance(value, str) else list(value)
            for value in (allow_origins, allow_methods, allow_headers, expose_headers)
        )
        self.any_origin = "*" in allow_origins
        if self.any_origin and allow_credentials:
            raise ValueError(
                'CORSMiddleware: allow_origins=["*"] cannot be combined with allow_credentials=True (any site could '
                "read a logged-in user's answers); list the allowed origins explicitly"
            )
        self.origins = frozenset(allow_origins)
        self.any_method = "*" in allow_methods
        self.methods = [m.upper() for m in allow_methods]
        self.any_header = "*" in allow_headers
        self.headers = SAFELISTED | {h.lower() for h in allow_headers}
        self.credentials = allow_credentials
        # Every origin (never with credentials) is the one answer that does not depend on the origin.
        self.vary = "" if self.any_origin else "Origin"
        common: list[tuple[bytes, bytes]] = []
        if allow_credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        self.simple_headers = list(common)
        if expose_headers:
            self.simple_headers.append((b"access-control-expose-headers", ", ".join(expose_headers).encode("latin-1")))
        self.preflight_headers = [*common, (b"access-control-max-age", str(max_age).encode("latin-1"))]
        if not self.any_method:
            self.preflight_headers.append((b"access-control-allow-methods", ", ".join(self.methods).encode("latin-1")))

    def _allow_origin(self, origin: str) -> bytes:
        return b"*" if self.any_origin else origin.encode("latin-1")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = scope_header(scope, b"origin")
        if origin is not None and scope["method"] == "OPTIONS":  # only an OPTIONS can be a preflight
            requested_method = scope_header(scope, b"access-control-request-method")
            if requested_method is not None:
                await self._preflight(scope, receive, send, origin, requested_method)
                return
        if origin is None or not (self.any_origin or origin in self.origins):
            if not self.vary:
                await self.app(scope, receive, send)
                return
            extra: list[tuple[bytes, bytes]] = []
        else:
            extra = [(b"access-control-allow-origin", self._allow_origin(origin)), *self.simple_headers]

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = with_headers(message, extra, self.vary)
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: dict[str, Any], receive: Any, send: Any, origin: str, method: str) -> None:
        asked = scope_header(scope, b"access-control-request-headers") or ""
        requested = [h for h in (part.strip().lower() for part in asked.split(",")) if h]
        vary = ["Origin"] if self.vary else []
        if not (self.any_origin or origin in self.origins):
            problem = "origin"
        elif not (self.any_method or method.upper() in self.methods):
            problem = "method"
        elif not self.any_header and any(h not in self.headers for h in requested):
            problem = "headers"
        else:
            headers = [(b"access-control-allow-origin", self._allow_origin(origin)), *self.preflight_headers]
            if self.any_method and not self.credentials:
                headers.append((b"access-control-allow-methods", b"*"))
            elif self.any_method:  # echoed: with credentials, "*" is a method name, not a wildcard
                headers.append((b"access-control-allow-methods", method.encode("latin-1")))
                vary.append("Access-Control-Request-Method")
            if requested:  # all passed the check above; echoed, so Content-Type and Authorization are covered
                headers.append((b"access-control-allow-headers", ", ".join(requested).encode("latin-1")))
            vary.append("Access-Control-Request-Headers")
            message = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
            await send(with_headers(message, headers, ", ".join(vary)))
            await send({"type": "http.response.body", "body": b""})
            return
        vary_header = {"Vary": ", ".join(vary)} if vary else None
        response = JSONResponse({"detail": f"Disallowed CORS {problem}"}, 400, vary_header)
        await response.send(scope, receive, send)

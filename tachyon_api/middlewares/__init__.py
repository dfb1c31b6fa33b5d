"""The bundled ASGI middlewares (the existing framework's import path): ``app.add_middleware(CORSMiddleware,
allow_origins=[...])``.

Each one wraps any ASGI app, leaves scopes it has nothing to do with (WebSocket, lifespan) untouched, edits
only the ``http.response.start`` message (so streaming bodies pass through as they are produced), and builds
a new header list instead of changing the one it was sent: a response object may send the same list again.
"""

from .cors import CORSMiddleware
from .logger import LoggerMiddleware
from .security_headers import SecurityHeadersMiddleware

__all__ = ["CORSMiddleware", "LoggerMiddleware", "SecurityHeadersMiddleware"]

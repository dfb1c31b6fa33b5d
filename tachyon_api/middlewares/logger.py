"""One log line when a request comes in and one when its response is done, with status and duration."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

__all__ = ["LoggerMiddleware"]

# Never logged in clear, whatever the configuration: they carry credentials.
ALWAYS_REDACTED = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"))
BODY_PREVIEW = 2048  # characters of the request body logged when log_request_body=True


class LoggerMiddleware:
    """``--> GET /path`` when a request arrives, ``<-- GET /path 200 (0.0012s)`` when its response is done.

    The path is logged without the query string (it may carry keys). With ``include_headers=True`` the
    request and response headers are logged too, with the values of ``redact_headers`` and of credential
    headers (``Authorization``, ``Cookie``, ``Set-Cookie``, ``Proxy-Authorization``, ``X-API-Key``) shown as
    ``<redacted>``. Bodies are never logged unless ``log_request_body=True``, and then only the first 2,048
    characters of the request body. Logs go to ``logger`` (default ``tachyon_api.access``) at ``level``.
    """

    def __init__(
        self,
        app: Any,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        include_headers: bool = False,
        redact_headers: Sequence[str] | None = None,
        log_request_body: bool = False,
    ) -> None:
        self.app = app
        self.logger = logger or logging.getLogger("tachyon_api.access")
        self.level = level
        self.include_headers = include_headers
        self.redacted = ALWAYS_REDACTED | {name.lower() for name in redact_headers or ()}
        self.log_request_body = log_request_body

    def _headers(self, raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        out = []
        for key, value in raw:
            name = key.decode("latin-1").lower()
            out.append((name, "<redacted>" if name in self.redacted else value.decode("latin-1")))
        return out

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(self.level):
            await self.app(scope, receive, send)
            return
        log = self.logger.log
        method, path = scope["method"], scope["path"]
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering
        log(self.level, "--> %s %s", method, path)
        if self.include_headers:
            log(self.level, "    request headers: %s", self._headers(scope["headers"]))

        if self.log_request_body:
            preview = bytearray()
            inner_receive = receive

            async def receive() -> dict:
                message = await inner_receive()
                if message["type"] == "http.request":
                    if len(preview) < BODY_PREVIEW * 4:  # UTF-8: 2,048 characters take at most 4 bytes each
                        preview.extend(message.get("body", b"")[: BODY_PREVIEW * 4 - len(preview)])
                    if not message.get("more_body", False):
                        text = preview.decode("utf-8", errors="replace")[:BODY_PREVIEW]
                        log(self.level, "    request body: %s", text)
                return message

        async def logging_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.include_headers:
                    log(self.level, "    response headers: %s", self._headers(message.get("headers", ())))
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            log(self.level, "<-- %s %s %d (%.4fs)", method, path, status, time.perf_counter() - start)

"""One log line when a request comes in and one when its response is done, with status and duration, in
tachyon-api 1.3's format; what the client sent is escaped and its secrets are redacted."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec

__all__ = ["LoggerMiddleware", "escape", "is_secret_name"]

# Never logged in clear, whatever the configuration: they carry credentials.
ALWAYS_REDACTED = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"))
BODY_PREVIEW = 2048  # characters of the request body logged when log_request_body=True
# A body up to this size is parsed (JSON, urlencoded form) to redact its secret fields field by field; a larger
# one is redacted by pattern in its logged preview only.
BODY_PARSED = 64 * 1024
REDACTED = "<redacted>"

# Field and header names that look like they hold a secret: a name containing one of these, once lower-cased
# and stripped of everything but letters and digits ("API-Key", "api_key" and "apiKey" all read "apikey").
SECRET_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "credential",
    "privatekey",
    "cookie",
    "session",
    "cvv",
    "cvc",
)

# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators: written as they are, a client
# could end a log line and forge the next one (CWE-117). They are written as escapes instead (\n, \x1b, \u2028).
_ESCAPES = {code: repr(chr(code))[1:-1] for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """``text`` with every control character written as a Python-style escape: one log record, one line."""
    return text.translate(_ESCAPES)


def is_secret_name(name: str) -> bool:
    """Whether a header or body field called ``name`` looks like it holds a secret (see ``SECRET_WORDS``)."""
    folded = "".join(ch for ch in name.lower() if ch.isalnum())
    return any(word in folded for word in SECRET_WORDS)


def _redact_value(value: Any) -> Any:
    """A decoded JSON value with the values of its secret-looking keys replaced, at any depth."""
    if isinstance(value, dict):
        return {key: REDACTED if is_secret_name(str(key)) else _redact_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    return value


# Fallbacks for what cannot be parsed whole (a cut preview, a body over BODY_PARSED, multipart): the value after
# a secret-looking JSON key, urlencoded field or multipart field name.
_STRING = r'"(?:[^"\\]|\\.)*"?'
_JSON_FIELD = re.compile(r'("([^"\\]*)"\s*:\s*)(' + _STRING + r"|[^,}\]\s]*)")
_FORM_FIELD = re.compile(r"((?:^|[&;\s])([^=&;\s]+)=)([^&;\s]*)")
_MULTIPART_FIELD = re.compile(r'(name="([^"]*)"[^\r\n]*\r?\n(?:[^\r\n]+\r?\n)*\r?\n)([^\r\n]*)')


def _redact_text(text: str) -> str:
    def json_field(match: re.Match[str]) -> str:
        return match.group(1) + f'"{REDACTED}"' if is_secret_name(match.group(2)) else match.group(0)

    def field(match: re.Match[str]) -> str:  # form and multipart: the name is group 2, the value follows group 1
        return match.group(1) + REDACTED if is_secret_name(match.group(2)) else match.group(0)

    text = _JSON_FIELD.sub(json_field, text)
    text = _MULTIPART_FIELD.sub(field, text)
    return _FORM_FIELD.sub(field, text)


def redact_body(body: bytes, content_type: str, complete: bool) -> str:
    """The text of a request body to log: secret-looking fields redacted, at most ``BODY_PREVIEW`` characters,
    control characters escaped. ``complete``: ``body`` is the whole body (else its first bytes)."""
    media = content_type.partition(";")[0].strip().lower()
    text: str | None = None
    if complete and (media == "application/json" or media.endswith("+json")):
        try:
            text = msgspec.json.encode(_redact_value(msgspec.json.decode(body))).decode()
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            text = None  # not JSON after all: redacted by pattern below
    elif media == "application/x-www-form-urlencoded":
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        text = urlencode([(name, REDACTED if is_secret_name(name) else value) for name, value in pairs], safe="<>")
    if text is None:
        text = _redact_text(body.decode("utf-8", "replace"))
    return escape(text[:BODY_PREVIEW])


class LoggerMiddleware:
    """tachyon-api 1.3's request log, line by line::

        --> POST /login
            req headers: [('host', '127.0.0.1:8000'), ('authorization', '<redacted>'), ...]
            req body: {"user":"ada","password":"<redacted>"}
        <-- POST /login 200 (0.0012s)
            res headers: [('content-type', 'application/json'), ...]

    The path is logged without the query string (it may carry keys). The header lines come with
    ``include_headers=True``; the values of ``redact_headers``, of the credential headers (``Authorization``,
    ``Cookie``, ``Set-Cookie``, ``Proxy-Authorization``, ``X-API-Key``) and of headers whose name looks secret
    (``X-Auth-Token``) are shown as ``<redacted>``. The ``req body`` line comes with ``log_request_body=True``
    when the app has read the whole body: its first 2,048 characters, with the values of secret-looking fields
    (``password``, ``token``, ``api_key``...) of JSON, urlencoded and multipart bodies redacted.

    Everything taken from the request is logged with its control characters escaped (``%0d%0a`` in a URL is
    written ``\\r\\n``), so a client cannot forge a log line. Logs go to ``logger`` (default
    ``tachyon_api.access``) at ``level``.
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
        """The headers as (name, value) pairs; logged with ``%s``, which writes them with ``repr`` (escaped)."""
        out = []
        for key, value in raw:
            name = key.decode("latin-1").lower()
            secret = name in self.redacted or is_secret_name(name)
            out.append((name, REDACTED if secret else value.decode("latin-1")))
        return out

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(self.level):
            await self.app(scope, receive, send)
            return
        log = self.logger.log
        level = self.level
        method, path = escape(scope["method"]), escape(scope["path"])
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering
        response_headers: Sequence[tuple[bytes, bytes]] | None = None
        log(level, "--> %s %s", method, path)
        if self.include_headers:
            log(level, "    req headers: %s", self._headers(scope["headers"]))

        if self.log_request_body:
            kept = bytearray()
            complete = True
            inner_receive = receive
            content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"content-type"), "")

            async def receive() -> dict[str, Any]:
                nonlocal complete
                message: dict[str, Any] = await inner_receive()
                if message["type"] == "http.request":
                    chunk = message.get("body", b"")
                    room = BODY_PARSED - len(kept)
                    if len(chunk) > room:
                        complete = False
                    kept.extend(chunk[:room])
                    if not message.get("more_body", False):
                        log(level, "    req body: %s", redact_body(bytes(kept), content_type, complete))
                return message

        async def logging_send(message: dict[str, Any]) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = message.get("headers", ())
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            log(level, "<-- %s %s %d (%.4fs)", method, path, status, time.perf_counter() - start)
            if self.include_headers and response_headers:
                log(level, "    res headers: %s", self._headers(response_headers))

"""The ``Request`` object handed to endpoints that ask for it, and the body readers behind every extractor.

The body is read once, as a stream with the app's ``max_body_size`` enforced chunk by chunk (413 before
buffering), and cached: a ``Body()`` parameter and ``await request.body()`` in the same endpoint share it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .datastructures import URL, Address, FormData, Headers, QueryParams, State, UploadFile, parse_query
from .exceptions import RequestError, RequestTooLarge, RequestValidationError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

    from .applications import Tachyon

__all__ = ["HTTPConnection", "Request"]

DEFAULT_MAX_BODY_SIZE = 2 * 1024 * 1024
MAX_FORM_PARTS = 1000
MAX_FIELD_SIZE = 1024 * 1024  # a non-file multipart field; files spool to disk and are bounded by max_body_size


class ClientDisconnect(Exception):
    """The client went away before sending the whole body."""


class HTTPConnection:
    """What an HTTP request and a WebSocket share: a lazy view of the ASGI scope (URL, headers, query, cookies).

    A dependency annotated ``HTTPConnection`` serves both kinds of route.
    """

    __slots__ = ("scope", "_headers", "_query", "_cookies")

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self._headers: Headers | None = None
        self._query: QueryParams | None = None
        self._cookies: dict[str, str] | None = None

    @property
    def app(self) -> Tachyon:
        app: Tachyon = self.scope["app"]
        return app

    @property
    def url(self) -> URL:
        return URL(self.scope)

    @property
    def path_params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.scope.get("path_params", {})
        return params

    @property
    def query_params(self) -> QueryParams:
        if self._query is None:
            self._query = QueryParams(self.scope.get("query_string", b""))
        return self._query

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(self.scope["headers"])
        return self._headers

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get("cookie", ""))
        return self._cookies

    @property
    def client(self) -> Address | None:
        client = self.scope.get("client")
        return Address(*client) if client else None

    @property
    def state(self) -> State:
        """Per-connection attributes, kept in ``scope["state"]`` (shared with middleware and Starlette objects)."""
        return State(self.scope.setdefault("state", {}))


class Request(HTTPConnection):
    """An HTTP request: a lazy view of the ASGI scope plus the body stream.

    ``parsed_form`` is the form once :meth:`form` parsed it (None before): what :meth:`close` closes.
    """

    __slots__ = ("_receive", "_body", "_json", "parsed_form", "_consumed", "_first")

    def __init__(self, scope: dict[str, Any], receive: Any = None) -> None:
        self.scope = scope
        self._receive = receive
        self._headers: Headers | None = None
        self._query: QueryParams | None = None
        self._cookies: dict[str, str] | None = None
        self._body: bytes | None = None
        self._json: Any = None
        self.parsed_form: FormData | None = None
        self._consumed = False
        self._first: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def max_body_size(self) -> int:
        app = self.scope.get("app")
        return getattr(app, "max_body_size", DEFAULT_MAX_BODY_SIZE)

    # --- the body --------------------------------------------------------------------------------------
    async def stream(self) -> AsyncIterator[bytes]:
        """Yield the body in chunks as they arrive; 413 as soon as it passes ``max_body_size``."""
        if self._body is not None:
            yield self._body
            return
        if self._consumed:
            raise RuntimeError("The request body was already streamed")
        self._consumed = True
        limit = self._refuse_declared_oversize()
        received = 0
        while True:
            if self._first is not None:  # taken by body() to look for the one-message case
                message, self._first = self._first, None
            else:
                message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise RequestTooLarge(limit)
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    def _refuse_declared_oversize(self) -> int:
        """413 now if ``Content-Length`` already says the body is over ``max_body_size``; returns the limit.

        Called before the first ``receive()``: that call is what makes uvicorn answer ``Expect: 100-continue``
        with ``100 Continue``, and a client sending headers alone waits for an answer before sending the body.
        So a body we will refuse is refused before the client sends it, and never invited.
        """
        limit = self.max_body_size
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self._consumed = True
            raise RequestTooLarge(limit)
        return limit

    async def body(self) -> bytes:
        """The whole body (read once, cached); 413 past ``max_body_size``."""
        if self._body is None:
            if self._consumed:
                raise RuntimeError("The request body was already streamed")
            limit = self._refuse_declared_oversize()
            # The usual case, a body in one message, without the generator of stream().
            message = await self._receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body = message.get("body", b"")
                if len(body) > limit:
                    self._consumed = True
                    raise RequestTooLarge(limit)
                self._body = body
            else:
                self._first = message
                self._body = b"".join([chunk async for chunk in self.stream()])
        return self._body

    def replay_receive(self) -> Any:
        """A ``receive`` for an inner app (see ``call_next`` in middlewares): it first gets the body this request
        has already read, if any, then the messages still to come (the disconnect)."""
        if self._body is None:
            return self._receive
        pending = [{"type": "http.request", "body": self._body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return pending.pop() if pending else await self._receive()

        return receive

    async def json(self) -> Any:
        if self._json is None:
            body = await self.body()
            try:
                self._json = msgspec.json.decode(body)
            except (msgspec.DecodeError, RecursionError) as exc:
                message = json_error_message(exc)
                raise RequestValidationError(
                    [{"loc": ["body"], "msg": message, "type": "json_invalid"}], f"Invalid JSON body: {message}"
                ) from None
        return self._json

    async def form(self) -> FormData:
        """Parse an urlencoded or multipart body (python-multipart), files spooled to disk past 1 MiB."""
        if self.parsed_form is None:
            content_type, params = parse_options_header(self.headers.get("content-type", ""))
            if content_type == b"multipart/form-data":
                self.parsed_form = await _parse_multipart(self.stream(), params.get(b"boundary"))
            elif content_type in (b"application/x-www-form-urlencoded", b""):
                # Browsers send raw (not %-escaped) UTF-8 as often as escapes; both decode as UTF-8, bytes
                # that are not UTF-8 as U+FFFD, as parse_query does for escapes.
                text = (await self.body()).decode("utf-8", "replace")
                if text.count("&") >= MAX_FORM_PARTS:
                    raise RequestError(f"Invalid form body: more than {MAX_FORM_PARTS} fields")
                self.parsed_form = FormData(parse_query(text))
            else:
                raise RequestValidationError(
                    [{"loc": ["body"], "msg": "Expected a form content type", "type": "content_type"}],
                    f"Unsupported content type for a form: {content_type.decode('latin-1')}",
                )
        return self.parsed_form

    async def close(self) -> None:
        """Close uploaded files. Called by the framework after the response."""
        if self.parsed_form is not None:
            await self.parsed_form.close()


def parsed_request(scope: dict[str, Any], receive: Any, query: QueryParams | None, headers: Headers | None) -> Request:
    """A :class:`Request` over a scope whose query string and headers were parsed already (None: not yet), so
    that they are not parsed twice. A function, not keywords of ``Request``: it is called per request, and
    a class call with keywords costs twice as much."""
    request = Request(scope, receive)
    request._query, request._headers = query, headers
    return request


def json_error_message(exc: Exception) -> str:
    """What a client is told about a body msgspec could not decode.

    msgspec stops at Python's recursion limit (about 1,000 levels of nesting, fewer the deeper the call stack)
    with a RecursionError rather than overflowing the C stack; for a client that is malformed input too.
    """
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return str(exc)


def parse_cookies(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` header leniently, as browsers send it (later duplicates win)."""
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        name, sep, value = chunk.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies[name] = unquote(value)
    return cookies


async def _parse_multipart(stream: AsyncIterator[bytes], boundary: bytes | None) -> FormData:
    if not boundary:
        raise RequestError("Invalid multipart body: missing boundary")
    items: list[tuple[str, Any]] = []
    state: dict[str, Any] = {"headers": [], "field": b"", "value": b"", "ended": False}
    parts: list[tuple[str, Any]] = []  # (event, payload) in order, drained after each chunk

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"].append((state["field"].lower(), state["value"]))
        state["field"] = state["value"] = b""

    def on_headers_finished() -> None:
        parts.append(("begin", state["headers"]))
        state["headers"] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts.append(("data", data[start:end]))

    def on_part_end() -> None:
        parts.append(("end", None))

    def on_end() -> None:
        state["ended"] = True

    callbacks: MultipartCallbacks = {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_end": on_end,
    }
    current: Any = None
    name = ""
    buffer: list[bytes] = []
    field_size = 0
    try:
        parser = MultipartParser(boundary, callbacks)  # a FormParserError if the boundary is over 256 bytes
        async for chunk in stream:
            parser.write(chunk)
            for event, payload in parts:
                if event == "begin":
                    headers = Headers(payload)
                    _, options = parse_options_header(headers.get("content-disposition", ""))
                    if b"name" not in options:
                        raise RequestError("Invalid multipart body: a part has no name")
                    name = options[b"name"].decode("utf-8", "replace")
                    if b"filename" in options:
                        current = UploadFile(
                            filename=options[b"filename"].decode("utf-8", "replace"), size=0, headers=headers
                        )
                    else:
                        current, buffer, field_size = None, [], 0
                    if len(items) >= MAX_FORM_PARTS:
                        raise RequestError(f"Invalid multipart body: more than {MAX_FORM_PARTS} parts")
                elif event == "data":
                    if current is not None:
                        await current.write(payload)
                    else:
                        buffer.append(payload)
                        field_size += len(payload)
                        if field_size > MAX_FIELD_SIZE:
                            raise RequestError(f"Invalid multipart body: field {name!r} is over {MAX_FIELD_SIZE} bytes")
                else:
                    if current is not None:
                        await current.seek(0)
                        items.append((name, current))
                    else:
                        items.append((name, b"".join(buffer).decode("utf-8", "replace")))
                    current = None
            parts.clear()
        parser.finalize()
        if not state["ended"]:
            raise RequestError("Invalid multipart body: the closing boundary is missing")
    except BaseException as exc:
        await FormData(items).close()
        if current is not None:
            await current.close()
        if isinstance(exc, FormParserError):  # every error of the parser: a malformed body
            raise RequestError(f"Invalid multipart body: {exc}") from None
        raise
    return FormData(items)

"""Response classes, and the rendering of plain return values (``dict``, ``Struct``, ``str``...) into bytes.

A response builds its header list once, at construction; each send hands the server a fresh copy, so a
middleware that edits ``message["headers"]`` never affects another request. Background work attached with
``background=`` is handed to the app's task runner after the last byte is sent (see ``tasks/``).
"""

from __future__ import annotations

import asyncio
import http.cookies
import logging
import mimetypes
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import msgspec

from ._utils import is_starlette_class
from .concurrency import run_in_threadpool
from .tasks import BackgroundTask, BackgroundTasks

__all__ = [
    "Response",
    "JSONResponse",
    "HTMLResponse",
    "PlainTextResponse",
    "RedirectResponse",
    "StreamingResponse",
    "FileResponse",
    "TachyonJSONResponse",
    "TachyonBytesResponse",
    "Accepted",
    "success_response",
    "error_response",
    "not_found_response",
    "conflict_response",
    "validation_error_response",
    "response_validation_error_response",
    "internal_server_error_response",
]

Send = Callable[[dict[str, Any]], Any]
logger = logging.getLogger("tachyon_api.errors")
Background = BackgroundTask | BackgroundTasks | None


def enc_hook(obj: Any) -> Any:
    """Fallback for types msgspec does not encode natively: anything with ``__json__``/``model_dump``."""
    for attr in ("model_dump", "dict", "__json__"):
        method = getattr(obj, attr, None)
        if callable(method):
            return method()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


_encoder = msgspec.json.Encoder(enc_hook=enc_hook, decimal_format="number")
encode_json: Callable[[Any], bytes] = _encoder.encode

JSON_TYPE = (b"content-type", b"application/json")


class MutableHeaders:
    """A case-insensitive, editable view of a response's raw header list."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def __getitem__(self, key: str) -> str:
        name = key.lower().encode("latin-1")
        for k, v in self.raw:
            if k == name:
                return v.decode("latin-1")
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __setitem__(self, key: str, value: str) -> None:
        name = key.lower().encode("latin-1")
        self.raw[:] = [(k, v) for k, v in self.raw if k != name]
        self.raw.append((name, value.encode("latin-1")))

    def __delitem__(self, key: str) -> None:
        name = key.lower().encode("latin-1")
        self.raw[:] = [(k, v) for k, v in self.raw if k != name]

    def append(self, key: str, value: str) -> None:
        self.raw.append((key.lower().encode("latin-1"), value.encode("latin-1")))

    def items(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]

    def __repr__(self) -> str:
        return f"MutableHeaders({self.items()!r})"


class Response:
    """Bytes (or text) with a status, headers and a media type."""

    media_type: str | None = None
    charset = "utf-8"

    def __init__(
        self,
        content: Any = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: Background = None,
    ) -> None:
        self.status_code = status_code
        if media_type is not None:
            self.media_type = media_type
        self.background = background
        self.body = self.render(content)
        self.raw_headers = self._build_headers(headers)

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        if isinstance(content, (bytes, memoryview)):
            return bytes(content)
        return str(content).encode(self.charset)

    def _build_headers(self, headers: Mapping[str, str] | None) -> list[tuple[bytes, bytes]]:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        names = {k for k, _ in raw}
        body = getattr(self, "body", None)
        if (
            body is not None
            and b"content-length" not in names
            and not (self.status_code < 200 or self.status_code in (204, 304))
        ):
            raw.append((b"content-length", str(len(body)).encode("latin-1")))
        if self.media_type is not None and b"content-type" not in names:
            media_type = self.media_type
            if media_type.startswith("text/") and "charset=" not in media_type:
                media_type += f"; charset={self.charset}"
            raw.append((b"content-type", media_type.encode("latin-1")))
        return raw

    @property
    def headers(self) -> MutableHeaders:
        return MutableHeaders(self.raw_headers)

    def set_cookie(
        self,
        key: str,
        value: str = "",
        max_age: int | None = None,
        expires: int | str | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: str | None = "lax",
    ) -> None:
        cookie: http.cookies.BaseCookie[str] = http.cookies.SimpleCookie()
        cookie[key] = value
        morsel = cookie[key]
        for attr, val in (("max-age", max_age), ("expires", expires), ("path", path), ("domain", domain)):
            if val is not None:
                morsel[attr] = val
        if secure:
            morsel["secure"] = True
        if httponly:
            morsel["httponly"] = True
        if samesite:
            morsel["samesite"] = samesite
        self.raw_headers.append((b"set-cookie", cookie.output(header="").strip().encode("latin-1")))

    def delete_cookie(self, key: str, path: str = "/", domain: str | None = None) -> None:
        self.set_cookie(key, max_age=0, expires=0, path=path, domain=domain)

    async def send(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        """Send start and body; the body is left out for HEAD requests."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": list(self.raw_headers)})
        body = b"" if scope.get("method") == "HEAD" else self.body
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        """Plain ASGI use, outside a Tachyon app: send, then run ``background`` inline."""
        await self.send(scope, receive, send)
        if self.background is not None:
            await self.background()


class JSONResponse(Response):
    """``content`` encoded with msgspec (Structs, dataclasses, datetimes, UUIDs, Decimals, Enums...)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode_json(content)


TachyonJSONResponse = JSONResponse  # the existing framework's name; ours also takes headers and background


class Accepted(JSONResponse):
    """202 Accepted for a task the client can follow: ``return Accepted(task)`` is the whole endpoint.

    The body is ``{"id": ..., "status_url": ...}`` and ``Location`` is the status URL: the task's
    ``GET /tasks/{id}`` under the prefix of the app's ``task_status_router`` (found when the response is sent,
    so the router may be included after the route). Give ``status_url`` to point elsewhere. Without a status
    router and without ``status_url``, ``status_url`` is null and there is no ``Location`` (logged once).

    Reading ``task.id`` is what makes an in-process task holdable: it gets a status record.
    """

    def __init__(
        self,
        task: BackgroundTask | str,
        *,
        status_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        background: Background = None,
    ) -> None:
        self.task_id = task if isinstance(task, str) else task.id
        self.status_url = status_url
        super().__init__(None, 202, headers, background=background)

    async def send(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        url = self.status_url
        if url is None:
            from .tasks.http import status_url

            app = scope.get("app")
            url = status_url(app, self.task_id, scope.get("root_path", "")) if app is not None else None
        body = encode_json({"id": self.task_id, "status_url": url})
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        headers.append((b"content-length", b"%d" % len(body)))
        if url is not None:
            headers.append((b"location", quote(url, safe="/%:@!$&'()*+,;=").encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


class TachyonBytesResponse(Response):
    """JSON that is already encoded (``TachyonBytesResponse(b'{"a":1}')``): sent as is, ``application/json``.

    ``body=`` is tachyon-api 1.3's name for ``content``; either may be used, not both.
    """

    media_type = "application/json"

    def __init__(
        self,
        content: bytes | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: Background = None,
        *,
        body: bytes | None = None,
    ) -> None:
        if body is not None:
            if content is not None:
                raise TypeError("TachyonBytesResponse() takes content or body (its 1.3 name), not both")
            content = body
        super().__init__(content, status_code, headers, media_type, background)


class HTMLResponse(Response):
    media_type = "text/html"


class PlainTextResponse(Response):
    media_type = "text/plain"


class RedirectResponse(Response):
    """Redirect to ``url`` (307 by default, so the method and body are kept)."""

    def __init__(
        self,
        url: str,
        status_code: int = 307,
        headers: Mapping[str, str] | None = None,
        background: Background = None,
    ) -> None:
        super().__init__(None, status_code, headers, None, background)
        self.raw_headers.append((b"location", quote(str(url), safe=":/%#?=@[]!$&'()*+,;").encode("latin-1")))


class StreamingResponse(Response):
    """Stream the chunks of a sync or async iterable; sync iterables are advanced in a thread."""

    def __init__(
        self,
        content: AsyncIterable[Any] | Iterable[Any],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: Background = None,
    ) -> None:
        self.content = content
        self.status_code = status_code
        if media_type is not None:
            self.media_type = media_type
        self.background = background
        self.raw_headers = self._build_headers(headers)

    async def _chunks(self) -> AsyncIterator[Any]:
        if hasattr(self.content, "__aiter__"):
            async for chunk in self.content:
                yield chunk
            return
        iterator = iter(self.content)
        done = object()
        while (chunk := await run_in_threadpool(next, iterator, done)) is not done:
            yield chunk

    async def _stream(self, send: Send) -> None:
        async for chunk in self._chunks():
            if isinstance(chunk, str):
                chunk = chunk.encode(self.charset)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def send(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        """Stream until the iterable ends or the client disconnects (an endless event stream stops then)."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": list(self.raw_headers)})
        try:
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            stream = asyncio.ensure_future(self._stream(send))
            watcher = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait({stream, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stream, watcher):
                    task.cancel()
                await asyncio.gather(stream, watcher, return_exceptions=True)
            if not stream.cancelled() and stream.exception() is not None:
                raise stream.exception()  # type: ignore[misc]
        finally:
            await _close_iterator(self.content)


async def _disconnected(receive: Any) -> None:
    """Return when the client goes away (the request body has been read by then, or is not wanted)."""
    if receive is None:
        await asyncio.Future()  # no way to know: wait forever (until cancelled)
    while (await receive())["type"] != "http.disconnect":
        pass


async def _close_iterator(content: Any) -> None:
    close = getattr(content, "aclose", None)
    if close is not None:
        await close()
    elif callable(getattr(content, "close", None)):
        content.close()


class FileResponse(Response):
    """Send a file from disk in chunks, read in a thread; ``filename`` sets a download name."""

    chunk_size = 64 * 1024

    def __init__(
        self,
        path: str | os.PathLike[str],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: Background = None,
        filename: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.status_code = status_code
        self.filename = filename
        self.media_type = media_type or mimetypes.guess_type(filename or self.path)[0] or "application/octet-stream"
        self.background = background
        self.raw_headers = self._build_headers(headers)
        if filename is not None:
            disposition = f"attachment; filename*=utf-8''{quote(filename)}"
            self.raw_headers.append((b"content-disposition", disposition.encode("latin-1")))

    async def send(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        try:
            info = await run_in_threadpool(os.stat, self.path)
        except FileNotFoundError:
            raise RuntimeError(f"File at path {self.path} does not exist") from None
        if not stat.S_ISREG(info.st_mode):
            raise RuntimeError(f"File at path {self.path} is not a file")
        headers = list(self.raw_headers)
        headers.append((b"content-length", str(info.st_size).encode("latin-1")))
        headers.append((b"last-modified", formatdate(info.st_mtime, usegmt=True).encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        handle = await run_in_threadpool(open, self.path, "rb")
        try:
            more = True
            while more:
                chunk = await run_in_threadpool(handle.read, self.chunk_size)
                more = len(chunk) == self.chunk_size
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        finally:
            await run_in_threadpool(handle.close)


# --- the existing framework's response helpers: its body shapes, fresh objects on every call -----------------
def success_response(data: Any = None, message: str = "Success", status_code: int = 200) -> JSONResponse:
    """``{"success": true, "message": message, "data": data}``."""
    return JSONResponse({"success": True, "message": message, "data": data}, status_code)


def error_response(error: str, status_code: int = 400, code: str | None = None) -> JSONResponse:
    """``{"success": false, "error": error}``, plus ``"code"`` when one is given."""
    body: dict[str, Any] = {"success": False, "error": error}
    if code:
        body["code"] = code
    return JSONResponse(body, status_code)


def not_found_response(error: str = "Resource not found") -> JSONResponse:
    return error_response(error, 404, "NOT_FOUND")


def conflict_response(error: str = "Resource conflict") -> JSONResponse:
    return error_response(error, 409, "CONFLICT")


def validation_error_response(error: str = "Validation failed", errors: Any = None) -> JSONResponse:
    """A 422 in the framework's shape; ``errors`` (any JSON value, e.g. ``{field: [messages]}``) if given."""
    body: dict[str, Any] = {"success": False, "error": error, "code": "VALIDATION_ERROR"}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, 422)


def response_validation_error_response(
    error: str = "Response validation error", exc_info: BaseException | None = None
) -> JSONResponse:
    """The 500 the framework sends for a return value that does not fit ``response_model``. ``error`` (and
    the traceback of ``exc_info``) is logged on ``tachyon_api.errors``, never sent: it describes server
    internals."""
    logger.error("Response validation error: %s", error, exc_info=exc_info)
    return JSONResponse(RESPONSE_INVALID, 500)


def internal_server_error_response() -> JSONResponse:
    """The generic 500 body; a new object per call, so nobody can alter another request's response."""
    return JSONResponse(INTERNAL_ERROR, 500)


INTERNAL_ERROR = {"success": False, "error": "Internal Server Error", "code": "INTERNAL_SERVER_ERROR"}
RESPONSE_INVALID = {"success": False, "error": "Internal Server Error", "code": "RESPONSE_VALIDATION_ERROR"}


def is_foreign_response(value: Any) -> bool:
    """A response object of another ASGI framework (Starlette's, as the existing tachyon-api re-exported),
    or of a user subclass of one."""
    return callable(value) and hasattr(value, "background") and is_starlette_class(type(value))


async def send_any(response: Any, scope: dict[str, Any], receive: Any, send: Send) -> None:
    """Send one of our responses, or a Starlette one (whose own tasks the caller has taken over)."""
    if isinstance(response, Response):
        await response.send(scope, receive, send)
    else:
        response.background = None
        await response(scope, receive, send)


_OCTET = (b"content-type", b"application/octet-stream")


def make_renderer(status_code: int, response_model: Any = None) -> Callable[[Any], tuple[list[Any], bytes]]:
    """Build, at registration, the function that turns an endpoint's return value into headers and body.

    Data (dict, list, Struct, dataclass, str, None...) becomes compact JSON; ``bytes`` are sent as
    ``application/octet-stream``; ``response_model`` converts and validates first (dicts and objects with
    matching attributes both convert; unknown keys are dropped). A value that cannot be encoded raises, which
    the app answers with a logged 500.
    """
    from .exceptions import ResponseValidationError

    empty = status_code < 200 or status_code in (204, 304)

    def convert(value: Any) -> Any:
        if type(value) is response_model:
            return value
        try:
            return msgspec.convert(value, response_model, from_attributes=True)
        except msgspec.ValidationError as exc:
            raise ResponseValidationError(f"Return value does not match response_model: {exc}") from exc

    def render(value: Any) -> tuple[list[Any], bytes]:
        if response_model is not None:
            value = convert(value)
        if empty:
            return [], b""
        if isinstance(value, (bytes, bytearray)):
            return [_OCTET, (b"content-length", str(len(value)).encode())], bytes(value)
        body = encode_json(value)
        return [JSON_TYPE, (b"content-length", str(len(body)).encode())], body

    def render_data(value: Any) -> tuple[list[Any], bytes]:
        # The common case, decided at registration: no model, a status with a body, data rather than bytes.
        if type(value) in _BYTES:
            return render(value)
        body = encode_json(value)
        return [JSON_TYPE, (b"content-length", b"%d" % len(body))], body

    return render if response_model is not None or empty else render_data


_BYTES = frozenset((bytes, bytearray))
# Return values that are certainly not response objects: the hot path skips the isinstance checks for them.
PLAIN_DATA = frozenset((dict, list, str, int, float, bool, type(None), tuple))

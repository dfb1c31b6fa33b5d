"""Read-only views of request data (headers, query string, form), uploaded files and ``app.state``.

All of them parse lazily from the ASGI scope, so a request pays only for what its endpoint reads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar, overload
from urllib.parse import unquote_plus

from .concurrency import run_in_threadpool

__all__ = ["Address", "FormData", "Headers", "QueryParams", "State", "UploadFile", "URL"]
T = TypeVar("T")
V = TypeVar("V")


class _MultiDict(Mapping[str, V], Generic[V]):
    """An immutable multi-dict: ``d[key]`` is the last value, ``d.getlist(key)`` all of them."""

    __slots__ = ("_items", "_dict")

    def __init__(self, items: Sequence[tuple[str, V]]) -> None:
        self._items = items
        self._dict = dict(items)

    def __getitem__(self, key: str) -> V:
        return self._dict[key]

    @overload
    def get(self, key: str) -> V | None: ...
    @overload
    def get(self, key: str, default: V | T) -> V | T: ...
    def get(self, key: str, default: Any = None) -> Any:  # Mapping's get goes through __getitem__ and a KeyError
        return self._dict.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __contains__(self, key: object) -> bool:
        return key in self._dict

    def getlist(self, key: str) -> list[V]:
        return [v for k, v in self._items if k == key]

    def multi_items(self) -> list[tuple[str, V]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


def parse_query(query: str) -> list[tuple[str, str]]:
    """Split ``a=1&b=x%20y`` into pairs, keeping blank values; unquote only the pairs that need it.

    The same result as ``urllib.parse.parse_qsl(query, keep_blank_values=True)``, several times faster for the
    usual short, unescaped query strings.
    """
    items = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if "%" in part or "+" in part:
            key, value = unquote_plus(key), unquote_plus(value)
        items.append((key, value))
    return items


class QueryParams(_MultiDict[str]):
    """The parsed query string. Blank values are kept (``?a=`` gives ``""``)."""

    __slots__ = ()

    def __init__(self, query_string: bytes | str | list[tuple[str, str]] = b"") -> None:
        if isinstance(query_string, bytes):
            query_string = query_string.decode("latin-1")
        super().__init__(parse_query(query_string) if isinstance(query_string, str) else query_string)


class FormData(_MultiDict["str | UploadFile"]):
    """Fields of a submitted form: ``str`` values and :class:`UploadFile` objects."""

    __slots__ = ()

    async def close(self) -> None:
        for _, value in self._items:
            if isinstance(value, UploadFile):
                await value.close()


def scope_header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case bytes) in an ASGI scope, or None.

    For code that reads one header per request (middlewares, background-task routing): a plain scan, without
    building a ``Headers`` mapping.
    """
    key: bytes
    value: bytes
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only request or response headers over the raw ASGI list."""

    __slots__ = ("raw", "_dict")

    def __init__(self, raw: list[tuple[bytes, bytes]] | Mapping[str, str] | None = None) -> None:
        if raw is None:
            raw = []
        elif type(raw) is not list and isinstance(raw, Mapping):  # a request's scope gives a list: no ABC check
            raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in raw.items()]
        self.raw = raw
        self._dict: dict[str, str] | None = None

    def _map(self) -> dict[str, str]:
        if self._dict is None:
            self._dict = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw}
        return self._dict

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str | T) -> str | T: ...
    def get(self, key: str, default: Any = None) -> Any:
        if self._dict is not None:
            return self._dict.get(key.lower(), default)
        # One lookup (the usual case) scans the raw list instead of decoding every header into a dict; the last
        # value wins, as in the dict. ASGI servers send lower-case names, so the exact comparison finds them; a
        # name is lower-cased only when its length matches (a hand-made scope with other spellings).
        name = key.lower().encode("latin-1")
        size = len(name)
        found: bytes | None = None
        for raw_name, raw_value in self.raw:
            if raw_name == name or (len(raw_name) == size and raw_name.lower() == name):
                found = raw_value
        return default if found is None else found.decode("latin-1")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _ABSENT) is not _ABSENT

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self._map())

    def getlist(self, key: str) -> list[str]:
        name = key.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.raw if k.lower() == name]

    def __repr__(self) -> str:
        return f"Headers({self._map()!r})"


_ABSENT = object()


class Address(NamedTuple):
    host: str
    port: int


class URL(str):
    """The request URL as a string, with its parts as attributes."""

    scheme: str
    netloc: str
    path: str
    query: str

    def __new__(cls, scope: Mapping[str, Any]) -> URL:
        scheme = scope.get("scheme", "http")
        server = scope.get("server")
        host = scope_header(scope, b"host")
        if host is None and server:
            name, port = server
            default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
            host = name if port == default else f"{name}:{port}"
        path = scope.get("root_path", "") + scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        self = super().__new__(cls, f"{scheme}://{host or 'localhost'}{path}" + (f"?{query}" if query else ""))
        self.scheme, self.netloc, self.path, self.query = scheme, host or "", path, query
        return self


class State:
    """An attribute bag: ``app.state.db = ...``, ``request.state.user = ...``."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        super().__setattr__("_state", {} if values is None else values)  # by reference: scope["state"] stays one dict

    def __setattr__(self, key: str, value: Any) -> None:
        self._state[key] = value

    def __getattr__(self, key: str) -> Any:
        try:
            return self._state[key]
        except KeyError:
            raise AttributeError(f"'State' object has no attribute '{key}'") from None

    def __delattr__(self, key: str) -> None:
        del self._state[key]


MAX_FILENAME_BYTES = 255


def safe_filename(filename: str | None) -> str | None:
    """Strip directories, drive letters and NUL from a client-supplied file name (no path traversal), and
    keep it within 255 bytes of UTF-8, so that ``open(folder / filename, "wb")`` cannot fail on its length."""
    if filename is None:
        return None
    name = filename.replace("\x00", "").replace("\\", "/").rsplit("/", 1)[-1]
    if len(name) > 1 and name[1] == ":" and name[0].isalpha():  # a Windows drive letter: C:name
        name = name[2:]
    name = name.strip()
    if name in ("", ".", ".."):
        return None
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        # Most file systems refuse a name over 255 bytes: cut the stem, keep the extension (if it is short).
        stem, dot, extension = name.rpartition(".")
        if not stem or len(extension.encode("utf-8")) > 32:
            stem, dot, extension = name, "", ""
        room = MAX_FILENAME_BYTES - len(f"{dot}{extension}".encode())
        name = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip() + dot + extension
    return name


class UploadFile:
    """An uploaded file, spooled to disk past ``spool_max_size`` bytes and closed after the request.

    ``filename`` is sanitised (no directories, no ``..``): it is safe to join to a folder of yours.
    """

    spool_max_size = 1024 * 1024

    def __init__(
        self,
        file: Any = None,
        *,
        filename: str | None = None,
        size: int | None = None,
        headers: Headers | None = None,
        content_type: str | None = None,
    ) -> None:
        # The upload owns its file until close(): no context manager fits that lifetime.
        self.file = file if file is not None else tempfile.SpooledTemporaryFile(max_size=self.spool_max_size)  # noqa: SIM115
        self.filename = safe_filename(filename)
        self.size = size
        self.headers = headers or Headers()
        self.content_type = content_type if content_type is not None else self.headers.get("content-type")

    @property
    def _in_memory(self) -> bool:
        return not getattr(self.file, "_rolled", True)

    async def _io(self, func: Callable[..., T], *args: Any) -> T:
        if self._in_memory:
            return func(*args)
        return await run_in_threadpool(func, *args)

    async def read(self, size: int = -1) -> bytes:
        return await self._io(self.file.read, size)

    async def seek(self, offset: int) -> None:
        await self._io(self.file.seek, offset)

    async def write(self, data: bytes) -> None:
        if self.size is not None:
            self.size += len(data)
        await self._io(self.file.write, data)

    async def close(self) -> None:
        await self._io(self.file.close)

    def __repr__(self) -> str:
        return f"UploadFile(filename={self.filename!r}, size={self.size!r}, content_type={self.content_type!r})"

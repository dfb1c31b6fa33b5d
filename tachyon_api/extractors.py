"""Extractors: what reads one parameter's value out of a request, built once per parameter at registration.

An extractor takes the request's :class:`~tachyon_api.compiler.Context` and returns the value, or raises
:class:`FieldError` (the request gets a 422 listing every failing field) or :class:`PathNotFound` (a path
segment of the wrong type: 404). One kind per source: values of the query string, headers and cookies
(:func:`value_extractor`), path segments, form fields and files, and the JSON body, whose errors are located
to the member that failed.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import re
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .converters import ConstraintError, constraint_check, converter, describe_validation_error
from .datastructures import FormData, UploadFile
from .exceptions import HTTPException
from .introspection import (
    EMPTY,
    UNION_TYPES,
    bare_type,
    is_model,
    list_item,
    strip_annotated,
    type_name,
    unwrap_optional,
)
from .requests import json_error_message

if TYPE_CHECKING:
    from .compiler import Context

__all__ = [
    "MAX_LIST_ITEMS",
    "Extractor",
    "FieldError",
    "PathNotFound",
    "value_extractor",
    "path_extractor",
    "form_extractor",
    "body_extractor",
    "form_json_extractor",
    "foreign_websocket",
]

MAX_LIST_ITEMS = 1000  # items of one list parameter; more is a 422, before any conversion

Extractor = Callable[["Context"], Any]
Source = TypeVar("Source")  # what a value extractor is called with: the request's Context, or a parsed form


class FieldError(Exception):
    """One invalid field; collected so that every failing field is reported at once."""

    def __init__(self, loc: list[Any], msg: str, type_: str) -> None:
        self.error: dict[str, Any] = {"loc": loc, "msg": msg, "type": type_}


class PathNotFound(HTTPException):
    """A path segment that does not convert to its parameter's type: the route does not exist (404).

    An ``HTTPException``, so 404 handlers (``@app.exception_handler(404)``) apply as to unknown paths.
    """

    def __init__(self, name: str) -> None:
        super().__init__(404, "Not Found")
        self.parameter = name


def foreign_websocket(cls: type) -> Extractor:
    """Starlette's WebSocket over our socket's receive/send, so our state, size limit and shutdown apply.
    One per connection, shared by every parameter that asks for it."""

    def extract(ctx: Context) -> Any:
        cache = ctx.cache
        if cache is None:
            cache = ctx.cache = {}
        socket = cache.get(cls)
        if socket is None:
            ws = ctx.websocket  # type: ignore[attr-defined]
            socket = cache[cls] = cls(ctx.scope, ws.receive, ws.send)
        return socket

    return extract


def _missing(loc: list[Any]) -> FieldError:
    return FieldError(loc, "Field required", "missing")


def _invalid(loc: list[Any], tp: Any, exc: Exception | None = None) -> FieldError:
    if isinstance(exc, ConstraintError):
        return FieldError(loc, exc.msg, exc.type)
    tp = strip_annotated(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [member.value for member in tp]
    elif typing.get_origin(tp) is typing.Literal:
        choices = list(typing.get_args(tp))
    else:
        name = type_name(tp)
        return FieldError(loc, f"Input should be a valid {name}", f"{name.lower()}_parsing")
    return FieldError(loc, f"Input should be one of {', '.join(repr(c) for c in choices)}", "enum")


def value_extractor(
    source: str, key: str, tp: Any, default: Any, values_of: Callable[[Source], Any]
) -> Callable[[Source], Any]:
    """Read one string (or the list of a repeated key) from query, header, cookie or form fields, and convert it.

    ``values_of`` gives the multi-dict the values are in (``get(key)``: the last value; ``getlist(key)``) from
    what the extractor is called with: the context's query, headers or cookies, or a parsed form.
    """
    inner, _ = unwrap_optional(tp)
    item = list_item(inner)
    required = default is ...
    loc = [source, key]
    if item is not None:
        convert_list = _list_converter(inner, loc)
        # Query lists also come as CSV (``?ids=1,2,3``), as in the existing framework. String items keep their
        # commas when the key is repeated (``?q=a,b&q=c`` is ``["a,b", "c"]``); other items are always split.
        csv = source == "query"
        split_repeated = bare_type(item) not in (str, Any, EMPTY)

        def extract_list(ctx: Source) -> Any:
            raw = values_of(ctx).getlist(key)
            if not raw:
                if required:
                    raise _missing(loc)
                return default
            if csv and (split_repeated or len(raw) == 1):
                raw = _split_csv(raw, loc)
            elif len(raw) > MAX_LIST_ITEMS:
                raise _too_many(loc)
            return convert_list(raw)

        return extract_list

    convert = converter(inner)

    def extract(ctx: Source) -> Any:
        value = values_of(ctx).get(key)
        if value is None:
            if required:
                raise _missing(loc)
            return default
        if convert is None:
            return value
        try:
            return convert(value)
        except (ValueError, TypeError, msgspec.ValidationError) as exc:
            raise _invalid(loc, inner, exc) from None

    return extract


def _too_many(loc: list[Any]) -> FieldError:
    return FieldError(loc, f"List should have at most {MAX_LIST_ITEMS} items", "too_long")


def _split_csv(values: list[str], loc: list[Any]) -> list[str]:
    """Split every value on commas; the item count is checked before any splitting or conversion."""
    if len(values) + sum(value.count(",") for value in values) > MAX_LIST_ITEMS:
        raise _too_many(loc)
    return [part for value in values for part in value.split(",")]


class _UnconvertibleItem(FieldError):
    """A list item that is not of its type: a 422 in a query; in a path, the route does not exist (404)."""


def _list_converter(list_tp: Any, loc: list[Any]) -> Callable[[list[str]], list[Any]]:
    """Convert the strings of a list to its item type, then check the list's own constraints (its length).

    The first bad item is located by index. For ``Optional`` items, an empty string or ``null`` (any case)
    is None.
    """
    item_inner, item_optional = unwrap_optional(list_item(list_tp))
    convert = converter(item_inner)
    check_list = constraint_check(list_tp)

    def convert_list(values: list[str]) -> list[Any]:
        out: list[Any] = values
        if convert is not None or item_optional:
            out = []
            for index, value in enumerate(values):
                if item_optional and (not value or value.lower() == "null"):
                    out.append(None)
                elif convert is None:
                    out.append(value)
                else:
                    try:
                        out.append(convert(value))
                    except ConstraintError as exc:
                        raise _invalid([*loc, index], item_inner, exc) from None
                    except (ValueError, TypeError, msgspec.ValidationError) as exc:
                        error = _invalid([*loc, index], item_inner, exc).error
                        raise _UnconvertibleItem(error["loc"], error["msg"], error["type"]) from None
        if check_list is not None:
            try:
                check_list(out)
            except ConstraintError as exc:
                raise _invalid(loc, list_tp, exc) from None
        return out

    return convert_list


def path_extractor(key: str, tp: Any) -> Extractor:
    inner = unwrap_optional(tp)[0]
    if list_item(inner) is not None:  # a CSV segment: /items/1,2,3
        loc = ["path", key]
        convert_list = _list_converter(inner, loc)

        def extract_list(ctx: Context) -> Any:
            values = _split_csv([ctx.path_params[key]], loc)
            try:
                return convert_list(values)
            except _UnconvertibleItem:
                raise PathNotFound(key) from None

        return extract_list

    convert = converter(inner)

    def extract(ctx: Context) -> Any:
        value = ctx.path_params[key]
        if convert is None:
            return value
        try:
            return convert(value)
        except ConstraintError as exc:  # the route exists; the value is out of range (422)
            raise FieldError(["path", key], exc.msg, exc.type) from None
        except (ValueError, TypeError, msgspec.ValidationError):
            raise PathNotFound(key) from None

    return extract


def form_extractor(key: str, tp: Any, default: Any, want_file: bool) -> Extractor:
    """A form field (the last value of its key) or a list of them, read and converted as the same parameter
    in a query is; or the uploaded file(s) of the key (their content for ``bytes``)."""
    loc = ["body", key]
    if not want_file:
        read = value_extractor("body", key, tp, default, _the_form)

        async def extract_field(ctx: Context) -> Any:
            form = await ctx.request.form()
            if any(isinstance(v, UploadFile) for v in form.getlist(key)):
                raise FieldError(loc, "Expected a form field, got a file", "value_error")
            return read(form)

        return extract_field

    inner, _ = unwrap_optional(tp)
    item = list_item(inner)
    # `data: bytes = File()` gets the content
    as_bytes = bare_type(inner if item is None else item) is bytes
    required = default is ...

    async def extract_files(ctx: Context) -> Any:
        form = await ctx.request.form()
        files = [v for v in form.getlist(key) if isinstance(v, UploadFile)]
        values: list[UploadFile] | list[bytes] = [await v.read() for v in files] if as_bytes else files
        if not values:
            if required:
                raise _missing(loc)
            return default
        return values if item is not None else values[-1]

    return extract_files


def _the_form(form: FormData) -> FormData:
    return form


_AT = re.compile(r" - at (`key` in )?`\$(.*)`$")
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[(\.\.\.)\]")


def _body_error(exc: Exception, body: bytes, tp: Any) -> dict[str, Any]:
    """Turn msgspec's message (``Expected `int`, got `str` - at `$.lines[0].qty```) into a located error."""
    if not isinstance(exc, msgspec.ValidationError):
        return {"loc": ["body"], "msg": f"Invalid JSON: {json_error_message(exc)}", "type_": "json_invalid"}
    message = str(exc)
    loc: list[Any] = ["body"]
    found = _AT.search(message)
    if found:
        message = message[: found.start()]
        parts = [int(index) if index else name or ... for name, index, _ in _PATH_PART.findall(found.group(2))]
        if found.group(1):  # the key of a dict is invalid: msgspec names the dict, not the key
            parts.append(...)
        loc += _name_members(parts, body, tp) if ... in parts else parts
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        return {"loc": [*loc, missing.group(1)], "msg": "Field required", "type_": "missing"}
    msg, type_ = describe_validation_error(message)
    return {"loc": loc, "msg": msg, "type_": type_}


def _name_members(parts: list[Any], body: bytes, tp: Any) -> list[Any]:
    """Replace each ``...`` (msgspec's ``[...]``, a member of a dict it does not name) by the member's key.

    The body is decoded again without a type and walked along ``parts`` with ``tp``; in each dict the key is
    the first member that does not convert (msgspec stops at the first error, in document order). Runs only
    for an invalid body, so valid requests pay nothing. A key that cannot be found is left out.
    """
    try:
        raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raw = None
    named: list[Any] = []
    for step, part in enumerate(parts):
        tp = _shape_for(tp, raw)
        if part is ...:
            member = _failing_member(tp, raw)
            if member is None:
                return [*named, *(p for p in parts[step:] if p is not ...)]
            key, raw, tp = member
            named.append(key)
        elif isinstance(part, int):
            named.append(part)
            args = typing.get_args(tp)
            if typing.get_origin(tp) is tuple and ... not in args:
                tp = args[part] if part < len(args) else Any
            else:
                tp = args[0] if args else Any
            raw = raw[part] if isinstance(raw, list) and part < len(raw) else None
        else:
            named.append(part)
            tp, raw = _field_type(tp, part), raw.get(part) if isinstance(raw, dict) else None
    return named


def _failing_member(tp: Any, raw: Any) -> tuple[str, Any, Any] | None:
    """The first ``(key, value, value type)`` of the dict ``raw`` that does not convert to the mapping ``tp``."""
    origin = typing.get_origin(tp) or tp
    if not (isinstance(raw, dict) and isinstance(origin, type) and issubclass(origin, collections.abc.Mapping)):
        return None
    key_type, value_type = typing.get_args(tp) or (Any, Any)
    for key, value in raw.items():
        try:
            msgspec.convert({key: value}, dict[key_type, value_type], str_keys=True)  # type: ignore[valid-type]
        except msgspec.ValidationError:
            return key, value, value_type
    return None


def _shape_for(tp: Any, raw: Any) -> Any:
    """``tp`` without ``Annotated``; of a union, the member msgspec decodes ``raw`` (an object or array) with."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in UNION_TYPES:
            want_array = isinstance(raw, list)
            tp = next((a for a in typing.get_args(tp) if is_model(a) and (list_item(a) is not None) == want_array), Any)
        else:
            return tp


def _field_type(tp: Any, name: str) -> Any:
    """The type of the member encoded as ``name`` in a Struct, dataclass or TypedDict (Any if unknown)."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return next((f.type for f in msgspec.structs.fields(tp) if f.encode_name == name), Any)
    if dataclasses.is_dataclass(tp) or typing.is_typeddict(tp):
        try:
            return typing.get_type_hints(tp).get(name, Any)
        except (NameError, TypeError):  # msgspec resolved it, this may not (a class local to a function)
            return Any
    return Any


def _is_json(content_type: str | None) -> bool:
    if not content_type or content_type == "application/json":
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def body_extractor(params: list[tuple[str, Any, Any]], strict: bool = True) -> Extractor:
    """One extractor for all body parameters: the whole body for one, members of an object for several.

    ``strict=False`` is msgspec's lax decoding (``"9.5"`` for a float, ``1`` for a bool), for apps that
    move over from pydantic's coercion.
    """
    embed = len(params) > 1
    if embed:
        fields = [(name, tp) if default is ... else (name, tp, default) for name, tp, default in params]
        decoder = msgspec.json.Decoder(msgspec.defstruct("Body", fields, kw_only=True), strict=strict)
    else:
        name, tp, default = params[0]
        decoder = msgspec.json.Decoder(tp, strict=strict)
    required = embed or params[0][2] is ...

    async def extract(ctx: Context) -> Any:
        request = ctx.request
        if not _is_json(request.headers.get("content-type")):
            raise FieldError(["body"], "Expected content type application/json", "content_type")
        body = await request.body()
        if not body or body.isspace():  # no copy of the body, unlike strip()
            if required:
                raise _missing(["body"])
            return {name: default}
        try:
            value = decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            raise FieldError(**_body_error(exc, body, decoder.type)) from None
        if embed:
            return {field: getattr(value, field) for field, _, _ in params}
        return {name: value}

    return extract


def form_json_extractor(key: str, tp: Any, default: Any, strict: bool = True) -> Extractor:
    """A model sent as a JSON-valued field of a multipart form, beside files (as OpenAPI documents it)."""
    decoder = msgspec.json.Decoder(tp, strict=strict)
    required = default is ...

    async def extract(ctx: Context) -> Any:
        form = await ctx.request.form()
        value: str | bytes | UploadFile | None = form.get(key)
        if value is None:
            if required:
                raise _missing(["body", key])
            return default
        if isinstance(value, UploadFile):
            value = await value.read()
        try:
            return decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            error = _body_error(exc, value.encode() if isinstance(value, str) else value, tp)
            raise FieldError(["body", key, *error["loc"][1:]], error["msg"], error["type_"]) from None

    return extract

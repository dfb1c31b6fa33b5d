"""What an annotation means to the framework: the type under ``Optional`` and ``Annotated``, a list's item,
and which kind of thing it is (scalar, model, upload, request, socket, background tasks).

Registration classifies parameters with these (:mod:`tachyon_api.compiler`), and the OpenAPI document
(:mod:`tachyon_api.openapi`, :mod:`tachyon_api.schemas`) describes them with the same answers, so what is
documented is what is validated. Nothing here runs per request.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import sys
import types
import typing
import uuid
from typing import Annotated, Any, Union

import msgspec

from ._utils import callable_name, is_starlette_class
from .datastructures import UploadFile
from .requests import HTTPConnection, Request
from .tasks import BackgroundTasks
from .websockets import WebSocket

__all__ = [
    "EMPTY",
    "SCALARS",
    "split_annotated",
    "strip_annotated",
    "unwrap_optional",
    "bare_type",
    "list_item",
    "is_scalar",
    "is_model",
    "is_upload",
    "is_request_type",
    "is_http_only",
    "is_websocket_type",
    "is_background_type",
    "type_name",
    "type_hints",
]

EMPTY = inspect.Parameter.empty
SCALARS = (str, int, float, bool, decimal.Decimal, uuid.UUID, datetime.date, datetime.datetime, datetime.time)
UNION_TYPES = (Union, types.UnionType) if sys.version_info >= (3, 10) else (Union,)
_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def split_annotated(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, x, y]`` -> ``(T, (x, y))``; any other type -> ``(tp, ())``."""
    if typing.get_origin(tp) is Annotated:
        return tp.__origin__, tp.__metadata__
    return tp, ()


def strip_annotated(tp: Any) -> Any:
    """``Annotated[T, ...]`` -> ``T`` (Python flattens nested ``Annotated``, so one level is all there is)."""
    return split_annotated(tp)[0]


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``Optional[T]`` (or ``T | None``) -> ``(T, True)``; a union of several others keeps them together;
    any other type -> ``(tp, False)``."""
    if typing.get_origin(tp) in UNION_TYPES:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007 - built from a tuple
    return tp, False


def bare_type(tp: Any) -> Any:
    """The type a value is converted to, without ``Optional`` and the ``Annotated`` metadata on either side
    of it: ``Optional[Annotated[int, Meta(ge=1)]]`` and ``Annotated[Optional[int], ...]`` are both ``int``."""
    return strip_annotated(unwrap_optional(strip_annotated(tp))[0])


def list_item(tp: Any) -> Any:
    """The item type of a list, tuple, set or sequence annotation (``str`` when bare); None for any other."""
    tp = strip_annotated(tp)
    if typing.get_origin(tp) in (list, tuple, set, frozenset, typing.Sequence) or tp in (list, tuple, set):
        args = typing.get_args(tp)
        return args[0] if args else str
    return None


def is_scalar(tp: Any) -> bool:
    """A type one string converts to (a query, path, header, cookie or form value): see ``SCALARS``, an
    ``Enum``, a ``Literal``, ``Any``, or a subclass of one of them."""
    tp = bare_type(tp)
    if tp in SCALARS or tp is Any:
        return True
    if typing.get_origin(tp) is typing.Literal:
        return True
    return isinstance(tp, type) and issubclass(tp, (enum.Enum, *SCALARS))


def is_model(tp: Any) -> bool:
    """A type read from a JSON body: a ``Struct``, dataclass, ``TypedDict`` or ``dict``, or a list of one."""
    tp = bare_type(tp)
    item = list_item(tp)
    if item is not None:
        tp, _ = unwrap_optional(item)
    tp = strip_annotated(tp)
    origin = typing.get_origin(tp) or tp
    return (
        (isinstance(origin, type) and issubclass(origin, (msgspec.Struct, dict)))
        or dataclasses.is_dataclass(origin)
        or typing.is_typeddict(origin)
    )


def is_upload(tp: Any) -> bool:
    """``UploadFile`` (a subclass, ``Optional`` of one, or a list of them)."""
    tp, _ = unwrap_optional(tp)
    tp = strip_annotated(list_item(tp) or tp)
    return isinstance(tp, type) and issubclass(tp, UploadFile)


def is_request_type(tp: Any) -> bool:
    """Our ``HTTPConnection``, ``Request`` or ``WebSocket`` (or a subclass), or Starlette's ``Request`` or
    ``HTTPConnection``, which code written for the existing framework annotates with."""
    if not isinstance(tp, type):
        return False
    if issubclass(tp, HTTPConnection):
        return True
    return is_starlette_class(tp, "Request", "HTTPConnection")


def is_http_only(tp: Any) -> bool:
    """A request type with a body (ours or Starlette's ``Request``), as opposed to a bare ``HTTPConnection``."""
    if tp is EMPTY or not isinstance(tp, type):
        return True
    if issubclass(tp, HTTPConnection):
        return issubclass(tp, Request)
    return is_starlette_class(tp, "Request")


def is_websocket_type(tp: Any) -> bool:
    """Our ``WebSocket``, or Starlette's, which code written for tachyon-api 1.3 annotates with."""
    if not isinstance(tp, type):
        return False
    if issubclass(tp, WebSocket):
        return True
    return is_starlette_class(tp, "WebSocket")


def is_background_type(tp: Any) -> bool:
    """``BackgroundTasks`` (a subclass, or ``Optional`` of one)."""
    tp, _ = unwrap_optional(tp)
    return isinstance(tp, type) and issubclass(tp, BackgroundTasks)


def type_name(tp: Any) -> str:
    """How error messages name a type: JSON's words for the basic ones, else the class name."""
    return _TYPE_NAMES.get(tp) or getattr(tp, "__name__", None) or str(tp)


def type_hints(func: Any) -> dict[str, Any]:
    """The evaluated annotations of a function, of a class's ``__init__`` or of a callable object's
    ``__call__``, ``Annotated`` metadata kept; a TypeError naming the callable when one cannot be evaluated."""
    # A class's own __init__, read for its annotations (mypy warns against reading it from an instance).
    target = func.__init__ if isinstance(func, type) else func  # type: ignore[misc]
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(func), "__call__", target)  # noqa: B004 - the method itself, for its annotations
    try:
        return typing.get_type_hints(target, include_extras=True)  # keep Annotated[T, Meta(...)]
    except Exception as exc:  # an annotation that cannot be evaluated
        raise TypeError(f"Cannot evaluate the annotations of {callable_name(func)}: {exc}") from exc

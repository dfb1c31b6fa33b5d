"""Decisions about user callables that several modules make (tasks, dependencies, endpoints, exception
handlers, lifespan hooks), made once here so that every kind of callable is treated alike everywhere."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

__all__ = ["DefaultMarker", "callable_name", "is_async_callable"]

if TYPE_CHECKING:
    # The base of the markers written as a parameter's default (``q: str = Query()``, ``db: Session =
    # Depends(get_db)``): type checkers let an instance of a class derived from Any stand for any type, so the
    # default fits the annotation, while the marker's own arguments are still checked. A plain object at run time.
    DefaultMarker = Any
else:
    DefaultMarker = object


def is_async_callable(obj: Any) -> bool:
    """Whether calling ``obj`` returns an awaitable by declaration: an ``async def`` function or method, a
    ``functools.partial`` of one (however nested), or an object whose class's ``__call__`` is ``async def``.

    A class is never async here: calling it builds an instance. A sync callable that happens to return an
    awaitable is not async either; the callers await such a result after calling it in a thread.
    """
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(type(obj), "__call__", None)  # noqa: B004 - the method itself: is it async?
    return not inspect.isroutine(obj) and not isinstance(obj, type) and inspect.iscoroutinefunction(call)


def callable_name(obj: Any) -> str:
    """How logs, stats and error messages name a callable: its qualified name; a partial by the function it
    wraps; a callable object by its class."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    name = getattr(obj, "__qualname__", None) or getattr(type(obj), "__qualname__", None)
    return name or repr(obj)

"""Decisions that several modules make about user objects, made once here so that they are made alike
everywhere: about callables (tasks, dependencies, endpoints, exception handlers, lifespan hooks), and whether
an object is one of Starlette's (code written for tachyon-api 1.3 uses Starlette's classes)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeGuard

__all__ = ["DefaultMarker", "callable_name", "is_async_callable", "is_starlette_class"]

if TYPE_CHECKING:
    # The base of the markers written as a parameter's default (``q: str = Query()``, ``db: Session =
    # Depends(get_db)``): type checkers let an instance of a class derived from Any stand for any type, so the
    # default fits the annotation, while the marker's own arguments are still checked. A plain object at run time.
    DefaultMarker = Any
else:
    DefaultMarker = object


def is_async_callable(obj: Any) -> TypeGuard[Callable[..., Awaitable[Any]]]:
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


def is_starlette_class(cls: type, *names: str) -> bool:
    """Whether ``cls`` is, or derives from, one of Starlette's classes named ``names`` (any of Starlette's
    classes when none is named).

    Read from the class's MRO by module and name, so Starlette is never imported for the check (it is not a
    dependency) and a user's subclass counts too.
    """
    return any(c.__module__.startswith("starlette.") and (not names or c.__name__ in names) for c in cls.__mro__)

"""Dependency declarations: ``Depends(callable)``, ``Depends()`` and ``@injectable`` classes.

These are declarations only; :mod:`tachyon_api.compiler` resolves the graph (and finds cycles) when a route is
registered, and :class:`tachyon_api.compiler.Dependency` resolves it per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from ._utils import DefaultMarker

__all__ = ["Depends", "injectable", "SCOPE_SINGLETON", "SCOPE_REQUEST", "SCOPE_TRANSIENT", "SCOPE_FUNCTION"]

SCOPE_SINGLETON = "singleton"
SCOPE_REQUEST = "request"
SCOPE_TRANSIENT = "transient"
_SCOPES = (SCOPE_SINGLETON, SCOPE_REQUEST, SCOPE_TRANSIENT)
# When the exit code of a ``yield`` dependency runs (``Depends(..., scope=...)``, FastAPI's words): "request"
# after the response (the default), "function" when the endpoint has returned and its durable tasks are stored,
# before the response. @injectable's scope (how many instances) is a separate setting of a class.
SCOPE_FUNCTION = "function"
_EXIT_SCOPES = (SCOPE_FUNCTION, SCOPE_REQUEST)

C = TypeVar("C", bound=type)


class Depends(DefaultMarker):  # type: ignore[misc]  # see DefaultMarker
    """Inject the result of ``dependency`` (a function, generator, class or callable object).

    ``Depends()`` without an argument injects the parameter's annotated class. ``use_cache=False`` calls the
    dependency again each time it is needed within one request.

    ``scope`` says when the exit code of a ``yield`` dependency runs, as in FastAPI: ``"request"`` (default)
    after the response has been sent; ``"function"`` right after the endpoint returned and its durable tasks
    were stored, before the response, so a transaction commits only when its tasks are safe (and rolls back,
    with the store's failure raised at its ``yield``, when they are not). It changes nothing for dependencies
    without exit code.
    """

    __slots__ = ("dependency", "use_cache", "scope")

    def __init__(
        self,
        dependency: Callable[..., Any] | None = None,
        *,
        use_cache: bool = True,
        scope: Literal["function", "request"] | None = None,
    ) -> None:
        if scope is not None and scope not in _EXIT_SCOPES:
            hint = " (singleton and transient are scopes of @injectable classes)" if scope in _SCOPES else ""
            raise ValueError(f"Invalid Depends scope {scope!r}; use 'function' or 'request'{hint}")
        self.dependency = dependency
        self.use_cache = use_cache
        self.scope = scope

    def __repr__(self) -> str:
        name = getattr(self.dependency, "__name__", repr(self.dependency))
        return f"Depends({name if self.dependency is not None else ''})"


@overload
def injectable(cls: C) -> C: ...
@overload
def injectable(cls: None = None, *, scope: str = SCOPE_SINGLETON) -> Callable[[C], C]: ...


def injectable(cls: Any = None, *, scope: str = SCOPE_SINGLETON) -> Any:
    """Mark a class as injectable by annotation alone: ``def handler(db: Database)``.

    ``scope`` is ``"singleton"`` (one instance per app, the default), ``"request"`` (one per request) or
    ``"transient"`` (a new one at every injection). Constructor parameters are injected the same way as an
    endpoint's. The mark lives on the class itself, not in a process-wide registry.
    """
    if scope not in _SCOPES:
        raise ValueError(f"Invalid scope {scope!r}; use one of {', '.join(_SCOPES)}")

    def mark(klass: C) -> C:
        if not isinstance(klass, type):
            raise TypeError("@injectable applies to classes")
        klass.__tachyon_scope__ = scope  # type: ignore[attr-defined]
        return klass

    return mark(cls) if cls is not None else mark


def injectable_scope(cls: Any) -> str | None:
    """The scope an ``@injectable`` class was declared with, or None for other objects."""
    return cls.__dict__.get("__tachyon_scope__") if isinstance(cls, type) else None

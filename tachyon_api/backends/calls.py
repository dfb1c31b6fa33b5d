"""What every durable backend checks at ``add_task`` and ``with_options``, and how it names a function.

A durable task runs in another process, which finds the function by its module and name: so it must be a
module-level function that imports back to itself. These checks run inside the request, so a task that could
never run fails there, as a ``TypeError`` at the line that added it, not as a 503 or a worker error later.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["check_reference", "check_job_id", "function_path", "import_function", "JOB_ID"]

# Job ids both tiers accept (RQ's rq.job.validate_job_id): a job id moves between backends unchanged.
JOB_ID = re.compile(r"[A-Za-z0-9_-]+")

_verified: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


def check_reference(func: Any) -> None:
    """Raise ``TypeError`` unless ``func`` is a module-level function that imports back to itself (checked
    once per function)."""
    try:
        if func in _verified:
            return
    except TypeError:  # not weak-referenceable: not a function either, refused below
        pass
    name = getattr(func, "__qualname__", repr(func))
    if not (inspect.isfunction(func) or inspect.isbuiltin(func)):
        raise TypeError(
            f"add_task({name}): a durable task must be a module-level function (not a partial, method or object)"
        )
    module = getattr(func, "__module__", None)
    if module in (None, "__main__") or "<" in name:
        raise TypeError(
            f"add_task({name}): a durable task must be importable by reference (no lambdas, closures or "
            f"functions of __main__); define it at the top level of a module the workers can import"
        )
    # A module already in sys.modules is taken from there without the import lock: it may still be being
    # imported by another thread (a script that serves requests at import time), and import_module would
    # wait for that thread, which waits for this request: a deadlock. Its top-level functions are defined
    # by the time one of them is added, so the check below still holds.
    target: Any = sys.modules.get(module) or importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part, None)
    if target is not func:
        raise TypeError(f"add_task({name}): {module}.{name} does not import back to this function")
    _verified.add(func)


def function_path(func: Callable[..., Any]) -> str:
    """``module:qualname``: how a worker finds a function checked by :func:`check_reference`."""
    return f"{func.__module__}:{func.__qualname__}"


def import_function(path: str) -> Callable[..., Any]:
    """The function a :func:`function_path` names (``ImportError`` / ``AttributeError`` if it is gone)."""
    module, _, name = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    func: Callable[..., Any] = target
    return func


def check_job_id(job_id: Any) -> None:
    """Refuse, at ``with_options``, a ``job_id`` no backend could store (``delay`` and ``at`` are checked by
    the task itself: the in-process tier takes them too)."""
    if job_id is not None and not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
        raise TypeError(
            f"with_options(job_id={job_id!r}): a job id is a non-empty string of letters (A-Z, a-z), digits "
            f"(0-9), underscores (_) and dashes (-) only"
        )


F = TypeVar("F", bound=Callable[..., Any])


def durable_mark(backend: Any, **options: Any) -> Callable[[F], F]:
    """The decorator of a backend's ``task(...)``: marks a function durable on ``backend``, with the options
    given (those not None) as its defaults, which the task engine reads when the function is added."""
    defaults = {key: value for key, value in options.items() if value is not None}

    def mark(func: F) -> F:
        func.__tachyon_backend__ = (backend, defaults)  # type: ignore[attr-defined]
        return func

    return mark

"""1.3's import path for background tasks. The code lives in :mod:`tachyon_api.tasks`; this module names the
same objects, so ``from tachyon_api.background import BackgroundTasks, RQBackend`` keeps working."""

from __future__ import annotations

from typing import Any

from .tasks import (  # noqa: F401 - re-exported
    DROPPED,
    DURATION_BOUNDS,
    FAILED,
    OUTCOMES,
    RETRIED,
    SUCCEEDED,
    TIMED_OUT,
    BackgroundRunner,
    BackgroundTask,
    BackgroundTasks,
    ErrorHook,
    TaskFailure,
    TaskMetrics,
    TaskOptions,
    TaskStats,
    collect,
    has_durable,
    store_durable,
)
from .tasks.stats import MAX_NAME_LENGTH  # noqa: F401 - re-exported (tasks/ does not list it)

__all__ = [  # noqa: F822 - RQBackend comes from __getattr__ below
    "BackgroundTask",
    "BackgroundTasks",
    "BackgroundRunner",
    "RQBackend",
    "TaskFailure",
    "TaskOptions",
    "TaskStats",
    "TaskMetrics",
]


def __getattr__(name: str) -> Any:
    """``RQBackend``, imported when asked for: the task engine itself imports no concrete backend."""
    if name == "RQBackend":
        from .backends.rq import RQBackend

        return RQBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

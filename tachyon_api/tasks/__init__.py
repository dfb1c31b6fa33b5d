"""Background tasks: the per-request list (:class:`BackgroundTasks`) and the app's runner that owns every task.

This package is the public home of the task names; ``tachyon_api.background`` is 1.3's import path for the same
objects. One idea per module: ``handles`` (what ``add_task`` builds and checks), ``runner`` (the app's runner:
batches, limits, threads, retries, shutdown), ``stats`` (what the runner counts), ``durable`` (handing durable
tasks to their backend before the response).

The life of a task:

1. ``add_task(func, *args, **kwargs)`` checks the call at once, inside the request: a coroutine object, a
   non-callable or arguments that do not bind to ``func``'s signature raise ``TypeError`` there, where the
   mistake is, rather than later in a log.
2. After the last byte of the response has been handed to the server, the framework gives the request's
   tasks (those of a returned ``Response(background=...)`` first, then the injected ones) to
   :meth:`BackgroundRunner.submit` as one *batch*, together with a copy of the request's context variables.
3. The runner starts the batch as an asyncio task it keeps referenced, unless ``concurrency`` batches are
   already running; then the batch waits in a bounded queue. Room is checked before the response is sent
   (:meth:`BackgroundRunner.admit`): when the queue is full the ``overflow`` policy applies, ``"wait"``
   (default) delays the response until there is room (at most ``shutdown_timeout``), so overload slows the
   clients down and memory stays bounded; ``"drop"`` logs and counts the lost tasks.
4. A batch runs its tasks one after another, in order. Async tasks run on the loop; sync tasks in the
   runner's own bounded thread pool (never the endpoints' pool, never the loop). A failure is retried if the
   task asked for it, else logged at ERROR with its traceback on the ``tachyon_api.background`` logger and
   passed to the error hooks; the next task runs regardless.
5. At shutdown the runner stops taking tasks, lets running and queued ones finish until ``shutdown_timeout``,
   then cancels the rest and logs every lost task by name.

Without a lifespan (a bare ASGI call, as ``httpx.ASGITransport`` makes it) there is nobody to own a detached
task, so the request's own ASGI call runs its batch after sending the response: nothing is lost.
"""

from __future__ import annotations

from .durable import has_durable, store_durable
from .handles import BackgroundTask, BackgroundTasks, TaskOptions, collect
from .records import STATES, MemoryTaskStore, Progress, TaskError, TaskRecord
from .runner import BackgroundRunner, ErrorHook
from .stats import (
    DROPPED,
    DURATION_BOUNDS,
    FAILED,
    OUTCOMES,
    RETRIED,
    SUCCEEDED,
    TIMED_OUT,
    TaskFailure,
    TaskMetrics,
    TaskStats,
)
from .status import TaskControl, cancelled, current_task_id, report_progress

__all__ = [
    "BackgroundTask",
    "BackgroundTasks",
    "BackgroundRunner",
    "ErrorHook",
    "TaskFailure",
    "TaskOptions",
    "TaskStats",
    "TaskMetrics",
    "DURATION_BOUNDS",
    "OUTCOMES",
    "SUCCEEDED",
    "FAILED",
    "RETRIED",
    "TIMED_OUT",
    "DROPPED",
    "collect",
    "has_durable",
    "store_durable",
    "STATES",
    "MemoryTaskStore",
    "Progress",
    "TaskError",
    "TaskRecord",
    "TaskControl",
    "cancelled",
    "current_task_id",
    "report_progress",
    "task_status_router",
    "RedisTaskStore",
]


def __getattr__(name: str) -> object:
    """Imported when asked for: ``task_status_router`` (the routes pull in the routing machinery, which imports
    this package) and ``RedisTaskStore`` (it lives with the Redis backends, which need the ``rq`` extra)."""
    if name == "task_status_router":
        from .http import task_status_router

        return task_status_router
    if name == "RedisTaskStore":
        from ..backends.redis_store import RedisTaskStore

        return RedisTaskStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The job row of the PostgreSQL tier: how a background task is written into procrastinate's job table, and how
the worker reads its arguments back.

The backend (``postgres.py``) writes the rows; the worker (``postgres_worker.py``) reads them. Both sides of the
format live here, so they cannot drift apart. A row names its function by reference (``module:qualname``,
procrastinate's ``task_name``) and its JSON ``args`` column holds ``{"args": [...], "kwargs": {...}}``, the
status record's ``id``, and the task's options (``owner``, ``keep``, ``timeout``, ``retries`` and
``retry_delay``, ``name``) when they are set. The column is JSON, so arguments are limited to what JSON brings
back unchanged, plus datetimes, stored tagged (a periodic job's ``tick`` is one).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

from ..tasks.timers import due_time
from .calls import function_path

if TYPE_CHECKING:
    from typing import TypeAlias

    from psycopg.types.json import Jsonb

    from ..tasks.handles import BackgroundTask

    # procrastinate's ``procrastinate_job_to_defer_v1`` (its ``JobToDefer``, in that order): queue, task name,
    # priority, lock, queueing lock, args, scheduled time. The args are psycopg's ``Jsonb``, not the dict
    # procrastinate's ``JobToDefer`` is typed with: the backend runs procrastinate's ``defer_jobs`` statement on
    # its own psycopg connection, not through procrastinate's connector (which wraps the JSON itself).
    JobRow: TypeAlias = tuple[str, str, int, str | None, str | None, Jsonb, dt.datetime | None]

__all__ = ["job_row", "json_problem", "tag", "untag"]

# A datetime argument, in JSON: ``{"$datetime": "<ISO 8601>"}`` (a key that ``json_problem`` refuses in user
# dicts, so that no user value reads back as a datetime).
_DATETIME = "$datetime"


def job_row(task: BackgroundTask, queue: str, *, default_timeout: float | None, result_limit: int) -> JobRow:
    """The row of ``task`` (checked by :func:`json_problem`) on ``queue``: its ``job_id`` is the queueing lock
    (one waiting job per id); ``default_timeout`` applies unless the task has its own; a kept result is limited
    to ``result_limit`` bytes of JSON."""
    from psycopg.types.json import Jsonb

    args: dict[str, Any] = {"args": tag(list(task.args)), "kwargs": tag(task.kwargs), "id": task.id}
    if task.owner is not None:
        args["owner"] = task.owner
    if task.keep_result:
        args["keep"] = result_limit
    timeout = task.timeout if task.timeout is not None else default_timeout
    if timeout is not None:
        args["timeout"] = timeout
    if task.retries:
        args["retries"], args["retry_delay"] = task.retries, task.retry_delay
    if task.name != task.func.__qualname__:
        args["name"] = task.name
    due = due_time(task)
    when = None if due is None else dt.datetime.fromtimestamp(due, dt.timezone.utc)
    return (queue, function_path(task.func), 0, None, task.job_id, Jsonb(args), when)


def json_problem(value: Any, at: str = "arguments") -> str | None:
    """Why ``value`` would not come back the same from a JSON column (None: it would): only None, bool,
    int, float (finite), str, list, tuple (read back as a list), dict with str keys, and datetime (stored
    tagged, see :func:`tag`)."""
    if value is None or isinstance(value, (bool, int, str, dt.datetime)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{at} is {value!r} (JSON has no NaN or infinity)"
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = json_problem(item, f"{at}[{index}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        if _DATETIME in value:
            return f"{at} has the key {_DATETIME!r} (reserved: it marks a datetime)"
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{at} has the key {key!r} (JSON keys are strings)"
            problem = json_problem(item, f"{at}[{key!r}]")
            if problem:
                return problem
        return None
    return f"{at} holds a {type(value).__name__} (JSON holds None, bool, int, float, str, list and dict)"


def tag(value: Any) -> Any:
    """``value`` (checked by :func:`json_problem`) with each datetime as ``{"$datetime": iso}``, for the JSON
    column; the same object when it holds none."""
    if isinstance(value, dt.datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, (list, tuple)):
        items = [tag(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        tagged = {key: tag(item) for key, item in value.items()}
        return value if all(tagged[key] is item for key, item in value.items()) else tagged
    return value


def untag(value: Any) -> Any:
    """The worker's side of :func:`tag`: the datetimes back."""
    if isinstance(value, list):
        return [untag(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(_DATETIME), str):
            return dt.datetime.fromisoformat(value[_DATETIME])
        return {key: untag(item) for key, item in value.items()}
    return value

"""Durable background tasks on Redis + RQ.

``Tachyon(task_backend=RQBackend(url))`` stores every background task of the app in an RQ queue; or
``@backend.task(...)`` marks single functions durable. A durable task is written to Redis *before* the
response is sent, after the endpoint returned, so a 2xx means the task is stored; if Redis cannot be reached
the client gets a 503 and the failure is logged. Workers run with ``tachyon worker module:app`` (or plain
``rq worker``). Delivery is at least once: make durable tasks idempotent.
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import logging
import re
import weakref
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from ..concurrency import ThreadPool

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue

    from ..background import BackgroundTask

__all__ = ["RQBackend"]

logger = logging.getLogger("tachyon_api.background")
F = TypeVar("F", bound=Callable[..., Any])
# The job ids RQ accepts (rq.job.validate_job_id); anything else would fail at every enqueue, as a 503.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]+")


class RQBackend:
    """Store background tasks in the RQ queue ``queue`` of the Redis at ``redis_url``.

    ``default_timeout`` (seconds) bounds each job in the worker (RQ's ``job_timeout``; RQ's default is 180 s);
    ``result_ttl`` and ``failure_ttl`` say how long finished and failed jobs stay visible. Connections time out
    after ``socket_timeout`` seconds, so a Redis outage costs a request at most that long, off the event loop.
    """

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        queue: str = "tachyon",
        *,
        default_timeout: int | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        socket_timeout: float = 5.0,
        threads: int = 8,
    ) -> None:
        self.redis_url = redis_url
        self.queue_name = queue
        self.default_timeout = default_timeout
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.socket_timeout = socket_timeout
        self._pool = ThreadPool(threads, "tachyon-rq")
        self._redis: Redis | None = None
        self._queue: Queue | None = None
        self._verified: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()

    # --- connection ------------------------------------------------------------------------------------
    @property
    def redis(self) -> "Redis":
        if self._redis is None:
            from redis import Redis

            self._redis = Redis.from_url(
                self.redis_url, socket_connect_timeout=self.socket_timeout, socket_timeout=self.socket_timeout
            )
        return self._redis

    @property
    def queue(self) -> "Queue":
        if self._queue is None:
            from rq import Queue

            self._queue = Queue(self.queue_name, connection=self.redis)
        return self._queue

    # --- declaring durable functions -------------------------------------------------------------------
    def task(
        self,
        *,
        retries: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
    ) -> Callable[[F], F]:
        """Mark a module-level function durable on this backend, whatever the app's default backend.

        The options are the task's defaults; ``add_task(...).with_options(...)`` still overrides them.
        """
        defaults = {
            key: value
            for key, value in dict(
                retries=retries, retry_delay=retry_delay, timeout=timeout, result_ttl=result_ttl, failure_ttl=failure_ttl
            ).items()
            if value is not None
        }

        def mark(func: F) -> F:
            func.__tachyon_backend__ = (self, defaults)  # type: ignore[attr-defined]
            return func

        return mark

    def check(self, func: Any, args: tuple, kwargs: dict) -> None:
        """Refuse, at ``add_task``, what a worker in another process could not run."""
        if func not in self._verified:
            self._check_reference(func)
            self._verified.add(func)
        from rq.serializers import DefaultSerializer

        try:
            DefaultSerializer.dumps((args, kwargs))
        except Exception as exc:
            raise TypeError(
                f"add_task({func.__qualname__}, ...): the arguments cannot be serialised for the durable queue: {exc}"
            ) from None

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Refuse, at ``with_options``, a value RQ would refuse at every enqueue (a 503 no retry could fix).

        ``options`` holds the durable-only options that were given: ``delay``, ``at``, ``job_id``,
        ``result_ttl``, ``failure_ttl``.
        """
        job_id = options.get("job_id")
        if job_id is not None and not (isinstance(job_id, str) and _JOB_ID.fullmatch(job_id)):
            raise TypeError(
                f"with_options(job_id={job_id!r}): a job id is a non-empty string of letters (A-Z, a-z), digits "
                f"(0-9), underscores (_) and dashes (-) only"
            )
        for key in ("result_ttl", "failure_ttl"):
            value = options.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"with_options({key}={value!r}): whole seconds (an int; -1 keeps the job forever)")
        delay = options.get("delay")
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, (int, float, dt.timedelta)):
                raise TypeError(f"with_options(delay={delay!r}): seconds (a number) or a datetime.timedelta")
        at = options.get("at")
        if at is not None and not isinstance(at, dt.datetime):
            raise TypeError(f"with_options(at={at!r}): a datetime.datetime")

    @staticmethod
    def _check_reference(func: Any) -> None:
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
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part, None)
        if target is not func:
            raise TypeError(f"add_task({name}): {module}.{name} does not import back to this function")

    # --- storing ---------------------------------------------------------------------------------------
    async def store(self, tasks: Sequence["BackgroundTask"], method: str, path: str) -> None:
        """Enqueue the tasks (in a worker thread); raises ``TaskBackendUnavailable`` if Redis fails."""
        from ..exceptions import TaskBackendUnavailable

        try:
            await self._pool.run(self._enqueue_all, tasks)
        except Exception as exc:
            names = ", ".join(task.name for task in tasks)
            logger.error(
                "Could not store durable task(s) %s of request %s %s in %s", names, method, path, self.redis_url,
                exc_info=exc,
            )
            raise TaskBackendUnavailable() from exc

    def _enqueue_all(self, tasks: Sequence["BackgroundTask"]) -> None:
        """One request's tasks, in one Redis transaction: all stored, or none (then the client gets a 503 and
        may retry without duplicates). Tasks with a ``job_id`` go first, one by one, as RQ checks their
        uniqueness against Redis."""
        from rq.exceptions import DuplicateJobError

        plain = [task for task in tasks if task.job_id is None]
        for task in tasks:
            if task.job_id is not None:
                try:
                    self.enqueue(task)
                except DuplicateJobError:
                    logger.info("Durable task %s with job id %s is already queued", task.name, task.job_id)
        if len(plain) == 1:
            self.enqueue(plain[0])
        elif plain:
            with self.redis.pipeline() as pipe:
                for task in plain:
                    self.enqueue(task, pipeline=pipe)
                pipe.execute()

    def enqueue(self, task: "BackgroundTask", pipeline: Any = None) -> Any:
        """Enqueue one task now (blocking); returns the RQ job. With ``pipeline``, the commands are only
        queued on it (the caller executes it)."""
        from rq import Retry

        options: dict[str, Any] = {
            "job_timeout": _seconds(task.timeout) or self.default_timeout,
            "result_ttl": task.result_ttl if task.result_ttl is not None else self.result_ttl,
            "failure_ttl": task.failure_ttl if task.failure_ttl is not None else self.failure_ttl,
            "description": task.name,
        }
        if task.retries:
            options["retry"] = Retry(
                max=task.retries, interval=[int(task.retry_delay * 2**n) for n in range(task.retries)]
            )
        if task.job_id is not None:
            options["job_id"] = task.job_id
            options["unique"] = True
        if pipeline is not None:
            options["pipeline"] = pipeline
        options = {key: value for key, value in options.items() if value is not None}
        queue = self.queue
        when = task.at
        if task.delay is not None:
            delay = task.delay if isinstance(task.delay, dt.timedelta) else dt.timedelta(seconds=task.delay)
            when = dt.datetime.now(dt.timezone.utc) + delay
        if when is not None:
            return queue.enqueue_at(_next_second(when), task.func, args=task.args, kwargs=task.kwargs, **options)
        return queue.enqueue(task.func, args=task.args, kwargs=task.kwargs, **options)

    # --- watching --------------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counts of the queue and its registries (blocking: call it from a sync endpoint or a thread)."""
        queue = self.queue
        return {
            "queued": queue.count,
            "started": queue.started_job_registry.count,
            "deferred": queue.deferred_job_registry.count,
            "scheduled": queue.scheduled_job_registry.count,
            "finished": queue.finished_job_registry.count,
            "failed": queue.failed_job_registry.count,
        }

    def failed_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The failed job registry: id, task name and the worker's traceback of each failed job."""
        from rq.job import Job

        ids = self.queue.failed_job_registry.get_job_ids(0, limit - 1)
        jobs = Job.fetch_many(ids, connection=self.redis)
        return [
            {"id": job.id, "name": job.description, "exc_info": job.latest_result().exc_string if job.latest_result() else None}
            for job in jobs
            if job is not None
        ]

    def requeue(self, job_id: str) -> bool:
        """Put a failed job back on its queue (blocking); False if no failed job has that id."""
        from rq.exceptions import InvalidJobOperationError, NoSuchJobError

        try:
            self.queue.failed_job_registry.requeue(job_id)
        except (InvalidJobOperationError, NoSuchJobError):
            return False
        return True

    def __repr__(self) -> str:
        return f"RQBackend({self.redis_url!r}, queue={self.queue_name!r})"


def _next_second(when: dt.datetime) -> dt.datetime:
    """RQ's scheduler keeps whole seconds and truncates: round up, so a task never runs before its time."""
    if when.tzinfo is None:
        when = when.astimezone(dt.timezone.utc)  # a naive datetime is local time, as datetime.now() gives
    if when.microsecond:
        when = when.replace(microsecond=0) + dt.timedelta(seconds=1)
    return when


def _seconds(value: float | None) -> int | None:
    return None if value is None else max(1, int(round(value)))

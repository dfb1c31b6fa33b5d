"""``tachyon worker module:app`` for a :class:`~tachyon_api.backends.postgres.PostgresBackend`: procrastinate's
worker, running the jobs the backend stored.

A job names its function by reference (``module:qualname``), so the worker needs no registry of tasks: the
first job of a function imports it and wraps it in a procrastinate task, kept for the next ones. The wrapper
runs ``async def`` functions on the worker's event loop and sync ones in threads (so ``--concurrency`` jobs run
at once either way), applies the job's ``timeout``, logs a failure with its traceback on
``tachyon_api.worker`` and records the traceback for the dashboard (``failed_jobs``). Retries follow the job's
own ``retries`` and ``retry_delay`` (delays double: ``s, 2s, 4s, ...``), as in the Redis tier. The loop that
fetches jobs and records their outcomes in batches, and puts back the jobs of dead workers, is
``postgres_batch.py``'s.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from procrastinate import App, PsycopgConnector
from procrastinate.exceptions import JobAborted
from procrastinate.job_context import AbortReason, JobContext
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from procrastinate.tasks import Task
from psycopg_pool import AsyncConnectionPool

from ..tasks.status import running_task
from .calls import import_function
from .postgres_batch import RECORD_FAILURE, BatchWorker
from .postgres_jobs import untag
from .postgres_status import JobTracker, purge

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .postgres import PostgresBackend

__all__ = ["run_worker"]

logger = logging.getLogger("tachyon_api.worker")

_DUE = (
    "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE queue_name = ANY(%(queues)s) AND status = 'todo' "
    "AND (scheduled_at IS NULL OR scheduled_at <= now())) AS due"
)


def run_worker(
    backend: PostgresBackend, queues: list[str], *, concurrency: int, burst: bool, shutdown_timeout: float
) -> int:
    """Run the worker until SIGTERM/SIGINT (or, with ``burst``, until no job is due); the exit status."""
    return asyncio.run(_run(backend, queues, concurrency, burst, shutdown_timeout))


async def _run(backend: PostgresBackend, queues: list[str], concurrency: int, burst: bool, shutdown: float) -> int:
    delay = 0.5
    while True:  # the database may still be starting: wait for it, one line per attempt, no traceback
        try:
            await backend.create_schema()
            break
        except Exception as exc:  # any connection failure means "not yet"
            if getattr(exc, "sqlstate", None) is not None:  # the server answered and refused: not transient
                raise
            logger.warning("Cannot reach %s (%s); trying again in %.1f s", backend, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    # Every query of the worker is one statement: autocommit spares the BEGIN and COMMIT round trips around it.
    # No check of each connection as it is taken (procrastinate's default, one more round trip per query): the
    # worker's loops retry what a dead connection fails, and the pool replaces a connection found broken.
    pool = AsyncConnectionPool(
        backend.dsn, min_size=2, max_size=max(4, min(concurrency, 10)), open=False, configure=_autocommit
    )
    app = App(connector=PsycopgConnector())
    app.tasks = _Tasks(app, app.tasks, backend)
    logger.info("Worker for %s, queues %s, concurrency %d", backend, ", ".join(queues), concurrency)
    await pool.open()
    async with pool, app.open_async(pool):
        while True:
            worker = BatchWorker(
                app=app,
                queues=queues,
                concurrency=concurrency,
                wait=not burst,
                shutdown_graceful_timeout=shutdown,
                install_signal_handlers=True,
                stalled_after=backend.stalled_after,
            )
            await worker.run()  # type: ignore[no-untyped-call]  # procrastinate's Worker.run has no annotations
            # procrastinate's burst stops at the first empty fetch, while jobs still ran: one of them may have
            # been put back for a retry. Burst means "until nothing is due".
            if not burst or not (await app.connector.execute_query_one_async(_DUE, queues=queues))["due"]:
                return 0


async def _autocommit(conn: AsyncConnection[Any]) -> None:
    """Each new connection of the worker's pool (not a ``kwargs`` entry of the pool: procrastinate opens its
    LISTEN connection with the pool's ``kwargs`` and an ``autocommit`` of its own)."""
    await conn.set_autocommit(True)


class _Tasks(dict[str, "Task[..., Any, ...]"]):
    """procrastinate's task registry, filled on demand: a job's ``task_name`` is ``module:qualname``."""

    def __init__(self, app: App, builtin: dict[str, Task[..., Any, ...]], backend: PostgresBackend) -> None:
        super().__init__(builtin)
        self.app = app
        self.backend = backend

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __missing__(self, name: str) -> Any:
        if ":" not in name:
            raise KeyError(name)
        try:
            func = import_function(name)
        except Exception as exc:
            logger.exception("Cannot import the task %s: %s", name, exc)
            # A task that fails with the import error: the job then fails (or retries, per its options) like any
            # job, its status record and the dashboard saying why. Not kept: the next job tries the import again.
            return _task(self.app, name, _unimportable(name, exc), self.backend)
        task = self[name] = _task(self.app, name, func, self.backend)
        return task


def _unimportable(name: str, exc: Exception) -> Callable[..., NoReturn]:
    def fail(*args: Any, **kwargs: Any) -> NoReturn:
        raise ImportError(f"cannot import the task {name}: {type(exc).__name__}: {exc}") from exc

    return fail


def _task(app: App, name: str, func: Callable[..., Any], backend: PostgresBackend) -> Task[..., Any, ...]:
    """A procrastinate task that runs ``func`` with a job's arguments and options."""
    is_async = inspect.iscoroutinefunction(func)

    async def run(
        context: JobContext, args: list[Any], kwargs: dict[str, Any], timeout: float | None = None, **options: Any
    ) -> Any:
        job = context.job
        tracker = _tracker(app, context, options)
        running_task.set(tracker)  # report_progress and cancelled() in the job (procrastinate's task of its own)
        args, kwargs = untag(args), untag(kwargs)  # datetimes back (a periodic job's tick)
        call = func(*args, **kwargs) if is_async else _in_thread(context, func, args, kwargs)
        try:
            if not timeout:
                value = await call
            else:
                try:
                    value = await asyncio.wait_for(call, timeout)
                except asyncio.TimeoutError:  # a sync task's thread cannot be stopped: it runs on, unawaited
                    label = options.get("name", name)
                    raise TimeoutError(f"{label} ran longer than its timeout of {timeout} s") from None
        except Exception as exc:
            logger.error(
                "Job %s (%s) failed on attempt %d", job.id, options.get("name", name), job.attempts + 1, exc_info=exc
            )
            try:
                await app.connector.execute_query_async(
                    RECORD_FAILURE, job_id=job.id, exc_info="".join(traceback.format_exception(exc))
                )
            except Exception:  # the job's own failure is what matters; this one is logged
                logger.exception("Could not record the traceback of job %s", job.id)
            await _ended(app, backend, tracker, error=exc)
            raise
        await _ended(app, backend, tracker, value)
        return value

    return Task(run, blueprint=app, name=name, retry=_JobRetry(), pass_context=True, queue=backend.queue_name)


# --- status records (postgres_status.py): the worker writes progress, a kept result, an error ---------------
def _tracker(app: App, context: JobContext, options: dict[str, Any]) -> JobTracker | None:
    """The running job's status record (None for a job stored without one); ``cancelled()`` in the job is
    procrastinate's abort requested by a user (``app.tasks.cancel``), not the worker's own shutdown."""
    if "id" not in options:
        return None
    assert context.job.id is not None  # a job the worker fetched has its row's id
    return JobTracker(
        options["id"],
        context.job.id,
        app.connector.execute_query_async,
        lambda: context.abort_reason() == AbortReason.USER_REQUEST,
        options.get("keep"),
    )


async def _in_thread(context: JobContext, func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """A sync task in a thread. procrastinate answers a user's abort by cancelling the job's asyncio task, which
    cannot stop a thread: the job would be recorded aborted while its thread runs on. So that cancellation is
    absorbed here; the task sees ``cancelled()`` turn true and returns, and the job ends then (cancelled)."""
    thread = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    while True:
        try:
            return await asyncio.shield(thread)
        except asyncio.CancelledError:
            if thread.done() or context.abort_reason() != AbortReason.USER_REQUEST:
                raise


async def _ended(
    app: App, backend: PostgresBackend, tracker: JobTracker | None, value: Any = None, error: Exception | None = None
) -> None:
    """The attempt ended: its record gets the error or kept result (procrastinate then moves its state); a sync
    task that saw ``cancelled()`` and then returned or raised ends cancelled (procrastinate's aborted, never
    retried). Expired records go."""
    if tracker is None:
        return
    await tracker.end(value, error)
    await purge(app.connector.execute_query_async, backend.dsn, backend.result_ttl, backend.failure_ttl)
    if tracker.cancel_seen:
        raise JobAborted(f"job {tracker.job_id} stopped after its cancellation was requested") from error


class _JobRetry(BaseRetryStrategy):
    """The job's own ``retries`` and ``retry_delay`` (doubling), read from its arguments."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        retries, delay = job.task_kwargs.get("retries"), job.task_kwargs.get("retry_delay")  # as job_row wrote them
        if not isinstance(retries, int) or job.attempts >= retries:
            return None
        seconds = (delay if isinstance(delay, (int, float)) else 0.0) * 2**job.attempts
        return RetryDecision(retry_in={"seconds": seconds})

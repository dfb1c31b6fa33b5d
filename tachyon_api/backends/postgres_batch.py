"""The worker loop of ``tachyon worker`` on PostgreSQL: procrastinate's worker, with its round trips batched and
its faults survived.

procrastinate's own loop fetches one job per query and records each outcome with another, one after the other:
a worker spends its time waiting for the database, not running jobs. :class:`BatchWorker` keeps procrastinate's
tables, job states, events and locking rules (so its tooling and the dashboard read the same rows) and changes
three things:

- **Fetching**: one statement takes as many due jobs as the worker has free slots (``FOR UPDATE SKIP LOCKED
  LIMIT n``, the same conditions as procrastinate's ``procrastinate_fetch_job_v2``: priority, then age; a job
  whose ``lock`` is held by a running job, or by an older waiting one, is not taken).
- **Recording outcomes**: the successes and failures that end in one turn of the event loop are recorded by one
  statement (procrastinate's ``procrastinate_finish_job_v1`` for each, so its triggers write the same events);
  a retry is recorded alone, as procrastinate does.
- **Faults**: a lost connection (the database restarted) is retried with a growing pause instead of stopping the
  worker; and the jobs of a worker that died (SIGKILL, a lost machine: it stopped sending heartbeats for
  ``stalled_after`` seconds) are put back on the queue, or failed when they are out of retries, by one live
  worker at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, cast

from procrastinate import PsycopgConnector, job_context, jobs, retry, utils
from procrastinate.worker import Worker

__all__ = ["BatchWorker", "RECORD_FAILURE"]

logger = logging.getLogger("tachyon_api.worker")

# The traceback of a failed job, for the dashboard (procrastinate keeps a job's status, not why it failed).
RECORD_FAILURE = (
    "INSERT INTO tachyon_job_failures (job_id, exc_info) VALUES (%(job_id)s, %(exc_info)s) "
    "ON CONFLICT (job_id) DO UPDATE SET exc_info = EXCLUDED.exc_info, failed_at = now()"
)

# procrastinate_fetch_job_v2's conditions, for up to %(limit)s jobs at once. Within one statement the lock rule
# still holds: of two waiting jobs with one lock, the younger sees the older one and is not taken.
_FETCH_JOBS = """
WITH candidate AS (
    SELECT jobs.id
        FROM procrastinate_jobs AS jobs
        WHERE NOT EXISTS (
                SELECT 1 FROM procrastinate_jobs AS other_jobs
                WHERE jobs.lock IS NOT NULL
                  AND other_jobs.lock = jobs.lock
                  AND (other_jobs.status = 'doing'
                       OR (other_jobs.status = 'todo'
                           AND (other_jobs.priority > jobs.priority
                                OR (other_jobs.priority = jobs.priority AND other_jobs.id < jobs.id))))
            )
          AND jobs.status = 'todo'
          AND (%(queues)s::varchar[] IS NULL OR jobs.queue_name = ANY(%(queues)s::varchar[]))
          AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
        ORDER BY jobs.priority DESC, jobs.id ASC
        LIMIT %(limit)s
        FOR UPDATE OF jobs SKIP LOCKED
)
UPDATE procrastinate_jobs
    SET status = 'doing', worker_id = %(worker_id)s
    FROM candidate
    WHERE procrastinate_jobs.id = candidate.id
    RETURNING procrastinate_jobs.id, status, task_name, priority, lock, queueing_lock, args, scheduled_at,
              queue_name, attempts, worker_id
"""

# After a fetch whose answer was lost (the connection dropped), jobs this worker took may be "doing" with nobody
# running them: back to the queue, untouched (no attempt counted: they never ran).
_RELEASE_UNSTARTED = """
UPDATE procrastinate_jobs SET status = 'todo', worker_id = NULL
    WHERE worker_id = %(worker_id)s AND status = 'doing' AND NOT (id = ANY(%(running)s::bigint[]))
    RETURNING id
"""

_FINISH_JOBS = (
    "SELECT procrastinate_finish_job_v1(outcome.id, outcome.status, false) "
    "FROM unnest(%(ids)s::bigint[], %(statuses)s::procrastinate_job_status[]) WITH ORDINALITY "
    "AS outcome(id, status, n) ORDER BY outcome.n"
)

# One live worker at a time looks for stalled jobs (two would both put one job back, and the second could
# reset it while a third worker already runs it again): a transaction-level advisory lock, tried, not awaited.
_RECOVERY_LOCK = 0x7A6368_737461  # any constant shared by every worker of the app

_STALLED_JOBS = """
SELECT job.id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name, attempts,
       job.worker_id
    FROM procrastinate_jobs job
    LEFT JOIN procrastinate_workers worker ON worker.id = job.worker_id
    WHERE job.status = 'doing'
      AND (%(queues)s::varchar[] IS NULL OR job.queue_name = ANY(%(queues)s::varchar[]))
      AND (worker.id IS NULL OR worker.last_heartbeat < now() - %(seconds)s * interval '1 second')
    ORDER BY job.id
    FOR UPDATE OF job
"""

# procrastinate_update_heartbeat_v1, saying whether the worker's row was still there.
_HEARTBEAT = "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = %(worker_id)s RETURNING id"

_RETRY_JOB = "SELECT procrastinate_retry_job_v2(%(id)s, %(retry_at)s, %(priority)s, %(queue)s, %(lock)s)"
_FAIL_JOB = "SELECT procrastinate_finish_job_v1(%(id)s, 'failed', false)"


class WorkerDied(Exception):
    """What a job's retry strategy is told when the worker that ran the job stopped sending heartbeats."""


def _lost_connection(exc: BaseException) -> bool:
    """A failure that another try may not have: the database could not be reached, dropped the connection, or is
    shutting down (SQLSTATE class 08 or 57), or the pool had no connection to give; not a statement the server
    refused (procrastinate wraps psycopg's errors: the causes are looked at too)."""
    from psycopg import InterfaceError, OperationalError
    from psycopg_pool import PoolTimeout

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (OperationalError, InterfaceError, PoolTimeout)):
            sqlstate = getattr(cause, "sqlstate", None)
            return sqlstate is None or sqlstate[:2] in ("08", "57")
        cause = cause.__cause__
    return False


def _queue_list(queues: Iterable[str] | None) -> list[str] | None:
    """procrastinate's queue filter as a list (None: every queue)."""
    return None if queues is None else list(queues)


def _backoff() -> Iterator[float]:
    """Pauses between tries while the database is unreachable: 0.5 s, doubling, at most 5 s."""
    delay = 0.5
    while True:
        yield delay
        delay = min(delay * 2, 5.0)


class BatchWorker(Worker):
    """procrastinate's ``Worker`` that fetches and finishes jobs in batches, outlives database restarts, and
    puts back the jobs of dead workers (see the module's docstring). ``stalled_after``: seconds without a
    heartbeat after which a worker counts as dead; heartbeats are sent, and dead workers looked for, every third
    of it."""

    def __init__(self, *, stalled_after: float = 30.0, **options: Any) -> None:
        super().__init__(update_heartbeat_interval=stalled_after / 3, stalled_worker_timeout=stalled_after, **options)
        self._outcomes: list[tuple[int, str, asyncio.Future[None]]] = []
        self._fetch_lost = False
        self._recording: asyncio.Task[None] | None = None

    @property
    def _connector(self) -> PsycopgConnector:
        return cast(PsycopgConnector, self.app.connector)

    # --- fetching ------------------------------------------------------------------------------------------
    async def _fetch_and_process_jobs(self) -> None:
        """Start jobs until none is due or the worker stops: each turn waits for a free slot, then takes all
        the free slots and fetches up to that many jobs with one statement."""
        pauses = _backoff()
        while not self._stop_event.is_set():
            acquire = asyncio.create_task(self._job_semaphore.acquire())
            slots = 0
            fetched: list[jobs.Job] = []
            try:
                await utils.wait_any(acquire, self._stop_event.wait())
                if acquire.done() and not acquire.cancelled():
                    slots = 1
                if self._stop_event.is_set():
                    break
                await asyncio.sleep(0)  # the jobs that end in this turn free their slots too
                while not self._job_semaphore.locked():
                    await self._job_semaphore.acquire()  # free: returns at once
                    slots += 1
                if self._fetch_lost:
                    await self._release_unstarted()
                fetched = await self._fetch_jobs(slots)
            except Exception as exc:
                if getattr(exc.__cause__, "sqlstate", None) == "23503":  # our worker row is gone (see _heartbeat)
                    await self._register_again()
                    continue
                if not _lost_connection(exc):
                    raise
                self._fetch_lost = True
                pause = next(pauses)
                logger.warning("Cannot fetch jobs (%s); trying again in %.1f s", exc, pause)
                await utils.wait_any(asyncio.sleep(pause), self._stop_event.wait())
                continue
            finally:
                for _ in range(slots - len(fetched)):
                    self._job_semaphore.release()
                self._new_job_event.clear()
            pauses = _backoff()
            for job in fetched:  # taken (status "doing"): each runs, even when the worker stops meanwhile
                self._start(job)
            if len(fetched) < slots:  # the queue is empty for now
                break

    async def _fetch_jobs(self, limit: int) -> list[jobs.Job]:
        assert self.worker_id is not None
        rows = await self._connector.execute_query_all_async(
            _FETCH_JOBS,
            queues=_queue_list(self.queues),
            worker_id=self.worker_id,
            limit=limit,
        )
        return sorted((jobs.Job.from_row(row) for row in rows), key=lambda job: (-job.priority, job.id or 0))

    async def _release_unstarted(self) -> None:
        """Put back the jobs a lost fetch may have taken (called by the fetch loop itself, between two fetches:
        every job of this worker that is "doing" and not running is such a job)."""
        assert self.worker_id is not None
        running = [context.job.id for context in self._running_jobs.values() if context.job.id is not None]
        rows = await self._connector.execute_query_all_async(
            _RELEASE_UNSTARTED, worker_id=self.worker_id, running=running
        )
        self._fetch_lost = False
        if rows:
            logger.warning("Put back %d job(s) taken by a fetch whose answer was lost", len(rows))

    def _start(self, job: jobs.Job) -> None:
        """Run ``job`` in a task of its own, as procrastinate's loop does; its slot is freed when it ends."""
        job_id = job.id
        context = job_context.JobContext(
            app=self.app,
            worker_name=self.worker_name,
            worker_queues=self.queues,
            additional_context=self.additional_context.copy() if self.additional_context else {},
            job=job,
            abort_reason=lambda: self._job_ids_to_abort.get(job_id) if job_id else None,
            start_timestamp=time.time(),
        )
        task = asyncio.create_task(self._process_job(context), name=f"process job {job.task_name}[{job.id}]")
        self._running_jobs[task] = context

        def done(task: asyncio.Task[Any]) -> None:
            del self._running_jobs[task]
            self._job_semaphore.release()

        task.add_done_callback(done)

    def _log_extra(
        self,
        action: str,
        context: job_context.JobContext | None,
        job_result: job_context.JobResult | None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """procrastinate's structured log fields, built only when its worker logs at INFO: they are built for
        each log call, before the logger looks at its level, and cost more than a trivial job."""
        if not logger.isEnabledFor(logging.INFO) and not self.logger.isEnabledFor(logging.INFO):
            return {"action": action}
        return cast(dict[str, Any], super()._log_extra(action, context, job_result, **kwargs))

    # --- recording outcomes --------------------------------------------------------------------------------
    async def _persist_job_status(
        self,
        job: jobs.Job,
        status: jobs.Status,
        retry_decision: retry.RetryDecision | None,
        context: job_context.JobContext,
        job_result: job_context.JobResult | None,
    ) -> None:
        if retry_decision is not None or self.delete_jobs != jobs.DeleteJobCondition.NEVER:  # one at a time
            persist = super()._persist_job_status
            await self._retrying(
                f"the outcome of job {job.id}", lambda: persist(job, status, retry_decision, context, job_result)
            )
            return
        assert job.id is not None
        future = asyncio.get_running_loop().create_future()
        self._outcomes.append((job.id, status.value, future))
        if self._recording is None:
            self._recording = asyncio.create_task(self._record_outcomes())
        await future
        self._job_ids_to_abort.pop(job.id, None)

    async def _record_outcomes(self) -> None:
        """Record the outcomes gathered in one turn with one statement, while the next ones gather; a job the
        database refuses (not "doing" any more) fails alone."""
        try:
            while self._outcomes:
                await asyncio.sleep(0)
                batch, self._outcomes = self._outcomes, []
                await self._record(batch)
        finally:
            self._recording = None

    async def _record(self, batch: list[tuple[int, str, asyncio.Future[None]]]) -> None:
        try:
            await self._retrying(
                f"the outcome of {len(batch)} job(s)",
                lambda: self._connector.execute_query_async(
                    _FINISH_JOBS, ids=[job_id for job_id, _, _ in batch], statuses=[status for _, status, _ in batch]
                ),
            )
        except Exception as exc:
            if len(batch) > 1 and not _lost_connection(exc):  # one job refused: find it, record the others
                for outcome in batch:
                    await self._record([outcome])
                return
            logger.error(
                "Could not record the outcome of job(s) %s",
                ", ".join(str(job_id) for job_id, _, _ in batch),
                exc_info=exc,
            )
            for _, _, future in batch:
                future.set_exception(exc)
                future.exception()  # retrieved: the job's task re-raises it, as procrastinate's would
            return
        for _, _, future in batch:
            future.set_result(None)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
        """``attempt()``, again after a pause while the connection is lost and the worker is not stopping: a
        job that ran keeps its slot meanwhile, so the worker takes no new job while it cannot say how the last
        ones ended. (Once the worker stops, its jobs left "doing" are put back by the next live worker.)"""
        pauses = _backoff()
        while True:
            try:
                await attempt()
                return
            except Exception as exc:
                if not _lost_connection(exc) or self._stop_event.is_set():
                    raise
                pause = next(pauses)
                logger.warning("Cannot record %s (%s); trying again in %.1f s", what, exc, pause)
                await asyncio.sleep(pause)

    # --- side tasks: heartbeats, notifications, dead workers -----------------------------------------------
    def _start_side_tasks(self) -> list[asyncio.Task[Any]]:
        """procrastinate's side tasks, each made to outlive a lost connection (procrastinate stops the worker
        when one fails), and the search for stalled jobs."""
        side_tasks = [  # procrastinate leaves these two unannotated
            asyncio.create_task(self._periodic_deferrer(), name="deferrer"),  # type: ignore[no-untyped-call]
            asyncio.create_task(self._poll_jobs_to_abort(), name="poll_jobs_to_abort"),  # type: ignore[no-untyped-call]
            asyncio.create_task(self._every(self.update_heartbeat_interval, self._heartbeat), name="heartbeat"),
            asyncio.create_task(self._every(self.update_heartbeat_interval, self._recover), name="recover"),
        ]
        if self.listen_notify:
            side_tasks.append(asyncio.create_task(self._listen(), name="listener"))
        return side_tasks

    async def _every(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await action()
            except Exception as exc:
                if _lost_connection(exc):
                    logger.warning("%s: cannot reach the database (%s)", action.__name__.strip("_"), exc)
                else:
                    logger.error("%s failed", action.__name__.strip("_"), exc_info=exc)

    async def _heartbeat(self) -> None:
        rows = await self._connector.execute_query_all_async(_HEARTBEAT, worker_id=self.worker_id)
        if not rows:
            await self._register_again()

    async def _register_again(self) -> None:
        """This worker was taken for dead (silent for longer than ``stalled_after``: its event loop was blocked)
        and its row deleted; its jobs are being put back by another worker. It goes on under a new id, since a
        job cannot be taken under a worker id that no longer exists."""
        old, self.worker_id = self.worker_id, await self.app.job_manager.register_worker()
        logger.warning(
            "This worker (id %s) sent no heartbeat for over %g s and was taken for dead: its running jobs may run "
            "again elsewhere; registered again as worker %s",
            old,
            self.stalled_worker_timeout,
            self.worker_id,
        )

    async def _listen(self) -> None:
        """procrastinate's LISTEN for new jobs, reconnected after an outage; a job may have come meanwhile, so
        the fetch loop looks once when the connection is back."""
        pauses = _backoff()
        while True:
            try:
                await self.app.job_manager.listen_for_jobs(on_notification=self._on_notification, queues=self.queues)
                return  # procrastinate gave up listening (it logs why): the polling goes on
            except Exception as exc:
                if not _lost_connection(exc):
                    raise
                pause = next(pauses)
                logger.warning("Lost the notifications of new jobs (%s); listening again in %.1f s", exc, pause)
                await asyncio.sleep(pause)
                self._new_job_event.set()

    async def _on_notification(self, *, channel: str, notification: jobs.Notification) -> None:
        await self._handle_notification(channel=channel, notification=notification)

    async def _recover(self) -> None:
        """Put back the jobs of workers whose last heartbeat is older than ``stalled_after`` (retried per the
        job's retry strategy, failed when it has none left), then forget those workers."""
        pool = self._connector.pool
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_RECOVERY_LOCK,))
            row = await cursor.fetchone()
            if not (row and row[0]):
                return  # another worker is at it
            from psycopg.rows import dict_row

            rows = await (
                await conn.cursor(row_factory=dict_row).execute(
                    _STALLED_JOBS,
                    {"queues": _queue_list(self.queues), "seconds": self.stalled_worker_timeout},
                )
            ).fetchall()
            for job in (jobs.Job.from_row(row) for row in rows):
                await self._put_back(conn, job)
        if rows:
            self._new_job_event.set()
        await self.app.job_manager.prune_stalled_workers(self.stalled_worker_timeout)

    async def _put_back(self, conn: Any, job: jobs.Job) -> None:
        died = WorkerDied(
            f"the worker running job {job.id} sent no heartbeat for {self.stalled_worker_timeout:g} s (killed, or "
            f"its machine lost)"
        )
        task = self.app.tasks.get(job.task_name)
        decision = task.get_retry_exception(exception=died, job=job) if task is not None else None
        if decision is not None:
            retry_to = decision.retry_decision
            logger.error("Job %s (%s) is retried: %s", job.id, job.task_name, died)
            await conn.execute(
                _RETRY_JOB,
                {
                    "id": job.id,
                    "retry_at": retry_to.retry_at,
                    "priority": retry_to.priority,
                    "queue": retry_to.queue,
                    "lock": retry_to.lock,
                },
            )
        else:
            logger.error("Job %s (%s) failed: %s, and it has no retry left", job.id, job.task_name, died)
            await conn.execute(_FAIL_JOB, {"id": job.id})
            await conn.execute(RECORD_FAILURE, {"job_id": job.id, "exc_info": f"{WorkerDied.__name__}: {died}\n"})

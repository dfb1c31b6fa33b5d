"""Durable background tasks on Redis + RQ.

``Tachyon(task_backend=RQBackend(url))`` stores every background task of the app in an RQ queue; or
``@backend.task(...)`` marks single functions durable. A durable task is written to Redis *before* the
response is sent, after the endpoint returned, so a 2xx means the task is stored; if Redis cannot be reached
the client gets a 503 and the failure is logged. Workers run with ``tachyon worker module:app`` (or plain
``rq worker``). Delivery is at least once: make durable tasks idempotent.

Requests store their jobs through a group commit (``commit.py``): the requests ready at the same moment share
one round trip, one run of a script that writes exactly the keys RQ's own ``enqueue`` writes
(``rq_enqueue.py``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import IdempotencyKeyReused, TaskBackendUnavailable, TaskOutcomeUnknown
from ..tasks.records import CANCELLED, FAILED, RETRYING, SUCCEEDED, TaskError, TaskRecord, encode_result
from ..tasks.status import running_task
from ..tracing import job_span
from .base import TaskBackend
from .calls import JOB_ID, F, check_job_id, check_reference, durable_mark
from .commit import GroupCommit, NotStored, OutcomeUnknown, bulk
from .redis_status import JobTracker, RedisStatus
from .rq_enqueue import STORE, JobWriter

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue

    from ..idempotency import IdempotencyScope
    from ..tasks.handles import BackgroundTask
    from ..tasks.leases import ScheduleLease

__all__ = ["RQBackend"]

logger = logging.getLogger("tachyon_api.background")


class RQBackend(TaskBackend):
    """Store background tasks in the RQ queue ``queue`` of the Redis at ``redis_url`` (a :class:`TaskBackend`).

    ``default_timeout`` (seconds) bounds each job in the worker (RQ's ``job_timeout``; RQ's default is 180 s);
    ``result_ttl`` and ``failure_ttl`` say how long finished and failed jobs stay visible. Connections time out
    after ``socket_timeout`` seconds, so a Redis outage costs a request at most that long, without blocking the
    event loop. A request with an ``Idempotency-Key`` header stores its tasks once per key (with its method,
    path and client's scope) for ``idempotency_ttl`` seconds (an int, at least 1); the same key with another
    request (method, path, query or body) is refused (422). The client's scope is every credential the request
    carries (see ``idempotency.py``), or what ``idempotency_scope(connection) -> str`` (sync or async) returns:
    for example the authenticated user's id, so that a retry with a refreshed token is still a retry. A task's
    return value kept in its status record (``keep_result``) is limited to ``result_limit`` bytes of JSON.
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
        idempotency_ttl: int = 86_400,
        idempotency_scope: IdempotencyScope | None = None,
        result_limit: int = 64 * 1024,
    ) -> None:
        self.redis_url = redis_url
        self.queue_name = queue
        self.default_timeout = default_timeout
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.socket_timeout = socket_timeout
        if isinstance(idempotency_ttl, bool) or not isinstance(idempotency_ttl, int) or idempotency_ttl < 1:
            # Redis refuses ``SET ... EX`` below one second: every keyed request would get a 503 forever.
            raise ValueError(f"RQBackend(idempotency_ttl={idempotency_ttl!r}): whole seconds, at least 1")
        self.idempotency_ttl = idempotency_ttl
        self.idempotency_scope = idempotency_scope
        self.result_limit = result_limit
        self._commits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupCommit] = weakref.WeakKeyDictionary()
        self._lease_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._writer = JobWriter(self)
        self._redis: Redis | None = None
        self._queue: Queue | None = None
        self._status: RedisStatus | None = None

    # --- connection ------------------------------------------------------------------------------------
    @property
    def redis(self) -> Redis:
        if self._redis is None:
            from redis import Redis

            self._redis = Redis.from_url(
                self.redis_url, socket_connect_timeout=self.socket_timeout, socket_timeout=self.socket_timeout
            )
        return self._redis

    @property
    def queue(self) -> Queue:
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
        return durable_mark(
            self,
            retries=retries,
            retry_delay=retry_delay,
            timeout=timeout,
            result_ttl=result_ttl,
            failure_ttl=failure_ttl,
        )

    def check(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse, at ``add_task``, what a worker in another process could not run."""
        check_reference(func)
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

        ``options`` holds the options that were given among ``delay``, ``at`` (whose types the task checked
        already: both tiers take them), ``job_id``, ``result_ttl`` and ``failure_ttl``.
        """
        check_job_id(options.get("job_id"))
        for key in ("result_ttl", "failure_ttl"):
            value = options.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"with_options({key}={value!r}): whole seconds (an int; -1 keeps the job forever)")

    # --- storing ---------------------------------------------------------------------------------------
    async def store(
        self,
        tasks: Sequence[BackgroundTask],
        method: str,
        path: str,
        idempotency_key: str | None = None,
        *,
        client: str = "",
        fingerprint: bytes = b"",
        within: Sequence[Any] = (),
    ) -> None:
        """Store one request's tasks in Redis, all or none, before its response is sent (Redis cannot join the
        transaction of the request's database session, ``within``: see docs/durable-tasks.md).

        The request joins the group commit of its event loop (see ``commit.py``): one round trip for every
        request ready at the same moment. With ``idempotency_key`` (the request's ``Idempotency-Key`` header),
        a request already stored under the same key, method, path and ``client`` (its scope: another client's
        key is another key) with the same ``fingerprint`` (a hash of what it asks: method, path, query, body)
        stores nothing again; with another fingerprint it is refused, as the key was reused for a different
        request.

        Raises ``TaskBackendUnavailable`` when nothing was stored (safe to retry), ``TaskOutcomeUnknown``
        when Redis may have stored the tasks but its answer was lost (retry with an idempotency key only), and
        ``IdempotencyKeyReused`` (422) when the key was used before for another payload.
        """
        chunks, count = self._writer.entry(tasks, method, path, idempotency_key, client, fingerprint)
        names = ", ".join(task.name for task in tasks)
        try:
            reply = await self._group_commit().commit(chunks, count)
        except (NotStored, OutcomeUnknown) as exc:
            unknown = isinstance(exc, OutcomeUnknown)
            logger.error(
                "%s durable task(s) %s of request %s %s in %s: %s",
                "Outcome unknown for" if unknown else "Could not store",
                names,
                method,
                path,
                self.redis_url,
                exc,
                exc_info=exc,
            )
            raise (TaskOutcomeUnknown() if unknown else TaskBackendUnavailable()) from exc
        if isinstance(reply, bytes):  # refused by the script's checks before any write: nothing stored
            try:
                raise NotStored(f"Redis cannot store them: {reply.decode(errors='replace')}")
            except NotStored as exc:  # raised, so the log carries a traceback
                logger.exception(
                    "Could not store durable task(s) %s of request %s %s in %s: %s",
                    names,
                    method,
                    path,
                    self.redis_url,
                    exc,
                )
                raise TaskBackendUnavailable() from exc
        if reply == -2:
            logger.warning(
                "Request %s %s reused idempotency key %r with another payload: its durable task(s) %s are not stored",
                method,
                path,
                idempotency_key,
                names,
            )
            raise IdempotencyKeyReused()
        if reply == -1:
            logger.info(
                "Request %s %s with idempotency key %r was stored before: its durable task(s) are not stored again",
                method,
                path,
                idempotency_key,
            )
            return
        for task, stored in zip(tasks, reply, strict=True):  # the script's flag for each task
            if not stored:
                logger.info("Durable task %s with job id %s is already queued", task.name, task.job_id)

    def _group_commit(self) -> GroupCommit:
        """The group commit of the running event loop (asyncio connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        commit = self._commits.get(loop)
        if commit is None:
            from redis.asyncio import ConnectionPool
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # No retries inside redis-py: a retried write could be stored twice; the next commit reconnects.
            pool = ConnectionPool.from_url(
                self.redis_url,
                socket_connect_timeout=self.socket_timeout,
                socket_timeout=self.socket_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            prologue = [bulk(self.queue.redis_queues_keys.encode()), bulk(self.queue.key.encode())]
            commit = self._commits[loop] = GroupCommit(pool.make_connection, STORE, prologue)
        return commit

    async def aclose(self) -> None:
        """Close this event loop's Redis connections (the app calls it at shutdown for its ``task_backend``)."""
        loop = asyncio.get_running_loop()
        commit = self._commits.pop(loop, None)
        if commit is not None:
            await commit.aclose()
        leases = self._lease_clients.pop(loop, None)
        if leases is not None:
            await leases.aclose()
        if self._status is not None:
            await self._status.aclose()

    # --- periodic jobs ---------------------------------------------------------------------------------
    def schedule_lease(self, name: str, ttl: float) -> ScheduleLease:
        """The lease of the periodic job ``name`` in this Redis, shared by every app on this queue: a key with a
        time to live (see ``tasks/leases.py``), on one ``redis.asyncio`` connection per event loop."""
        from redis.asyncio import Redis

        from ..tasks.leases import RedisLease

        loop = asyncio.get_running_loop()
        client = self._lease_clients.get(loop)
        if client is None:
            client = self._lease_clients[loop] = Redis.from_url(
                self.redis_url, socket_timeout=self.socket_timeout, socket_connect_timeout=self.socket_timeout
            )
        return RedisLease(client, f"tachyon:periodic:{self.queue_name}:{name}", ttl)

    # --- status records (see redis_status.py): read, watch, cancel ---------------------------------------
    @property
    def status(self) -> RedisStatus:
        if self._status is None:
            from rq.job import Job

            self._status = RedisStatus(
                self.redis_url, Job.redis_job_namespace_prefix, socket_timeout=self.socket_timeout
            )
        return self._status

    async def read_status(self, task_id: str) -> tuple[TaskRecord, str | None] | None:
        """The job's record and owner, or None (no such job, or its time to live passed)."""
        if not JOB_ID.fullmatch(task_id):
            return None
        return await self.status.read(task_id)

    def watch_status(self, task_id: str) -> AsyncIterator[TaskRecord]:
        return self.status.watch(task_id)

    async def cancel_status(self, task_id: str) -> bool | None:
        """Cancel the job: one waiting in the queue (or for its time, or for a retry) is cancelled with RQ's
        ``Job.cancel`` and never runs; a running one is stopped with RQ's ``send_stop_job_command`` (the
        forking worker kills its work horse; a sync task in a worker that cannot be killed sees
        ``cancelled()`` turn true). True when asked, False when it had already ended, None when unknown."""
        if not JOB_ID.fullmatch(task_id):
            return None
        outcome = await self.status.cancel(task_id)
        if outcome == "unknown":
            return None
        if outcome.startswith("final:"):
            return False
        await asyncio.get_running_loop().run_in_executor(None, self._stop_job, task_id, outcome == "cancelled")
        return True

    def _stop_job(self, job_id: str, waiting: bool) -> None:
        """RQ's side of a cancellation (blocking): out of its queue or registry, or its worker told to stop."""
        from rq.command import send_stop_job_command
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        try:
            if waiting:
                Job.fetch(job_id, connection=self.redis).cancel()
            else:
                send_stop_job_command(self.redis, job_id)
        except (InvalidJobOperation, NoSuchJobError):  # it ended or moved on meanwhile: the record says how
            pass
        except Exception:
            logger.exception("Could not stop durable job %s in %s", job_id, self.redis_url)

    # --- watching --------------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counts of the queue and its registries (blocking: call it from a sync endpoint or a thread).

        The started registry is counted as it is: RQ's ``count`` would first run its cleanup, which retries or
        fails the jobs of expired leases; that is the workers' job, who know when a lease may be taken over
        (not in the seconds after a Redis restart, before the live workers renewed theirs)."""
        queue = self.queue
        return {
            "queued": queue.count,
            "started": queue.started_job_registry.get_job_count(cleanup=False),
            "deferred": queue.deferred_job_registry.count,
            "scheduled": queue.scheduled_job_registry.count,
            "finished": queue.finished_job_registry.count,
            "failed": queue.failed_job_registry.count,
        }

    def started_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The jobs running now (RQ's started registry): id and task name (blocking)."""
        from rq.job import Job, parse_job_id

        ids = [parse_job_id(entry) for entry in self.queue.started_job_registry.get_job_ids(0, limit - 1)]
        jobs = Job.fetch_many(list(dict.fromkeys(ids)), connection=self.redis)
        return [{"id": job.id, "name": job.description} for job in jobs if job is not None]

    def failed_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The failed job registry: id, task name and the worker's traceback of each failed job."""
        from rq.job import Job

        ids = self.queue.failed_job_registry.get_job_ids(0, limit - 1)
        jobs = Job.fetch_many(ids, connection=self.redis)
        return [
            {
                "id": job.id,
                "name": job.description,
                "exc_info": result.exc_string if (result := job.latest_result()) else None,
            }
            for job in jobs
            if job is not None
        ]

    def job_state(self, job_id: str) -> str | None:
        """The RQ status of a job (``"queued"``, ``"started"``, ``"finished"``, ...; None if unknown), blocking:
        how the scheduler tells whether a periodic job's last run still runs."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            status = Job.fetch(job_id, connection=self.redis).get_status(refresh=False)
        except NoSuchJobError:
            return None
        return None if status is None else str(getattr(status, "value", status))

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


_traced_job: Any = None


def traced_job_class() -> Any:
    """RQ's ``Job`` made a task you can hold: ``perform`` keeps the job's status record (running, progress,
    the end with its error or kept result; see ``redis_status.py``), lets ``report_progress`` and
    ``cancelled`` reach the job, skips a job cancelled while it waited, and runs in a span continuing the
    trace of the request that stored it (``meta["traceparent"]``, see ``tracing.py``).

    The return value goes into the record (JSON, size-limited) when the task asked to keep it; RQ's own
    result then holds None, so a return value is never stored unless asked for."""
    global _traced_job
    if _traced_job is None:
        from rq.job import Job

        class TracedJob(Job):
            def perform(self) -> Any:
                tracker = JobTracker(self.id, self.key, self.connection)
                if not tracker.start():
                    logger.info(
                        "Durable task %s (job %s) was cancelled before it started: not run", self.description, self.id
                    )
                    return None
                token = running_task.set(tracker)
                try:
                    with job_span(self.description or self.func_name or self.id, self.meta.get("traceparent"), self.id):
                        value = super().perform()
                except BaseException as exc:
                    if tracker.cancel_requested:
                        tracker.end(CANCELLED)
                    else:
                        tracker.end(RETRYING if self.should_retry else FAILED, TaskError.of(exc))
                    raise
                finally:
                    running_task.reset(token)
                if tracker.cancel_seen:
                    tracker.end(CANCELLED)
                elif tracker.keep is not None:
                    data, error = encode_result(value, tracker.keep)
                    tracker.end(SUCCEEDED, error, data)
                else:
                    tracker.end(SUCCEEDED)
                self._result = None
                return None

        _traced_job = TracedJob
    return _traced_job


def __getattr__(name: str) -> Any:
    """``tachyon_api.backends.rq.TracedJob``, for ``rq worker --job-class``; built on first use, so importing
    this module does not import RQ."""
    if name == "TracedJob":
        return traced_job_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

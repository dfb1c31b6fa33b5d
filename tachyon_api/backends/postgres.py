"""Durable background tasks in PostgreSQL, run by procrastinate workers.

``Tachyon(task_backend=PostgresBackend(dsn))`` stores every background task of the app as a row of
procrastinate's job table, in the database the app's data lives in; ``@backend.task(...)`` marks single
functions durable. Workers run with ``tachyon worker module:app`` (procrastinate's worker, see
``postgres_worker.py``).

What a queue inside the database gives over Redis: when the endpoint's data goes through a
``Depends(..., scope="function")`` dependency that yields an async psycopg connection (or a SQLAlchemy
``AsyncSession`` on psycopg) to the same database, the request's jobs are inserted on that connection, inside
its transaction. They commit with the data or roll back with it, and no worker sees them before the commit
(another session cannot read uncommitted rows). Without such a dependency, the jobs are inserted in a
transaction of their own before the response, as in the Redis tier.

A job row names its function by reference and carries the task's JSON arguments and options (its format is
``postgres_jobs.py``'s); a ``job_id`` is procrastinate's queueing lock (one waiting job per id). Status records
and periodic jobs' leases are in ``postgres_status.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import IdempotencyKeyReused, TaskBackendUnavailable, TaskOutcomeUnknown
from .base import TaskBackend
from .calls import F, check_job_id, check_reference, durable_mark
from .postgres_jobs import job_row, json_problem
from .postgres_status import SCHEMA as STATUS_SCHEMA
from .postgres_status import PostgresLease, PostgresStatus, job_state

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    from ..idempotency import IdempotencyScope
    from ..tasks.handles import BackgroundTask
    from ..tasks.records import TaskRecord
    from .postgres_jobs import JobRow

__all__ = ["PostgresBackend"]

logger = logging.getLogger("tachyon_api.background")

# Tables of this module beside procrastinate's: idempotency markers, and the traceback of each failed job
# (procrastinate keeps a job's status, not why it failed). Created with procrastinate's schema, if absent.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tachyon_idempotency (
    key text PRIMARY KEY,
    fingerprint bytea NOT NULL,
    expires_at timestamp with time zone NOT NULL
);
CREATE TABLE IF NOT EXISTS tachyon_job_failures (
    job_id bigint PRIMARY KEY REFERENCES procrastinate_jobs(id) ON DELETE CASCADE,
    exc_info text NOT NULL,
    failed_at timestamp with time zone NOT NULL DEFAULT now()
);
"""
# Two processes creating the schema at once would collide: they take turns on this advisory lock.
_SCHEMA_LOCK = 0x7A6368_5F7363  # any constant shared by every process of the app

# A marker that exists and has not expired keeps its fingerprint; an expired one is replaced. No row back:
# the key was used before (compare the fingerprint). Concurrent requests with one key wait for each other on
# the row, so exactly one stores its tasks.
_CLAIM_KEY = """
INSERT INTO tachyon_idempotency (key, fingerprint, expires_at)
VALUES (%s, %s, now() + %s * interval '1 second')
ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, expires_at = EXCLUDED.expires_at
    WHERE tachyon_idempotency.expires_at < now()
RETURNING 1
"""
_LOOPBACK = {"", "localhost", "127.0.0.1", "::1"}


class PostgresBackend(TaskBackend):
    """Store background tasks in procrastinate's job table of the PostgreSQL database at ``dsn`` (a
    :class:`TaskBackend`), on the queue ``queue``.

    ``default_timeout`` (seconds) bounds each job in the worker unless ``with_options(timeout=...)`` says
    otherwise. Connections time out after ``connect_timeout`` seconds, so an outage costs a request at most
    about that long; ``pool_size`` connections per event loop store the tasks of requests that have no
    transaction of their own to join. ``idempotency_ttl`` and ``idempotency_scope`` work as in ``RQBackend``.
    A worker that sent no heartbeat for ``stalled_after`` seconds counts as dead: a live worker puts its jobs back
    on the queue (or fails those out of retries); every worker of the app reads it from here, so they agree.

    Every job has a status record (``app.tasks``, the status routes): an ended one stays ``result_ttl`` seconds
    (succeeded or cancelled) or ``failure_ttl`` seconds (failed), RQ's defaults; a result kept with
    ``with_options(keep_result=True)`` is limited to ``result_limit`` bytes of JSON.
    The tables (procrastinate's, and this backend's) are created on first use when they are missing, or by
    :meth:`create_schema`.
    """

    def __init__(
        self,
        dsn: str,
        queue: str = "tachyon",
        *,
        default_timeout: float | None = None,
        connect_timeout: float = 5.0,
        pool_size: int = 10,
        idempotency_ttl: int = 86_400,
        idempotency_scope: IdempotencyScope | None = None,
        stalled_after: float = 30.0,
        result_ttl: int = 500,
        failure_ttl: int = 31_536_000,
        result_limit: int = 64 * 1024,
    ) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)  # a malformed DSN is a ValueError-like ProgrammingError here, not later
        self.dsn = dsn
        self.queue_name = queue
        self.default_timeout = default_timeout
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        if isinstance(idempotency_ttl, bool) or not isinstance(idempotency_ttl, int) or idempotency_ttl < 1:
            raise ValueError(f"PostgresBackend(idempotency_ttl={idempotency_ttl!r}): whole seconds, at least 1")
        self.idempotency_ttl = idempotency_ttl
        self.idempotency_scope = idempotency_scope
        if isinstance(stalled_after, bool) or not isinstance(stalled_after, (int, float)) or not stalled_after > 0:
            raise ValueError(f"PostgresBackend(stalled_after={stalled_after!r}): seconds, above 0")
        self.stalled_after = float(stalled_after)
        for label, value in (("result_ttl", result_ttl), ("failure_ttl", failure_ttl), ("result_limit", result_limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PostgresBackend({label}={value!r}): a whole number, at least 1")
        self.result_ttl, self.failure_ttl, self.result_limit = result_ttl, failure_ttl, result_limit
        self._status = PostgresStatus(
            dsn,
            self._pool,
            connect_timeout=max(1, math.ceil(connect_timeout)),
            result_ttl=result_ttl,
            failure_ttl=failure_ttl,
        )
        self._where = _where(params.get("host"), params.get("port"), params.get("dbname"))
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = (
            weakref.WeakKeyDictionary()
        )
        self._groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupInsert] = weakref.WeakKeyDictionary()
        self._schema_ready = False
        self._warned_elsewhere = False

    # --- declaring durable functions -------------------------------------------------------------------
    def task(
        self, *, retries: int | None = None, retry_delay: float | None = None, timeout: float | None = None
    ) -> Callable[[F], F]:
        """Mark a module-level function durable on this backend, whatever the app's default backend.

        The options are the task's defaults; ``add_task(...).with_options(...)`` still overrides them.
        """
        return durable_mark(self, retries=retries, retry_delay=retry_delay, timeout=timeout)

    def check(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse, at ``add_task``, what a worker in another process could not run: a function that does not
        import by reference, or arguments that are not JSON (the job's ``args`` column is ``jsonb``)."""
        check_reference(func)
        problem = json_problem((list(args), kwargs))
        if problem is not None:
            raise TypeError(
                f"add_task({func.__qualname__}, ...): the arguments cannot be stored as JSON for the durable "
                f"queue: {problem}"
            )

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Refuse, at ``with_options``, what this backend could never store (see ``calls.py``); procrastinate
        keeps finished jobs until they are deleted, and status records follow the backend's ``result_ttl`` and
        ``failure_ttl``: per task they have no meaning here."""
        check_job_id(options.get("job_id"))
        for key in ("result_ttl", "failure_ttl"):
            if options.get(key) is not None:
                raise TypeError(
                    f"with_options({key}=...): per task, {key} is an RQBackend option; PostgresBackend({key}=...) "
                    f"sets how long every ended task's status record stays (jobs stay until deleted)"
                )

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
    ) -> bool:
        """Insert one request's jobs, all or none, before its response is sent.

        In the open transaction of a connection the request's ``scope="function"`` dependencies yielded
        (``within``) when one is on this database: the jobs then commit or roll back with the request's data
        (returns True). Otherwise in a transaction of their own, committed here (returns False).

        Raises ``TaskBackendUnavailable`` when nothing was stored (the server refused, or could not be
        reached), ``TaskOutcomeUnknown`` when the connection was lost after the jobs were sent and before the
        server confirmed them (only without a transaction to join), ``IdempotencyKeyReused`` (422) when the key
        was used before for another payload.
        """
        names = ", ".join(task.name for task in tasks)
        marker = None
        if idempotency_key is not None:
            scope = f"{self.queue_name}\0{method}\0{path}\0{client}\0{idempotency_key}"
            marker = hashlib.sha256(scope.encode("utf-8", "surrogateescape")).hexdigest()
        joined = await self._joinable(within)
        if joined is not None:
            try:
                if not self._schema_ready:  # created on a connection of its own, never in the request's
                    await self._pool()
                # No savepoint (two more round trips): a failure is raised at the dependency's yield, which rolls
                # the whole transaction back; the one outcome that goes on (stored before) leaves it healthy.
                await self._insert(joined, tasks, marker, fingerprint)
            except _StoredBefore:
                return True
            except IdempotencyKeyReused:
                self._log_reused(method, path, idempotency_key, names)
                raise
            except Exception as exc:
                logger.exception(
                    "Could not store durable task(s) %s of request %s %s in its transaction: %s",
                    names,
                    method,
                    path,
                    exc,
                )
                raise TaskBackendUnavailable() from exc
            return True
        try:
            if marker is None and all(task.job_id is None for task in tasks):
                await self._group(asyncio.get_running_loop()).add([self._row(task) for task in tasks])
            else:  # a marker to check, or job ids to skip: a transaction of its own
                await self._store_alone(tasks, marker, fingerprint)
        except _StoredBefore:
            return False
        except IdempotencyKeyReused:
            self._log_reused(method, path, idempotency_key, names)
            raise
        except _NotStored as failure:
            cause = failure.__cause__
            logger.error(
                "%s durable task(s) %s of request %s %s in %s: %s",
                "Outcome unknown for" if failure.unknown else "Could not store",
                names,
                method,
                path,
                self,
                cause,
                exc_info=cause,
            )
            raise (TaskOutcomeUnknown() if failure.unknown else TaskBackendUnavailable()) from cause
        return False

    async def _store_alone(self, tasks: Sequence[BackgroundTask], marker: str | None, fingerprint: bytes) -> None:
        committing = False
        try:
            pool = await self._pool()
            async with pool.connection(timeout=self.connect_timeout) as conn:
                async with conn.transaction():
                    await self._insert(conn, tasks, marker, fingerprint)
                    committing = True
        except (_StoredBefore, IdempotencyKeyReused):
            raise
        except Exception as exc:
            raise _NotStored(committing and getattr(exc, "sqlstate", None) is None) from exc

    def _group(self, loop: asyncio.AbstractEventLoop) -> _GroupInsert:
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = _GroupInsert(self)
        return group

    async def _insert_jobs(self, jobs: list[JobRow]) -> None:
        """Insert ``jobs`` in one autocommitted statement (atomic: all or none); raise ``_NotStored``."""
        from procrastinate import sql

        sent = False
        try:
            pool = await self._pool()
            async with pool.connection(timeout=self.connect_timeout) as conn:
                sent = True
                await conn.execute(sql.queries["defer_jobs"], {"jobs": jobs})
        except Exception as exc:
            # Lost after the statement was sent and before its answer: it may have committed. Refused by the
            # server (an SQLSTATE), or never sent: nothing was stored.
            raise _NotStored(sent and getattr(exc, "sqlstate", None) is None) from exc

    async def _insert(
        self, conn: psycopg.AsyncConnection, tasks: Sequence[BackgroundTask], marker: str | None, fingerprint: bytes
    ) -> None:
        """The request's idempotency marker, then its jobs, in order, on ``conn`` (in a transaction)."""
        from procrastinate import sql
        from psycopg.errors import UniqueViolation

        if marker is not None:
            cursor = await conn.execute(_CLAIM_KEY, (marker, fingerprint, self.idempotency_ttl))
            if await cursor.fetchone() is None:
                cursor = await conn.execute("SELECT fingerprint FROM tachyon_idempotency WHERE key = %s", (marker,))
                row = await cursor.fetchone()
                if row is not None and bytes(row[0]) == fingerprint:
                    raise _StoredBefore()
                raise IdempotencyKeyReused()
        query = sql.queries["defer_jobs"]
        batch: list[JobRow] = []
        for task in tasks:
            job = self._row(task)
            if task.job_id is None:
                batch.append(job)
                continue
            if batch:
                await conn.execute(query, {"jobs": batch})
                batch = []
            try:
                async with conn.transaction():  # a savepoint: a duplicate is skipped, the rest goes on
                    await conn.execute(query, {"jobs": [job]})
            except UniqueViolation:
                logger.info("Durable task %s with job id %s is already queued", task.name, task.job_id)
        if batch:
            await conn.execute(query, {"jobs": batch})

    def _row(self, task: BackgroundTask) -> JobRow:
        """``task``'s row of procrastinate's job table, on this backend's queue (see ``postgres_jobs.py``)."""
        return job_row(task, self.queue_name, default_timeout=self.default_timeout, result_limit=self.result_limit)

    async def _joinable(self, within: Sequence[Any]) -> psycopg.AsyncConnection | None:
        """The connection among ``within`` whose transaction the jobs can join: an async psycopg connection (or
        a SQLAlchemy ``AsyncSession``/``AsyncConnection`` on psycopg) to this database that is in a transaction
        or will be committed (autocommit off)."""
        import psycopg

        for value in within:
            conn = value if isinstance(value, psycopg.AsyncConnection) else await _driver_connection(value)
            if conn is None or conn.closed:
                continue
            info = conn.info
            if _where(info.host, info.port, info.dbname) != self._where and not _same_unknown(self._where, info):
                if not self._warned_elsewhere:
                    self._warned_elsewhere = True
                    logger.warning(
                        "A scope='function' dependency yields a connection to %s:%s/%s, not to %s: durable tasks "
                        "are stored in a transaction of their own, not in the request's",
                        info.host,
                        info.port,
                        info.dbname,
                        self,
                    )
                continue
            if conn.autocommit and info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
                continue  # every statement commits at once: nothing to join
            return conn
        return None

    def _log_reused(self, method: str, path: str, key: str | None, names: str) -> None:
        logger.warning(
            "Request %s %s reused idempotency key %r with another payload: its durable task(s) %s are not stored",
            method,
            path,
            key,
            names,
        )

    async def _pool(self) -> AsyncConnectionPool:
        """The connection pool of the running event loop (psycopg's async connections belong to one loop),
        opened without waiting: it connects, and reconnects after an outage, in the background; each
        connection is checked as it is taken, so one that died with the server is replaced, not used."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            from psycopg_pool import AsyncConnectionPool

            pool = self._pools[loop] = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                open=False,
                timeout=self.connect_timeout,
                kwargs={"connect_timeout": max(1, math.ceil(self.connect_timeout)), "autocommit": True},
                check=AsyncConnectionPool.check_connection,
                name=f"tachyon-{self.queue_name}",
            )
            await pool.open(wait=False)
        if not self._schema_ready:  # the tables, on first use (once per process) when they are missing
            async with pool.connection(timeout=self.connect_timeout) as conn:
                await _create_schema(conn)
            self._schema_ready = True
        return pool

    async def create_schema(self) -> None:
        """Create procrastinate's tables and this backend's, unless they exist (safe to call from every
        process at once)."""
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            self.dsn, connect_timeout=max(1, math.ceil(self.connect_timeout))
        ) as conn:
            await _create_schema(conn)
        self._schema_ready = True

    async def aclose(self) -> None:
        """Close this event loop's connection pool (the app calls it at shutdown for its ``task_backend``)."""
        await self._status.aclose()
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()

    # --- watching (the dashboard calls these in a thread) ----------------------------------------------
    def _connect(self) -> psycopg.Connection:
        import psycopg

        return psycopg.connect(self.dsn, connect_timeout=max(1, math.ceil(self.connect_timeout)), autocommit=True)

    def stats(self) -> dict[str, int]:
        """Counts of this queue's jobs: ``queued`` (due), ``scheduled`` (waiting for their time or a retry),
        ``started``, ``finished``, ``failed``, ``cancelled`` (blocking)."""
        counts = dict.fromkeys(("queued", "started", "scheduled", "finished", "failed", "cancelled"), 0)
        names = {
            "doing": "started",
            "succeeded": "finished",
            "failed": "failed",
            "cancelled": "cancelled",
            "aborting": "started",
            "aborted": "cancelled",
        }
        with self._connect() as conn:
            rows: list[tuple[str, bool, int]] = conn.execute(
                "SELECT status::text, status = 'todo' AND scheduled_at > now(), count(*) FROM procrastinate_jobs "
                "WHERE queue_name = %s GROUP BY 1, 2",
                (self.queue_name,),
            ).fetchall()
        for status, later, count in rows:
            key = ("scheduled" if later else "queued") if status == "todo" else names.get(status, status)
            counts[key] = counts.get(key, 0) + count
        return counts

    def started_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The jobs of this queue a worker runs now: id and task name (blocking)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, coalesce(args->>'name', task_name) FROM procrastinate_jobs WHERE queue_name = %s "
                "AND status = 'doing' ORDER BY id LIMIT %s",
                (self.queue_name, limit),
            ).fetchall()
        return [{"id": str(job_id), "name": name} for job_id, name in rows]

    def failed_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest failed jobs of this queue: id, task name and the worker's traceback (blocking)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT j.id, coalesce(j.args->>'name', j.task_name), f.exc_info FROM procrastinate_jobs j "
                "LEFT JOIN tachyon_job_failures f ON f.job_id = j.id WHERE j.queue_name = %s AND j.status = 'failed' "
                "ORDER BY j.id DESC LIMIT %s",
                (self.queue_name, limit),
            ).fetchall()
        return [{"id": str(job_id), "name": name, "exc_info": exc_info} for job_id, name, exc_info in rows]

    def requeue(self, job_id: str) -> bool:
        """Put a failed job back on its queue, due now (blocking); False if no failed job has that id."""
        if not str(job_id).isdigit():
            return False
        with self._connect() as conn:
            row = conn.execute(
                "UPDATE procrastinate_jobs SET status = 'todo', scheduled_at = NULL "
                "WHERE id = %s AND queue_name = %s AND status = 'failed' RETURNING id",
                (int(job_id), self.queue_name),
            ).fetchone()
        return row is not None

    # --- status records (postgres_status.py) ----------------------------------------------------------------
    async def read_status(self, task_id: str) -> tuple[TaskRecord, str | None] | None:
        """The job's status record and owner; None for an unknown or expired id."""
        return await self._status.read(task_id)

    def watch_status(self, task_id: str) -> AsyncIterator[TaskRecord]:
        """The current record, then one per change (``LISTEN/NOTIFY``), until a final one."""
        return self._status.watch(task_id)

    async def cancel_status(self, task_id: str) -> bool | None:
        """Cancel the job: a waiting one never runs, a running one is told to stop (procrastinate's abort)."""
        return await self._status.cancel(task_id)

    # --- periodic jobs -----------------------------------------------------------------------------------
    def schedule_lease(self, name: str, ttl: float) -> PostgresLease:
        """The lease of the periodic job ``name``, shared by every app on this database and queue: a row of
        ``tachyon_schedule`` with its holder and expiry (see ``postgres_status.py``)."""
        return PostgresLease(self._pool, f"{self.queue_name}:{name}", ttl, self.connect_timeout)

    def job_state(self, job_id: str) -> str | None:
        """The state of the job of the task ``job_id`` (RQ's words: ``queued``, ``started``, ``finished``,
        ...), None if unknown or expired (blocking): how the scheduler tells whether a periodic run still runs."""
        with self._connect() as conn:
            return job_state(conn, job_id)

    def __repr__(self) -> str:
        host, port, dbname = self._where
        return f"PostgresBackend('postgresql://{host or 'localhost'}:{port}/{dbname or ''}', queue={self.queue_name!r})"


class _StoredBefore(Exception):
    """The request's idempotency key was stored before with the same payload: nothing to store again."""


class _NotStored(Exception):
    """The jobs could not be stored (``unknown``: or maybe they were, the answer was lost); the cause says why."""

    def __init__(self, unknown: bool) -> None:
        super().__init__()
        self.unknown = unknown


class _GroupInsert:
    """A group commit, as the Redis tier's: the requests of one event loop whose jobs are ready in the same turn
    share one statement, and while it runs the next ones gather for the following one. The statement is atomic,
    so each request's jobs are stored all or none, and every request of a failed statement gets its 503."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self.pending: list[tuple[list[JobRow], asyncio.Future[None]]] = []
        self.running: asyncio.Task[None] | None = None

    async def add(self, jobs: list[JobRow]) -> None:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((jobs, future))
        if self.running is None:
            self.running = asyncio.ensure_future(self._run())
        await asyncio.shield(future)  # a request cancelled meanwhile leaves the group's statement whole

    async def _run(self) -> None:
        try:
            while self.pending:
                await asyncio.sleep(0)  # the requests ready in this turn join
                group, self.pending = self.pending, []
                try:
                    await self.backend._insert_jobs([job for jobs, _ in group for job in jobs])
                except BaseException as failure:  # _NotStored, or cancelled (shutdown): every request learns it
                    for _, future in group:
                        error: BaseException = failure
                        if isinstance(failure, _NotStored):  # one exception per request: each logs its own
                            error = _NotStored(failure.unknown)
                            error.__cause__ = failure.__cause__
                        future.set_exception(error)
                        future.exception()  # retrieved: a request cancelled meanwhile is not around to await it
                    if not isinstance(failure, _NotStored):
                        raise
                else:
                    for _, future in group:
                        future.set_result(None)
        finally:
            self.running = None


async def _create_schema(conn: psycopg.AsyncConnection) -> None:
    from procrastinate.schema import SchemaManager

    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        cursor = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        row = await cursor.fetchone()
        if not (row and row[0]):
            await conn.execute(SchemaManager.get_schema())
        await conn.execute(_SCHEMA)
        await conn.execute(STATUS_SCHEMA)


async def _driver_connection(value: Any) -> psycopg.AsyncConnection | None:
    """The psycopg connection under a SQLAlchemy ``AsyncSession`` or ``AsyncConnection`` (its transaction
    begins here if it has not yet: the one the session commits), else None."""
    module = type(value).__module__
    if not module.startswith("sqlalchemy."):
        return None
    import psycopg
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(value, AsyncSession):
        value = await value.connection()
    if not isinstance(value, AsyncConnection):
        return None
    raw = await value.get_raw_connection()
    driver = raw.driver_connection
    return driver if isinstance(driver, psycopg.AsyncConnection) else None


def _where(host: Any, port: Any, dbname: Any) -> tuple[str, int, str]:
    """Where a connection goes, comparable: loopback names and Unix sockets are one local host."""
    host = str(host or "")
    if host.startswith("/") or host.lower() in _LOOPBACK:
        host = ""
    return host.lower(), int(port or 5432), str(dbname or "")


def _same_unknown(where: tuple[str, int, str], info: Any) -> bool:
    """A DSN without a database name names the user's database: compare host and port only."""
    return where[2] == "" and _where(info.host, info.port, "")[:2] == where[:2]

"""Task status records and periodic-job leases of the PostgreSQL tier (``PostgresBackend``).

A durable task's record is a row of ``tachyon_task_status``, a table of ours beside procrastinate's job table,
rather than columns added to ``procrastinate_jobs``:

- the record is keyed by the task's id (``BackgroundTask.id``), which the endpoint may read and return before
  the job row exists (procrastinate numbers its jobs at insert); a ``job_id`` given with ``with_options`` is a
  queueing lock that may name a new job once the previous one started, and then its record starts a new life;
- records expire on their own clock (``result_ttl``, ``failure_ttl``, as the Redis tier's), while job rows stay
  until procrastinate's ``remove_old_jobs`` (or a ``DELETE``) removes them; and procrastinate's own table stays
  as procrastinate migrates it.

Who writes it: triggers on ``procrastinate_jobs`` (created by ``create_schema``). The job's insert creates the
record (from the ``id``, ``owner`` and ``keep`` the backend puts in the job's arguments), in the same statement,
so in the same transaction as the request's data when the request's transaction was joined: a rolled-back
request leaves no record. Each change of the job's status (the worker's fetch, its end, a retry, a
cancellation) moves the record along the state machine of ``tasks/records.py`` in the same statement as
procrastinate's own update, which costs the worker no round trip of its own; a move the state machine forbids
(leaving a final state) is refused. The worker writes what only it knows: progress, a kept result, an error.

Every change is announced with ``NOTIFY tachyon_status, '<id>'``. Watchers share one ``LISTEN`` connection per
process and event loop (:class:`StatusHub`), read the record again when its id is announced, and read again
every ``FALLBACK_SECONDS`` for a notification lost with a connection: nothing polls every job.

Cancelling goes through procrastinate's ``procrastinate_cancel_job_v1(id, abort => true)``: a waiting job
becomes ``cancelled`` and never runs; a running one is marked ``abort_requested``, which the worker hears at once
(``LISTEN``): an ``async def`` task is cancelled, a sync task sees ``cancelled()`` turn true.

A periodic job's lease (:class:`PostgresLease`) is a row of ``tachyon_schedule``: its holder and an expiry in
the database's clock, so hosts need no synchronised clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..exceptions import TaskBackendUnavailable
from ..tasks.records import FINAL, TRANSITIONS, Progress, TaskError, TaskRecord, encode_result, follow_record

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

__all__ = ["SCHEMA", "PostgresStatus", "PostgresLease", "JobTracker", "job_state", "FALLBACK_SECONDS"]

logger = logging.getLogger("tachyon_api.background")

FALLBACK_SECONDS = 5.0
CHANNEL = "tachyon_status"

_MOVES = ", ".join(f"'{a}>{b}'" for a, targets in sorted(TRANSITIONS.items()) for b in sorted(targets))
_FINAL = ", ".join(f"'{state}'" for state in sorted(FINAL))

# Created by PostgresBackend.create_schema, after procrastinate's schema, under its advisory lock.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tachyon_task_status (
    id text PRIMARY KEY,
    job_id bigint NOT NULL,
    name text NOT NULL,
    owner text,
    keep integer,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    started_at timestamp with time zone,
    ended_at timestamp with time zone,
    done double precision,
    message text,
    result jsonb,
    error jsonb,
    cancel_requested boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS tachyon_task_status_ended ON tachyon_task_status (ended_at) WHERE ended_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS tachyon_schedule (
    key text PRIMARY KEY,
    holder text,
    expires_at timestamp with time zone,
    tick bigint,
    run bigint,
    outcome text
);

CREATE OR REPLACE FUNCTION tachyon_task_move(current_state text, target text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT (current_state || '>' || target) = ANY (ARRAY[{_MOVES}]) $$;

CREATE OR REPLACE FUNCTION tachyon_task_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    _id text := NEW.args->>'id';
    _target text;
BEGIN
    IF _id IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO tachyon_task_status AS s (id, job_id, name, owner, keep, state)
        VALUES (_id, NEW.id, coalesce(NEW.args->>'name', split_part(NEW.task_name, ':', 2)), NEW.args->>'owner',
                (NEW.args->>'keep')::integer,
                CASE WHEN NEW.scheduled_at > now() THEN 'scheduled' ELSE 'queued' END)
        ON CONFLICT (id) DO UPDATE SET job_id = EXCLUDED.job_id, name = EXCLUDED.name, owner = EXCLUDED.owner,
            keep = EXCLUDED.keep, state = EXCLUDED.state, attempts = 0, created_at = now(), started_at = NULL,
            ended_at = NULL, done = NULL, message = NULL, result = NULL, error = NULL, cancel_requested = false;
    ELSIF OLD.status IN ('succeeded', 'failed') AND NEW.status = 'todo' THEN
        -- requeued (the dashboard's button): a new life
        UPDATE tachyon_task_status SET state = 'queued', ended_at = NULL, done = NULL, message = NULL,
            result = NULL, error = NULL, cancel_requested = false
        WHERE id = _id AND job_id = NEW.id;
    ELSE
        _target := CASE NEW.status::text
            WHEN 'doing' THEN 'running'
            WHEN 'todo' THEN 'retrying'
            WHEN 'succeeded' THEN 'succeeded'
            WHEN 'failed' THEN 'failed'
            WHEN 'cancelled' THEN 'cancelled'
            WHEN 'aborted' THEN 'cancelled'
        END;
        IF _target IS NULL THEN
            RETURN NULL;
        END IF;
        UPDATE tachyon_task_status SET state = _target,
            attempts = attempts + (_target = 'running')::integer,
            started_at = CASE WHEN _target = 'running' THEN now() ELSE started_at END,
            error = CASE WHEN _target = 'running' THEN NULL ELSE error END,
            ended_at = CASE WHEN _target IN ({_FINAL}) THEN clock_timestamp() ELSE ended_at END
        WHERE id = _id AND job_id = NEW.id AND tachyon_task_move(state, _target);
    END IF;
    -- a new record has no watcher yet (a watcher of an unknown id stops at once): only changes are announced
    IF FOUND AND TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('{CHANNEL}', _id);
    END IF;
    RETURN NULL;
END;
$$;

-- created once (replacing a trigger would lock the job table against running workers)
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tachyon_task_inserted'
                   AND tgrelid = 'procrastinate_jobs'::regclass) THEN
        CREATE TRIGGER tachyon_task_inserted AFTER INSERT ON procrastinate_jobs
            FOR EACH ROW EXECUTE FUNCTION tachyon_task_track();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tachyon_task_moved'
                   AND tgrelid = 'procrastinate_jobs'::regclass) THEN
        CREATE TRIGGER tachyon_task_moved AFTER UPDATE OF status ON procrastinate_jobs
            FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION tachyon_task_track();
    END IF;
END $$;

CREATE OR REPLACE FUNCTION tachyon_cancel_task(_id text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    _state text;
    _job bigint;
BEGIN
    SELECT state, job_id INTO _state, _job FROM tachyon_task_status WHERE id = _id;
    IF NOT FOUND THEN
        RETURN 'unknown';
    END IF;
    IF _state IN ({_FINAL}) THEN
        RETURN 'final:' || _state;
    END IF;
    -- the job row first (locked by procrastinate's function), then the record: the order the worker's own
    -- updates take, so the two never wait for each other
    PERFORM procrastinate_cancel_job_v1(_job, true, false);
    UPDATE tachyon_task_status SET cancel_requested = true
    WHERE id = _id AND job_id = _job AND state NOT IN ('succeeded', 'failed') RETURNING state INTO _state;
    IF NOT FOUND THEN
        SELECT state INTO _state FROM tachyon_task_status WHERE id = _id;
        RETURN CASE WHEN _state IS NULL THEN 'unknown' ELSE 'final:' || _state END;
    END IF;
    PERFORM pg_notify('{CHANNEL}', _id);
    RETURN CASE WHEN _state = 'cancelled' THEN 'cancelled' ELSE 'running' END;
END;
$$;
"""

_READ = """
SELECT name, state, attempts, created_at, started_at, ended_at, done, message, result, error, owner
FROM tachyon_task_status
WHERE id = %s AND (ended_at IS NULL
    OR ended_at > now() - CASE WHEN state = 'failed' THEN %s ELSE %s END * interval '1 second')
"""
_PURGE = """
DELETE FROM tachyon_task_status
WHERE ended_at < now() - CASE WHEN state = 'failed' THEN %(failure_ttl)s ELSE %(result_ttl)s END * interval '1 second'
"""
# What the worker writes, for the record of its job only (a job id given again may name a newer job by now).
_PROGRESS = (
    "WITH r AS (UPDATE tachyon_task_status SET done = %(done)s, message = %(message)s "
    "WHERE id = %(id)s AND job_id = %(job)s AND state = 'running' RETURNING id) "
    "SELECT pg_notify('tachyon_status', id) FROM r"
)
_OUTCOME = (
    "WITH r AS (UPDATE tachyon_task_status SET result = %(result)s, error = %(error)s, "
    "done = CASE WHEN %(progress)s THEN %(done)s ELSE done END, "
    "message = CASE WHEN %(progress)s THEN %(message)s ELSE message END "
    "WHERE id = %(id)s AND job_id = %(job)s AND state = 'running' RETURNING id) "
    "SELECT pg_notify('tachyon_status', id) FROM r"
)

# The record's states in the words of RQ's job statuses, which the scheduler reads from ``job_state``.
_JOB_STATES = {
    "queued": "queued",
    "scheduled": "scheduled",
    "running": "started",
    "retrying": "scheduled",
    "succeeded": "finished",
    "failed": "failed",
    "cancelled": "canceled",
}


def _record(task_id: str, row: tuple[Any, ...]) -> tuple[TaskRecord, str | None]:
    name, state, attempts, created, started, ended, done, message, result, error, owner = row
    return TaskRecord(
        id=task_id,
        name=name,
        state=state,
        attempts=attempts,
        created_at=created,
        started_at=started,
        ended_at=ended,
        progress=Progress(done, message),
        result=result,
        error=None if error is None else TaskError(str(error.get("type", "")), str(error.get("message", ""))),
    ), owner


class StatusHub:
    """One ``LISTEN tachyon_status`` connection of an event loop, for every record its watchers follow: each
    watcher is an ``asyncio.Event`` set when its id is announced. After a lost connection every watcher is woken
    (its notification may be lost) and the hub connects again."""

    def __init__(self, dsn: str, connect_timeout: int) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected: asyncio.Event | None = None

    @contextlib.asynccontextmanager
    async def listen(self, task_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``task_id`` is announced; the ``LISTEN`` is in place before the block starts
        (or failed, logged: the watcher then reads every ``FALLBACK_SECONDS``)."""
        event = asyncio.Event()
        self._watchers.setdefault(task_id, set()).add(event)
        try:
            await self._ensure()
            yield event
        finally:
            watchers = self._watchers.get(task_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[task_id]

    async def _ensure(self) -> None:
        if self._reader is None or self._reader.done():
            self._connected = asyncio.Event()
            self._reader = asyncio.ensure_future(self._read())
        assert self._connected is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout)

    async def _read(self) -> None:
        import psycopg

        while self._watchers:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=self.connect_timeout
                ) as conn:
                    self._conn = conn
                    await conn.execute(f"LISTEN {CHANNEL}")
                    assert self._connected is not None
                    self._connected.set()
                    async for notice in conn.notifies():
                        for event in self._watchers.get(notice.payload, ()):
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Task status notifications from PostgreSQL lost: %r; reconnecting", exc)
                assert self._connected is not None
                self._connected.set()  # nobody waits for a connection that is not coming
                for watchers in list(self._watchers.values()):
                    for event in watchers:
                        event.set()
                await asyncio.sleep(0.5)
            finally:
                self._conn = None

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None


class PostgresStatus:
    """Reading, watching and cancelling the records of ``tachyon_task_status`` over a backend's connection pool
    (``pool()``, of the running event loop). Ended records are visible for ``result_ttl`` seconds
    (succeeded, cancelled) or ``failure_ttl`` seconds (failed)."""

    def __init__(
        self, dsn: str, pool: Callable[[], Any], *, connect_timeout: int, result_ttl: int, failure_ttl: int
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.connect_timeout = connect_timeout
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self._hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StatusHub] = weakref.WeakKeyDictionary()

    async def read(self, task_id: str) -> tuple[TaskRecord, str | None] | None:
        try:
            pool: AsyncConnectionPool[Any] = await self.pool()
            async with pool.connection(timeout=self.connect_timeout) as conn:
                cursor = await conn.execute(_READ, (task_id, self.failure_ttl, self.result_ttl))
                row = await cursor.fetchone()
        except Exception as exc:
            raise _unavailable("read", task_id, exc) from exc
        return None if row is None else _record(task_id, row)

    async def watch(self, task_id: str) -> AsyncIterator[TaskRecord]:
        """The current record, then one per change (told by ``NOTIFY``), until a final one."""
        loop = asyncio.get_running_loop()
        hub = self._hubs.get(loop)
        if hub is None:
            hub = self._hubs[loop] = StatusHub(self.dsn, self.connect_timeout)
        async with hub.listen(task_id) as changed:
            async for record in follow_record(lambda: self.read(task_id), changed, FALLBACK_SECONDS):
                yield record

    async def cancel(self, task_id: str) -> bool | None:
        """True when asked (a waiting job is cancelled, a running one told to stop), False when it had ended,
        None when unknown."""
        try:
            pool: AsyncConnectionPool[Any] = await self.pool()
            async with pool.connection(timeout=self.connect_timeout) as conn:
                cursor = await conn.execute("SELECT tachyon_cancel_task(%s)", (task_id,))
                row = await cursor.fetchone()
        except Exception as exc:
            raise _unavailable("cancel", task_id, exc) from exc
        outcome = str(row[0]) if row else "unknown"
        if outcome == "unknown":
            return None
        return not outcome.startswith("final:")

    async def aclose(self) -> None:
        hub = self._hubs.pop(asyncio.get_running_loop(), None)
        if hub is not None:
            await hub.aclose()


def _unavailable(action: str, task_id: str, exc: Exception) -> TaskBackendUnavailable:
    """PostgreSQL could not be reached (or refused): logged with its traceback, answered 503 with the error body."""
    logger.error("Could not %s the status of task %s in PostgreSQL: %s", action, task_id, exc, exc_info=exc)
    error = TaskBackendUnavailable()
    error.error = f"Task status could not be {'read' if action == 'read' else 'changed'}; try again later"
    return error


def job_state(conn: psycopg.Connection[Any], task_id: str) -> str | None:
    """The state of the job whose task id is ``task_id``, in RQ's words (``queued``, ``scheduled``, ``started``,
    ``finished``, ``failed``, ``canceled``), None when it has no record (blocking)."""
    row = conn.execute("SELECT state FROM tachyon_task_status WHERE id = %s", (task_id,)).fetchone()
    return None if row is None else _JOB_STATES.get(str(row[0]), str(row[0]))


# --- periodic jobs -----------------------------------------------------------------------------------------
_HOLD = """
INSERT INTO tachyon_schedule AS s (key, holder, expires_at)
    VALUES (%(key)s, %(holder)s, now() + %(ttl)s * interval '1 second')
ON CONFLICT (key) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
    WHERE s.holder = EXCLUDED.holder OR s.holder IS NULL OR s.expires_at < now()
RETURNING tick
"""
_CLAIM = """
UPDATE tachyon_schedule SET tick = %(tick)s,
    run = CASE WHEN %(outcome)s::text IS NULL THEN run ELSE %(tick)s END,
    outcome = CASE WHEN %(outcome)s::text IS NULL THEN outcome ELSE %(outcome)s END
WHERE key = %(key)s AND holder = %(holder)s AND expires_at >= now() AND coalesce(tick, -1) < %(tick)s
RETURNING 1
"""


class PostgresLease:
    """A periodic job's lease across processes and hosts: the row ``key`` of ``tachyon_schedule`` names its
    holder until ``expires_at`` (the database's clock), renewed every third of ``ttl`` while held. A process that
    stops renewing loses it ``ttl`` seconds later, and another takes it at its next try. Claims check the holder
    and its expiry in the same statement, so a holder that lost its lease (a long pause) claims nothing."""

    def __init__(self, pool: Callable[[], Any], key: str, ttl: float, connect_timeout: float) -> None:
        self.pool = pool
        self.key = key
        self.ttl = ttl
        self.poll = self.renew = ttl / 3
        self.holder = uuid.uuid4().hex
        self.connect_timeout = connect_timeout

    async def _one(self, query: str, **params: Any) -> tuple[Any, ...] | None:
        pool: AsyncConnectionPool[Any] = await self.pool()
        async with pool.connection(timeout=self.connect_timeout) as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchone() if cursor.description else None

    async def hold(self) -> tuple[bool, int | None]:
        row = await self._one(_HOLD, key=self.key, holder=self.holder, ttl=self.ttl)
        return (False, None) if row is None else (True, row[0])

    async def claim(self, tick: int, outcome: str | None) -> bool:
        row = await self._one(_CLAIM, key=self.key, holder=self.holder, tick=tick, outcome=outcome)
        return row is not None

    async def record(self, tick: int, outcome: str) -> None:
        await self._one(
            "UPDATE tachyon_schedule SET outcome = %(outcome)s WHERE key = %(key)s AND run = %(tick)s",
            key=self.key,
            tick=tick,
            outcome=outcome,
        )

    async def read(self) -> dict[str, Any]:
        row = await self._one("SELECT tick, run, outcome FROM tachyon_schedule WHERE key = %(key)s", key=self.key)
        if row is None:
            return {}
        return {name: value for name, value in zip(("tick", "run", "outcome"), row, strict=True) if value is not None}

    async def release(self) -> None:
        await self._one(
            "UPDATE tachyon_schedule SET holder = NULL, expires_at = NULL WHERE key = %(key)s AND holder = %(holder)s",
            key=self.key,
            holder=self.holder,
        )


# --- the worker's side ---------------------------------------------------------------------------------------
class JobTracker:
    """The running job's record, as ``tachyon worker`` writes it: what ``report_progress`` and ``cancelled``
    reach inside a job (``running_task``), from the worker's event loop or a sync task's thread.

    Progress is written by one writer task on the worker's loop, at most every ``PROGRESS_INTERVAL`` seconds,
    so the job never waits for the database; the latest value always arrives (the job's end writes it).
    ``cancelled()`` reads procrastinate's abort flag, which the worker sets when it hears of the request.
    """

    PROGRESS_INTERVAL = 0.05

    def __init__(
        self,
        task_id: str,
        job_id: int,
        execute: Callable[..., Any],
        abort_requested: Callable[[], bool],
        keep: int | None,
    ) -> None:
        self.id = task_id
        self.job_id = job_id
        self.execute = execute  # the worker's ``connector.execute_query_async``
        self.abort_requested = abort_requested
        self.keep = keep
        self.cancel_seen = False
        self.loop = asyncio.get_running_loop()
        self._pending: tuple[float | None, str | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._ending = asyncio.Event()  # set by end(): the writer stops after the write in flight

    def report(self, done: float | None, message: str | None) -> None:
        self._pending = (done, message)
        if _on_loop(self.loop):
            self._kick()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: the worker is gone
                self.loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self.loop.create_task(self._write())

    async def _write(self) -> None:
        while self._pending is not None and not self._ending.is_set():
            (done, message), self._pending = self._pending, None
            try:
                await self.execute(_PROGRESS, id=self.id, job=self.job_id, done=done, message=message)
            except Exception as exc:  # the database away: the job goes on; its end carries the latest progress
                logger.warning("Could not record the progress of job %s: %r", self.job_id, exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ending.wait(), self.PROGRESS_INTERVAL)

    def is_cancelled(self) -> bool:
        if self.abort_requested():
            self.cancel_seen = True
            return True
        return False

    async def end(self, value: Any = None, error: BaseException | None = None) -> None:
        """The attempt ended (before procrastinate records it): write its error, or its kept result, and the
        progress not written yet. Nothing to write: no round trip."""
        self._ending.set()
        if self._writer is not None:
            await self._writer  # its write in flight lands first (it never raises); what is pending comes here
        pending, self._pending = self._pending, None
        result: bytes | None = None
        failure: TaskError | None = None
        if self.cancel_seen:  # it stopped when asked: it ends cancelled, with neither result nor error
            pass
        elif error is not None:
            failure = TaskError.of(error)
        elif self.keep is not None:
            result, failure = encode_result(value, self.keep)
        if result is None and failure is None and pending is None:
            return
        from psycopg.types.json import Jsonb

        done, message = pending or (None, None)
        try:
            await self.execute(
                _OUTCOME,
                id=self.id,
                job=self.job_id,
                result=None if result is None else Jsonb(msgspec.json.decode(result)),
                error=None if failure is None else Jsonb(msgspec.to_builtins(failure)),
                progress=pending is not None,
                done=done,
                message=message,
            )
        except Exception as exc:  # the job's own outcome is recorded by procrastinate all the same
            logger.warning("Could not record the outcome of job %s in its status record: %r", self.job_id, exc)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread runs ``loop`` (an async job) rather than being a sync job's thread."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_purged: dict[str, float] = {}
PURGE_INTERVAL = 60.0


async def purge(execute: Callable[..., Any], dsn: str, result_ttl: int, failure_ttl: int) -> None:
    """Delete the records past their time (at most once a ``PURGE_INTERVAL`` per database and process; the
    worker calls it as jobs end). Reads already skip them: this keeps the table small."""
    now = time.monotonic()
    if now - _purged.get(dsn, -PURGE_INTERVAL) < PURGE_INTERVAL:
        return
    _purged[dsn] = now
    try:
        await execute(_PURGE, result_ttl=result_ttl, failure_ttl=failure_ttl)
    except Exception as exc:
        logger.warning("Could not delete expired task status records: %r", exc)

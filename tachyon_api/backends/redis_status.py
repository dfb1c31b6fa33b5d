"""Task status records in Redis: the durable tier's (in the RQ job's hash) and shared in-process ones.

One layout for both. A record is a Redis hash: the RQ job's own hash ``rq:job:<id>`` for a durable task (RQ's
``status``, ``description``, ``created_at``, ``started_at`` and ``ended_at`` are read from it), or
``tachyon:task:<id>`` for an in-process task whose app shares its records (``redis_store.RedisTaskStore``). Our fields
sit beside RQ's, all prefixed ``tachyon_``:

==================  ======================================================================================
``tachyon_state``    the state (``records.STATES``); absent until the job first runs: RQ's status stands in
``tachyon_attempts`` attempts started
``tachyon_started``  ``tachyon_ended``, ``tachyon_created``: Unix times (seconds, text)
``tachyon_progress`` ``[done, message]`` as JSON
``tachyon_result``   the kept return value, JSON (only with ``keep_result``)
``tachyon_error``    ``{"type", "message"}`` as JSON
``tachyon_owner``    the principal the task belongs to (``with_options(owner=...)``)
``tachyon_keep``     the result size limit, when the result is to be kept (written at enqueue)
``tachyon_cancel``   ``1`` once cancellation was requested (a running sync task's ``cancelled()`` reads it)
==================  ======================================================================================

Every change goes through one Lua script (:data:`ADVANCE`) that refuses moves the state machine forbids (a
final state is never left, so a cancellation and the job's end cannot both win) and publishes on the record's
channel ``tachyon:status:<id>``. Watchers subscribe to that channel (:class:`StatusHub`, one pub/sub
connection per process and loop) and read the record again when told: nothing polls every job. A watcher
also reads again every ``FALLBACK_SECONDS``, for what pub/sub may lose (a reconnect) or what RQ changes
without us (a job cancelled with RQ's own tools).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from ..exceptions import TaskBackendUnavailable
from ..tasks.records import (
    CANCELLED,
    FAILED,
    FINAL,
    QUEUED,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
    TRANSITIONS,
    Progress,
    TaskError,
    TaskRecord,
    follow_record,
    iso,
)
from .rq_redis import safe_url

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["RedisStatus", "JobTracker", "StatusHub", "record_from", "channel", "changes", "CANCEL_CHANNEL"]

logger = logging.getLogger("tachyon_api.background")

FALLBACK_SECONDS = 5.0
CHANNEL_PREFIX = b"tachyon:status:"
CANCEL_CHANNEL = b"tachyon:cancel"

# The fields one read fetches: RQ's first, then ours.
FIELDS = (
    "status",
    "description",
    "created_at",
    "started_at",
    "ended_at",
    "tachyon_state",
    "tachyon_attempts",
    "tachyon_created",
    "tachyon_started",
    "tachyon_ended",
    "tachyon_progress",
    "tachyon_result",
    "tachyon_error",
    "tachyon_owner",
    "tachyon_name",
)

# RQ's job statuses in our states (RQ's word stands in until our record has a state of its own).
RQ_STATES = {
    "created": QUEUED,
    "queued": QUEUED,
    "deferred": QUEUED,
    "ready_to_enqueue": QUEUED,
    "rate_limited": QUEUED,
    "scheduled": SCHEDULED,
    "started": RUNNING,
    "finished": SUCCEEDED,
    "failed": FAILED,
    "stopped": CANCELLED,
    "canceled": CANCELLED,
}
_RQ_FINAL = ("finished", "failed", "stopped", "canceled")


def _lua_table(mapping: Mapping[str, Iterable[str]]) -> str:
    return (
        "{"
        + ", ".join(
            f"[{name!r}] = {{" + ", ".join(f"[{target!r}] = true" for target in sorted(targets)) + "}"
            for name, targets in mapping.items()
        )
        + "}"
    )


_ALLOWED = _lua_table(TRANSITIONS)
_FINAL = "{" + ", ".join(f"[{state!r}] = true" for state in sorted(FINAL)) + "}"
_RQ_MAP = "{" + ", ".join(f"[{k!r}] = {v!r}" for k, v in RQ_STATES.items()) + "}"

# KEYS[1]: the record's hash. ARGV[1]: its channel; ARGV[2]: the new state ("" leaves it); ARGV[3]: the hash's
# time to live in seconds ("" leaves it); ARGV[4]: flags ("e": the hash must exist already, "a": count an
# attempt, "r": only if the record says running); then field/value pairs to set. Returns 1 (written and
# published), 0 (refused by the state machine) or -1 (no such record).
ADVANCE = f"""
local allowed, final = {_ALLOWED}, {_FINAL}
local key, state, flags = KEYS[1], ARGV[2], ARGV[4]
if string.find(flags, 'e', 1, true) and redis.call('EXISTS', key) == 0 then return -1 end
local current = redis.call('HGET', key, 'tachyon_state')
if string.find(flags, 'r', 1, true) and current ~= 'running' then return 0 end
if current then
  if state ~= '' and state ~= current and not allowed[current][state] then return 0 end
  if (state == '' or state == current) and final[current] then return 0 end
end
if string.find(flags, 'a', 1, true) then redis.call('HINCRBY', key, 'tachyon_attempts', 1) end
if state ~= '' then redis.call('HSET', key, 'tachyon_state', state) end
if #ARGV > 4 then redis.call('HSET', key, unpack(ARGV, 5)) end
if ARGV[3] ~= '' then redis.call('EXPIRE', key, tonumber(ARGV[3])) end
redis.call('PUBLISH', ARGV[1], state)
return 1
"""

# KEYS[1]: the record's hash. ARGV[1]: its channel; ARGV[2]: now (Unix time); ARGV[3]: the channel that tells
# the process running an in-process task to stop it ("" for durable jobs); ARGV[4]: the task id. Returns
# "unknown", "final:<state>" (nothing changed), "cancelled" (it was waiting: it is cancelled now) or "running"
# (the request is recorded; whoever runs it must stop it).
CANCEL = f"""
local final, rqmap = {_FINAL}, {_RQ_MAP}
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return 'unknown' end
local ours, rq = redis.call('HGET', key, 'tachyon_state'), redis.call('HGET', key, 'status')
local state = ours or (rq and rqmap[rq]) or 'queued'
if rq and rqmap[rq] and final[rqmap[rq]] and not final[state] then state = rqmap[rq] end
if final[state] then return 'final:' .. state end
redis.call('HSET', key, 'tachyon_cancel', '1')
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
if state == 'queued' or state == 'scheduled' or (rq and state == 'retrying' and rq ~= 'started') then
  redis.call('HSET', key, 'tachyon_state', 'cancelled', 'tachyon_ended', ARGV[2])
  redis.call('PUBLISH', ARGV[1], 'cancelled')
  return 'cancelled'
end
return 'running'
"""


# The same moves, inlined in the scripts of ``tachyon worker`` (``rq_ledger.py``), which claim and finish jobs
# in one round trip each. Lua locals they need: ``key`` (the job's hash), ``id`` (its id), and for the start
# ``tnow`` (Unix time, text), for the end ``tstate`` (succeeded or cancelled), ``tnow``, ``tresult``,
# ``terror``, ``tprogress`` (JSON, "" for none).
# START_LUA sets ``trun`` ("1": run the job; "0": it was cancelled while it waited) and ``tkeep`` (the result
# limit, "" when the result is not kept); a job that ended and runs again was requeued: a new life.
START_LUA = """
local tfields = redis.call('HMGET', key, 'tachyon_cancel', 'tachyon_keep', 'tachyon_state')
local trun, tkeep = '1', tfields[2] or ''
if tfields[1] then
  trun = '0'
else
  if tfields[3] == 'succeeded' or tfields[3] == 'failed' then
    redis.call('HDEL', key, 'tachyon_ended', 'tachyon_result', 'tachyon_progress')
  end
  redis.call('HSET', key, 'tachyon_state', 'running', 'tachyon_started', tnow, 'tachyon_error', '')
  redis.call('HINCRBY', key, 'tachyon_attempts', 1)
  redis.call('PUBLISH', 'tachyon:status:' .. id, 'running')
end
"""
END_LUA = """
local tcurrent = redis.call('HGET', key, 'tachyon_state')
if tcurrent ~= 'succeeded' and tcurrent ~= 'failed' and tcurrent ~= 'cancelled' then
  redis.call('HSET', key, 'tachyon_state', tstate, 'tachyon_ended', tnow)
  if tresult ~= '' then redis.call('HSET', key, 'tachyon_result', tresult) end
  if terror ~= '' then redis.call('HSET', key, 'tachyon_error', terror) end
  if tprogress ~= '' then redis.call('HSET', key, 'tachyon_progress', tprogress) end
  redis.call('PUBLISH', 'tachyon:status:' .. id, tstate)
end
"""


def channel(task_id: str) -> bytes:
    return CHANNEL_PREFIX + task_id.encode()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def _time(value: bytes | None) -> dt.datetime | None:
    return None if value is None else iso(float(value))


def _rq_time(value: bytes | None) -> dt.datetime | None:
    """A time as RQ writes it (``2026-01-01T12:00:00.123456Z``)."""
    if not value:
        return None
    text = value.decode()
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(text, pattern).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
    return None


def record_from(task_id: str, values: list[bytes | None]) -> tuple[TaskRecord, str | None] | None:
    """The record and owner from the values of :data:`FIELDS` (None: no such hash).

    Our state is the answer, except where RQ knows better: a job RQ stopped, cancelled or failed outside our
    code (its work horse killed) while our record still says it runs.
    """
    if not any(values):
        return None
    (
        rq,
        description,
        rq_created,
        rq_started,
        rq_ended,
        ours,
        attempts,
        created,
        started,
        ended,
        progress,
        result,
        error,
        owner,
        name,
    ) = values
    rq_status = _text(rq)
    state = _text(ours) or RQ_STATES.get(rq_status or "", QUEUED)
    failure = msgspec.json.decode(error, type=TaskError) if error else None
    if state not in FINAL and rq_status in _RQ_FINAL:
        state = RQ_STATES[rq_status]
        if state == FAILED and failure is None:
            failure = TaskError("WorkerLost", "the job failed outside the task (its worker process stopped?)")
    done, message = msgspec.json.decode(progress) if progress else (None, None)
    return TaskRecord(
        id=task_id,
        name=_text(name) or _text(description) or "",
        state=state,
        attempts=int(attempts) if attempts else (1 if rq_status in ("started", "finished", "failed") else 0),
        created_at=_time(created) or _rq_time(rq_created) or dt.datetime.fromtimestamp(0.0, dt.timezone.utc),
        started_at=_time(started) or _rq_time(rq_started),
        ended_at=_time(ended) or (_rq_time(rq_ended) if state in FINAL else None),
        progress=Progress(done, message),
        result=msgspec.json.decode(result) if result else None,
        error=failure,
    ), _text(owner)


def changes(
    state: str, *, error: TaskError | None = None, result: bytes | None = None, now: float | None = None
) -> list[Any]:
    """Field/value pairs for ADVANCE when moving to ``state``."""
    now = time.time() if now is None else now
    fields: list[Any] = []
    if state == RUNNING:
        fields += ["tachyon_started", f"{now:.6f}", "tachyon_error", ""]
    elif state in FINAL:
        fields += ["tachyon_ended", f"{now:.6f}"]
    if error is not None:
        fields += ["tachyon_error", msgspec.json.encode(error)]
    if result is not None:
        fields += ["tachyon_result", result]
    return fields


class StatusHub:
    """One pub/sub connection (per event loop) for every channel this process listens to: a record's watchers,
    woken (an ``asyncio.Event``) on each message, or a callback given each message's data. The connection is
    subscribed to a channel while someone listens. After a lost connection every listener is woken, so
    watchers read again (their messages may be lost)."""

    def __init__(self, url: str, socket_timeout: float) -> None:
        self.url = url
        self.socket_timeout = socket_timeout
        self._listeners: dict[bytes, set[Callable[[bytes | None], None]]] = {}
        self._ready: dict[bytes, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Future[None] | None = None

    @contextlib.asynccontextmanager
    async def listen(
        self, name: bytes, on_message: Callable[[bytes | None], None] | None = None
    ) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``name`` gets a message (and ``on_message(data)`` called; None after a lost
        connection), subscribed and confirmed by Redis before the block starts."""
        event = asyncio.Event()

        def heard(data: bytes | None) -> None:
            event.set()
            if on_message is not None:
                on_message(data)

        listeners = self._listeners.setdefault(name, set())
        listeners.add(heard)
        try:
            if len(listeners) == 1:
                await self._subscribe(name)
            yield event
        finally:
            listeners.discard(heard)
            if not listeners and self._listeners.get(name) is listeners:
                del self._listeners[name]
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(name)

    async def _subscribe(self, name: bytes) -> None:
        if self._pubsub is None:
            from redis.asyncio import Redis

            client = Redis.from_url(self.url, socket_connect_timeout=self.socket_timeout)
            self._pubsub = client.pubsub()
        ready = self._ready[name] = asyncio.get_running_loop().create_future()
        try:
            await self._pubsub.subscribe(name)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.ensure_future(self._read())
            # Confirmed by Redis before the watcher reads the record: no change can fall in between.
            await asyncio.wait_for(asyncio.shield(ready), self.socket_timeout)
        except Exception as exc:  # Redis unreachable: watchers still read every FALLBACK_SECONDS
            logger.warning("Could not subscribe to task status changes in %s: %r", self.url, exc)
        finally:
            self._ready.pop(name, None)

    async def _read(self) -> None:
        while self._listeners:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped: redis-py subscribes again when it reconnects
                logger.warning("Task status subscription to %s lost: %r; reconnecting", self.url, exc)
                for listeners in list(self._listeners.values()):
                    for heard in list(listeners):
                        heard(None)
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            name = message.get("channel")
            if message["type"] == "subscribe":
                ready = self._ready.get(name)
                if ready is not None and not ready.done():
                    ready.set_result(None)
            elif message["type"] == "message":
                for heard in list(self._listeners.get(name, ())):
                    heard(message["data"])

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None


class RedisStatus:
    """Reading, watching and cancelling records kept in Redis hashes named ``key_prefix + id``, over
    ``redis.asyncio`` connections of the running event loop."""

    def __init__(self, url: str, key_prefix: str, *, socket_timeout: float = 5.0, cancel_channel: bytes = b"") -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.socket_timeout = socket_timeout
        self.cancel_channel = cancel_channel
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StatusHub] = weakref.WeakKeyDictionary()

    def key(self, task_id: str) -> str:
        return self.key_prefix + task_id

    def client(self) -> Any:
        """The ``redis.asyncio`` client of the running loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from redis.asyncio import Redis

            client = self._clients[loop] = Redis.from_url(
                self.url, socket_connect_timeout=self.socket_timeout, socket_timeout=self.socket_timeout
            )
        return client

    def script(self, client: Any) -> Any:
        """:data:`ADVANCE` registered on ``client`` (run by its SHA, loaded once)."""
        return client.register_script(ADVANCE)

    def hub(self) -> StatusHub:
        loop = asyncio.get_running_loop()
        hub = self._hubs.get(loop)
        if hub is None:
            hub = self._hubs[loop] = StatusHub(self.url, self.socket_timeout)
        return hub

    async def read(self, task_id: str) -> tuple[TaskRecord, str | None] | None:
        """The record and owner (None: no such hash). Raises ``TaskBackendUnavailable`` when Redis fails."""
        try:
            values = await self.client().hmget(self.key(task_id), FIELDS)
        except (RedisError, OSError) as exc:  # unreachable, timed out, refusing: not a bug here
            raise _unavailable("read", task_id, self.url, exc) from exc
        return record_from(task_id, values)

    async def watch(self, task_id: str) -> AsyncIterator[TaskRecord]:
        """The current record, then one per change (told by pub/sub), until a final one."""
        async with self.hub().listen(channel(task_id)) as changed:
            async for record in follow_record(lambda: self.read(task_id), changed, FALLBACK_SECONDS):
                yield record

    async def cancel(self, task_id: str) -> str:
        """Run :data:`CANCEL`: "unknown", "final:<state>", "cancelled" or "running". Raises
        ``TaskBackendUnavailable`` when Redis fails."""
        try:
            reply = await self.client().eval(
                CANCEL, 1, self.key(task_id), channel(task_id), f"{time.time():.6f}", self.cancel_channel, task_id
            )
        except (RedisError, OSError) as exc:  # unreachable, timed out, refusing: not a bug here
            raise _unavailable("change", task_id, self.url, exc) from exc
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        hub = self._hubs.pop(loop, None)
        if hub is not None:
            await hub.aclose()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()


def _unavailable(action: str, task_id: str, url: str, exc: Exception) -> TaskBackendUnavailable:
    """A failure of Redis as the ``TaskBackendUnavailable`` the status routes answer 503 with, logged with its
    traceback."""
    logger.error(
        "Could not %s the status of task %s in Redis at %s: %s", action, task_id, safe_url(url), exc, exc_info=exc
    )
    return TaskBackendUnavailable(
        f"Task status could not be {'read' if action == 'read' else 'changed'}; try again later"
    )


_advance_script: Any = None


class JobTracker:
    """The running durable job's record, as the worker writes it: what ``report_progress`` and ``cancelled``
    reach inside a job.

    Progress is written at most every ``PROGRESS_INTERVAL`` seconds (the latest value always arrives: the job's
    end writes it). With ``send`` (``tachyon worker``), writes are handed to it (the worker's Redis thread) and
    never block the job, and the worker sets ``cancel_requested`` when told to stop the job; without it (a work
    horse of RQ's worker, a forked child), writes are blocking calls, and ``cancelled()`` reads the request from
    Redis at most every ``CANCEL_INTERVAL`` seconds.
    """

    PROGRESS_INTERVAL = 0.05
    CANCEL_INTERVAL = 0.25

    def __init__(
        self,
        job_id: str,
        key: str,
        redis: Redis,
        *,
        keep: int | None = None,
        send: Callable[[Callable[[], Any]], Any] | None = None,
    ) -> None:
        global _advance_script
        self.id = job_id
        self.key = key
        self.redis = redis
        self.keep = keep  # the result size limit, when the result is kept
        self.send = send
        self.cancel_requested = False
        self.cancel_seen = False
        self._written = 0.0
        self._pending: tuple[float | None, str | None] | None = None
        self._checked = 0.0
        if _advance_script is None:
            _advance_script = redis.register_script(ADVANCE)  # its SHA, once; each call names its client

    def advance(self, state: str, fields: list[Any], flags: str = "e") -> int:
        return int(
            _advance_script(keys=[self.key], args=[channel(self.id), state, "", flags, *fields], client=self.redis)
        )

    def start(self) -> bool:
        """The job starts an attempt: False when it must not run (cancelled while it waited). A job that had
        ended succeeded or failed and runs again was requeued (RQ's ``requeue``, the dashboard's button): its
        record starts a new life."""
        keep, cancel, state = self.redis.hmget(self.key, ["tachyon_keep", "tachyon_cancel", "tachyon_state"])
        self.keep = int(keep) if keep else None
        if cancel:
            self.cancel_requested = True
            return False
        if state in (SUCCEEDED.encode(), FAILED.encode()):
            self.redis.hdel(
                self.key, "tachyon_state", "tachyon_ended", "tachyon_error", "tachyon_result", "tachyon_progress"
            )
        return self.advance(RUNNING, changes(RUNNING), "ea") == 1

    def end(self, state: str, error: TaskError | None = None, result: bytes | None = None) -> None:
        fields = changes(state, error=error, result=result)
        progress = self.pending_progress()
        if progress:
            fields += ["tachyon_progress", progress]
        self.advance(state, fields)

    def report(self, done: float | None, message: str | None) -> None:
        now = time.monotonic()
        if now - self._written < self.PROGRESS_INTERVAL and done != 1.0:
            self._pending = (done, message)
            return
        self._written, self._pending = now, None
        fields = ["tachyon_progress", msgspec.json.encode((done, message))]
        if self.send is None:
            self.advance("", fields)
        else:
            self.send(lambda: self._quietly(fields))

    def _quietly(self, fields: list[Any]) -> None:
        try:
            self.advance("", fields)
        except Exception as exc:  # Redis away: the job goes on; its end carries the latest progress
            logger.warning("Could not record the progress of job %s: %r", self.id, exc)

    def pending_progress(self) -> bytes:
        """The progress reported since the last write (JSON; b"" if none), for the job's end to carry."""
        pending, self._pending = self._pending, None
        return b"" if pending is None else msgspec.json.encode(pending)

    def is_cancelled(self) -> bool:
        if not self.cancel_requested and self.send is None:
            now = time.monotonic()
            if now - self._checked >= self.CANCEL_INTERVAL:
                self._checked = now
                self.cancel_requested = bool(self.redis.hget(self.key, "tachyon_cancel"))
        if self.cancel_requested:
            self.cancel_seen = True
        return self.cancel_requested

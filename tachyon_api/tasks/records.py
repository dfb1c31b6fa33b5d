"""What a task you can hold looks like: one record, one list of states, in every tier.

A task's status is a :class:`TaskRecord` whatever runs it: the in-process runner keeps a :class:`Tracker` per
task (the live, mutable form, read as a ``TaskRecord``) in a :class:`MemoryTaskStore`; the durable tier keeps
the same fields in the RQ job's hash (see ``backends/redis_status.py``). The HTTP routes, ``app.tasks`` and the
dashboard only ever see ``TaskRecord``.

States and the moves between them (:data:`TRANSITIONS`)::

    queued ----> running ----> succeeded
      |  ^         |  ^ \\----> failed
      |  |         v  |  \\---> cancelled
      |  scheduled retrying
      \\------------------------> cancelled / failed (never ran: cancelled, dropped, lost at shutdown)

A final state (:data:`FINAL`) never changes again: when a cancellation and the task's end race, the first
one written is the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, overload

import msgspec

__all__ = [
    "follow_record",
    "QUEUED",
    "SCHEDULED",
    "RUNNING",
    "RETRYING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "STATES",
    "FINAL",
    "TRANSITIONS",
    "Progress",
    "TaskError",
    "TaskRecord",
    "Tracker",
    "MemoryTaskStore",
    "encode_result",
    "check_progress",
    "iso",
]

QUEUED, SCHEDULED, RUNNING, RETRYING = "queued", "scheduled", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, SCHEDULED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset((SUCCEEDED, FAILED, CANCELLED))
_STARTABLE = frozenset((QUEUED, SCHEDULED, RETRYING))  # the states an attempt may start from
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset((SCHEDULED, RUNNING, CANCELLED, FAILED)),
    SCHEDULED: frozenset((QUEUED, RUNNING, CANCELLED, FAILED)),
    # running -> running: a durable job whose worker died mid-attempt is picked up again by another worker.
    RUNNING: frozenset((RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)),
    RETRYING: frozenset((RUNNING, SCHEDULED, QUEUED, CANCELLED, FAILED)),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}

# A progress message longer than this is a mistake (a whole log?) that every watcher would receive: refused.
MAX_MESSAGE = 1_000


class Progress(msgspec.Struct):
    """How far a task got: ``done`` from 0.0 to 1.0 (None: unknown) and a short message for people."""

    done: float | None = None
    message: str | None = None


class TaskError(msgspec.Struct):
    """Why a task failed, for clients: the exception's type and message. Tracebacks stay in the logs and the
    admin dashboard."""

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> TaskError:
        return cls(type(exc).__name__, str(exc))


class TaskRecord(msgspec.Struct, kw_only=True):
    """The status of one task, the same in every tier; times are UTC. ``result`` is the task's return value
    (decoded JSON) when it was asked to keep it, else None."""

    id: str
    name: str
    state: str
    attempts: int = 0
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    progress: Progress = msgspec.field(default_factory=Progress)
    result: Any = None
    error: TaskError | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL


@overload
def iso(timestamp: float) -> dt.datetime: ...
@overload
def iso(timestamp: None) -> None: ...
@overload
def iso(timestamp: float | None) -> dt.datetime | None: ...
def iso(timestamp: float | None) -> dt.datetime | None:
    """A ``time.time()`` value as an aware UTC datetime (None stays None)."""
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)


def check_progress(done: float | None, message: str | None) -> tuple[float | None, str | None]:
    """``report_progress``'s arguments, checked: a fraction from 0 to 1 (or None), a short string (or None)."""
    if done is not None:
        if isinstance(done, bool) or not isinstance(done, (int, float)) or not 0.0 <= done <= 1.0 or math.isnan(done):
            raise ValueError(f"report_progress(done={done!r}): a fraction from 0.0 to 1.0, or None")
        done = float(done)
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"report_progress(message=...): a str or None, got {type(message).__name__}")
        if len(message) > MAX_MESSAGE:
            raise ValueError(f"report_progress(message=...): at most {MAX_MESSAGE} characters, got {len(message)}")
    return done, message


def encode_result(value: Any, limit: int) -> tuple[bytes | None, TaskError | None]:
    """A task's return value as JSON, kept only within ``limit`` bytes: a larger (or unencodable) one is
    recorded as an error instead, never truncated."""
    try:
        data = msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return None, TaskError("ResultNotSerializable", f"the return value cannot be encoded as JSON: {exc}")
    if len(data) > limit:
        return None, TaskError(
            "ResultTooLarge", f"the return value is {len(data):,} bytes of JSON, over the limit of {limit:,}"
        )
    return data, None


class Tracker(msgspec.Struct, gc=False, repr_omit_defaults=True):
    """The live record of one in-process task, updated by the runner (on the loop or in a worker thread) under
    its store's lock, and read as a :class:`TaskRecord`.

    Also the task's cancellation switch: ``cancel_requested`` is set by ``app.tasks.cancel``; ``cancel_seen``
    when the running task itself noticed it (``cancelled()`` returned True), which decides how a sync task
    that then returns normally ends: cancelled if it noticed, succeeded if it ran to its end regardless.

    A msgspec Struct, made in C with its defaults, and left out of the cyclic garbage collector (``gc=False``):
    a store holds up to ``max_records`` of them, which every full collection would otherwise walk. Nothing in
    a tracker refers back to it for long (``interrupt``, which reaches the asyncio task running it, is cleared
    when the task ends).
    """

    store: MemoryTaskStore
    id: str
    name: str
    owner: str | None = None
    keep_result: bool = False
    is_async: bool = False
    created: float = 0.0
    state: str = QUEUED
    attempts: int = 0
    started: float | None = None
    ended: float | None = None
    done: float | None = None
    message: str | None = None
    result: bytes | None = None  # JSON
    error: TaskError | None = None
    cancel_requested: bool = False
    cancel_seen: bool = False
    version: int = 0
    # Watchers waiting for the next change, as (loop, future).
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None
    # What ``cancel`` stops (its ``cancel()``): while an async task runs or waits to retry, the asyncio task running
    # it; while a delayed task waits for its time, its timer (see status.py).
    interrupt: Any = None
    expires: float = 0.0

    def record(self) -> TaskRecord:
        """A snapshot (call it under the store's lock)."""
        return TaskRecord(
            id=self.id,
            name=self.name,
            state=self.state,
            attempts=self.attempts,
            created_at=iso(self.created),
            started_at=iso(self.started),
            ended_at=iso(self.ended),
            progress=Progress(self.done, self.message),
            result=None if self.result is None else msgspec.json.decode(self.result),
            error=self.error,
        )

    @property
    def final(self) -> bool:
        return self.state in FINAL

    # --- changes: call them under the store's lock -------------------------------------------------------
    def begin(self, perf: float) -> bool:
        """An attempt starts, at ``time.perf_counter()`` value ``perf`` (the runner's clock reading, reused):
        False when the task must not run (it was cancelled while it waited)."""
        if self.state not in _STARTABLE:
            return False
        self.state = RUNNING
        self.attempts += 1
        self.started = perf + self.store.offset
        self.version += 1
        if self.waiters is not None or self.store.shared:
            self.tell()
        return True

    def end(
        self, state: str, perf: float | None = None, error: TaskError | None = None, result: bytes | None = None
    ) -> bool:
        """The attempt ended (at ``perf``, a ``time.perf_counter()`` value; None: now): the task is in ``state``
        (retrying, or a final one) with its error, or its kept result (JSON). False if it had ended already."""
        if state not in TRANSITIONS[self.state]:
            return False
        self.state = state
        # A field is written only when it changes: each write to a Struct's field goes through the generic
        # attribute machinery (the interpreter does not specialise it), and a task that succeeds without a kept
        # result, the usual case, changes none of these three.
        if error is not self.error:
            self.error = error
        self.version += 1
        if state != RETRYING:
            store = self.store
            self.ended = now = (time.perf_counter() if perf is None else perf) + store.offset
            if result is not None:  # a final state is reached once: the field is still None
                self.result = result
            if self.interrupt is not None:
                self.interrupt = None
            store.ended(self, now)
        if self.waiters is not None or self.store.shared:
            self.tell()
        return True

    def advance(self, state: str) -> bool:
        """Move to ``state`` if the state machine allows it (False otherwise: a final state is never left)."""
        if state == RUNNING:
            return self.begin(time.perf_counter())
        if state in FINAL or state == RETRYING:
            return self.end(state)
        if state not in TRANSITIONS[self.state]:
            return False
        self.state = state
        self.changed()
        return True

    def progress(self, done: float | None, message: str | None) -> None:
        if self.state in FINAL or (done == self.done and message == self.message):
            return
        self.done, self.message = done, message
        self.changed()

    def cancel(self) -> bool:
        """Ask the task to stop (False if it already ended). A queued or scheduled task ends cancelled now and
        never runs; a running or retrying async task is interrupted; a running sync task sees ``cancelled()``
        turn true. Call it on the event loop, under the store's lock."""
        if self.state in FINAL:
            return False
        self.cancel_requested = True
        interrupt = self.interrupt  # the asyncio task running it, or what takes a delayed task off its timer
        if self.state in (QUEUED, SCHEDULED):
            self.end(CANCELLED)
        if interrupt is not None:
            interrupt.cancel()
        return True

    def changed(self) -> None:
        """Count a change and tell whoever watches."""
        self.version += 1
        if self.waiters is not None or self.store.shared:
            self.tell()

    def tell(self) -> None:
        """Wake the watchers (from any thread) and, for a shared store, mirror the change."""
        if self.store.shared:
            # A store is shared (``shared = True``) exactly when it is one that mirrors its records elsewhere
            # (``RedisTaskStore``, which defines ``mirror``); the flag, not an isinstance check, keeps this cheap.
            self.store.mirror(self)  # type: ignore[attr-defined]
        waiters = self.waiters
        if waiters is not None:
            self.waiters = None
            for loop, future in waiters:
                try:
                    loop.call_soon_threadsafe(_wake, future)
                except RuntimeError:  # that loop is closed: its watcher is gone
                    pass

    # --- for the runner, outside the lock ----------------------------------------------------------------
    def outcome(self, state: str, error: BaseException | None, value: Any) -> tuple[TaskError | None, bytes | None]:
        """What the end of an attempt records: its error (none for a cancellation), or its return value as
        JSON when it is kept (encoded here, outside any lock; too large a value is an error instead)."""
        if state == SUCCEEDED:
            if self.keep_result:
                data, failure = encode_result(value, self.store.result_limit)
                return failure, data
            return None, None
        return (None if error is None or state == CANCELLED else TaskError.of(error)), None

    def lost(self, reason: str) -> None:
        """The task will never run or finish (dropped, lost at shutdown, its response failed)."""
        with self.store.lock:
            self.end(FAILED, None, TaskError("TaskLost", reason))

    # --- for the running task itself (report_progress, cancelled), from any thread -----------------------
    def report(self, done: float | None, message: str | None) -> None:
        with self.store.lock:
            self.progress(done, message)

    def is_cancelled(self) -> bool:
        if self.cancel_requested:
            self.cancel_seen = True
            return True
        return False

    # --- reading ----------------------------------------------------------------------------------------
    async def watch(self) -> AsyncIterator[TaskRecord]:
        """The current record, then one per change, until (and including) a final one. A watcher that is slow
        to read skips intermediate progress, never the final state: each record it gets is the latest."""
        seen = -1
        lock = self.store.lock
        loop = asyncio.get_running_loop()
        while True:
            future: asyncio.Future[None] | None = None
            with lock:
                if self.version != seen:
                    seen, record = self.version, self.record()
                else:
                    future = loop.create_future()
                    if self.waiters is None:
                        self.waiters = []
                    self.waiters.append((loop, future))
            if future is not None:
                await future
                continue
            yield record
            if record.final:
                return


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class MemoryTaskStore:
    """The records of in-process tasks, in this process's memory: bounded and expiring.

    A record stays while its task is unfinished, and for ``ttl`` seconds after it ended; past
    ``max_records`` ended records (or ``max_result_bytes`` of kept results), the oldest ended ones leave
    first. So memory stays bounded however many tasks run. Kept results are limited to ``result_limit``
    bytes of JSON each.

    Several web processes do not share it: see ``RedisTaskStore`` and the startup warning of ``app.tasks``.
    """

    shared = False

    def __init__(
        self,
        *,
        max_records: int = 10_000,
        ttl: float = 3_600.0,
        result_limit: int = 64 * 1024,
        max_result_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if max_records < 1 or ttl <= 0 or result_limit < 1 or max_result_bytes < result_limit:
            raise ValueError(
                "MemoryTaskStore: max_records and result_limit at least 1, ttl positive, "
                "max_result_bytes at least result_limit"
            )
        self.max_records = max_records
        self.ttl = ttl
        self.result_limit = result_limit
        self.max_result_bytes = max_result_bytes
        # Shared with the app's runner (it records attempts inside its own critical sections); any lock works.
        self.lock = threading.Lock()
        # Wall time minus time.perf_counter(): the records' times are monotonic clock readings (the runner's,
        # reused) made wall times, so they stay in order even if the wall clock is set while the app runs.
        self.offset = time.time() - time.perf_counter()
        self._records: dict[str, Tracker] = {}
        self._ended: deque[Tracker] = deque()  # in the order they ended
        self._result_bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def create(
        self,
        task_id: str,
        name: str,
        owner: str | None = None,
        keep_result: bool = False,
        is_async: bool = False,
        state: str = QUEUED,
    ) -> Tracker:
        """A new record, queued (or scheduled: a delayed task); it replaces an ended one with the same id."""
        tracker = self._records[task_id] = Tracker(
            self, task_id, name, owner, keep_result, is_async, time.perf_counter() + self.offset, state
        )
        return tracker

    def get(self, task_id: str) -> Tracker | None:
        """The record of ``task_id``, or None when unknown or expired."""
        tracker = self._records.get(task_id)
        if tracker is not None and tracker.expires and tracker.expires <= time.perf_counter() + self.offset:
            return None
        return tracker

    # --- the StatusSource protocol (see status.py) -----------------------------------------------------
    async def read_status(self, task_id: str) -> tuple[TaskRecord, str | None] | None:
        tracker = self.get(task_id)
        if tracker is None:
            return None
        with self.lock:
            return tracker.record(), tracker.owner

    def watch_status(self, task_id: str) -> AsyncIterator[TaskRecord]:
        tracker = self.get(task_id)
        return _nothing() if tracker is None else tracker.watch()

    async def cancel_status(self, task_id: str) -> bool | None:
        tracker = self.get(task_id)
        if tracker is None:
            return None
        with self.lock:
            return tracker.cancel()

    def ended(self, tracker: Tracker, now: float) -> None:
        """``tracker`` reached a final state at ``now`` (called under the lock): it expires after ``ttl``; the
        oldest ended records leave when there are too many, or too many bytes of results."""
        tracker.expires = now + self.ttl
        ended = self._ended
        ended.append(tracker)
        if tracker.result is not None:
            self._result_bytes += len(tracker.result)
        if len(ended) > self.max_records or ended[0].expires <= now or self._result_bytes > self.max_result_bytes:
            self._evict(now)

    def _evict(self, now: float) -> None:
        ended, records = self._ended, self._records
        while ended and (
            len(ended) > self.max_records or ended[0].expires <= now or self._result_bytes > self.max_result_bytes
        ):
            old = ended.popleft()
            if old.result is not None:
                self._result_bytes -= len(old.result)
            if records.get(old.id) is old:
                del records[old.id]


async def _nothing() -> AsyncIterator[TaskRecord]:
    return
    yield  # an async generator that yields nothing


async def follow_record(
    read: Callable[[], Awaitable[tuple[TaskRecord, str | None] | None]], changed: asyncio.Event, fallback: float
) -> AsyncIterator[TaskRecord]:
    """How a shared store's watcher follows one record: the current one, then one per change, until a final one
    (or the record is gone). ``changed`` is set by the store's notifications (Redis pub/sub, PostgreSQL
    ``NOTIFY``); the record is also read again every ``fallback`` seconds, for a notification lost with a
    connection. A notification between the read and the wait is not lost: the event is cleared before the read."""
    last = None
    while True:
        changed.clear()
        found = await read()
        if found is None:
            return
        record = found[0]
        if record != last:
            last = record
            yield record
        if record.final:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), fallback)

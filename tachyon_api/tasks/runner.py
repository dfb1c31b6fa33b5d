"""The app's runner (:class:`BackgroundRunner`): it owns every in-process task from the hand-over after the
response to its end: the batches, the concurrency limit and the bounded queue, the thread pool of sync tasks,
timeouts, retries, error hooks, statistics and the shutdown drain. See the package docstring for the life of a
task."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import inspect
import logging
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from .._utils import callable_name, is_async_callable
from ..concurrency import ThreadPool
from ..tracing import task_span
from . import records
from .calls import being_cancelled, call_in_thread, execute, on_loop, uncancel
from .stats import (
    CANCELLED,
    DROPPED,
    FAILED,
    OUTCOMES,
    RETRIED,
    SUCCEEDED,
    TIMED_OUT,
    TaskFailure,
    TaskMetrics,
    TaskStats,
    stat_name,
)
from .status import running_task, thread_slot
from .timers import DelayedTasks, due_time, run_when_due

if TYPE_CHECKING:
    from .handles import BackgroundTask

__all__ = ["BackgroundRunner", "ErrorHook"]

logger = logging.getLogger("tachyon_api.background")


def _id_of(task: BackgroundTask) -> str | None:
    """A task's id for the dashboard: only a task with a status record has one to show (ids are capabilities)."""
    return None if task.tracker is None else task.tracker.id


# The record's state for each outcome of an attempt (see records.py and stats.py).
_STATE = {SUCCEEDED: records.SUCCEEDED, FAILED: records.FAILED, RETRIED: records.RETRYING, CANCELLED: records.CANCELLED}


_TASK_CONTEXT = sys.version_info >= (3, 11)  # create_task(..., context=) exists


class _Batch:
    """One request's tasks on their way through the runner. Its ``index``/``attempt``/``since``/``running``
    say which task runs now, since when: the runner's list of running tasks is read from its batches."""

    __slots__ = (
        "tasks",
        "method",
        "path",
        "context",
        "index",
        "attempt",
        "since",
        "running",
        "threaded",
        "abandoned",
        "loop",
        "task",
    )

    def __init__(self, tasks: list[BackgroundTask], method: str, path: str, context: contextvars.Context) -> None:
        self.tasks = tasks
        self.method = method
        self.path = path
        self.context = context
        self.index = 0  # the task running, or the next one to run
        self.attempt = 1
        self.since = 0.0  # time.perf_counter() when the running attempt started
        self.running = False
        # Only sync tasks without timeout or retries: the whole batch runs in one worker thread, in one hop.
        threaded = True
        for task in tasks:
            if task.is_async or task.timeout is not None or task.retries:
                threaded = False
                break
        self.threaded = threaded
        self.abandoned = False
        self.loop: asyncio.AbstractEventLoop | None = None
        # The asyncio task running the batch when the runner made one (None: it runs in its caller's task, or
        # in a worker thread): asyncio.current_task() is a Python function before 3.12, not worth a call per task.
        self.task: asyncio.Task[None] | None = None


ErrorHook = Callable[[TaskFailure], Awaitable[None] | None]


class BackgroundRunner:
    """Owns the app's background tasks: queue, limits, threads, retries, errors, stats and shutdown.

    Threads: the runner's state lives on the event loop, except what a worker thread running a batch of plain
    sync tasks touches, under ``_lock``: the statistics, its batch's progress, and the set of threaded batches
    it leaves when done. A worker calls back into the loop after a batch only when someone there waits for a
    batch to end (:meth:`join`, shutdown, a queued batch, a request waiting for room); otherwise a request's
    tasks cost the loop nothing after the hand-over.
    """

    def __init__(
        self,
        *,
        concurrency: int = 64,
        queue_size: int = 1_000,
        overflow: str = "wait",
        threads: int = 16,
        shutdown_timeout: float = 25.0,
        statistics: bool = True,
        lock: Any = None,
    ) -> None:
        if overflow not in ("wait", "drop"):
            raise ValueError("overflow must be 'wait' or 'drop'")
        if concurrency < 1 or queue_size < 0:
            raise ValueError("concurrency must be at least 1 and queue_size not negative")
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.overflow = overflow
        self.shutdown_timeout = shutdown_timeout
        self.pool = ThreadPool(threads, "tachyon-task")
        self.hooks: list[ErrorHook] = []
        self.started = False
        self._closed = False
        self._cancelling = False
        self._active: dict[asyncio.Task[None], _Batch] = {}
        self._pending: deque[_Batch] = deque()
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._inline: set[_Batch] = set()  # batches running in their request (no lifespan, or a test client)
        self._threaded: set[_Batch] = set()  # batches posted to the thread pool and not finished
        self._delayed = DelayedTasks()  # tasks waiting for their delay= or at= (one batch each when they start)
        self._drain_scheduled = False  # a worker asked the loop to run _drain and it has not run yet
        # For what worker threads touch (see the class docstring). The app gives the lock of its task store, so
        # that an attempt's start and end reach the task's status record inside the same critical sections.
        self._lock = lock if lock is not None else threading.Lock()
        self._scheduled = self._queued = self._waiting = 0
        self._deadline: float | None = None  # loop time at which shutdown cancels what is left
        self._closing: asyncio.Future[None] | None = None  # resolved when shutdown starts: wakes retry backoffs
        # Per-name statistics can be switched off (``statistics=False``), only to measure what they cost (see
        # bench/README.md); the totals of stats() are always counted.
        self.metrics = TaskMetrics(per_name=statistics)

    # --- public ----------------------------------------------------------------------------------------
    def on_error(self, hook: ErrorHook) -> ErrorHook:
        """Register ``hook(failure: TaskFailure)`` (sync or async), called for every task that finally fails."""
        self.hooks.append(hook)
        return hook

    def stats(self) -> TaskStats:
        metrics = self.metrics
        with self._lock:
            totals = list(metrics.totals)
            count, total, longest = metrics.duration_count, metrics.duration_total, metrics.duration_max
            running = sum(1 for batch in self._batches() if batch.running)
        return TaskStats(
            scheduled=self._scheduled,
            queued=self._queued,
            running=running,
            succeeded=totals[SUCCEEDED],
            failed=totals[FAILED],
            retried=totals[RETRIED],
            timed_out=totals[TIMED_OUT],
            dropped=totals[DROPPED],
            duration_count=count,
            duration_total=total,
            duration_max=longest,
            waiting=self._waiting,
            delayed=len(self._delayed),
            cancelled=totals[CANCELLED],
        )

    def metric_rows(self) -> list[tuple[str, list[int], list[int], float]]:
        """A consistent copy of the per-name statistics (see :meth:`TaskMetrics.rows`), taken under the lock
        that worker threads hold while they count: for exporters such as the Prometheus collector."""
        with self._lock:
            return self.metrics.rows()

    def unfinished(self) -> list[str]:
        """``"name (METHOD /path)"`` for every task admitted and not done: running, waiting to retry, queued,
        delayed."""
        with self._lock:
            batches = [*self._active.values(), *self._threaded, *self._pending]
        started = [
            f"{task.name} ({batch.method} {batch.path})" for batch in batches for task in batch.tasks[batch.index :]
        ]
        return started + self._delayed.labels()

    def cancel(self, task: BackgroundTask) -> bool:
        """Cancel a delayed task that has not started: it will not run. False if it is not waiting (it started
        or ended already, or was never delayed)."""
        request = self._delayed.cancel(task)
        if request is None:
            return False
        logger.info("Background task %s (request %s %s) cancelled before its time", task.name, *request)
        with self._lock:
            self.metrics.count(task.name, CANCELLED)
            if task.tracker is not None:  # cancelled through the runner: its status record says so too
                task.tracker.end(records.CANCELLED)
        if task.on_end is not None:
            task.on_end("cancelled")
        self._after_batch()  # room for a waiting request
        return True

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows, JSON-ready: the totals of :meth:`stats`, plus per-name counts and
        duration percentiles, the tasks running now with their age, and the last failures with tracebacks."""
        now = time.perf_counter()
        with self._lock:
            detail = self.metrics.snapshot()
            running = (
                sorted(
                    (
                        (
                            batch.since,
                            stat_name(batch.tasks[batch.index].name),
                            batch.method,
                            batch.path,
                            batch.attempt,
                            _id_of(batch.tasks[batch.index]),
                        )
                        for batch in self._batches()
                        if batch.running
                    ),
                    key=lambda row: row[0],
                )
                if self.metrics.per_name
                else []
            )
        stats = self.stats()
        totals = msgspec.structs.asdict(stats)
        totals["duration_mean"] = stats.duration_mean
        detail["running"] = [
            {"name": name, "method": method, "path": path, "age": now - since, "attempt": attempt, "id": task_id}
            for since, name, method, path, attempt, task_id in running
        ]
        detail["delayed"] = self._delayed.rows()
        return {"totals": totals, **detail}

    @property
    def idle(self) -> bool:
        return not self._active and not self._threaded and not self._pending and not self._inline

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until no task is running or queued; False if ``timeout`` passed first."""
        with self._lock:  # so a worker finishing the last batch now sees this waiter (and wakes it)
            if self.idle:
                return True
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def start(self) -> None:
        """Detach batches from requests from now on (called at lifespan startup)."""
        self.started = True
        self._closed = False
        self._cancelling = False
        with self._lock:  # a drain asked of a previous loop that stopped before running it must not block this one
            self._drain_scheduled = False

    async def admit(self, tasks: list[BackgroundTask], method: str, path: str) -> bool:
        """Before the response is sent: wait while the runner is full, so overload slows clients down.

        Returns False when the tasks were dropped (``overflow="drop"``). The wait lasts at most
        ``shutdown_timeout``; after it the batch is admitted past the limit rather than lost. Requests admitted
        at the same moment may exceed ``queue_size`` by the number of responses being sent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        while self.full:
            if self.overflow == "drop":
                self._scheduled += len(tasks)
                self._drop(tasks, method, path, "the background queue is full")
                return False
            with self._lock:  # so a worker freeing room now sees this waiter (and wakes it)
                if not self.full:  # mypy keeps the while test's narrowing; a worker may have freed room since
                    break  # type: ignore[unreachable]
                waiter = loop.create_future()
                self._room_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                logger.warning(
                    "No room in the background queue for request %s %s within %.1fs; queueing past the limit",
                    method,
                    path,
                    self.shutdown_timeout,
                )
                break
        return True

    @property
    def full(self) -> bool:
        """True when a new batch would have to wait for room (see :meth:`admit`). Delayed tasks take room too:
        memory stays bounded however far ahead they are asked for."""
        return (
            self.started
            and not self._closed
            and len(self._active) + len(self._threaded) + len(self._pending) + len(self._delayed)
            >= self.concurrency + self.queue_size
        )

    def submit(
        self, tasks: list[BackgroundTask], method: str, path: str, *, wait: bool = False
    ) -> Awaitable[None] | None:
        """Hand one request's tasks over, after its response was sent (see the module docstring).

        Never waits for room (``admit`` did, before the response). Returns an awaitable the caller must await
        when the batch runs in the caller: when there is no lifespan to own it, or when ``wait`` asks for that
        (the test clients do); otherwise None.
        """
        self._scheduled += len(tasks)
        if self._closed:
            self._drop(tasks, method, path, "the app is shutting down")
            return None
        for task in tasks:
            if task.delay is not None or task.at is not None:
                if not self.started:  # nobody owns a timer: the caller waits for them
                    return run_when_due(tasks, lambda now: self.run_batch(now, method, path))
                tasks = self._defer(tasks, method, path)
                if not tasks:
                    return None
                break
        batch = _Batch(tasks, method, path, contextvars.copy_context())
        if wait or not self.started:
            return self.run_batch(tasks, method, path, batch)
        self._launch_or_queue(batch)
        return None

    def _defer(self, tasks: list[BackgroundTask], method: str, path: str) -> list[BackgroundTask]:
        """Put the delayed tasks of a request on timers, each with its own copy of the request's context;
        return the others."""
        rest = []
        for task in tasks:
            due = due_time(task)
            if due is None:
                rest.append(task)
                continue
            batch = _Batch([task], method, path, contextvars.copy_context())
            self._delayed.add(task, method, path, due, functools.partial(self._launch_or_queue, batch))
        return rest

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking tasks, let the others finish until the deadline, then cancel and log what is lost."""
        self._closed = True
        for task, method, path, due in self._delayed.take_all():  # they would start after the drain began
            when = dt.datetime.fromtimestamp(due, dt.timezone.utc).isoformat()
            self._drop([task], method, path, f"delayed until {when}, not run: the app is shutting down")
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._room_waiters.clear()
        deadline = self.shutdown_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + deadline
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)  # backoffs now end by the deadline (see _backoff)
        if not await self.join(deadline):
            stats = self.stats()
            logger.error(
                "Shutdown deadline of %.1fs passed with %d background task(s) running, %d waiting to retry and "
                "%d queued; cancelling",
                deadline,
                stats.running,
                stats.waiting,
                stats.queued,
            )
            while self._pending:
                batch = self._pending.popleft()
                self._queued -= len(batch.tasks)
                self._drop(batch.tasks, batch.method, batch.path, "not started before the shutdown deadline")
            self._cancelling = True
            self._abandon_threaded()
            active = list(self._active)
            for running in active:
                running.cancel()
            await asyncio.gather(*active, return_exceptions=True)
        # Back to the state before start(): batches run in their request again (a later bare ASGI call, or a
        # test client without a lifespan, must not lose its tasks).
        self.started = False
        self._closed = False
        self._cancelling = False
        self._deadline = self._closing = None

    def _abandon_threaded(self) -> None:
        """At the deadline: threads cannot be stopped, so give up on their batches and log what is lost."""
        with self._lock:
            batches = list(self._threaded)
        for batch in batches:
            with self._lock:
                batch.abandoned = True
                self._threaded.discard(batch)
                running = batch.tasks[batch.index] if batch.running else None
                lost = batch.tasks[batch.index + 1 :] if batch.running else batch.tasks[batch.index :]
            if running is not None:
                reason = "still running in a thread at the shutdown deadline (a thread cannot be stopped)"
                self._drop([running], batch.method, batch.path, reason)
            self._drop(lost, batch.method, batch.path, "not started before the shutdown deadline")

    async def run_batch(self, tasks: list[BackgroundTask], method: str, path: str, batch: _Batch | None = None) -> None:
        """Run tasks in order in the current asyncio task (the inline path, and ``BackgroundTasks.run_tasks``)."""
        batch = batch or _Batch(tasks, method, path, contextvars.copy_context())
        self._inline.add(batch)
        try:
            await self._run(batch)
        finally:
            self._inline.discard(batch)
            self._check_idle()

    # --- internals -------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[_Batch]:
        """Every batch started and not finished (call it under the lock)."""
        yield from self._active.values()
        yield from self._threaded
        yield from self._inline

    def _launch_or_queue(self, batch: _Batch) -> None:
        """Start ``batch`` if fewer than ``concurrency`` batches run, else queue it (on the loop)."""
        with self._lock:  # a worker leaving _threaded now either freed the slot or sees the queued batch
            if len(self._active) + len(self._threaded) >= self.concurrency:
                self._pending.append(batch)
                self._queued += len(batch.tasks)
                return
            if batch.threaded:
                self._threaded.add(batch)
        if batch.threaded:
            batch.loop = asyncio.get_running_loop()
            self.pool.post(batch.context, self._run_in_thread, batch)
            return
        loop = asyncio.get_running_loop()
        if _TASK_CONTEXT:  # the batch's context itself: no second copy, no Context.run around the call
            task = loop.create_task(self._run(batch), context=batch.context)
        else:
            task = batch.context.run(loop.create_task, self._run(batch))
        batch.task = task
        self._active[task] = batch
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._active.pop(task, None)
        self._after_batch()

    def _drain(self) -> None:
        """On the loop, when a worker finished a batch while someone waited: see :meth:`_after_batch`."""
        with self._lock:
            self._drain_scheduled = False
        self._after_batch()

    def _after_batch(self) -> None:
        """Batches ended: start queued ones in the free slots, wake requests waiting for room, and ``join``
        callers if nothing is left."""
        while self._pending and len(self._active) + len(self._threaded) < self.concurrency:
            batch = self._pending.popleft()
            self._queued -= len(batch.tasks)
            self._launch_or_queue(batch)
        if self._room_waiters:  # as many waiting requests as there is room for (each takes one batch's room)
            if self.started and not self._closed:
                room = (
                    self.concurrency
                    + self.queue_size
                    - len(self._active)
                    - len(self._threaded)
                    - len(self._pending)
                    - len(self._delayed)
                )
            else:
                room = len(self._room_waiters)
            while self._room_waiters and room > 0:
                waiter = self._room_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    room -= 1
        self._check_idle()

    def _check_idle(self) -> None:
        if self.idle and self._idle_waiters:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    def _drop(self, tasks: list[BackgroundTask], method: str, path: str, reason: str) -> None:
        with self._lock:
            for task in tasks:
                self.metrics.count(task.name, DROPPED)
        for task in tasks:
            logger.error("Background task %s lost (request %s %s): %s", task.name, method, path, reason)
            if task.tracker is not None:
                task.tracker.lost(reason)
            if task.on_end is not None:
                task.on_end("lost")

    def _cancelled_waiting(self, task: BackgroundTask, tracker: records.Tracker, batch: _Batch) -> None:
        """``task`` was cancelled while it waited (queued, or between two attempts): it ends without running."""
        with self._lock:
            batch.running = False
            batch.index += 1
            self.metrics.count(task.name, CANCELLED)
            tracker.end(records.CANCELLED)
        if task.on_end is not None:
            task.on_end("cancelled")

    async def _run(self, batch: _Batch) -> None:
        try:
            for index, task in enumerate(batch.tasks):
                batch.index = index
                await self._run_task(task, batch)
        except asyncio.CancelledError:
            reason = "cancelled at the shutdown deadline" if self._cancelling else "cancelled"
            self._drop(batch.tasks[batch.index :], batch.method, batch.path, reason)
            raise

    def _run_in_thread(self, batch: _Batch) -> None:
        """In a worker thread, in the batch's context: run a batch of plain sync tasks, in order."""
        lock = self._lock
        method, path = batch.method, batch.path
        # This thread's slot, through which report_progress and cancelled() reach the record.
        slot: list[Any] | None = None
        try:
            for index, task in enumerate(batch.tasks):
                started = time.perf_counter()
                tracker = task.tracker
                with lock:
                    if batch.abandoned:  # the shutdown deadline passed; shutdown logged the rest
                        return
                    batch.index, batch.since, batch.running = index, started, True
                    skip = tracker is not None and not tracker.begin(started)
                if skip:  # cancelled while it waited
                    self._cancelled_waiting(task, tracker, batch)  # type: ignore[arg-type]  # skip: it has one
                    continue
                error: BaseException | None = None
                result = None
                span = task_span(task.name, 1, method, path)
                if tracker is not None:
                    if slot is None:
                        slot = thread_slot()
                    slot[0] = tracker
                try:
                    if span is None:
                        result = call_in_thread(task, batch.loop)
                    else:
                        with span:
                            result = call_in_thread(task, batch.loop)
                except BaseException as exc:
                    error = exc
                if tracker is not None:
                    slot[0] = None  # type: ignore[index]  # set above, as tracker is not None
                failure = self._attempt_ended(task, batch, 1, error, result=result)
                # The shutdown deadline passed (set by the loop's thread: mypy keeps the narrowing of the test
                # above, made under the lock); shutdown logged the rest.
                if batch.abandoned:
                    return  # type: ignore[unreachable]
                if failure is not None and self.hooks:  # part of the batch: join() and shutdown wait for the hooks
                    on_loop(batch.loop, self._notify(failure))
        finally:
            with lock:
                self._threaded.discard(batch)
                wake = not self._drain_scheduled and bool(self._pending or self._room_waiters or self._idle_waiters)
                if wake:
                    self._drain_scheduled = True
            if wake:
                try:
                    batch.loop.call_soon_threadsafe(self._drain)  # type: ignore[union-attr]
                except RuntimeError:  # the loop is gone
                    pass

    def _attempt_ended(
        self,
        task: BackgroundTask,
        batch: _Batch,
        attempt: int,
        error: BaseException | None,
        final: bool = True,
        result: Any = None,
    ) -> TaskFailure | None:
        """Count one attempt of ``task`` (on the loop, or in the worker thread of a threaded batch), record it
        in the task's status record if it has one, and log it if it finally failed. Nothing is counted for a
        batch abandoned at the shutdown deadline: shutdown counted its tasks as lost.

        A task whose cancellation was requested ends cancelled if it stopped (it raised, or it is async: its
        await was interrupted) or if it returned after seeing ``cancelled()``; a sync task that never looked
        ran to its end and ends as it would have."""
        now = time.perf_counter()
        tracker = task.tracker
        if tracker is None:
            outcome = SUCCEEDED if error is None else FAILED if final else RETRIED
        else:
            if tracker.cancel_requested and (error is not None or tracker.cancel_seen or task.is_async):
                outcome = CANCELLED
            else:
                outcome = SUCCEEDED if error is None else FAILED if final else RETRIED
            if outcome == SUCCEEDED and not tracker.keep_result:
                failure = kept = None
            else:
                failure, kept = tracker.outcome(_STATE[outcome], error, result)
        with self._lock:
            batch.running = False
            if batch.abandoned:
                return None
            if outcome != RETRIED:
                batch.index += 1  # done with it: neither running nor lost any more
            self.metrics.record(task.name, outcome, now - batch.since)
            if tracker is not None:
                tracker.end(_STATE[outcome], now, failure, kept)
            if outcome == FAILED:
                self.metrics.failure(  # the id only of a task that has a status record: ids are capabilities
                    task.name,
                    batch.method,
                    batch.path,
                    attempt,
                    error,  # type: ignore[arg-type]  # FAILED: error is set
                    None if tracker is None else tracker.id,
                )
        if task.on_end is not None and outcome != RETRIED:
            task.on_end(OUTCOMES[outcome])
        if outcome != FAILED:
            return None
        logger.error("Background task %s failed (request %s %s)", task.name, batch.method, batch.path, exc_info=error)
        return TaskFailure(task, error, attempt, batch.method, batch.path)  # type: ignore[arg-type]

    async def _run_task(self, task: BackgroundTask, batch: _Batch) -> None:
        """Run ``task``'s attempts on the loop. With a status record, each attempt is recorded, and a
        cancellation interrupts an async task (and any task waiting to retry) through the asyncio task running
        the batch: its ``CancelledError`` then ends this task, not the batch."""
        tracker = task.tracker
        if tracker is not None:
            # An eager task factory may have started the batch before create_task returned: then it is not set.
            current = batch.task if batch.task is not None else asyncio.current_task()
            token = running_task.set(tracker)  # report_progress and cancelled() reach the record
        attempt = 0
        try:
            while True:
                attempt += 1
                batch.attempt, batch.since, batch.running = attempt, time.perf_counter(), True
                # On the loop the record needs no lock to start: what else changes it here (a cancellation, a
                # watcher) runs on the loop too, and the task's own progress reports start after this.
                if tracker is not None:
                    if not tracker.begin(batch.since):  # cancelled while it waited
                        self._cancelled_waiting(task, tracker, batch)
                        return
                    if task.is_async:
                        tracker.interrupt = current
                span = task_span(task.name, attempt, batch.method, batch.path)
                try:
                    if span is not None:
                        with span:
                            result = await self._execute(task)
                    elif task.is_async and task.timeout is None:  # the common case, without a layer
                        result = await task.func(*task.args, **task.kwargs)
                    else:
                        result = await self._execute(task)
                except asyncio.CancelledError as exc:
                    if tracker is not None and tracker.cancel_requested and not self._cancelling:
                        self._attempt_ended(task, batch, attempt, exc)  # cancelled on request: this task only
                        return
                    if self._cancelling or being_cancelled():  # the batch itself: _run logs what is lost
                        batch.running = False
                        raise
                    failure = self._attempt_ended(task, batch, attempt, exc)  # raised by the task itself
                    await self._notify(failure)  # type: ignore[arg-type]
                    return
                except BaseException as exc:
                    final = attempt > task.retries
                    failure = self._attempt_ended(task, batch, attempt, exc, final)
                    if failure is not None:
                        await self._notify(failure)
                    if final or (tracker is not None and tracker.final):  # failed, or cancelled
                        return
                    delay = task.retry_delay * 2 ** (attempt - 1)
                    delay = random.uniform(delay / 2, delay)
                    logger.warning(
                        "Background task %s failed (attempt %d of %d, request %s %s): %r; retrying in %.2fs",
                        task.name,
                        attempt,
                        task.retries + 1,
                        batch.method,
                        batch.path,
                        exc,
                        delay,
                    )
                    if tracker is not None:
                        tracker.interrupt = current  # a cancellation ends the wait
                    try:
                        await self._backoff(delay)
                    except asyncio.CancelledError:
                        if tracker is None or not tracker.cancel_requested or self._cancelling:
                            raise
                        self._cancelled_waiting(task, tracker, batch)
                        return
                else:
                    self._attempt_ended(task, batch, attempt, None, result=result)
                    return
        finally:
            if tracker is not None:
                running_task.reset(token)
                if tracker.cancel_requested and not self._cancelling:
                    uncancel(current)

    async def _backoff(self, delay: float) -> None:
        """Wait ``delay`` before a retry, counted as waiting. During shutdown a wait never outlasts the drain
        deadline: a retry that would start after it starts now instead, while it can still finish."""
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        self._waiting += 1
        try:
            if self._deadline is None:  # not shutting down (yet): sleep, unless shutdown starts meanwhile
                if self._closing is None or self._closing.done() or self._closing.get_loop() is not loop:
                    self._closing = loop.create_future()
                await asyncio.wait({self._closing}, timeout=delay)
            if self._deadline is not None and end > self._deadline:
                return
            await asyncio.sleep(end - loop.time())
        finally:
            self._waiting -= 1

    async def _execute(self, task: BackgroundTask) -> Any:
        """Run one attempt of ``task`` (see ``calls.execute``); returns its return value."""
        return await execute(task, self.pool, self._timed_out)

    def _timed_out(self, task: BackgroundTask) -> None:
        with self._lock:
            self.metrics.count(task.name, TIMED_OUT)

    async def _notify(self, failure: TaskFailure) -> None:
        for hook in self.hooks:
            try:
                if is_async_callable(hook):
                    await hook(failure)
                else:
                    result = await self.pool.run(hook, failure)
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                logger.exception("Background task error hook %s failed", callable_name(hook))

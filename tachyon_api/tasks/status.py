"""Tasks you can hold: ``app.tasks`` reads, watches and cancels tasks by id; a running task reports its
progress and sees a cancellation through :func:`report_progress` and :func:`cancelled`.

Which tasks have a record:

- In-process tasks, when the app keeps records for all of them (``Tachyon(task_status=True)``), or when
  the endpoint took the task's handle before returning: read ``task.id`` (``Accepted(task)`` does), or set
  ``with_options(keep_result=True)`` or ``with_options(owner=...)``. A fire-and-forget task whose id nobody
  reads costs nothing more than before: no id is made, no record kept.
- Durable tasks always: their record is the RQ job in Redis, which exists anyway.

Where records live: in-process ones in the app's task store (``MemoryTaskStore`` by default, one process;
``RedisTaskStore`` to share them between web processes), durable ones with their job. ``app.tasks`` asks
the store first, then the durable backend, so callers never need to know which tier ran a task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ..exceptions import TaskNotFound
from .records import QUEUED, SCHEDULED, MemoryTaskStore, TaskRecord, check_progress

if TYPE_CHECKING:
    from .handles import BackgroundTask


__all__ = ["TaskControl", "StatusSource", "report_progress", "cancelled", "current_task_id"]

logger = logging.getLogger("tachyon_api.background")

# The running task's handle (a Tracker in-process, the job's tracker in a worker), or None outside a task: in
# a context variable for tasks run on the event loop (and what they start), and for the sync tasks that a
# worker thread of the runner calls one after another, in that thread's slot (a one-item list the thread
# takes once per batch and updates per task: cheaper than a context variable, and the same to the task).
running_task: contextvars.ContextVar[Any] = contextvars.ContextVar("tachyon_api.running_task", default=None)
_thread_slots: dict[int, list[Any]] = {}


def thread_slot() -> list[Any]:
    """This thread's slot for the task it runs (see above)."""
    ident = threading.get_ident()
    slot = _thread_slots.get(ident)
    if slot is None:
        slot = _thread_slots[ident] = [None]
    return slot


def _running() -> Any:
    task = running_task.get()
    if task is None:
        slot = _thread_slots.get(threading.get_ident())
        if slot is not None:
            task = slot[0]
    return task


# Longer ids are never made (ours are 32 characters; RQ job ids given with ``job_id=`` are the user's): such a
# path is answered 404 without a lookup.
MAX_ID = 128


def report_progress(done: float | None = None, message: str | None = None) -> None:
    """Record how far the running task got: ``done`` from 0.0 to 1.0 (None: unknown) and a short message.

    Works in sync and async tasks, in-process and in durable workers; outside a task with a record (a task
    nobody holds, or code that is not a task) it does nothing, so library code may call it freely. Raises
    ``ValueError`` for a ``done`` outside 0..1 or a message over 1,000 characters.
    """
    task = _running()
    if task is not None:
        done, message = check_progress(done, message)
        task.report(done, message)


def cancelled() -> bool:
    """True once cancellation of the running task was requested: a sync task checks it between steps and
    returns (or raises) early. False outside a task with a record."""
    task = _running()
    return task is not None and task.is_cancelled()


def current_task_id() -> str | None:
    """The id of the running task, if it has a record (None otherwise)."""
    task = _running()
    return None if task is None else task.id


class StatusSource(Protocol):
    """Where status records live, as ``app.tasks`` and the status routes ask them: a task store
    (``MemoryTaskStore``, ``RedisTaskStore``) or a durable backend (part of ``backends.base.TaskBackend``).
    Called on the event loop; none of them may block it."""

    async def read_status(self, task_id: str) -> tuple[TaskRecord, str | None] | None:
        """The record and its owner (None: no owner), or None when the id is unknown or its record expired. An
        id the source could never have made is simply unknown (no error)."""
        ...

    def watch_status(self, task_id: str) -> AsyncIterator[TaskRecord]:
        """The current record, then one per change of state or progress, ending after a final state; nothing
        when unknown. Changes are pushed (pub/sub or an equivalent), not found by polling every task."""
        ...

    async def cancel_status(self, task_id: str) -> bool | None:
        """Ask the task to stop: a waiting task never runs, a running one is stopped (or, where it cannot be,
        its ``cancelled()`` turns true). True when asked, False when it had already ended, None when unknown."""
        ...


class TaskControl:
    """``app.tasks``: the app's tasks by id, whichever tier runs them.

    ``track_all`` keeps a record for every in-process task (``Tachyon(task_status=True)``); otherwise only
    held tasks get one (see the module docstring). ``keep_results`` keeps every task's return value
    (``Tachyon(task_results=True)``; per task: ``with_options(keep_result=True)``).
    """

    def __init__(
        self, app: Any, *, track_all: bool = False, keep_results: bool = False, store: MemoryTaskStore | None = None
    ) -> None:
        self.app = app
        self.track_all = track_all
        self.keep_results = keep_results
        self.always = track_all or keep_results  # every request's in-process tasks get records
        self.store = store if store is not None else MemoryTaskStore()
        self.status_path: str | None = None  # the status router's GET path, once found (see http.py)
        self.warned_no_router = False

    @property
    def result_limit(self) -> int:
        return self.store.result_limit

    # --- the request's side: records before the response ------------------------------------------------
    def accept(self, tasks: Iterable[BackgroundTask]) -> Awaitable[None] | None:
        """Give the held in-process tasks of a request a queued record, before the response that may carry
        their ids is sent. Returns an awaitable the caller awaits before that response when the records must
        be written elsewhere first (a shared store); None otherwise.

        Callers skip it while ``always`` is false and no task's handle was ever taken
        (``BackgroundTask.held``): a fire-and-forget task then costs two attribute reads."""
        track_all, keep_all = self.track_all, self.keep_results
        created: list[Any] | None = None
        for task in tasks:
            if task.backend is not None or task.tracker is not None:
                continue
            keep = keep_all if task.keep_result is None else task.keep_result
            task_id: str | None
            if track_all or keep or task.owner is not None:
                task_id = task.id  # made now if nobody read it: one property call, not two
            else:
                task_id = task.known_id  # held only if its id was read (or given)
                if task_id is None:
                    continue
            store = self.store
            delayed = task.delay is not None or task.at is not None
            task.tracker = tracker = store.create(
                task_id, task.name, task.owner, keep, task.is_async, SCHEDULED if delayed else QUEUED
            )
            if delayed:  # cancelling it takes it off the runner's timer
                tracker.interrupt = _Unschedule(self.app.background, task)
            if store.shared:
                created = [*(created or ()), tracker]
        # ``created`` is only made for a shared store (``RedisTaskStore``, whose ``publish`` writes the records).
        return None if created is None else self.store.publish(created)  # type: ignore[attr-defined]

    @staticmethod
    def abandon(tasks: Iterable[BackgroundTask], reason: str) -> None:
        """Held tasks that will never run (their response failed): their records end failed."""
        for task in tasks:
            if task.tracker is not None:
                task.tracker.lost(reason)

    # --- reading and cancelling --------------------------------------------------------------------------
    def _sources(self) -> list[StatusSource]:
        sources: list[StatusSource] = [self.store]
        backend = getattr(self.app, "task_backend", None)
        if backend is not None and hasattr(backend, "read_status"):  # a backend written before status records
            sources.append(backend)
        return sources

    async def lookup(self, task_id: str) -> tuple[StatusSource, TaskRecord, str | None] | None:
        """Where ``task_id`` lives, its record and its owner; None when no source knows it."""
        if not task_id or len(task_id) > MAX_ID:
            return None
        for source in self._sources():
            found = await source.read_status(task_id)
            if found is not None:
                return source, found[0], found[1]
        return None

    async def get(self, task_id: str) -> TaskRecord | None:
        """The task's record, or None when the id is unknown or expired."""
        found = await self.lookup(task_id)
        return None if found is None else found[1]

    async def watch(self, task_id: str) -> AsyncIterator[TaskRecord]:
        """``async for record in app.tasks.watch(id)``: the current record, then one per change of state or
        progress, ending after the final state. Raises ``TaskNotFound`` for an unknown or expired id."""
        found = await self.lookup(task_id)
        if found is None:
            raise TaskNotFound()
        async for record in found[0].watch_status(task_id):
            yield record

    async def cancel(self, task_id: str) -> bool:
        """Ask the task to stop: True when cancellation was requested, False when it had already finished.

        A queued or scheduled task never runs; a running ``async def`` task is cancelled (its ``finally``
        blocks run); a running sync task sees :func:`cancelled` turn true; a durable job is cancelled or
        stopped through RQ. Raises ``TaskNotFound`` for an unknown or expired id.
        """
        found = await self.lookup(task_id)
        if found is None:
            raise TaskNotFound()
        outcome = await found[0].cancel_status(task_id)
        if outcome is None:  # expired in between
            raise TaskNotFound()
        return outcome

    # --- startup and shutdown ------------------------------------------------------------------------------
    def start(self) -> None:
        """At startup: a shared store starts listening (cancellations from other processes); warn about a
        deployment whose status answers would be wrong."""
        if self.store.shared:  # a shared store is one that has these (``RedisTaskStore``)
            self.store.start()  # type: ignore[attr-defined]
        self.check_deployment()

    async def aclose(self) -> None:
        if self.store.shared:
            await self.store.aclose()  # type: ignore[attr-defined]

    def check_deployment(self) -> None:
        """At startup: with several web processes and records kept in each process's memory, a status
        request can reach a process that never saw the task. Say so now rather than answer 404 later."""
        from .http import find_status_path

        processes = _web_processes()
        if processes > 1 and not self.store.shared and (find_status_path(self.app) is not None or self.track_all):
            logger.warning(
                "%d web processes keep in-process task records in their own memory: a status request can reach "
                "a process that never saw the task and answer 404 for it. Share the records: "
                "Tachyon(task_store=RedisTaskStore(redis_url)) (durable tasks' records are in Redis already)",
                processes,
            )


class _Unschedule:
    """A delayed in-process task's ``interrupt``: cancelling its record takes it off the runner's timer, on the
    next turn of the loop (``Tracker.cancel`` runs under the lock the runner takes)."""

    __slots__ = ("runner", "task")

    def __init__(self, runner: Any, task: BackgroundTask) -> None:
        self.runner = runner
        self.task = task

    def cancel(self) -> None:
        asyncio.get_running_loop().call_soon(self.runner.cancel, self.task)


def _web_processes() -> int:
    """How many web processes serve this app: ``tachyon run --workers N`` says so in ``TACHYON_WORKERS``;
    uvicorn and gunicorn read ``WEB_CONCURRENCY``."""
    for name in ("TACHYON_WORKERS", "WEB_CONCURRENCY"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1

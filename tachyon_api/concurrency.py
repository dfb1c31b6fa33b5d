"""The one way work leaves the event loop.

Sync endpoints, sync dependencies, sync exception handlers and sync background tasks all run through a
:class:`ThreadPool`: worker threads taking calls from one queue, each result handed back to the loop with
``loop.call_soon_threadsafe`` (one hop each way, the physical cost of leaving the loop). This costs a fraction of ``loop.run_in_executor`` (no
``concurrent.futures`` bookkeeping) and of ``anyio.to_thread`` (no capacity limiter, no cancel scopes).
Context variables are carried into the thread with :func:`contextvars.copy_context`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
from collections import deque
from typing import Any, Callable, TypeVar

T = TypeVar("T")
_MISSING = object()
logger = logging.getLogger("tachyon_api.errors")

__all__ = ["ThreadPool", "run_in_threadpool"]


def _resolve(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class ThreadPool:
    """A bounded, lazily grown set of daemon threads that keeps one hot thread busy.

    Most sync calls take microseconds. Handing each to a different thread makes the threads take turns at the
    GIL and the OS scheduler (the pool used to grow to its maximum under load for microsecond work, with a
    p99 of several ms). So a call goes to a thread that is already running whenever there is one: it takes the
    call when its current one returns. Only when no thread is running is a parked one woken, the most
    recently parked first (LIFO: its cache is warm, and the others can time out), or a thread started.

    A call queued behind a running thread must not wait for a call that blocks (``time.sleep``, a socket):
    a watchdog on the event loop looks every ``stall`` seconds while calls wait, and when no call finished
    in that period the running threads are blocked, so it wakes (or starts) one more, up to ``max_workers``.
    A blocking neighbour thus delays the others by about ``stall``, and the pool holds about one thread per
    blocked call plus one. Threads exit after ``idle_timeout`` seconds parked, so an idle app holds none.
    """

    def __init__(self, max_workers: int, name: str, idle_timeout: float = 30.0, stall: float = 0.001) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.name = name
        self._idle_timeout = idle_timeout
        self._stall = stall
        self._work: deque[tuple] = deque()
        self._lock = threading.Lock()
        self._parked: list[Callable[[tuple], None]] = []  # the inbox (put) of each parked thread, most recent last
        self._threads = 0
        self._awake = 0  # threads not parked: running a call, or about to take the next one
        self._completed = 0  # calls finished so far: the watchdog's sign of progress
        self._mark = 0  # _completed when the watchdog last looked
        self._watching: asyncio.AbstractEventLoop | None = None  # the loop whose watchdog is armed
        self.peak = 0  # the most threads alive at once (observability, and the tests' bound)

    def submit(
        self, context: contextvars.Context, func: Callable[..., Any], args: tuple, kwargs: dict
    ) -> asyncio.Future:
        """Schedule ``context.run(func, *args, **kwargs)`` in a worker; return a future of the running loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put((loop, future, context, func, args, kwargs), loop)
        return future

    def post(self, context: contextvars.Context, func: Callable[..., Any], *args: Any) -> None:
        """Run ``context.run(func, *args)`` in a worker and hand nothing back: ``func`` reports on its own.

        Cheaper than :meth:`submit` (no future, no return trip to the loop); the background runner uses it
        for batches of sync tasks.
        """
        self._put((None, None, context, func, args, {}), asyncio._get_running_loop())

    def _put(self, item: tuple, loop: asyncio.AbstractEventLoop | None) -> None:
        with self._lock:
            if not self._awake or loop is None:  # nothing runs (or no loop to watch from): hand it to a thread
                if self._parked:
                    self._awake += 1
                    self._parked.pop()(item)  # the inbox of the most recently parked thread
                    return
                if self._threads < self.max_workers:
                    self._start(item)
                    return
            self._work.append(item)  # a running thread takes it next; the watchdog checks that it does
            if loop is None or self._watching is loop:
                return
            self._watching = loop
            self._mark = self._completed
        loop.call_later(self._stall, self._check, loop)

    def _start(self, item: tuple) -> None:
        """Under the lock: start one more thread, with ``item`` as its first call."""
        self._threads += 1
        self._awake += 1
        self.peak = max(self.peak, self._threads)
        name = f"{self.name}-{self._threads}"
        threading.Thread(target=self._work_loop, args=(item,), name=name, daemon=True).start()

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        """The watchdog, on the loop: while calls wait, add a thread when no call finished for ``stall``."""
        with self._lock:
            work = self._work
            if not work or self._watching is not loop:
                if self._watching is loop:
                    self._watching = None
                return
            if self._completed != self._mark:  # the running threads keep up: look again later
                self._mark = self._completed
            elif self._parked:  # they are blocked: the most recently parked thread takes the oldest call
                self._awake += 1
                self._parked.pop()(work.popleft())
            elif self._threads < self.max_workers:
                self._start(work.popleft())
        loop.call_later(self._stall, self._check, loop)

    async def run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` in a worker thread and return its result (or raise its exception)."""
        return await self.submit(contextvars.copy_context(), func, args, kwargs)

    async def run_merging_context(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`run`, then copy the context variables ``func`` set back into the caller's context.

        Sync endpoints and dependencies use this, so a request id they set is seen by later dependencies and by
        background tasks, exactly as if they were ``async def``.
        """
        context = contextvars.copy_context()
        try:
            return await self.submit(context, func, args, kwargs)
        finally:
            for var, value in context.items():
                if var.get(_MISSING) is not value:
                    var.set(value)

    def _work_loop(self, item: tuple | None) -> None:
        # Parked, a thread waits on its own inbox (a SimpleQueue: its get is much cheaper than Lock.acquire
        # with a timeout), and whoever wakes it puts the call there, so it need not look at the shared queue.
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        get = inbox.get
        put = inbox.put
        work = self._work
        lock = self._lock
        parked = self._parked
        while True:
            if item is None:
                try:
                    item = get(True, self._idle_timeout)
                except queue.Empty:
                    with lock:
                        if put in parked:  # nobody woke this thread: it leaves
                            parked.remove(put)
                            self._threads -= 1
                            return
                    item = get()  # a waker took this thread off the stack just now: its call is on the way
            loop, future, context, func, args, kwargs = item
            del item
            try:
                value = context.run(func, *args, **kwargs)
                ok = True
            except BaseException as exc:  # noqa: BLE001 - handed back to the awaiting coroutine
                ok, value = False, exc
            del context, args, kwargs
            with lock:
                self._completed += 1
                if work:
                    item = work.popleft()
                else:
                    item = None
                    parked.append(put)
                    self._awake -= 1
            # Handed back only now that this thread is parked or holds its next call: the loop, once it has
            # the result, finds the pool's state settled (a request that follows wakes this thread at once
            # instead of arming the watchdog for a thread that is about to park).
            if loop is not None:
                try:
                    loop.call_soon_threadsafe(_resolve, future, ok, value)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass
            elif not ok:  # posted work: nobody waits for it
                logger.error("Posted work %r failed", func, exc_info=value)
            del loop, future, value, func


_default_pool: ThreadPool | None = None


async def run_in_threadpool(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run incidental blocking work (file I/O of uploads and file responses) in a shared pool."""
    global _default_pool
    if _default_pool is None:
        _default_pool = ThreadPool(16, "tachyon-io")
    return await _default_pool.run(func, *args, **kwargs)

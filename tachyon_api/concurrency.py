"""The one way work leaves the event loop.

Sync endpoints, sync dependencies, sync exception handlers and sync background tasks all run through a
:class:`ThreadPool`: worker threads consuming a :class:`queue.SimpleQueue`, each result handed back to the
loop with ``loop.call_soon_threadsafe``. This costs a fraction of ``loop.run_in_executor`` (no
``concurrent.futures`` bookkeeping) and of ``anyio.to_thread`` (no capacity limiter, no cancel scopes).
Context variables are carried into the thread with :func:`contextvars.copy_context`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = object()
logger = logging.getLogger("tachyon_api.errors")

__all__ = ["ThreadPool", "run_in_threadpool"]


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class ThreadPool:
    """A bounded, lazily grown set of daemon threads.

    A thread is started when more work waits than there are idle threads, up to ``max_workers``; threads exit after
    ``idle_timeout`` seconds without work, so an idle app holds no threads.
    """

    def __init__(self, max_workers: int, name: str, idle_timeout: float = 30.0) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.name = name
        self._idle_timeout = idle_timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        # Threads that finished their work and wait for more, not yet promised to a caller. A caller that takes
        # one knows a thread will pick its work up; a caller that finds none starts a thread, so work never waits
        # behind busy ones (concurrent.futures' scheme, with a counter under a C lock: threading.Semaphore is
        # pure Python and costs several times more per call).
        self._idle = 0

    def submit(
        self, context: contextvars.Context, func: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[T]:
        """Schedule ``context.run(func, *args, **kwargs)`` in a worker; return a future of the running loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((loop, future, context, func, args, kwargs))
        return future

    def post(self, context: contextvars.Context, func: Callable[..., Any], *args: Any) -> None:
        """Run ``context.run(func, *args)`` in a worker and hand nothing back: ``func`` reports on its own.

        Cheaper than :meth:`submit` (no future, no return trip to the loop); the background runner uses it
        for batches of sync tasks.
        """
        self._put((None, None, context, func, args, {}))

    def _put(self, item: tuple[Any, ...]) -> None:
        self._queue.put(item)
        with self._lock:
            if self._idle:  # a thread that finished its work waits for more: it takes this item
                self._idle -= 1
                return
            if self._threads >= self.max_workers:
                return  # every thread is busy: the item waits for the first one to finish
            self._threads += 1
            number = self._threads
        threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True).start()

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

    def _work(self) -> None:
        get = self._queue.get
        lock = self._lock
        while True:
            try:
                item = get(timeout=self._idle_timeout)
            except queue.Empty:
                with lock:
                    if not self._idle:
                        continue  # a caller counted on an idle thread: its item is on the way
                    self._idle -= 1
                    self._threads -= 1
                    if self._queue.empty():
                        return
                    self._threads += 1  # work arrived while leaving, and its caller may not have started a thread
                continue
            loop, future, context, func, args, kwargs = item
            try:
                result = context.run(func, *args, **kwargs)
            except BaseException as exc:  # handed back to the awaiting coroutine
                ok, value = False, exc
            else:
                ok, value = True, result
            if loop is None:  # posted work: nobody waits for it
                if not ok:
                    logger.error("Posted work %r failed", func, exc_info=value)
            else:
                try:
                    loop.call_soon_threadsafe(_resolve, future, ok, value)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass
            del item, future, value, func, args, kwargs, context
            with lock:  # idle again; counted only now, as concurrent.futures does, so the count never runs ahead
                self._idle += 1


_default_pool: ThreadPool | None = None


async def run_in_threadpool(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run incidental blocking work (file I/O of uploads and file responses) in a shared pool."""
    global _default_pool
    if _default_pool is None:
        _default_pool = ThreadPool(16, "tachyon-io")
    return await _default_pool.run(func, *args, **kwargs)

"""How ``tachyon worker`` runs a claimed job: ``async def`` tasks on the worker's loop, sync tasks in a bounded
thread pool, or each job in a forked child (``fork=True``), with the job's timeout enforced in each case.

- On the loop, a job past its timeout is cancelled (its own ``finally`` blocks run).
- In a thread, Python cannot stop a thread: an exception is raised in it at its next bytecode (a blocking call
  first returns), and the worker goes on without waiting for it.
- In a child, a timeout kills the child. SIGTERM and SIGINT are ignored in the child, so that a signal to the
  whole process group (systemd) lets the job finish; the worker stops it at its shutdown deadline.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import logging
import os
import pickle
import signal
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from rq.timeouts import JobTimeoutException

from ..tasks.status import running_task
from ..tracing import job_span
from .redis_status import JobTracker
from .rq_jobs import ChildFailed, RunningJob, WorkHorseKilled

__all__ = ["Executor", "kill_child"]

logger = logging.getLogger("tachyon_api.worker")


class _Overrun(JobTimeoutException):
    """Raised asynchronously in the thread of a sync job that outlived its timeout (see ``Executor.overrun``)."""


def _flush_pending() -> None:
    """A Python-level call: an exception set asynchronously in this thread is raised here at the latest."""


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def kill_child(running: RunningJob) -> None:
    """SIGKILL the forked child running ``running``, if any (a timeout, a stop, the shutdown deadline)."""
    if running.pid:
        try:
            os.kill(running.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Executor:
    """Runs jobs for the worker called ``name``: on ``loop``, in ``pool``'s threads, or forked (``fork``).

    ``overruns`` collects the sync jobs past their timeout whose thread may still run them (the worker's
    process must then end without joining its threads)."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        pool: ThreadPoolExecutor,
        *,
        fork: bool,
        overruns: set[RunningJob],
    ) -> None:
        self.name = name
        self.loop = loop
        self.pool = pool
        self.fork = fork
        self.overruns = overruns

    async def execute(self, running: RunningJob, limit: float | None) -> Any:
        """Run the job within ``limit`` seconds (None: no limit); its return value, or what it raised."""
        if self.fork:
            return await self.in_child(running, limit)
        func = running.job.func
        if inspect.iscoroutinefunction(func):
            return await self.on_loop(running, func, limit)
        return await self.in_thread(running, func, limit)

    async def on_loop(self, running: RunningJob, func: Callable[..., Awaitable[Any]], limit: float | None) -> Any:
        job = running.job

        async def call() -> Any:
            running_task.set(running.tracker)  # report_progress and cancelled() in the job (its own task)
            with job_span(job.name, job.meta.get("traceparent"), job.id):
                return await func(*job.args, **job.kwargs)

        inner = self.loop.create_task(call())
        try:
            done, _ = await asyncio.wait({inner}, timeout=limit)
        except asyncio.CancelledError:
            inner.cancel()
            raise
        if not done:
            inner.cancel()  # the task's own finally blocks run; its outcome is the timeout
            raise JobTimeoutException(f"Task exceeded maximum timeout value ({limit:g} seconds)")
        return inner.result()

    async def in_thread(self, running: RunningJob, func: Callable[..., Any], limit: float | None) -> Any:
        future = self.loop.run_in_executor(self.pool, self.call_sync, running, func)
        done, _ = await asyncio.wait({future}, timeout=limit)
        if not done:
            self.overrun(running)
            raise JobTimeoutException(
                f"Task exceeded maximum timeout value ({limit:g} seconds); its thread was interrupted"
            )
        value = future.result()
        if inspect.isawaitable(value):  # a sync function that returned an awaitable
            value = await value
        return value

    def call_sync(self, running: RunningJob, func: Callable[..., Any]) -> Any:
        """A sync job in a pool thread. A timeout raises ``_Overrun`` in it (see ``overrun``); past the job, an
        overrun raised late is absorbed here, never in the next job of this thread."""
        job = running.job
        token = running_task.set(running.tracker)  # report_progress and cancelled() in the job
        try:
            try:
                with running.lock:
                    running.thread = threading.get_ident()
                with job_span(job.name, job.meta.get("traceparent"), job.id):
                    return func(*job.args, **job.kwargs)
            finally:
                with running.lock:
                    running.thread = None
                running_task.reset(token)
                _flush_pending()
        except _Overrun:
            logger.warning("Worker %s: job %s was interrupted in its thread after its timeout", self.name, job.id)
            return None

    def overrun(self, running: RunningJob) -> None:
        """Raise ``_Overrun`` in the thread of a sync job past its timeout. Python raises it at the thread's next
        bytecode: pure-Python code stops there, a blocking call (sleep, socket, C code) first returns."""
        with running.lock:
            if running.thread is not None:
                self.overruns.add(running)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(running.thread), ctypes.py_object(_Overrun))

    async def in_child(self, running: RunningJob, limit: float | None) -> Any:
        future = self.loop.run_in_executor(self.pool, self.fork_child, running)
        try:
            done, _ = await asyncio.wait({future}, timeout=limit)
        except asyncio.CancelledError:
            kill_child(running)
            raise
        if not done:
            kill_child(running)
            raise JobTimeoutException(
                f"Task exceeded maximum timeout value ({limit:g} seconds); its work horse was killed"
            )
        ok, payload = future.result()
        if not ok:
            raise ChildFailed(payload)
        return payload

    def fork_child(self, running: RunningJob) -> tuple[bool, Any]:
        """Run the job in a forked child (in a pool thread, which waits for it); returns (ok, value or
        traceback text). SIGTERM and SIGINT are blocked across the fork, then ignored in the child: a signal
        to the whole process group does not interrupt the job; the worker stops it at the deadline."""
        read_fd, write_fd = os.pipe()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(running, write_fd, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        running.pid = pid
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        running.pid = 0
        if not chunks:
            how = (
                f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
                if os.WIFSIGNALED(status)
                else f"exited with status {os.waitstatus_to_exitcode(status)}"
            )
            raise WorkHorseKilled(f"the work horse (pid {pid}) running job {running.job.id} {how} without a result")
        result: tuple[bool, Any] = pickle.loads(b"".join(chunks))
        return result


def _child(running: RunningJob, write_fd: int, mask: Iterable[int]) -> NoReturn:
    """The forked child: run the job, write (ok, value or traceback) to the pipe, exit without cleanup."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        job = running.job
        parent = running.tracker
        tracker = None if parent is None else JobTracker(job.id, parent.key, parent.redis, keep=parent.keep)
        running_task.set(tracker)  # in the child, its own blocking writes (no Redis thread was forked)
        with job_span(job.name, job.meta.get("traceparent"), job.id):
            value = job.func(*job.args, **job.kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
        if tracker is not None and (progress := tracker.pending_progress()):
            tracker.advance("", ["tachyon_progress", progress])
        try:
            payload = pickle.dumps((True, value))
        except Exception:  # an unpicklable return value: the job still succeeded
            payload = pickle.dumps((True, None))
    except BaseException:
        payload = pickle.dumps((False, traceback.format_exc()))
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(0)

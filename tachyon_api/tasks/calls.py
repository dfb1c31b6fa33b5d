"""How one attempt of a task is called: on the event loop, in a worker thread, under a timeout, and the
asyncio details the runner needs around a call (a cancellation of the batch or of one task)."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..concurrency import ThreadPool
    from .handles import BackgroundTask

__all__ = ["execute", "call_in_thread", "on_loop", "being_cancelled", "uncancel"]

logger = logging.getLogger("tachyon_api.background")


async def execute(task: BackgroundTask, pool: ThreadPool, timed_out: Callable[[BackgroundTask], None]) -> Any:
    """Run one attempt of ``task``: an async one on the loop, a sync one in ``pool``; returns its return value.

    With a ``timeout``, an async task is cancelled when it passes it (``asyncio.TimeoutError``); a sync task
    cannot be stopped, so it is reported as overrun and awaited. ``timed_out(task)`` counts either.
    """
    if task.is_async:
        call = task.func(*task.args, **task.kwargs)
        if task.timeout is None:
            return await call
        try:
            error, result = await asyncio.wait_for(_captured(call), task.timeout)
        except asyncio.TimeoutError:
            timed_out(task)
            raise asyncio.TimeoutError(f"{task.name} timed out after {task.timeout}s") from None
        if error is not None:
            raise error
        return result
    future = pool.submit(contextvars.copy_context(), task.func, task.args, task.kwargs)
    if task.timeout is not None:
        done, _ = await asyncio.wait({future}, timeout=task.timeout)
        if not done:
            timed_out(task)
            logger.warning(
                "Background task %s overran its timeout of %ss; a thread cannot be stopped, still waiting for it",
                task.name,
                task.timeout,
            )
    result = await future
    if inspect.isawaitable(result):  # a sync callable that returned a coroutine
        return await result
    return result


def on_loop(loop: Any, coro: Any) -> Any:
    """From a worker thread: run ``coro`` on ``loop`` and wait for it (nothing to do if the loop is gone)."""
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # the loop is closed
        coro.close()
        return None
    return future.result()


def being_cancelled() -> bool:
    """Whether the current asyncio task was asked to cancel (not just hit by a CancelledError from inside)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return bool(cancelling()) if cancelling is not None else False


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def call_in_thread(task: BackgroundTask, loop: Any) -> Any:
    """Call a sync task in a worker thread; what a sync callable returns to be awaited is run on ``loop``."""
    result = task.func(*task.args, **task.kwargs)
    if result is not None and inspect.isawaitable(result):
        return on_loop(loop, _awaited(result))
    return result


def uncancel(task: asyncio.Task[Any] | None) -> None:
    """The cancellation of one task of a batch was handled: the batch's asyncio task goes on (Python 3.11+
    counts cancellation requests; before, catching the error was enough)."""
    undo = getattr(task, "uncancel", None)
    if undo is not None and task.cancelling():  # type: ignore[union-attr]
        undo()


async def _captured(call: Awaitable[Any]) -> tuple[BaseException | None, Any]:
    """Await ``call`` and return its exception (or its result) instead of raising it.

    ``wait_for`` may run the awaitable as a Task of its own, and a Task lets ``KeyboardInterrupt`` and
    ``SystemExit`` escape to the event loop, which would stop the server; captured here, they are handled
    like any other task failure.
    """
    try:
        result = await call
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return exc, None
    return None, result

"""In-process delayed tasks: ``with_options(delay=...)`` or ``with_options(at=...)`` without a durable backend.

The runner hands each delayed task to :class:`DelayedTasks`, which keeps it on a timer of the event loop until
its time and then gives it back to the runner as a batch of its own (the other tasks of its request do not
wait for it). While it waits it is counted (``stats().delayed``), listed on the dashboard, and can be
cancelled; at shutdown the runner takes back the tasks still waiting and logs each as not run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .handles import BackgroundTask

__all__ = ["DelayedTasks", "due_time", "run_when_due"]


def due_time(task: BackgroundTask) -> float | None:
    """When ``task`` may start (epoch seconds), counted from now for ``delay``; None if it may start at once.
    A naive ``at`` is local time, as ``datetime.now()`` gives it."""
    if task.delay is not None:
        delay = task.delay
        return time.time() + (delay.total_seconds() if isinstance(delay, dt.timedelta) else delay)
    if task.at is not None:
        return task.at.timestamp()
    return None


async def run_when_due(tasks: list[BackgroundTask], run: Callable[[list[BackgroundTask]], Awaitable[None]]) -> None:
    """Without a lifespan, in the request's own call: ``run`` the tasks that may start now (in order), then each
    delayed one at its time."""
    dues = [due_time(task) for task in tasks]
    now = [task for task, due in zip(tasks, dues, strict=True) if due is None]
    if now:
        await run(now)
    delayed = sorted(
        (due, index, task) for index, (task, due) in enumerate(zip(tasks, dues, strict=True)) if due is not None
    )
    for due, _, task in delayed:
        while time.time() < due:  # a sleep may end a little early (libuv counts milliseconds)
            await asyncio.sleep(due - time.time() + 0.001)
        await run([task])


class _Waiting:
    __slots__ = ("method", "path", "due", "handle", "start")

    def __init__(self, method: str, path: str, due: float, handle: asyncio.TimerHandle, start: Callable[[], None]):
        self.method = method
        self.path = path
        self.due = due
        self.handle = handle
        self.start = start


class DelayedTasks:
    """The delayed tasks waiting for their time, each on a timer of the running event loop."""

    def __init__(self) -> None:
        self._waiting: dict[BackgroundTask, _Waiting] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, task: BackgroundTask, method: str, path: str, due: float, start: Callable[[], None]) -> None:
        """Call ``start()`` at ``due`` (on the loop), unless the task is cancelled or taken back before."""
        handle = asyncio.get_running_loop().call_later(max(due - time.time(), 0.0), self._fire, task)
        self._waiting[task] = _Waiting(method, path, due, handle, start)

    def _fire(self, task: BackgroundTask) -> None:
        waiting = self._waiting.get(task)
        if waiting is None:
            return
        early = waiting.due - time.time()
        if early > 0:  # the loop's timers (libuv's count milliseconds) may fire a little before the time asked
            waiting.handle = asyncio.get_running_loop().call_later(early + 0.001, self._fire, task)
            return
        del self._waiting[task]
        waiting.start()

    def cancel(self, task: BackgroundTask) -> tuple[str, str] | None:
        """Stop ``task``'s timer; returns its request's method and path, or None if it is not waiting (it
        started, ended, or was never delayed)."""
        waiting = self._waiting.pop(task, None)
        if waiting is None:
            return None
        waiting.handle.cancel()
        return waiting.method, waiting.path

    def take_all(self) -> list[tuple[BackgroundTask, str, str, float]]:
        """Stop every timer and return the tasks (with method, path and due time), soonest first."""
        waiting, self._waiting = self._waiting, {}
        for entry in waiting.values():
            entry.handle.cancel()
        return sorted(((task, w.method, w.path, w.due) for task, w in waiting.items()), key=lambda item: item[3])

    def labels(self) -> list[str]:
        """``"name (METHOD /path)"`` of each waiting task."""
        return [f"{task.name} ({w.method} {w.path})" for task, w in self._waiting.items()]

    def rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """The ``limit`` soonest, for the dashboard: name, request, and due time (ISO 8601, UTC)."""
        soonest = sorted(self._waiting.items(), key=lambda item: item[1].due)[:limit]
        return [
            {
                "name": task.name,
                "method": w.method,
                "path": w.path,
                "due": dt.datetime.fromtimestamp(w.due, dt.timezone.utc).isoformat(),
            }
            for task, w in soonest
        ]

"""What the task engine and the dashboard ask of a durable backend: :class:`TaskBackend`.

The engine (``tachyon_api.tasks``) never imports a concrete backend: the app is handed one
(``Tachyon(task_backend=...)``, or a function marked by ``@backend.task()``) and the engine speaks to it only
through the methods below. ``backends/rq.py`` (Redis + RQ) implements them; another engine implements the same
protocol in a module of its own and is imported only where it is used.

A backend may mark a function durable on itself by setting ``func.__tachyon_backend__ = (backend, defaults)``,
where ``defaults`` are :meth:`~tachyon_api.tasks.BackgroundTask.with_options` keyword arguments; ``add_task``
then sends that function to that backend whatever the app's default.

Where a call happens, and why it is shaped so:

- :meth:`check` and :meth:`check_options` run inside the request, in ``add_task`` and ``with_options``: a task
  that could never be stored must fail there, as a ``TypeError`` at the line that added it, not as a 503 later.
- :meth:`store` runs after the endpoint returned and before the response is sent, so a 2xx means every durable
  task of the request is stored. It stores them all or none. When the request has ``Depends(...,
  scope="function")`` dependencies, their exit code (the commit) runs after it, and it is given what they
  yielded (``within``): a backend on the same database as the app's data may store the tasks in that
  transaction, so they commit or roll back with the data. A backend that cannot join one ignores ``within``.
- :meth:`aclose` runs at shutdown, on the app's event loop.
- :meth:`stats`, :meth:`started_jobs`, :meth:`failed_jobs` and :meth:`requeue` serve the dashboard. They may
  block (the dashboard calls them in a thread).
- Periodic jobs (``tasks/schedule.py``): :meth:`schedule_lease` elects, among every process sharing the
  backend, the one that enqueues a job's ticks; a tick is enqueued with :meth:`store`, with a job id and an
  idempotency key made of the tick, so that a tick stored twice is stored once; :meth:`job_state` tells
  whether the previous tick's job still runs (overlap). ``job_state`` may block.

- ``read_status``, ``watch_status`` and ``cancel_status`` (:class:`StatusSource`) serve ``app.tasks`` and the
  status routes (see ``tasks/status.py``): a durable task's status record lives with the job, in the backend.
  They run on the event loop and must not block it. A backend reads and writes the one record shape of
  ``tasks/records.py``, following its state machine (a final state is never left).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..tasks.status import StatusSource

if TYPE_CHECKING:
    from ..tasks.handles import BackgroundTask
    from ..tasks.leases import ScheduleLease

__all__ = ["TaskBackend"]


class TaskBackend(StatusSource, Protocol):
    """A durable store of background tasks, run by workers in other processes; also where their status records
    live (:class:`~tachyon_api.tasks.status.StatusSource`: ``read_status``, ``watch_status``, ``cancel_status``)."""

    #: The name of the queue this backend stores into (shown on the dashboard, default of ``tachyon worker``).
    queue_name: str

    def check(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """At ``add_task``: raise ``TypeError`` if a worker in another process could not run
        ``func(*args, **kwargs)`` (the function cannot be imported by reference, the arguments cannot be
        serialised)."""
        ...

    def check_options(self, options: dict[str, Any]) -> None:
        """At ``with_options``: raise ``TypeError`` for a value the backend would refuse at every store.

        ``options`` holds the durable-only options that were given: ``delay``, ``at``, ``job_id``,
        ``result_ttl``, ``failure_ttl``.
        """
        ...

    async def store(
        self,
        tasks: Sequence[BackgroundTask],
        method: str,
        path: str,
        idempotency_key: str | None = None,
        *,
        client: str = "",
        fingerprint: bytes = b"",
        within: Sequence[Any] = (),
    ) -> bool | None:
        """Store one request's durable tasks, all or none, before its response is sent.

        ``method`` and ``path`` are the request's (``"WEBSOCKET"`` for a WebSocket). With ``idempotency_key``
        (the request's ``Idempotency-Key`` header), a request stored before under the same key, method, path and
        ``client`` (its credentials) with the same ``fingerprint`` (a hash of its payload) stores nothing again.

        ``within`` holds the values the request's ``scope="function"`` dependencies yielded (empty without them; a
        backend that cannot join a transaction ignores it). Return True when the tasks were written in the open
        transaction of one of them: they are then stored only if that transaction commits (after this call).
        Return None or False when they were stored on their own.

        Raises ``TaskBackendUnavailable`` when nothing was stored (safe to retry), ``TaskOutcomeUnknown`` when the
        tasks may have been stored but the answer was lost, ``IdempotencyKeyReused`` when the key was used before
        for another payload. The backend logs the failure itself, with its traceback.
        """
        ...

    async def aclose(self) -> None:
        """Close what the backend holds on the running event loop (the app calls it at shutdown)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counts of the backend's jobs by state (for example ``queued``, ``started``, ``failed``); may block."""
        ...

    def started_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs running now: ``id`` and ``name``; may block."""
        ...

    def failed_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` failed jobs: ``id``, ``name`` and ``exc_info`` (the worker's traceback); may block."""
        ...

    def requeue(self, job_id: str) -> bool:
        """Put a failed job back on its queue; False if no failed job has that id. May block."""
        ...

    def schedule_lease(self, name: str, ttl: float) -> ScheduleLease:
        """The lease of the periodic job ``name`` among every process sharing this backend, whatever its host:
        held by one process at a time, lost ``ttl`` seconds after its holder stops renewing it."""
        ...

    def job_state(self, job_id: str) -> str | None:
        """The state of a stored job (``"queued"``, ``"scheduled"``, ``"started"``, ``"finished"``,
        ``"failed"``, ...), None for an unknown id. May block."""
        ...

"""Durable tasks leave the process before the response: :func:`store_durable` hands each backend its share
of a request's tasks, with what identifies the request for its ``Idempotency-Key``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..idempotency import client_scope, fingerprint

if TYPE_CHECKING:
    from ..backends.base import TaskBackend
    from ..idempotency import Credentials
    from ..requests import HTTPConnection
    from .handles import BackgroundTask

__all__ = ["has_durable", "store_durable"]


def has_durable(tasks: list[BackgroundTask]) -> bool:
    """Whether any task of a request goes to a durable backend (per request with tasks: a plain loop, cheaper
    than ``any()`` over a generator)."""
    for task in tasks:  # noqa: SIM110
        if task.backend is not None:
            return True
    return False


async def store_durable(
    tasks: list[BackgroundTask],
    connection: HTTPConnection,
    method: str,
    credentials: Credentials | None = None,
    *,
    held: Sequence[Any] = (),
    joined: list[BackgroundTask] | None = None,
) -> list[BackgroundTask]:
    """Store the durable tasks in their backends (before the response is sent); return the in-process rest.

    ``connection`` is the request (or the WebSocket, whose ``method`` is ``"WEBSOCKET"``) that added them;
    ``credentials`` says where its route's requests carry credentials (see ``idempotency.py``).

    ``held`` are the values the request's ``scope="function"`` dependencies yielded, whose exit (the commit)
    runs after this store: a backend that can write its tasks in one of their transactions does (see
    :meth:`~tachyon_api.backends.base.TaskBackend.store`), and those tasks are appended to ``joined``: they
    commit or roll back with the request's data.

    The request's ``Idempotency-Key`` header, if any, is passed on with what makes the request this one: its
    client's scope (every credential it carries, or the backend's ``idempotency_scope``: other clients' keys are
    other keys) and a fingerprint of what it asks (method, path, query, body: the same key with another request
    is refused). So a retried request stores its tasks once, and a reused key never swallows another request's
    tasks. Raises ``TaskBackendUnavailable`` (503: nothing stored), ``TaskOutcomeUnknown`` (503: maybe stored)
    or ``IdempotencyKeyReused`` (422: nothing stored).
    """
    durable: dict[TaskBackend, list[BackgroundTask]] = {}
    local: list[BackgroundTask] = []
    app = connection.scope.get("app")
    keep = app is not None and app.tasks.keep_results  # Tachyon(task_results=True): kept unless a task says no
    for task in tasks:
        if task.backend is None:
            local.append(task)
        else:
            if task.keep_result is None:
                task.keep_result = keep
            durable.setdefault(task.backend, []).append(task)
    key = connection.headers.get("idempotency-key")
    client, digest = "", b""
    if key is not None:
        digest = await fingerprint(connection, method)
    path = connection.scope["path"]
    for backend, group in durable.items():
        if key is not None:
            client = await client_scope(connection, credentials, getattr(backend, "idempotency_scope", None))
        stored_in_held = await backend.store(group, method, path, key, client=client, fingerprint=digest, within=held)
        if stored_in_held and joined is not None:
            joined.extend(group)
    return local

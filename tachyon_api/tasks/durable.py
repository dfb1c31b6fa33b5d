"""Durable tasks leave the process before the response: :func:`store_durable` hands each backend its share
of a request's tasks, with what identifies the request for its ``Idempotency-Key``."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backends.base import TaskBackend
    from ..requests import HTTPConnection
    from .handles import BackgroundTask

__all__ = ["has_durable", "store_durable"]


def has_durable(tasks: list[BackgroundTask]) -> bool:
    for task in tasks:
        if task.backend is not None:
            return True
    return False


async def store_durable(
    tasks: list[BackgroundTask], connection: "HTTPConnection", method: str
) -> list[BackgroundTask]:
    """Store the durable tasks in their backends (before the response is sent); return the in-process rest.

    ``connection`` is the request (or the WebSocket, whose ``method`` is ``"WEBSOCKET"``) that added them.

    The request's ``Idempotency-Key`` header, if any, is passed on with what makes the request this one: its
    credentials (``Authorization``: other clients' keys are other keys) and a hash of its payload (the same key
    with another payload is refused). So a retried request stores its tasks once, and a reused key never
    swallows another request's tasks. Raises ``TaskBackendUnavailable`` (503: nothing stored),
    ``TaskOutcomeUnknown`` (503: maybe stored) or ``IdempotencyKeyReused`` (422: nothing stored).
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
    headers = connection.headers
    key = headers.get("idempotency-key")
    client, fingerprint = ("", b"") if key is None else (headers.get("authorization", ""), await _fingerprint(connection))
    path = connection.scope["path"]
    for backend, group in durable.items():
        await backend.store(group, method, path, key, client=client, fingerprint=fingerprint)
    return local


async def _fingerprint(connection: "HTTPConnection") -> bytes:
    """A hash of the request's payload: its content type and body (read now if the endpoint did not).

    A body parsed as a stream (multipart) is not kept: its declared length stands in for it. A WebSocket's
    handshake has no body: its content type (none) stands for it.
    """
    digest = hashlib.sha256(connection.headers.get("content-type", "").encode("latin-1") + b"\0")
    body = getattr(connection, "body", None)
    if body is not None:
        try:
            digest.update(await body())
        except RuntimeError:  # already streamed by a form parameter
            digest.update(b"stream:" + connection.headers.get("content-length", "").encode("latin-1"))
    return digest.hexdigest().encode()

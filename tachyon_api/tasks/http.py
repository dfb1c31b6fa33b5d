"""The HTTP contract of tasks you can hold: the status routes, their event stream, and where ``Accepted``
points.

``app.include_router(task_status_router(prefix="/tasks", dependencies=[Depends(current_user)]))`` adds, under
the prefix:

- ``GET /{id}``: the task's record as JSON (200), or 404 ``TASK_NOT_FOUND``;
- ``GET /{id}/events``: Server-Sent Events, the current record first, then one event per change of state or
  progress, ending after the final state;
- ``DELETE /{id}``: ask the task to stop: 202 (with the record as it is now), 409 ``TASK_FINISHED`` when it had
  already ended, 404 as above.

Each answers 503 ``TASK_BACKEND_UNAVAILABLE`` (with ``Retry-After``) while the store it asks is down (Redis,
PostgreSQL): the client cannot tell an unknown task from one it cannot read, so neither a 404 nor a 500.

Ids are capabilities, and the routes treat them so: an unknown id, an expired one and another principal's all
get the same 404, so answers cannot tell them apart. The router refuses to be built without a guard
(``dependencies``) unless ``public=True``; the first guard's return value, when it is a ``str`` or an ``int``,
is the principal that ``with_options(owner=...)`` is compared with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

from ..dependencies import Depends
from ..exceptions import TaskAlreadyFinished, TaskBackendUnavailable, TaskNotFound
from ..requests import Request
from ..responses import JSONResponse, Response, StreamingResponse, encode_json
from ..routing import Router
from ..schemas import REF_TEMPLATE
from .records import TaskRecord

__all__ = ["task_status_router", "status_url"]

logger = logging.getLogger("tachyon_api.background")

KEEPALIVE_SECONDS = 15.0
_NO_STORE = {"cache-control": "no-store"}
_warned: set[str] = set()


def task_status_router(
    *,
    prefix: str = "/tasks",
    dependencies: Sequence[Depends] | None = None,
    public: bool = False,
    keepalive: float = KEEPALIVE_SECONDS,
) -> Router:
    """The status routes under ``prefix``, guarded by ``dependencies``.

    Raises ``ValueError`` without ``dependencies`` unless ``public=True``: whoever holds an id could otherwise
    read the task's result and cancel it, so exposing them to everyone must be a decision. With
    ``public=True`` and no guard there is no principal: tasks with an owner are not found.
    """
    if not dependencies and not public:
        raise ValueError(
            "task_status_router() needs dependencies=[Depends(your_auth)] to guard it (the first one may return "
            "the current principal, compared with with_options(owner=...)); pass public=True to serve task "
            "status without a guard on purpose"
        )
    router = Router(prefix=prefix, dependencies=dependencies)
    # The first guard again, as a parameter: resolved once per request (cached), its value is the principal.
    principal_of = Depends(dependencies[0].dependency if dependencies else _no_principal)

    async def task_status(task_id: str, request: Request, principal: Any = principal_of) -> Response:
        """The task's status record (404 ``TASK_NOT_FOUND`` for an unknown, expired or not-yours id)."""
        _, record = await _find(request, task_id, principal)
        return JSONResponse(record, headers=_NO_STORE)

    async def task_events(task_id: str, request: Request, principal: Any = principal_of) -> Response:
        """Server-Sent Events: the record now, then one event per change, until the final state."""
        source, record = await _find(request, task_id, principal)
        if record.final and request.headers.get("last-event-id") is not None:
            # A browser's EventSource reconnects by itself when a stream ends; 204 tells it to stop.
            return Response(status_code=204, headers=_NO_STORE)
        return StreamingResponse(
            _events(source.watch_status(task_id), keepalive),
            media_type="text/event-stream",
            headers={**_NO_STORE, "x-accel-buffering": "no"},
        )

    async def cancel_task(task_id: str, request: Request, principal: Any = principal_of) -> Response:
        """Ask the task to stop: 202 with its record, or 409 ``TASK_FINISHED`` if it had already ended."""
        source, record = await _find(request, task_id, principal)
        outcome = await source.cancel_status(task_id)
        if outcome is None:
            raise TaskNotFound()
        found = await source.read_status(task_id)
        if found is not None:
            record = found[0]
        if not outcome:
            raise TaskAlreadyFinished(record.state)
        return JSONResponse(record, status_code=202, headers=_NO_STORE)

    task_status.__tachyon_task_status__ = True  # type: ignore[attr-defined]  # found by status_url()
    missing = {
        404: {"description": "No such task (unknown, expired, or not yours)", "content": _ERROR_BODY},
        503: {
            "description": "The task store is down: try again after Retry-After",
            "content": _ERROR_BODY,
            "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
        },
    }
    router.add_api_route(
        "/{task_id}",
        task_status,
        ["GET"],
        name="task_status",
        responses={200: {"description": "The task's status record", "model": TaskRecord}, **missing},
    )
    router.add_api_route(
        "/{task_id}/events",
        task_events,
        ["GET"],
        name="task_events",
        responses={
            200: {
                "description": "Server-Sent Events: one status record (JSON) per event, until a final state",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            204: {"description": "The task has ended and the client reconnected (Last-Event-ID): stop"},
            **missing,
        },
    )
    router.add_api_route(
        "/{task_id}",
        cancel_task,
        ["DELETE"],
        name="cancel_task",
        status_code=202,
        responses={
            202: {"description": "Cancellation requested: the record as it is now", "model": TaskRecord},
            409: {"description": "The task had already finished", "content": _ERROR_BODY},
            **missing,
        },
    )
    return router


# The framework's error body (``RequestError.body()``), as the OpenAPI document names it.
_ERROR_BODY = {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(name="ErrorResponse")}}}


def _no_principal() -> None:
    return None


def principal_id(value: Any) -> str | None:
    """The guard's return value as a principal id: a ``str``, or an ``int`` as text. Anything else (None, a
    bool from a yes/no check, an object) is no principal: tasks with an owner are then not found."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is not None and not isinstance(value, bool):
        kind = type(value).__qualname__
        if kind not in _warned:
            _warned.add(kind)
            logger.warning(
                "The task status router's guard returned a %s: only a str or an int is a principal (compared with "
                "with_options(owner=...)); return the principal's id to see owned tasks",
                kind,
            )
    return None


async def _find(request: Request, task_id: str, principal: Any) -> tuple[Any, TaskRecord]:
    """The task's source and record, if the principal may see it; else the one 404 for every reason."""
    found = await request.app.tasks.lookup(task_id)
    if found is None:
        raise TaskNotFound()
    source, record, owner = found
    if owner is not None and owner != principal_id(principal):
        raise TaskNotFound()
    return source, record


async def _events(records: AsyncIterator[TaskRecord], keepalive: float) -> AsyncIterator[bytes]:
    """One ``data:`` event per record (numbered, so a reconnecting browser says where it was), a comment line
    every ``keepalive`` seconds of silence so proxies keep the stream open; ends after the final record.

    If the store goes down meanwhile, the stream ends cleanly with an ``unavailable`` event (the 503 body) and a
    ``retry:`` of the 503's ``Retry-After``: a browser's EventSource reconnects then, and gets the record again,
    or the 503 while the store is still down. Waiting inside the stream instead would hold the connection
    open for as long as the outage lasts, with nothing to show."""
    iterator = records.__aiter__()
    number = 0
    try:
        while True:
            step = asyncio.ensure_future(iterator.__anext__())
            try:
                while True:
                    done, _ = await asyncio.wait({step}, timeout=keepalive)
                    if done:
                        break
                    yield b": keep-alive\n\n"
            except BaseException:  # the client left (the stream is cancelled): stop the pending read first
                step.cancel()
                await asyncio.wait({step})
                raise
            try:
                record = step.result()
            except StopAsyncIteration:
                return
            except TaskBackendUnavailable as exc:  # the store went down (logged where it failed): say so, end
                yield b"retry: %d\nevent: unavailable\ndata: %s\n\n" % (
                    (exc.retry_after or 0) * 1000,
                    encode_json(exc.body()),
                )
                return
            number += 1
            yield b"id: %d\ndata: %s\n\n" % (number, encode_json(record))
            if record.final:
                return
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


def status_url(app: Any, task_id: str, root_path: str = "") -> str | None:
    """The URL path of ``task_id``'s status (``/tasks/{id}`` under the status router's prefix), or None when
    the app serves no status routes (logged once)."""
    control = app.tasks
    path = control.status_path or find_status_path(app)
    if path is None:
        if not control.warned_no_router:
            control.warned_no_router = True
            logger.warning(
                "Accepted(task) has no status URL to give: include task_status_router() in the app, or pass "
                "Accepted(task, status_url=...)"
            )
        return None
    return root_path + path.replace("{task_id}", quote(task_id, safe=""))


def find_status_path(app: Any) -> str | None:
    """The path template of the app's status route (``/tasks/{task_id}``), remembered once found."""
    for route in app.routes:
        if getattr(route["func"], "__tachyon_task_status__", False):
            path: str = route["path"]
            app.tasks.status_path = path
            return path
    return None

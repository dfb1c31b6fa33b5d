"""How each kind of callable is called, wherever the framework calls user code: background tasks, dependencies,
endpoints, exception handlers, lifespan hooks and WebSocket handlers. One rule decides "is it async" (an
``async def`` function or method, a ``functools.partial`` of one, an object whose class's ``__call__`` is
``async def``) and one rule names a callable in logs and errors (a partial by the function it wraps)."""

from __future__ import annotations

import functools
import pytest

from tachyon_api import BackgroundTasks, Depends, Tachyon
from tachyon_api.testing import TachyonTestClient


async def _plus_one(n: int = 0) -> int:
    return n + 1


class _AsyncCallable:
    async def __call__(self, n: int = 0) -> int:
        return n + 2


class _SyncCallable:
    def __call__(self, n: int = 0) -> int:
        return n + 3


def test_dependencies_of_every_kind_give_their_value() -> None:
    app = Tachyon()

    @app.get("/deps")
    async def deps(
        partial_async: int = Depends(functools.partial(_plus_one, 41)),
        object_async: int = Depends(_AsyncCallable()),
        object_sync: int = Depends(_SyncCallable()),
    ):
        return [partial_async, object_async, object_sync]

    with TachyonTestClient(app) as client:
        assert client.get("/deps").json() == [42, 2, 3]


def test_lifespan_hooks_of_every_kind_run() -> None:
    ran: list[str] = []

    async def hook(label: str) -> None:
        ran.append(label)

    class Hook:
        async def __call__(self) -> None:
            ran.append("object")

    app = Tachyon()
    app.add_event_handler("startup", functools.partial(hook, "partial"))
    app.add_event_handler("startup", Hook())
    with TachyonTestClient(app):
        pass
    assert ran == ["partial", "object"]


def test_a_sync_websocket_handler_is_refused_at_registration() -> None:
    app = Tachyon()

    def handler(websocket) -> None:  # noqa: ANN001
        pass

    with pytest.raises(TypeError, match="must be an 'async def' function"):
        app.websocket("/ws")(handler)


def test_a_partial_task_is_named_after_its_function() -> None:
    tasks = BackgroundTasks()
    assert tasks.add_task(functools.partial(_plus_one, 1)).name == "_plus_one"
    assert tasks.add_task(_AsyncCallable()).name == "_AsyncCallable"
    assert tasks.add_task(_AsyncCallable()).is_async
    assert not tasks.add_task(_SyncCallable()).is_async

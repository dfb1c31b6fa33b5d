"""How each kind of callable is called, wherever the framework calls user code: background tasks, dependencies,
endpoints, exception handlers, lifespan hooks and WebSocket handlers. One rule decides "is it async" (an
``async def`` function or method, a ``functools.partial`` of one, an object whose class's ``__call__`` is
``async def``) and one rule names a callable in logs and errors (a partial by the function it wraps)."""

import functools

import pytest

from tachyon_api import BackgroundTasks, Depends, Tachyon, WebSocket
from tachyon_api.responses import JSONResponse
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

    def handler(websocket) -> None:
        pass

    with pytest.raises(TypeError, match="must be an 'async def' function"):
        app.websocket("/ws")(handler)


def test_a_partial_task_is_named_after_its_function() -> None:
    tasks = BackgroundTasks()
    assert tasks.add_task(functools.partial(_plus_one, 1)).name == "_plus_one"
    assert tasks.add_task(_AsyncCallable()).name == "_AsyncCallable"
    assert tasks.add_task(_AsyncCallable()).is_async
    assert not tasks.add_task(_SyncCallable()).is_async


# Where the rule above is newer than the call site it replaced: these failed before (a partial endpoint was
# run in a thread and its coroutine rendered, a 500; an exception handler object with an async __call__ was
# run in a thread and its coroutine refused, a 500; a partial WebSocket handler was refused; a partial
# dependency was named "partial" in errors).


async def _hello(word: str) -> dict:
    return {"word": word}


def test_a_partial_of_an_async_endpoint_is_awaited() -> None:
    app = Tachyon()
    app.get("/partial")(functools.partial(_hello, "partial"))
    with TachyonTestClient(app) as client:
        response = client.get("/partial")
    assert (response.status_code, response.json()) == (200, {"word": "partial"})


def test_an_exception_handler_object_with_an_async_call_is_awaited() -> None:
    class Teapot(Exception):
        pass

    class Handler:
        async def __call__(self, request, exc):
            return JSONResponse({"handled": type(exc).__name__}, status_code=418)

    app = Tachyon()
    app.add_exception_handler(Teapot, Handler())

    @app.get("/teapot")
    async def teapot():
        raise Teapot()

    with TachyonTestClient(app) as client:
        response = client.get("/teapot")
    assert (response.status_code, response.json()) == (418, {"handled": "Teapot"})


def test_a_partial_of_an_async_websocket_handler_is_accepted() -> None:
    async def echo(prefix: str, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(prefix + await websocket.receive_text())

    app = Tachyon()
    app.websocket("/ws")(functools.partial(echo, "> "))
    with TachyonTestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "> hi"


class _Opaque:
    """A type no request source can fill."""


def _needs_a_source(n: _Opaque, m: int = 0) -> int:
    return m


def test_errors_name_a_partial_dependency_after_its_function() -> None:
    app = Tachyon()
    with pytest.raises(TypeError, match=r"^_needs_a_source: cannot tell where parameter 'n"):

        @app.get("/x")
        async def x(value: int = Depends(functools.partial(_needs_a_source, m=1))):
            return value

        with TachyonTestClient(app) as client:
            client.get("/x")

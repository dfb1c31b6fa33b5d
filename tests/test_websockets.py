"""WebSockets through the in-process test clients: the WebSocket API, parameters and dependencies compiled at
registration, closes and refusals, background tasks, routers, middleware, Starlette compatibility.
(The same behaviour over real uvicorn is in test_websockets_server.py.)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterator

import pytest
import starlette.exceptions
import starlette.websockets
from starlette.middleware.cors import CORSMiddleware

from tachyon_api import (
    BackgroundTasks,
    Cookie,
    Depends,
    Header,
    HTTPConnection,
    HTTPException,
    Query,
    Request,
    Router,
    Struct,
    Tachyon,
    WebSocket,
    WebSocketDisconnect,
    WebSocketException,
    WebSocketState,
    injectable,
)
from tachyon_api.routing import Route, WebSocketRoute
from tachyon_api.testing import AsyncTachyonTestClient, WebSocketDenialResponse

from .conftest import client_for

WS_LOGGER = "tachyon_api.websockets"


class Opaque:
    pass


class Payload(Struct):
    a: int


@injectable
class Hub:
    built = 0

    def __init__(self) -> None:
        Hub.built += 1


@injectable(scope="request")
class PerConnection:
    pass


def connect_refused(app: Tachyon, path: str, **kwargs: Any) -> WebSocketDisconnect:
    with pytest.raises(WebSocketDisconnect) as refused:
        with client_for(app).websocket_connect(path, **kwargs):
            pass
    return refused.value


# --- the WebSocket object -------------------------------------------------------------------------------------
def test_echo_of_text_bytes_and_json_and_the_handshake_details() -> None:
    app = Tachyon()

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        assert websocket.client_state is WebSocketState.CONNECTING
        await websocket.accept(subprotocol="chat.v2", headers={"x-server": "tachyon"})
        assert websocket.client_state is websocket.application_state is WebSocketState.CONNECTED
        await websocket.send_text(await websocket.receive_text())
        await websocket.send_bytes(await websocket.receive_bytes())
        await websocket.send_json(await websocket.receive_json())
        await websocket.send_json(await websocket.receive_json(mode="binary"), mode="binary")
        await websocket.close(4000, "done")
        assert websocket.application_state is WebSocketState.DISCONNECTED

    with client_for(app).websocket_connect("/ws", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.accepted_subprotocol == "chat.v2"
        assert (b"x-server", b"tachyon") in ws.extra_headers
        ws.send_text("hi")
        assert ws.receive_text() == "hi"
        ws.send_bytes(b"\x00\xff")
        assert ws.receive_bytes() == b"\x00\xff"
        ws.send_json({"a": [1, None]})
        assert ws.receive_json() == {"a": [1, None]}
        ws.send_json({"b": 2}, mode="binary")
        assert ws.receive_json(mode="binary") == {"b": 2}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (closed.value.code, closed.value.reason) == (4000, "done")


def test_connection_details_and_iterators() -> None:
    app = Tachyon()
    seen: dict[str, Any] = {}

    @app.websocket("/rooms/{name}")
    async def room(websocket: WebSocket, name: str) -> None:
        await websocket.accept()
        seen.update(
            url=str(websocket.url),
            name=name,
            path_params=websocket.path_params,
            query=websocket.query_params.get("since"),
            header=websocket.headers.get("x-token"),
            cookie=websocket.cookies.get("session"),
            client=websocket.client.host,  # type: ignore[union-attr]
            app=websocket.app is app,
        )
        websocket.state.user = "ann"
        seen["texts"] = [text async for text in websocket.iter_text()]
        seen["state"] = websocket.state.user

    client = client_for(app, cookies={"session": "s1"})
    with client.websocket_connect("/rooms/blue?since=5", headers={"x-token": "t"}) as ws:
        ws.send_text("one")
        ws.send_text("two")
    assert seen == {
        "url": f"ws://{client.base_url.host}/rooms/blue?since=5",
        "name": "blue",
        "path_params": {"name": "blue"},
        "query": "5",
        "header": "t",
        "cookie": "s1",
        "client": "testclient",
        "app": True,
        "texts": ["one", "two"],
        "state": "ann",
    }


def test_wrong_kind_of_message_closes_with_1003_and_invalid_json_with_1007() -> None:
    app = Tachyon()

    @app.websocket("/text")
    async def text(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()

    @app.websocket("/json")
    async def json(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_json()

    client = client_for(app)
    with client.websocket_connect("/text") as ws:
        ws.send_bytes(b"binary")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (closed.value.code, closed.value.reason) == (1003, "Expected a text message")
    with client.websocket_connect("/json") as ws:
        ws.send_text("{not json")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1007 and closed.value.reason.startswith("Invalid JSON")


def test_message_size_limit_of_the_app_and_of_a_route() -> None:
    app = Tachyon(websocket_max_size=10)
    codes: list[int] = []

    async def measure(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(str(len(await websocket.receive_bytes())))
        except WebSocketDisconnect as exc:
            codes.append(exc.code)
            with pytest.raises(WebSocketDisconnect):  # closed for the handler: sending is a disconnect too
                await websocket.send_text("late")

    app.add_websocket_route("/small", measure)
    app.add_websocket_route("/big", measure, max_message_size=100)
    client = client_for(app)
    for path, fits, too_big in (("/small", 10, 11), ("/big", 100, 101)):
        with client.websocket_connect(path) as ws:
            ws.send_bytes(b"x" * fits)
            assert ws.receive_text() == str(fits)
            ws.send_bytes(b"x" * too_big)
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1009
    assert codes == [1009, 1009]


# --- parameters -----------------------------------------------------------------------------------------------
def test_typed_path_query_header_and_cookie_parameters() -> None:
    app = Tachyon()

    @app.websocket("/items/{item_id}")
    async def item(
        socket: WebSocket,
        item_id: int,
        page: int = 1,
        tags: list[str] = Query([]),
        token: str = Header(...),
        session: str | None = Cookie(None),
    ) -> None:
        await socket.accept()
        await socket.send_json({"item_id": item_id, "page": page, "tags": tags, "token": token, "session": session})

    client = client_for(app)
    with client.websocket_connect("/items/5?page=2&tags=a&tags=b", headers={"token": "abc"}) as ws:
        assert ws.receive_json() == {"item_id": 5, "page": 2, "tags": ["a", "b"], "token": "abc", "session": None}


def test_invalid_parameters_close_with_1008_before_accept() -> None:
    app = Tachyon()
    ran: list[str] = []

    @app.websocket("/items/{item_id}")
    async def item(websocket: WebSocket, item_id: int, page: int = 1, token: str = Header(...)) -> None:
        ran.append("handler")
        await websocket.accept()

    refused = connect_refused(app, "/items/abc", headers={"token": "t"})
    assert (refused.code, refused.reason) == (1008, "Invalid path parameter 'item_id'")
    refused = connect_refused(app, "/items/1?page=x", headers={"token": "t"})
    assert refused.code == 1008 and "page" in refused.reason
    assert connect_refused(app, "/items/1").code == 1008  # missing header
    assert connect_refused(app, "/elsewhere").code == 1000  # no such route
    assert ran == []


def test_the_socket_by_name_and_unclassifiable_parameters_fail_at_registration() -> None:
    app = Tachyon()

    @app.websocket("/ws")
    async def by_name(websocket, note: str = "x") -> None:  # type: ignore[no-untyped-def]
        await websocket.accept()
        await websocket.send_text(note)

    with client_for(app).websocket_connect("/ws?note=named") as ws:
        assert ws.receive_text() == "named"

    async def opaque(websocket: WebSocket, thing: Opaque) -> None: ...
    async def body(websocket: WebSocket, payload: Payload) -> None: ...
    async def wants_request(request: Request) -> None: ...
    def sync_handler(websocket: WebSocket) -> None: ...

    with pytest.raises(TypeError, match="cannot tell where parameter 'thing: Opaque'"):
        app.add_websocket_route("/a", opaque)
    with pytest.raises(TypeError, match="request body"):
        app.add_websocket_route("/b", body)
    with pytest.raises(TypeError, match="asks for a Request, but this is a WebSocket route"):
        app.add_websocket_route("/c", wants_request)
    with pytest.raises(TypeError, match="must be an 'async def'"):
        app.add_websocket_route("/d", sync_handler)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="asks for a WebSocket, but this is an HTTP route"):

        @app.get("/e")
        def http(websocket: WebSocket) -> None: ...


def test_an_unannotated_request_parameter_gets_the_request_on_http_routes() -> None:
    app = Tachyon()

    @app.get("/here")
    def here(request):  # type: ignore[no-untyped-def]
        return {"path": request.url.path}

    assert client_for(app).get("/here").json() == {"path": "/here"}


# --- dependencies ---------------------------------------------------------------------------------------------
def test_dependencies_scopes_cleanups_after_close_and_overrides() -> None:
    app = Tachyon()
    events: list[str] = []

    Hub.built = 0

    def session(websocket: WebSocket) -> Iterator[str]:
        events.append(f"open {websocket.path_params['room']}")
        yield "db"
        events.append(f"cleanup, socket {websocket.application_state.name}")

    def current_user(connection: HTTPConnection) -> str:  # serves HTTP and WebSocket routes alike
        return connection.headers.get("x-user", "anonymous")

    @app.websocket("/rooms/{room}")
    async def room(
        websocket: WebSocket,
        hub: Hub,
        a: PerConnection,
        b: PerConnection,
        db: str = Depends(session),
        user: str = Depends(current_user),
    ) -> None:
        await websocket.accept()
        await websocket.send_json({"db": db, "user": user, "same": a is b, "hub": id(hub)})
        events.append("handler done")

    @app.get("/me")
    def me(user: str = Depends(current_user)) -> dict[str, str]:
        return {"user": user}

    client = client_for(app)
    with client.websocket_connect("/rooms/blue", headers={"x-user": "ann"}) as ws:
        first = ws.receive_json()
    with client.websocket_connect("/rooms/red") as ws:
        second = ws.receive_json()
    assert first["db"] == "db" and first["user"] == "ann" and first["same"] is True
    assert second["user"] == "anonymous" and second["hub"] == first["hub"]
    assert events == [
        "open blue",
        "handler done",
        "cleanup, socket DISCONNECTED",
        "open red",
        "handler done",
        "cleanup, socket DISCONNECTED",
    ]
    assert Hub.built == 1
    assert client.get("/me", headers={"x-user": "bob"}).json() == {"user": "bob"}

    def fake_user(websocket: WebSocket) -> str:
        return f"fake on {websocket.url.path}"

    app.dependency_overrides[current_user] = fake_user
    try:
        with client.websocket_connect("/rooms/green") as ws:
            assert ws.receive_json()["user"] == "fake on /rooms/green"
    finally:
        app.dependency_overrides.clear()


def test_function_scope_dependencies_exit_as_the_handler_ends() -> None:
    app = Tachyon()
    events: list[str] = []

    async def transaction() -> Any:
        try:
            yield "tx"
        except Exception as exc:
            events.append(f"rollback ({exc})")
            raise
        else:
            events.append("commit")
        finally:
            events.append("tx closed")

    async def later() -> Any:
        try:
            yield
        finally:
            events.append("after-close cleanup")

    @app.websocket("/ws")
    async def handler(
        websocket: WebSocket, tx: str = Depends(transaction, scope="function"), _: None = Depends(later)
    ) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        if text == "fail":
            raise ValueError("handler failed")
        events.append(f"handler got {text}")

    client = client_for(app)
    with client.websocket_connect("/ws") as ws:
        ws.send_text("ok")
    assert events == ["handler got ok", "commit", "tx closed", "after-close cleanup"]
    events.clear()
    with client.websocket_connect("/ws") as ws:
        ws.close()  # the client leaving is a normal end: commit
    assert events == ["commit", "tx closed", "after-close cleanup"]
    events.clear()
    with client.websocket_connect("/ws") as ws:
        ws.send_text("fail")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1011
    assert events == ["rollback (handler failed)", "tx closed", "after-close cleanup"]


def test_background_tasks_run_after_close_and_cleanups() -> None:
    app = Tachyon()
    events: list[str] = []

    async def session() -> Any:
        yield "db"
        events.append("cleanup")

    async def record(text: str) -> None:
        events.append(text)

    @app.websocket("/ws")
    async def handler(websocket: WebSocket, tasks: BackgroundTasks, db: str = Depends(session)) -> None:
        await websocket.accept()
        tasks.add_task(record, "task ran")
        events.append(f"received {await websocket.receive_text()}")

    @app.websocket("/fails")
    async def fails(websocket: WebSocket, tasks: BackgroundTasks) -> None:
        tasks.add_task(record, "never")
        await websocket.accept()
        raise RuntimeError("no")

    client = client_for(app)
    with client.websocket_connect("/ws") as ws:
        ws.send_text("hello")
    assert events == ["received hello", "cleanup", "task ran"]
    with client.websocket_connect("/fails") as ws:
        with pytest.raises(WebSocketDisconnect):
            ws.receive_text()
    assert "never" not in events


def durable_note(text: str) -> None:
    """A durable task must be importable: module level."""


def test_durable_tasks_of_a_handler_are_stored_after_the_close(redis_url: str) -> None:
    from tachyon_api.background import RQBackend

    backend = RQBackend(redis_url, queue="websocket-durable")
    backend.queue.empty()
    app = Tachyon(task_backend=backend)

    @app.websocket("/ws")
    async def handler(websocket: WebSocket, tasks: BackgroundTasks) -> None:
        await websocket.accept()
        tasks.add_task(durable_note, await websocket.receive_text())

    with client_for(app).websocket_connect("/ws") as ws:
        ws.send_text("keep me")
    try:
        assert backend.stats()["queued"] == 1
        (job,) = backend.queue.get_jobs()
        assert job.func_name.endswith("durable_note") and job.args == ("keep me",)
    finally:
        backend.queue.empty()


def test_a_client_that_leaves_is_no_error_and_its_tasks_still_run(caplog: pytest.LogCaptureFixture) -> None:
    app = Tachyon()
    events: list[Any] = []

    @app.websocket("/ws")
    async def handler(websocket: WebSocket, tasks: BackgroundTasks) -> None:
        await websocket.accept()
        tasks.add_task(events.append, "task")
        await websocket.receive_text()  # the client closes instead: WebSocketDisconnect escapes

    with caplog.at_level(logging.ERROR):
        with client_for(app).websocket_connect("/ws") as ws:
            ws.close(1001, "bye")
    assert events == ["task"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- closes and errors ----------------------------------------------------------------------------------------
def test_returning_without_closing_closes_normally_and_without_accepting_refuses() -> None:
    app = Tachyon()

    @app.websocket("/open")
    async def left_open(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("bye")

    @app.websocket("/never")
    async def never_accepted(websocket: WebSocket) -> None:
        return None

    with client_for(app).websocket_connect("/open") as ws:
        assert ws.receive_text() == "bye"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1000
    assert connect_refused(app, "/never").code == 1000


def test_websocket_exception_closes_with_its_code_before_or_after_accept() -> None:
    app = Tachyon()

    def room_exists(room: str) -> str:
        if room != "lobby":
            raise WebSocketException(4404, "No such room")
        return room

    @app.websocket("/rooms/{room}")
    async def rooms(websocket: WebSocket, room: str = Depends(room_exists)) -> None:
        await websocket.accept()
        if await websocket.receive_text() == "quit":
            raise starlette.exceptions.WebSocketException(4000, "you asked")  # Starlette's, as 1.3 code raises

    refused = connect_refused(app, "/rooms/attic")
    assert (refused.code, refused.reason) == (4404, "No such room")
    with client_for(app).websocket_connect("/rooms/lobby") as ws:
        ws.send_text("quit")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (closed.value.code, closed.value.reason) == (4000, "you asked")


def test_http_exception_of_a_guard_is_an_http_denial_with_the_error_body() -> None:
    def token(x_token: str | None = Header(None)) -> None:
        if x_token != "secret":
            raise HTTPException(401, "Bad token", headers={"WWW-Authenticate": "Bearer"})

    app = Tachyon(dependencies=[Depends(token)])

    @app.websocket("/ws")
    async def handler(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("in")
        raise HTTPException(403, "Not any more")

    client = client_for(app)
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/ws"):
            pass
    assert denied.value.status_code == 401
    assert denied.value.json() == {"detail": "Bad token"}
    assert denied.value.headers["www-authenticate"] == "Bearer"

    def starlette_guard() -> None:
        raise starlette.exceptions.HTTPException(403, "Starlette says no")

    app.add_websocket_route("/starlette", handler, dependencies=[Depends(starlette_guard)])
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/starlette", headers={"x-token": "secret"}):
            pass
    assert (denied.value.status_code, denied.value.json()) == (403, {"detail": "Starlette says no"})
    with client.websocket_connect("/ws", headers={"x-token": "secret"}) as ws:
        assert ws.receive_text() == "in"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "Not any more")


def test_unexpected_errors_are_logged_and_give_1011_or_an_http_500(caplog: pytest.LogCaptureFixture) -> None:
    app = Tachyon()

    def broken() -> None:
        raise KeyError("before accept")

    @app.websocket("/early")
    async def early(websocket: WebSocket, _: None = Depends(broken)) -> None:
        await websocket.accept()

    @app.websocket("/late")
    async def late(websocket: WebSocket) -> None:
        await websocket.accept()
        raise ZeroDivisionError("after accept")

    client = client_for(app)
    with caplog.at_level(logging.ERROR, logger=WS_LOGGER):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/early"):
                pass
        with client.websocket_connect("/late") as ws:
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
    assert denied.value.status_code == 500
    assert denied.value.json()["code"] == "INTERNAL_SERVER_ERROR"
    assert closed.value.code == 1011
    records = [r for r in caplog.records if r.name == WS_LOGGER]
    assert [r.getMessage() for r in records] == [
        "Unhandled error in WEBSOCKET /early",
        "Unhandled error in WEBSOCKET /late",
    ]
    assert [type(r.exc_info[1]) for r in records] == [KeyError, ZeroDivisionError]  # type: ignore[index]


# --- routers, middleware, Starlette ---------------------------------------------------------------------------
def test_router_prefix_dependencies_and_nesting() -> None:
    calls: list[str] = []

    def app_guard() -> None:
        calls.append("app")

    def router_guard() -> None:
        calls.append("router")

    app = Tachyon(dependencies=[Depends(app_guard)])
    inner = Router(prefix="/v1", dependencies=[Depends(router_guard)])

    @inner.websocket("/feed/{name}")
    async def feed(websocket: WebSocket, name: str) -> None:
        await websocket.accept()
        await websocket.send_text(name)

    assert inner.routes[0]["path"] == "/feed/{name}" and inner.routes[0]["method"] == "WEBSOCKET"  # 1.3's dict reads
    outer = Router(prefix="/api")
    outer.include_router(inner)
    app.include_router(outer)
    assert [r.path for r in app.websocket_routes] == ["/api/v1/feed/{name}"]
    assert all(isinstance(r, WebSocketRoute) and not isinstance(r, Route) for r in app.websocket_routes)
    # WebSocket routes stay out of the HTTP listing (HTTP routes only: the docs pages here) and of OpenAPI.
    assert not any("feed" in route["path"] for route in app.routes)
    assert not any("feed" in path for path in app.openapi()["paths"])
    with client_for(app).websocket_connect("/api/v1/feed/news") as ws:
        assert ws.receive_text() == "news"
    assert calls == ["app", "router"]


class ScopeRecorder:
    def __init__(self, app: Any, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.seen.append(scope["type"])
        await self.app(scope, receive, send)


def test_middleware_passes_websocket_scopes_through() -> None:
    app = Tachyon()
    seen: list[str] = []
    app.add_middleware(CORSMiddleware, allow_origins=["*"])
    app.add_middleware(ScopeRecorder, seen=seen)

    @app.websocket("/ws")
    async def handler(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("through")

    with client_for(app).websocket_connect("/ws", headers={"origin": "http://elsewhere"}) as ws:
        assert ws.receive_text() == "through"
    assert seen == ["websocket"]


def test_starlette_websocket_annotation_and_disconnect_keep_working() -> None:
    app = Tachyon(websocket_max_size=5)
    events: list[Any] = []

    @app.websocket("/starlette")
    async def with_starlette(websocket: starlette.websockets.WebSocket) -> None:
        assert isinstance(websocket, starlette.websockets.WebSocket)
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except starlette.websockets.WebSocketDisconnect as exc:
            events.append(("starlette", exc.code))

    @app.websocket("/ours")
    async def ours(websocket) -> None:  # type: ignore[no-untyped-def]  # 1.3 style: by name
        await websocket.accept()
        try:
            await websocket.receive_text()
        except starlette.websockets.WebSocketDisconnect as exc:  # catches ours
            events.append(("ours", exc.code))

    client = client_for(app)
    with client.websocket_connect("/starlette") as ws:
        ws.send_text("hey")
        assert ws.receive_text() == "hey"
        ws.send_text("too long")  # over websocket_max_size: the limit applies to Starlette's object too
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1009
    with client.websocket_connect("/ours") as ws:
        ws.close(4001)
    assert events == [("starlette", 1009), ("ours", 4001)]


# --- test clients and shutdown ------------------------------------------------------------------------------
async def test_async_client_websocket_connect() -> None:
    app = Tachyon()

    @app.websocket("/ws")
    async def handler(websocket: WebSocket, name: str = "you") -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(f"{text}, {name}")

    async with AsyncTachyonTestClient(app) as client:
        async with client.websocket_connect("/ws?name=ann") as ws:
            await ws.send_text("hello")
            assert await ws.receive_text() == "hello, ann"
        with pytest.raises(WebSocketDisconnect) as refused:
            async with client.websocket_connect("/missing"):
                pass
        assert refused.value.code == 1000


async def test_lifespan_shutdown_closes_open_sockets_with_1001_and_cancels_stubborn_handlers() -> None:
    app = Tachyon(shutdown_timeout=0.3)
    events: list[Any] = []

    async def session() -> Any:
        yield
        events.append("cleanup")

    @app.websocket("/polite")
    async def polite(websocket: WebSocket, _: None = Depends(session)) -> None:
        await websocket.accept()
        try:
            await websocket.receive_text()
        except WebSocketDisconnect as exc:
            events.append(("polite", exc.code))
            raise

    @app.websocket("/stubborn")
    async def stubborn(websocket: WebSocket, _: None = Depends(session)) -> None:
        await websocket.accept()
        await asyncio.sleep(3600)

    async with AsyncTachyonTestClient(app, lifespan=True) as client:
        async with (
            client.websocket_connect("/polite") as polite_ws,
            client.websocket_connect("/stubborn") as stubborn_ws,
        ):
            await app.shutdown()  # what the server's lifespan shutdown calls
            for ws in (polite_ws, stubborn_ws):
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_text()
                assert closed.value.code == 1001
        await app.startup()  # the client's lifespan shuts down once more on exit
    assert events == [("polite", 1001), "cleanup", "cleanup"]

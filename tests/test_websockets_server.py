"""WebSockets over real uvicorn, spoken to with the ``websockets`` client library: echo of every kind, typed
parameters, refusals, dependency cleanups after close, routers, clients that vanish, errors, the size limit,
SIGTERM with an idle client, and 1,000 sockets receiving every broadcast."""

from __future__ import annotations

import asyncio
import logging
import os
import textwrap
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tachyon_api import Depends, HTTPException, Router, Tachyon, WebSocket, WebSocketDisconnect

from .conftest import ROOT, serve, wait_until


def ws_url(url: str, path: str) -> str:
    return url.replace("http://", "ws://", 1) + path


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def closed_code(ws: Any) -> int | None:
    """Wait for the server to close ``ws``; return the close code it sent."""
    with pytest.raises(ConnectionClosed):
        while True:
            await ws.recv()
    return ws.close_code


def make_app(events: list[Any]) -> Tachyon:
    app = Tachyon(websocket_max_size=1024)

    async def session() -> AsyncIterator[str]:
        events.append("dependency opened")
        yield "session-1"
        events.append("dependency closed")

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])

    @app.websocket("/json")
    async def echo_json(websocket: WebSocket) -> None:
        await websocket.accept()
        async for data in websocket.iter_json():
            await websocket.send_json({"got": data})

    @app.websocket("/items/{item_id}")
    async def item(websocket: WebSocket, item_id: int, limit: int = 10, tags: list[str] | None = None) -> None:
        await websocket.accept()
        await websocket.send_json({"item_id": item_id, "limit": limit, "tags": tags})

    @app.websocket("/with-dependency")
    async def with_dependency(websocket: WebSocket, session: str = Depends(session)) -> None:
        await websocket.accept()
        await websocket.send_text(session)
        try:
            await websocket.receive_text()
        except WebSocketDisconnect as exc:
            events.append(("handler saw disconnect", exc.code))
            raise

    @app.websocket("/stream")
    async def stream(websocket: WebSocket, session: str = Depends(session)) -> None:
        await websocket.accept()
        try:
            for index in range(10_000):
                await websocket.send_text(f"tick {index}")
                await asyncio.sleep(0.01)
        except WebSocketDisconnect as exc:
            events.append(("stream saw disconnect", exc.code))
            raise

    @app.websocket("/boom")
    async def boom(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        raise RuntimeError("the handler broke")

    @app.websocket("/limit")
    async def limit(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(str(len(await websocket.receive_text())))
        except WebSocketDisconnect as exc:
            events.append(("limit saw disconnect", exc.code))

    def only_members(websocket: WebSocket) -> None:
        if websocket.headers.get("x-member") != "yes":
            raise HTTPException(401, "Members only")

    router = Router(prefix="/chat", dependencies=[Depends(only_members)])

    @router.websocket("/{room}")
    async def room(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(f"welcome to {room}")

    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def server() -> Any:
    events: list[Any] = []
    with serve(make_app(events)) as url:
        yield url, events


def test_text_bytes_and_json_echo(server: Any) -> None:
    url, _ = server

    async def talk() -> None:
        async with connect(ws_url(url, "/echo")) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"
            await ws.send("héllo ünïcode")
            assert await ws.recv() == "héllo ünïcode"
        async with connect(ws_url(url, "/json")) as ws:
            await ws.send('{"a": [1, 2]}')
            assert await ws.recv() == '{"got":{"a":[1,2]}}'

    run(talk())


def test_typed_path_and_query_parameters(server: Any) -> None:
    url, _ = server

    async def talk() -> list[str]:
        received = []
        for path in ("/items/42", "/items/7?limit=3&tags=a&tags=b"):
            async with connect(ws_url(url, path)) as ws:
                received.append(await ws.recv())
        return received

    assert run(talk()) == [
        '{"item_id":42,"limit":10,"tags":null}',
        '{"item_id":7,"limit":3,"tags":["a","b"]}',
    ]


def test_bad_path_or_query_value_is_refused_before_accept(server: Any) -> None:
    """The app closes with 1008 before accepting; over HTTP the server answers the handshake with 403."""
    url, _ = server

    async def talk(path: str) -> int:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(url, path)):
                pass
        return refused.value.response.status_code

    assert run(talk("/items/not-a-number")) == 403
    assert run(talk("/items/1?limit=many")) == 403
    assert run(talk("/nowhere")) == 403


def test_dependency_cleanup_runs_after_the_socket_is_closed(server: Any) -> None:
    url, events = server
    events.clear()

    async def talk() -> None:
        async with connect(ws_url(url, "/with-dependency")) as ws:
            assert await ws.recv() == "session-1"
            assert events == ["dependency opened"]

    run(talk())
    assert wait_until(lambda: len(events) == 3, 5), events
    assert events == ["dependency opened", ("handler saw disconnect", 1000), "dependency closed"]


def test_router_prefix_and_router_dependency(server: Any) -> None:
    url, _ = server

    async def talk() -> str:
        async with connect(ws_url(url, "/chat/lobby"), additional_headers={"x-member": "yes"}) as ws:
            return await ws.recv()

    assert run(talk()) == "welcome to lobby"

    async def refused() -> Any:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(url, "/chat/lobby")):
                pass
        return caught.value.response

    response = run(refused())  # the guard's HTTPException, sent as the handshake's HTTP answer
    assert response.status_code == 401
    assert b'"detail":"Members only"' in response.body


def test_client_vanishing_mid_stream_gives_disconnect_and_runs_cleanups(server: Any) -> None:
    url, events = server
    events.clear()

    async def talk() -> None:
        ws = await connect(ws_url(url, "/stream"))
        assert (await ws.recv()).startswith("tick")
        ws.transport.abort()  # no close frame: the TCP connection just goes away

    run(talk())
    assert wait_until(lambda: "dependency closed" in events, 5), events
    assert events == ["dependency opened", ("stream saw disconnect", 1006), "dependency closed"]


def test_exception_closes_with_1011_and_logs_the_traceback(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    url, _ = server
    caplog.set_level(logging.ERROR, logger="tachyon_api.websockets")

    async def talk() -> int | None:
        async with connect(ws_url(url, "/boom")) as ws:
            await ws.send("go")
            return await closed_code(ws)

    assert run(talk()) == 1011
    assert wait_until(lambda: any(r.name == "tachyon_api.websockets" for r in caplog.records), 5)
    record = next(r for r in caplog.records if r.name == "tachyon_api.websockets")
    assert "/boom" in record.getMessage()
    assert record.exc_info and "the handler broke" in str(record.exc_info[1])


def test_oversized_message_closes_with_1009(server: Any) -> None:
    url, events = server
    events.clear()

    async def talk() -> tuple[str, int | None]:
        async with connect(ws_url(url, "/limit")) as ws:
            await ws.send("x" * 1024)  # at the limit: fine
            fits = await ws.recv()
            await ws.send("é" * 513)  # 1026 bytes of UTF-8 in 513 characters: over
            return fits, await closed_code(ws)

    assert run(talk()) == ("1024", 1009)
    assert wait_until(lambda: ("limit saw disconnect", 1009) in events, 5), events


def test_a_thousand_sockets_each_receive_every_broadcast(serve_process: Any) -> None:
    server = serve_process(
        textwrap.dedent(
            """
            import asyncio
            from tachyon_api import Tachyon, WebSocket, WebSocketDisconnect

            app = Tachyon()
            room: set[WebSocket] = set()

            @app.get("/count")
            def count():
                return {"sockets": len(room)}

            @app.post("/broadcast")
            async def broadcast(text: str):
                results = await asyncio.gather(*(ws.send_text(text) for ws in list(room)), return_exceptions=True)
                errors = [repr(r) for r in results if r is not None]
                return {"sent": len(results) - len(errors), "errors": errors[:3]}

            @app.websocket("/room")
            async def join(websocket: WebSocket):
                await websocket.accept()
                room.add(websocket)
                try:
                    async for _ in websocket.iter_text():
                        pass
                finally:
                    room.discard(websocket)
            """
        ),
        "--log-level",
        "warning",
        "--no-access-log",
    )
    import httpx

    sockets, messages = 1000, 5

    async def one(ready: asyncio.Event, all_in: asyncio.Event, counter: list[int]) -> list[str]:
        async with connect(ws_url(server.url, "/room"), open_timeout=30, ping_interval=None) as ws:
            counter[0] += 1
            if counter[0] == sockets:
                ready.set()
            await all_in.wait()
            return [await ws.recv() for _ in range(messages)]

    async def main() -> list[list[str]]:
        ready, all_in, counter = asyncio.Event(), asyncio.Event(), [0]
        clients = [asyncio.create_task(one(ready, all_in, counter)) for _ in range(sockets)]
        await ready.wait()
        all_in.set()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.get("/count")).json() == {"sockets": sockets}
            for index in range(messages):
                sent = await http.post("/broadcast", params={"text": f"news {index}"})
                assert sent.json() == {"sent": sockets, "errors": []}
        return await asyncio.gather(*clients)

    received = asyncio.run(asyncio.wait_for(main(), 90))
    assert len(received) == sockets
    expected = [f"news {index}" for index in range(messages)]
    assert all(got == expected for got in received)


def test_sigterm_closes_an_idle_socket_with_1001_and_the_server_exits(serve_process: Any) -> None:
    server = serve_process(
        textwrap.dedent(
            """
            import asyncio
            from tachyon_api import Tachyon, WebSocket

            app = Tachyon(shutdown_timeout=2)

            @app.websocket("/idle")
            async def idle(websocket: WebSocket):
                await websocket.accept()
                await websocket.send_text("ready")
                await websocket.receive_text()  # the client never writes

            @app.websocket("/stubborn")
            async def stubborn(websocket: WebSocket):
                await websocket.accept()
                await websocket.send_text("ready")
                while True:  # ignores everything: only cancellation stops it
                    try:
                        await asyncio.sleep(3600)
                    except Exception:
                        pass
            """
        ),
        "--log-level",
        "info",
    )

    async def main() -> tuple[int | None, int | None, float]:
        idle = await connect(ws_url(server.url, "/idle"))
        stubborn = await connect(ws_url(server.url, "/stubborn"))
        assert await idle.recv() == "ready"
        assert await stubborn.recv() == "ready"
        stopping = time.perf_counter()
        server.terminate()
        codes = (await closed_code(idle), await closed_code(stubborn))
        exit_code = await asyncio.get_running_loop().run_in_executor(None, server.wait, 15)
        assert exit_code in (0, -15), server.output()  # uvicorn re-raises the signal it handled
        return codes[0], codes[1], time.perf_counter() - stopping

    idle_code, stubborn_code, elapsed = run(main())
    assert (idle_code, stubborn_code) == (1001, 1001)
    assert elapsed < 2 + 4, f"the server took {elapsed:.1f}s to exit with shutdown_timeout=2"
    output = server.output()
    assert "1 WebSocket handler(s) still running 2.0s after shutdown began; cancelling" in output, output
    assert "Exception in ASGI application" not in output, output


# --- limits before buffering, quiet refusals (under `tachyon run`) --------------------------------------------
LIMITED_APP = textwrap.dedent("""
    from tachyon_api import Tachyon, WebSocket

    app = Tachyon()  # websocket_max_size: 2 MiB, used by no route below


    async def echo_sizes(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await websocket.send_text(str(len(message.get("bytes") or message.get("text") or "")))


    app.add_websocket_route("/small", echo_sizes, max_message_size=64 * 1024)
    app.add_websocket_route("/large", echo_sizes, max_message_size=128 * 1024)
""")


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_tachyon_run_refuses_a_message_over_every_limit_before_buffering_it(serve_process: Any) -> None:
    """``tachyon run`` sets uvicorn's ``ws_max_size`` to the app's largest route limit (128 KiB here): six
    concurrent 15 MiB messages are refused from their frame header (1009) and the server's peak memory barely
    moves (with uvicorn's default, 16 MiB, each whole message was buffered first: about +100 MiB). Messages within the
    largest limit still reach the routes, which apply their own."""
    server = serve_process(LIMITED_APP)
    url = server.url.replace("http://", "ws://", 1)
    huge = b"x" * (15 * 1024 * 1024)

    async def scenario() -> tuple[list[Any], float]:
        async with connect(url + "/large", max_size=None) as ws:
            await ws.send(b"y" * (128 * 1024))  # exactly the largest limit: accepted by the server and the route
            assert await ws.recv() == str(128 * 1024)
        async with connect(url + "/small", max_size=None) as ws:
            await ws.send(b"y" * (100 * 1024))  # within the server's limit, over this route's: the app says 1009
            assert await closed_code(ws) == 1009

        async def oversize() -> Any:
            async with connect(url + "/small", max_size=None, write_limit=2**24) as ws:
                try:
                    await ws.send(huge)
                except ConnectionClosed:
                    pass
                return await closed_code(ws) if ws.close_code is None else ws.close_code

        before = _peak_rss_mib(server.proc.pid)
        codes = await asyncio.gather(*(oversize() for _ in range(6)))  # at once, as an attacker would
        return codes, _peak_rss_mib(server.proc.pid) - before

    codes, growth = run(scenario())
    assert codes == [1009] * 6
    assert growth < 32, f"the server's peak memory grew by {growth:.0f} MiB"


def test_invalid_utf8_text_frame_is_a_warning_without_traceback(serve_process: Any) -> None:
    """Under ``tachyon run``, a text frame that is not UTF-8 closes the socket with 1007 and logs one WARNING
    line, no ERROR and no traceback (any client could otherwise flood the logs and page someone)."""
    server = serve_process(LIMITED_APP)
    url = server.url.replace("http://", "ws://", 1)

    async def scenario() -> list[Any]:
        codes = []
        for _ in range(3):
            async with connect(url + "/small") as ws:
                await ws.send(b"\xff\xfe not UTF-8", text=True)
                codes.append(await closed_code(ws))
        return codes

    assert run(scenario()) == [1007] * 3
    server.terminate()
    server.wait(20)
    log = server.output()
    assert "Traceback" not in log and "ERROR" not in log, log
    warnings = [line for line in log.splitlines() if "Invalid UTF-8" in line]
    assert len(warnings) == 3 and all("WARNING" in line for line in warnings), log


CHAT = """
from tachyon_api import Tachyon, WebSocket

app = Tachyon()

@app.get("/chat")
def page():
    return {"page": "the chat"}

@app.websocket("/chat")
async def chat(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_text("welcome")
"""


def test_without_a_websocket_library_the_app_says_so_at_startup(
    serve_process: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """uvicorn alone serves a WebSocket handshake as a plain GET (the client sees "rejected: HTTP 200") and
    says so only then, naming ``uvicorn[standard]``. The app says it at startup, with our extra. The libraries
    are hidden from the server process by packages of the same names that fail to import, as absent ones do."""
    hidden = tmp_path / "hidden"
    for name in ("websockets", "wsproto"):
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
    path = os.pathsep.join([str(hidden), str(tmp_path), str(ROOT)])
    server = serve_process(CHAT, env={"PYTHONPATH": path})
    output = server.output()  # the port is open: startup is over
    assert (
        "This app has WebSocket routes (/chat), but no WebSocket library is installed for uvicorn (websockets or "
        "wsproto): every WebSocket connection will be refused. Install the websockets extra: "
        f"pip install -e '{ROOT}[websockets]'"
    ) in output, output

    async def refused() -> None:
        with pytest.raises(InvalidStatus) as rejected:
            await connect(ws_url(server.url, "/chat"))
        assert rejected.value.response.status_code == 200  # the GET route answered the handshake

    run(refused())
    served = serve_process(CHAT)  # the same app with the libraries: no warning, and the socket opens

    async def welcomed() -> None:
        async with connect(ws_url(served.url, "/chat")) as websocket:
            assert await websocket.recv() == "welcome"

    run(welcomed())
    assert "WebSocket library" not in served.output()

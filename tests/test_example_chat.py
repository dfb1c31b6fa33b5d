"""The chat room example (examples/chat.py): in-process with the test client, and over uvicorn with the
``websockets`` client."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tachyon_api import WebSocketDisconnect

from .conftest import client_for, serve, wait_until


@pytest.fixture
def chat() -> Any:
    """A fresh copy of the example module, so rooms and visits do not leak between tests."""
    import examples.chat

    return importlib.reload(examples.chat)


def test_members_hear_each_other_and_joins_and_departures(chat: Any) -> None:
    client = client_for(chat.app)
    with client.websocket_connect("/rooms/lobby?name=ann") as ann:
        assert ann.receive_json() == {"from": "system", "text": "ann joined"}
        with client.websocket_connect("/rooms/lobby?name=bob") as bob:
            assert bob.receive_json() == {"from": "system", "text": "bob joined"}
            assert ann.receive_json() == {"from": "system", "text": "bob joined"}
            assert client.get("/rooms/lobby").json() == {"room": "lobby", "members": ["ann", "bob"]}
            bob.send_text("hi ann")
            assert ann.receive_json() == bob.receive_json() == {"from": "bob", "text": "hi ann"}
            response = client.post("/rooms/lobby/announce", json={"text": "closing soon"})
            assert response.json() == {"delivered": 2}
            assert ann.receive_json() == bob.receive_json() == {"from": "system", "text": "closing soon"}
        assert ann.receive_json() == {"from": "system", "text": "bob left"}
    visits = client.get("/visits").json()  # recorded by a background task after each socket closed
    assert [(v["name"], v["messages"]) for v in visits] == [("bob", 1), ("ann", 0)]
    assert client.get("/rooms/lobby").json() == {"room": "lobby", "members": []}


def test_bad_or_taken_names_are_refused_before_accept(chat: Any) -> None:
    client = client_for(chat.app)
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect("/rooms/lobby?name=<script>"):
            pass
    assert refused.value.code == 1008
    with client.websocket_connect("/rooms/lobby?name=ann") as ann:
        ann.receive_json()
        with pytest.raises(WebSocketDisconnect) as taken:
            with client.websocket_connect("/rooms/lobby?name=ann"):
                pass
        assert (taken.value.code, taken.value.reason) == (4009, "'ann' is already in 'lobby'")
    assert client.post("/rooms/empty/announce", json={"text": "anyone?"}).status_code == 404


def test_tachyon_routes_lists_the_websocket_route(capsys: pytest.CaptureFixture[str]) -> None:
    from tachyon_api.cli import main

    main(["routes", "examples.chat:app"])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["WEBSOCKET", "/rooms/{room}", "chat"] in lines
    assert ["POST", "/rooms/{room}/announce", "announce"] in lines


def test_a_conversation_over_uvicorn(chat: Any) -> None:
    with serve(chat.app) as url:
        base = url.replace("http://", "ws://")

        async def talk() -> list[Any]:
            async with connect(f"{base}/rooms/r1?name=ann") as ann:
                await ann.recv()  # ann joined
                async with connect(f"{base}/rooms/r1?name=bob") as bob:
                    await bob.recv()  # bob joined
                    await ann.recv()
                    await ann.send("hello bob")
                    return [await bob.recv(), await ann.recv()]

        received = asyncio.run(asyncio.wait_for(talk(), 10))
        assert received == ['{"from":"ann","text":"hello bob"}'] * 2
        assert wait_until(lambda: len(httpx.get(f"{url}/visits").json()) == 2, 5)
        assert "<title>Tachyon chat</title>" in httpx.get(url).text


def test_the_example_extra_brings_a_websocket_library_for_uvicorn() -> None:
    """The README's first command installs the `example` extra; the chat room needs uvicorn to speak
    WebSocket, which it does only with `websockets` or `wsproto` installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    example = [
        Requirement(line).name
        for line in metadata.requires("tachyon-api-next") or []
        if Requirement(line).marker is not None and Requirement(line).marker.evaluate({"extra": "example"})
    ]
    assert {"websockets", "wsproto"} & set(example), example

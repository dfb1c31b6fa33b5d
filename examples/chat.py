"""A small chat room over WebSockets: ``tachyon run examples.chat:app``, then open http://127.0.0.1:8000/.

- ``/rooms/{room}?name=ann`` is the socket: every message a member sends reaches every member of the room,
  as ``{"from": ..., "text": ...}``; joins and departures are announced the same way, from ``"system"``.
- ``GET /rooms/{room}`` lists who is there; ``POST /rooms/{room}/announce`` speaks to a room from HTTP.
- When a member leaves, a background task records the visit (``GET /visits``): it runs after the socket is
  closed, like any task after a response.

One process holds the rooms in memory; several workers would need a shared broker (Redis pub/sub) instead.
"""

from __future__ import annotations

import asyncio
import re
import time

from tachyon_api import (
    BackgroundTasks,
    HTTPException,
    Query,
    Struct,
    Tachyon,
    WebSocket,
    WebSocketException,
    injectable,
)
from tachyon_api.responses import HTMLResponse

app = Tachyon(websocket_max_size=4096)  # chat lines, not files

NAME = re.compile(r"^[\w .-]{1,32}$")


@injectable
class Rooms:
    """The members of every room (one instance per app: ``@injectable`` is a singleton by default)."""

    def __init__(self) -> None:
        self.members: dict[str, dict[str, WebSocket]] = {}
        self.visits: list[dict[str, object]] = []

    def join(self, room: str, name: str, websocket: WebSocket) -> None:
        members = self.members.setdefault(room, {})
        if name in members:
            raise WebSocketException(4009, f"{name!r} is already in {room!r}")
        members[name] = websocket

    def leave(self, room: str, name: str) -> None:
        members = self.members.get(room, {})
        members.pop(name, None)
        if not members:
            self.members.pop(room, None)

    async def broadcast(self, room: str, sender: str, text: str) -> int:
        """Send to every member at once; a member whose socket fails is dropped by its own handler."""
        sockets = list(self.members.get(room, {}).values())
        message = {"from": sender, "text": text}
        await asyncio.gather(*(ws.send_json(message) for ws in sockets), return_exceptions=True)
        return len(sockets)


def record_visit(rooms: Rooms, room: str, name: str, joined: float, messages: int) -> None:
    """A background task: runs after the member's socket is closed."""
    rooms.visits.append({"room": room, "name": name, "seconds": round(time.time() - joined, 3), "messages": messages})


@app.websocket("/rooms/{room}")
async def chat(websocket: WebSocket, room: str, rooms: Rooms, tasks: BackgroundTasks, name: str = Query()) -> None:
    # Refused before accept: a missing name (by the framework) or a bad one with 1008, a taken one with 4009.
    if not NAME.match(name):
        raise WebSocketException(1008, "A name is 1 to 32 letters, digits, spaces, dots or dashes")
    rooms.join(room, name, websocket)
    joined, sent = time.time(), 0
    try:
        await websocket.accept()
        await rooms.broadcast(room, "system", f"{name} joined")
        async for text in websocket.iter_text():
            sent += 1
            await rooms.broadcast(room, name, text)
    finally:
        rooms.leave(room, name)
        tasks.add_task(record_visit, rooms, room, name, joined, sent)
    await rooms.broadcast(room, "system", f"{name} left")


class Announcement(Struct):
    text: str


@app.get("/rooms/{room}")
def members(room: str, rooms: Rooms) -> dict[str, object]:
    return {"room": room, "members": sorted(rooms.members.get(room, {}))}


@app.post("/rooms/{room}/announce")
async def announce(room: str, announcement: Announcement, rooms: Rooms) -> dict[str, int]:
    if room not in rooms.members:
        raise HTTPException(404, "Nobody is in this room")
    return {"delivered": await rooms.broadcast(room, "system", announcement.text)}


@app.get("/visits")
def visits(rooms: Rooms) -> list[dict[str, object]]:
    return rooms.visits


PAGE = """<!doctype html>
<title>Tachyon chat</title>
<form id=join>Room <input id=room value=lobby> Name <input id=name value=guest> <button>Join</button></form>
<pre id=log></pre>
<form id=say><input id=text size=60 autocomplete=off> <button>Send</button></form>
<script>
let ws;
const log = (line) => document.getElementById("log").textContent += line + "\\n";
document.getElementById("join").onsubmit = (e) => {
  e.preventDefault();
  const room = encodeURIComponent(document.getElementById("room").value);
  const name = encodeURIComponent(document.getElementById("name").value);
  ws = new WebSocket(`${location.origin.replace("http", "ws")}/rooms/${room}?name=${name}`);
  ws.onmessage = (m) => { const d = JSON.parse(m.data); log(`${d.from}: ${d.text}`); };
  ws.onclose = (c) => log(`-- closed (${c.code}${c.reason ? ": " + c.reason : ""})`);
};
document.getElementById("say").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (ws && input.value) { ws.send(input.value); input.value = ""; }
};
</script>
"""


@app.get("/")
def page() -> HTMLResponse:
    return HTMLResponse(PAGE)

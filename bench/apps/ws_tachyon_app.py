"""The WebSocket echo of bench/websocket.py: ours."""

from tachyon_api import Tachyon, WebSocket, WebSocketDisconnect

app = Tachyon()


@app.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass

"""WebSocket echo round trips per second: ours against Starlette's WebSocket, on the same uvicorn.

    python bench/websocket.py [--duration 8] [--rounds 3] [--connections 64] [--size 32]

Serves bench/apps/ws_tachyon_app.py and bench/apps/ws_starlette_app.py (the same echo handler) in turn
under uvicorn with the repository's .venv (1 worker, uvloop, httptools, the websockets-sansio protocol,
pinned to CPU 0). The load comes from this script's own client, pinned to CPU 1: ``--connections`` sockets
that each send a ``--size``-byte text message, wait for the echo and send again. The client is a bare asyncio
protocol on uvloop writing one pre-built masked frame per round trip, so it costs far less than the server
and the figure measures the server. Prints a markdown table (median round trips per second) and writes
bench/results/websocket-latest.md. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ports import free_port, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
CONTENDERS = {"ours": "ws_tachyon_app:app", "starlette": "ws_starlette_app:app"}


# --- the client (run as a subprocess with --client) ---------------------------------------------------------
def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame (FIN, opcode 1) with a fixed mask: the server unmasks it, it does not judge it."""
    assert len(payload) < 126
    mask = b"\x37\xfa\x21\x3d"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


class EchoClient(asyncio.Protocol):
    def __init__(
        self, host: str, port: int, frame: bytes, reply_size: int, counter: list[int], ready: asyncio.Future
    ) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.handshake = (
            f"GET /echo HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.frame = frame
        self.reply_size = reply_size
        self.counter = counter
        self.ready = ready
        self.buffer = b""
        self.upgraded = False
        self.pending = 0
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.handshake)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buffer += data
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.upgraded = True
            if not self.ready.done():
                self.ready.set_result(None)
            data = rest
            self.transport.write(self.frame)  # type: ignore[attr-defined]
        self.pending += len(data)
        while self.pending >= self.reply_size:
            self.pending -= self.reply_size
            self.counter[0] += 1
            if self.running:
                self.transport.write(self.frame)  # type: ignore[attr-defined]


async def drive(port: int, connections: int, size: int, duration: float, warmup: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    payload = (b"x" * size)[:size]
    frame = masked_text_frame(payload)
    counter = [0]
    clients = []
    for _ in range(connections):
        ready = loop.create_future()
        _, client = await loop.create_connection(
            lambda ready=ready: EchoClient("127.0.0.1", port, frame, 2 + size, counter, ready), "127.0.0.1", port
        )
        await asyncio.wait_for(ready, 10)
        clients.append(client)
    await asyncio.sleep(warmup)
    start_count, start = counter[0], time.perf_counter()
    await asyncio.sleep(duration)
    count, elapsed = counter[0] - start_count, time.perf_counter() - start
    for client in clients:
        client.running = False
        client.transport.close()
    return {"round_trips": count, "seconds": elapsed, "per_second": count / elapsed}


def client_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(drive(args.port, args.connections, args.size, args.duration, args.warmup))
    print(json.dumps(result))


# --- the harness --------------------------------------------------------------------------------------------
def one_round(target: str, args: argparse.Namespace) -> float:
    port = free_port()
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            str(PYTHON),
            "-m",
            "uvicorn",
            target,
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "websockets-sansio",
            "--ws-ping-interval",
            "600",
            "--log-level",
            "error",
            "--no-access-log",
            "--app-dir",
            str(HERE / "apps"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port)
        out = subprocess.run(
            [
                "taskset",
                "-c",
                "1",
                str(PYTHON),
                __file__,
                "--client",
                "--port",
                str(port),
                "--connections",
                str(args.connections),
                "--size",
                str(args.size),
                "--duration",
                str(args.duration),
                "--warmup",
                str(args.warmup),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)["per_second"]
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
        if err.strip():
            print(err, file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="message size in bytes (< 126)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return
    results: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for index in range(args.rounds):
        for name, target in CONTENDERS.items():  # alternating, so drift affects both alike
            figure = one_round(target, args)
            results[name].append(figure)
            print(f"round {index + 1}: {name:<9} {figure:>10,.0f} round trips/s", flush=True)
    ours, theirs = (statistics.median(results[name]) for name in CONTENDERS)
    table = "\n".join(
        [
            (
                f"WebSocket echo, {args.connections} connections, {args.size}-byte text messages, "
                f"{args.rounds} rounds x {args.duration:g} s, median round trips per second"
            ),
            "",
            "| ours | Starlette WebSocket | ours / Starlette |",
            "|---:|---:|---:|",
            f"| **{ours:,.0f}** | {theirs:,.0f} | {ours / theirs:.2f}x |",
            "",
            f"Command: python bench/websocket.py {' '.join(sys.argv[1:])}",
        ]
    )
    print(table)
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "websocket-latest.md").write_text(table + "\n")


if __name__ == "__main__":
    main()

"""Loopback helpers shared by the benchmark scripts (``bench/`` is on ``sys.path`` when they run): ports, a
private Redis, and wrk posting to an endpoint."""

import re
import socket
import subprocess
import time
from pathlib import Path

POST_EMPTY = Path(__file__).resolve().parent / "lua" / "post_empty.lua"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def start_redis(server: str, workdir: str, pin: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    """A private Redis without persistence (the figures measure the software, not a disk) on a free loopback port,
    started with ``server`` (redis-server or Valkey's) under ``pin`` (a ``taskset`` prefix) and answering."""
    port = free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    redis = subprocess.Popen([*(pin or []), *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return redis, port


def post_load(port: int, path: str, duration: int) -> float:
    """Requests/s ``wrk -t1 -c32`` gets POSTing (no body) to ``path`` for ``duration`` seconds; every answer must be
    a 2xx."""
    command = ["wrk", "-t1", "-c32", f"-d{duration}s", "-s", str(POST_EMPTY), f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{path}: errors under load:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

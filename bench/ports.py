"""Loopback helpers shared by the benchmark scripts (``bench/`` is on ``sys.path`` when they run): ports, and a
private Redis."""

import socket
import subprocess
import time


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

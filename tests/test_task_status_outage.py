"""The status routes while Redis is down: a logged 503 ``TASK_BACKEND_UNAVAILABLE`` with ``Retry-After`` (never a
500), an open event stream that ends cleanly saying why, and answers again once Redis is back. Over real parts:
a redis-server of the test's own, stopped and started again, and the apps under uvicorn, spoken to over HTTP."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import pytest

from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend
from tachyon_api.exceptions import TaskBackendUnavailable
from tachyon_api.responses import Accepted
from tachyon_api.tasks import RedisTaskStore, task_status_router

from .conftest import RedisServer, assert_error_shape, serve, wait_until


def import_rows(rows: int) -> int:
    """A durable task: it stays queued (no worker runs in these tests)."""
    return rows


class Stream:
    """An SSE client in a thread that keeps every line of ``url``'s stream until the server ends it."""

    def __init__(self, url: str) -> None:
        self.lines: list[str] = []
        self.error: BaseException | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, args=(url,), daemon=True).start()

    def _read(self, url: str) -> None:
        try:
            with httpx.stream("GET", url, timeout=60) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    self.lines.append(line)
        except BaseException as exc:  # a stream cut short (no last chunk) is an error here: kept for the test
            self.error = exc
        finally:
            self.ended.set()

    def data(self) -> list[str]:
        return [line[6:] for line in self.lines if line.startswith("data: ")]


def make_app(**options: Any) -> tuple[Tachyon, list[str]]:
    """An app with the status routes, an endpoint that stores a task, and one whose code asks ``app.tasks``."""
    app = Tachyon(**options)
    app.include_router(task_status_router(public=True))
    seen: list[str] = []

    @app.post("/import")
    def post_import(background_tasks: BackgroundTasks) -> Any:
        return Accepted(background_tasks.add_task(import_rows, 3))

    @app.get("/ask/{task_id}")
    async def ask(task_id: str) -> Any:
        for call in (app.tasks.get, app.tasks.cancel):
            try:
                await call(task_id)
            except TaskBackendUnavailable as exc:
                seen.append(f"{call.__name__}: {exc.code}")
        return {"seen": len(seen)}

    return app, seen


def assert_unavailable(response: httpx.Response) -> None:
    body = assert_error_shape(response, {503}, "TASK_BACKEND_UNAVAILABLE")
    assert body["error"] != "Background task could not be stored; try again later"  # says what failed: the status
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["content-type"].startswith("application/json")


def assert_logged(caplog: pytest.LogCaptureFixture, action: str) -> None:
    logged = [
        r
        for r in caplog.records
        if r.name == "tachyon_api.background"
        and r.levelno == logging.ERROR
        and r.getMessage().startswith(f"Could not {action} the status of task")
    ]
    assert logged and all(r.exc_info for r in logged), [r.getMessage() for r in caplog.records]


def test_rq_tier_status_routes_answer_503_while_redis_is_down_and_again_after(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tachyon_api")
    backend = RQBackend(redis_server.url, queue="outage-status", socket_timeout=1.0)
    app, seen = make_app(task_backend=backend)
    with serve(app) as url:
        accepted = httpx.post(f"{url}/import")
        assert accepted.status_code == 202
        location = url + accepted.headers["location"]
        assert httpx.get(location).json()["state"] == "queued"
        stream = Stream(location + "/events")
        assert wait_until(stream.data, 10)

        redis_server.stop()
        assert_unavailable(httpx.get(location))
        assert_unavailable(httpx.get(location + "/events"))
        assert_unavailable(httpx.delete(location))
        assert_logged(caplog, "read")
        # The open stream ends, cleanly (a complete chunked body), with an event that says why.
        assert stream.ended.wait(30), stream.lines
        assert stream.error is None, repr(stream.error)
        assert "event: unavailable" in stream.lines
        assert '"code":"TASK_BACKEND_UNAVAILABLE"' in stream.data()[-1]
        assert any(line.startswith("retry: ") for line in stream.lines)
        # User code asking app.tasks gets the documented exception.
        task_id = accepted.json()["id"]
        assert httpx.get(f"{url}/ask/{task_id}").json() == {"seen": 2}
        assert seen == ["get: TASK_BACKEND_UNAVAILABLE", "cancel: TASK_BACKEND_UNAVAILABLE"]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "Unhandled" in r.getMessage()]

        redis_server.start()  # empty again: the old task is gone, new ones are served
        assert_error_shape(httpx.get(location), {404}, "TASK_NOT_FOUND")
        again = url + httpx.post(f"{url}/import").headers["location"]
        assert httpx.get(again).json()["state"] == "queued"
        fresh = Stream(again + "/events")
        assert wait_until(fresh.data, 10)
        cancelled = httpx.delete(again)
        assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
        assert fresh.ended.wait(10) and '"state":"cancelled"' in fresh.data()[-1]


def test_shared_in_process_records_answer_503_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Two web apps share in-process records through Redis: the one that did not run a task asks Redis for it,
    so with Redis down it answers 503 (it cannot know the task); the one running it still answers from memory."""
    caplog.set_level(logging.INFO, "tachyon_api")
    runs = RedisTaskStore(redis_server.url, socket_timeout=1.0)
    other = RedisTaskStore(redis_server.url, socket_timeout=1.0)
    gate = threading.Event()
    app, _ = make_app(task_store=runs)
    peer, _ = make_app(task_store=other)

    @app.post("/wait")
    def post_wait(background_tasks: BackgroundTasks) -> Any:
        return Accepted(background_tasks.add_task(gate.wait, 30))

    try:
        with serve(app) as url, serve(peer) as peer_url:
            path = httpx.post(f"{url}/wait").headers["location"]
            assert wait_until(lambda: httpx.get(peer_url + path).json()["state"] == "running", 10)
            stream = Stream(peer_url + path + "/events")
            assert wait_until(stream.data, 10)

            redis_server.stop()
            assert_unavailable(httpx.get(peer_url + path))
            assert_unavailable(httpx.get(peer_url + path + "/events"))
            assert_unavailable(httpx.delete(peer_url + path))
            assert_logged(caplog, "read")
            assert httpx.get(url + path).json()["state"] == "running"  # its own process answers from memory
            assert stream.ended.wait(30), stream.lines
            assert stream.error is None and "event: unavailable" in stream.lines

            redis_server.start()
            assert_error_shape(httpx.get(peer_url + path), {404}, "TASK_NOT_FOUND")  # Redis restarted empty
            gate.set()
            assert wait_until(lambda: httpx.get(url + path).json()["state"] == "succeeded", 10)
    finally:
        gate.set()

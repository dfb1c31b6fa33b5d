"""Storing durable tasks, on a real redis-server under real uvicorn: what a request's outcome says about Redis.

These tests look only at behaviour (HTTP answers, the jobs in the queue, the timing of other requests), not at
how ``RQBackend`` talks to Redis, so they hold for any way of storing that keeps the documented promises: a
2xx means the request's durable tasks are stored, all of them; a failed request stores none; a Redis that does
not answer costs the requests that store tasks at most the socket timeout, and costs the others nothing. The
web process stays in this process (uvicorn in a thread) so the tests can read the queue and the logs directly.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tachyon_api import BackgroundTasks, HTTPException, Tachyon
from tachyon_api.background import RQBackend

from .conftest import RedisServer, assert_error_shape, serve, timed

BG_LOGGER = "tachyon_api.background"


def durable_job(tag: str) -> None:
    """Stored by the requests below and never run (no worker): the tests read the queue."""


def stored_tags(backend: RQBackend) -> list[str]:
    return sorted(job.args[0][:20] for job in backend.queue.get_jobs())


def test_a_paused_redis_delays_only_the_request_that_stores_a_task(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A redis-server stopped with SIGSTOP accepts connections (the kernel does) but never answers, so the
    request that stores a task waits for the socket timeout and then gets the documented 503 for a lost
    answer (``TASK_OUTCOME_UNKNOWN``: the write was sent); meanwhile requests that store nothing, async and
    sync, are served as usual.

    Mutant caught: a store that blocks the event loop while it waits for Redis, such as RQ's synchronous
    ``enqueue`` called on the loop (every request then waits for the socket timeout, and the pings as long).
    """
    url, redis_proc = redis_server.url, redis_server.proc
    assert redis_proc is not None
    socket_timeout = 1.0
    backend = RQBackend(url, queue="paused", socket_timeout=socket_timeout)
    app = Tachyon(task_backend=backend)

    @app.post("/order/{tag}")
    def order(tag: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(durable_job, tag)
        return {"ok": True}

    @app.get("/ping")
    async def ping():
        return {"pong": True}

    @app.get("/ping-sync")
    def ping_sync():
        return {"pong": True}

    result: dict[str, Any] = {}

    def durable_request() -> None:
        result["response"], result["took"] = timed("POST", f"{base}/order/during")
        result["end"] = time.perf_counter()

    pings: list[tuple[float, float]] = []  # (when it started, seconds taken)
    with serve(app) as base, caplog.at_level(logging.ERROR, logger=BG_LOGGER), httpx.Client(base_url=base) as client:
        assert timed("POST", f"{base}/order/before")[0].status_code == 200  # connected, one job stored
        redis_proc.send_signal(signal.SIGSTOP)
        try:
            thread = threading.Thread(target=durable_request)
            thread.start()
            time.sleep(0.1)  # the request is waiting for Redis now
            while thread.is_alive() and len(pings) < 400:
                for path in ("/ping", "/ping-sync"):
                    started = time.perf_counter()
                    assert client.get(path).json() == {"pong": True}
                    pings.append((started, time.perf_counter() - started))
            thread.join(30)
        finally:
            redis_proc.send_signal(signal.SIGCONT)

    response = result["response"]
    assert_error_shape(response, {503}, "TASK_OUTCOME_UNKNOWN")
    assert socket_timeout * 0.9 <= result["took"] < socket_timeout * 4 + 2, result["took"]
    during = [took for started, took in pings if started < result["end"]]
    assert len(during) >= 4, "the other requests were not served while the durable one waited"
    assert max(during) < 0.4, f"a request that stores nothing took {max(during):.2f}s while Redis was paused"
    wanted = "durable task(s) durable_job of request POST /order/during"
    failures = [r for r in caplog.records if wanted in r.getMessage()]
    assert failures and failures[0].exc_info is not None
    # The 2xx before the pause means stored. This 503 says the outcome is unknown: the write already sent
    # waits in the paused server's socket and may still run when it resumes.
    assert "before" in stored_tags(backend)


def test_an_endpoint_that_raises_stores_nothing(redis_url: str) -> None:
    """The tasks of a request that fails are not stored, whatever the failure (as in-process tasks do not
    run): an ``HTTPException`` or a crash after ``add_task``.

    Mutant caught: ``BackgroundTasks.add_task`` storing a durable task at once instead of after the endpoint
    returned.
    """
    backend = RQBackend(redis_url, queue="raises")
    app = Tachyon(task_backend=backend)

    @app.post("/conflict")
    def conflict(background_tasks: BackgroundTasks):
        background_tasks.add_task(durable_job, "conflict")
        raise HTTPException(409, "already there")

    @app.post("/crash")
    async def crash(background_tasks: BackgroundTasks):
        background_tasks.add_task(durable_job, "crash")
        raise RuntimeError("boom")

    @app.post("/ok")
    def ok(background_tasks: BackgroundTasks):
        background_tasks.add_task(durable_job, "ok")
        return {"ok": True}

    try:
        with serve(app) as base:
            assert timed("POST", f"{base}/conflict")[0].status_code == 409
            crashed = timed("POST", f"{base}/crash")[0]
            assert crashed.status_code == 500 and crashed.json()["code"] == "INTERNAL_SERVER_ERROR"
            assert timed("POST", f"{base}/ok")[0].status_code == 200
        assert stored_tags(backend) == ["ok"]
    finally:
        backend.queue.empty()


def test_the_durable_tasks_of_one_request_are_stored_all_or_none(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses writes past ``maxmemory`` (policy ``noeviction``): with 1 MB of room, a request storing
    a small task and then one with a 2 MB argument (random, so RQ's compression keeps it big) gets a 503, and the
    small task is not stored either, so a client that retries makes no duplicate. The same small task alone is
    then stored: the room was there.

    Mutant caught: ``RQBackend.store`` storing a request's tasks one by one instead of in one write (one
    script run): the small task is stored, the big one refused, and the client gets a 503 for a request half
    stored.
    """
    backend = RQBackend(redis_server.url, queue="all-or-none")
    app = Tachyon(task_backend=backend)

    @app.post("/pair")
    def pair(big: bool, background_tasks: BackgroundTasks):
        background_tasks.add_task(durable_job, "small")
        if big:
            background_tasks.add_task(durable_job, "big" + base64.b64encode(os.urandom(2_000_000)).decode())
        return {"ok": True}

    redis = backend.redis
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", redis.info("memory")["used_memory"] + 1_000_000)
    with serve(app) as base, caplog.at_level(logging.ERROR, logger=BG_LOGGER):
        refused = timed("POST", f"{base}/pair?big=true")[0]
        assert_error_shape(refused, {503}, "TASK_BACKEND_UNAVAILABLE")
        assert stored_tags(backend) == []
        assert timed("POST", f"{base}/pair?big=false")[0].status_code == 200
    assert stored_tags(backend) == ["small"]
    assert any("maxmemory" in str(r.exc_info[1]) for r in caplog.records if r.exc_info), caplog.text


def test_a_backend_set_after_the_routes_makes_their_tasks_durable(redis_url: str) -> None:
    """An endpoint whose only parameter is ``BackgroundTasks`` has a handler of its own (no per-request
    context); like every other endpoint it reads the app's backend when a request comes, so a backend set
    after the routes were registered (in a startup hook, say) makes its tasks durable too.

    Mutant caught: the tasks-only handler taking ``app.task_backend`` once, when the route is registered.
    """
    app = Tachyon()

    @app.post("/only-tasks")
    def only_tasks(background_tasks: BackgroundTasks):
        background_tasks.add_task(durable_job, "only-tasks")
        return {"ok": True}

    @app.post("/with-path/{tag}")
    def with_path(tag: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(durable_job, tag)
        return {"ok": True}

    backend = app.task_backend = RQBackend(redis_url, queue="late-backend")
    try:
        with serve(app) as base:
            assert timed("POST", f"{base}/only-tasks")[0].status_code == 200
            assert timed("POST", f"{base}/with-path/with-path")[0].status_code == 200
        assert sorted(stored_tags(backend)) == ["only-tasks", "with-path"]
    finally:
        backend.queue.empty()

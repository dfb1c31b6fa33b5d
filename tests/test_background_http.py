"""Background tasks over real HTTP (uvicorn in a thread, lifespan on).

Everything here is about timing, blocking and threads, so it runs against a real server: the response is sent
before any task starts, the ASGI call returns at once, sync tasks never block the loop or the endpoints' pool,
context variables reach the tasks, the runner limits concurrency and applies its overflow policy, and a task may
call its own server back.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tachyon_api import BackgroundTask, BackgroundTasks, Depends, HTTPException, Tachyon
from tachyon_api.responses import StreamingResponse

from .conftest import CallTimer, serve, timed, wait_until

BG_LOGGER = "tachyon_api.background"


# --- 1 and 6: the response goes first, the ASGI call returns at once ------------------------------------------


@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_one_second_task_does_not_delay_response_nor_asgi_call(task_kind: str) -> None:
    done: list[tuple[str, float, float]] = []
    calls: list[dict[str, Any]] = []

    def slow_sync(label: str) -> None:
        started = time.perf_counter()
        time.sleep(1.0)
        done.append((label, started, time.perf_counter()))

    async def slow_async(label: str) -> None:
        started = time.perf_counter()
        await asyncio.sleep(1.0)
        done.append((label, started, time.perf_counter()))

    task = slow_sync if task_kind == "sync" else slow_async
    app = Tachyon()
    app.add_middleware(CallTimer, calls=calls)

    @app.post("/sync-endpoint")
    def sync_endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(task, "from-sync")
        return {"ok": True}

    @app.post("/async-endpoint")
    async def async_endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(task, "from-async")
        return {"ok": True}

    with serve(app) as url:
        r1, t1 = timed("POST", f"{url}/sync-endpoint")
        r2, t2 = timed("POST", f"{url}/async-endpoint")
        assert r1.status_code == r2.status_code == 200
        assert r1.json() == r2.json() == {"ok": True}
        assert t1 < 0.3, f"the sync endpoint's response waited for the task ({t1:.2f}s)"
        assert t2 < 0.3, f"the async endpoint's response waited for the task ({t2:.2f}s)"
        assert done == [], "a 1 s task cannot be done yet"
        # The ASGI call itself returned as soon as the response was sent (uvicorn runs the lifespan).
        assert wait_until(lambda: len(calls) == 2, 1)
        for call in calls:
            assert call["end"] - call["start"] < 0.2, f"ASGI call of {call['path']} held for the task"
        # ...and the tasks really ran to the end afterwards.
        assert wait_until(lambda: len(done) == 2, 3)

    assert sorted(label for label, _, _ in done) == ["from-async", "from-sync"]
    sent = {c["path"]: c["sent"] for c in calls}
    for label, started, finished in done:
        path = "/sync-endpoint" if label == "from-sync" else "/async-endpoint"
        assert started >= sent[path], "the task started before the response was fully sent"
        assert finished - started >= 0.95


def test_tasks_start_only_after_the_last_streamed_chunk() -> None:
    events: list[tuple[str, float]] = []
    calls: list[dict[str, Any]] = []
    app = Tachyon()
    app.add_middleware(CallTimer, calls=calls)

    def record(label: str) -> None:
        events.append((label, time.perf_counter()))

    async def arecord(label: str) -> None:
        events.append((label, time.perf_counter()))

    @app.get("/stream")
    async def stream(background_tasks: BackgroundTasks):
        async def chunks():
            for i in range(3):
                events.append((f"chunk{i}", time.perf_counter()))
                yield f"part{i};"
                await asyncio.sleep(0.05)

        background_tasks.add_task(record, "injected")
        return StreamingResponse(chunks(), media_type="text/plain", background=BackgroundTask(arecord, "response"))

    with serve(app) as url:
        response = httpx.get(f"{url}/stream")
        assert response.text == "part0;part1;part2;"
        assert wait_until(lambda: len(events) == 5, 3)

    labels = [label for label, _ in events]
    # Response tasks run first, then the injected ones; both after every chunk.
    assert labels == ["chunk0", "chunk1", "chunk2", "response", "injected"]
    sent = calls[0]["sent"]
    assert sent is not None
    assert all(at >= sent for label, at in events if label in ("response", "injected"))


def test_without_lifespan_the_call_runs_the_tasks_after_sending_the_response() -> None:
    """uvicorn with lifespan off: nobody owns detached tasks, so the ASGI call runs them itself, after the
    response went out; the client does not wait and nothing is lost."""
    calls: list[dict[str, Any]] = []
    done: list[float] = []

    async def slow() -> None:
        await asyncio.sleep(0.4)
        done.append(time.perf_counter())

    app = Tachyon()
    app.add_middleware(CallTimer, calls=calls)

    @app.post("/slow")
    def endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(slow)
        return {"ok": True}

    with serve(app, lifespan="off") as url:
        response, elapsed = timed("POST", f"{url}/slow")
        assert response.json() == {"ok": True}
        assert elapsed < 0.3
        assert wait_until(lambda: len(calls) == 1, 2)

    assert len(done) == 1
    assert calls[0]["end"] - calls[0]["start"] >= 0.35
    assert calls[0]["sent"] <= done[0] - 0.35


# --- 2: order, failures, logging, hooks, BaseException ---------------------------------------------------------


def test_tasks_run_in_order_and_failures_are_isolated_logged_and_hooked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=BG_LOGGER)
    results: list[str] = []
    running = {"now": 0, "max": 0}
    sync_failures: list[Any] = []
    async_failures: list[Any] = []

    def step(label: str, pause: float = 0.0) -> None:
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        time.sleep(pause)
        results.append(label)
        running["now"] -= 1

    async def astep(label: str, pause: float = 0.0) -> None:
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        await asyncio.sleep(pause)
        results.append(label)
        running["now"] -= 1

    def explode_sync() -> None:
        raise ValueError("sync task broke")

    async def explode_async() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async task broke")

    app = Tachyon()

    @app.on_task_error
    def sync_hook(failure):
        sync_failures.append(failure)

    async def async_hook(failure):
        async_failures.append(failure)

    app.on_task_error(async_hook)

    @app.post("/orders/{order_id}")
    def create(order_id: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(step, "first", 0.05)
        background_tasks.add_task(explode_sync)
        background_tasks.add_task(astep, "third", 0.05)
        background_tasks.add_task(explode_async).with_options(name="broken-async")
        background_tasks.add_task(step, "fifth")
        return {"order_id": order_id}

    with serve(app) as url:
        response, elapsed = timed("POST", f"{url}/orders/42")
        assert response.status_code == 200
        assert response.json() == {"order_id": "42"}
        assert elapsed < 0.3
        assert wait_until(lambda: len(results) == 3 and len(async_failures) == 2 and len(sync_failures) == 2, 3)

    assert results == ["first", "third", "fifth"]
    assert running["max"] == 1, "tasks of one request must run one after another"

    errors = [r for r in caplog.records if r.name == BG_LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 2
    by_name = {("explode_sync" if "explode_sync" in r.getMessage() else "broken-async"): r for r in errors}
    assert set(by_name) == {"explode_sync", "broken-async"}
    for record in errors:
        message = record.getMessage()
        assert "POST" in message and "/orders/42" in message
        assert record.exc_info is not None and record.exc_info[1] is not None
    assert isinstance(by_name["explode_sync"].exc_info[1], ValueError)
    assert isinstance(by_name["broken-async"].exc_info[1], RuntimeError)
    assert "sync task broke" in caplog.text and "Traceback" in caplog.text

    for failures in (sync_failures, async_failures):
        assert [f.task.name for f in failures] == [
            "test_tasks_run_in_order_and_failures_are_isolated_logged_and_hooked.<locals>.explode_sync",
            "broken-async",
        ]
        assert [type(f.exception) for f in failures] == [ValueError, RuntimeError]
        assert all(f.method == "POST" and f.path == "/orders/42" and f.attempts == 1 for f in failures)

    stats = app.background.stats()
    assert (stats.scheduled, stats.succeeded, stats.failed) == (5, 3, 2)


class Fatal(BaseException):
    """A BaseException subclass that is neither Exception nor a control-flow signal."""


def test_base_exceptions_from_tasks_are_failures_and_server_keeps_working(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    results: list[str] = []
    failures: list[Any] = []

    def fatal_sync() -> None:
        raise Fatal("sync fatal")

    async def fatal_async() -> None:
        raise Fatal("async fatal")

    def interrupt_sync() -> None:
        raise KeyboardInterrupt("sync interrupt")

    async def exit_async() -> None:
        raise SystemExit(3)

    async def after(label: str) -> None:
        results.append(label)

    app = Tachyon()
    app.on_task_error(failures.append)

    @app.post("/fatal")
    def fatal(background_tasks: BackgroundTasks):
        background_tasks.add_task(fatal_sync)
        background_tasks.add_task(fatal_async)
        background_tasks.add_task(interrupt_sync)
        background_tasks.add_task(exit_async)
        background_tasks.add_task(after, "still-runs")
        return {"ok": True}

    @app.get("/ping")
    async def ping():
        return {"pong": True}

    with serve(app) as url:
        assert httpx.post(f"{url}/fatal").status_code == 200
        assert wait_until(lambda: results == ["still-runs"] and len(failures) == 4, 3)
        # The server is alive and its runner still runs tasks.
        assert httpx.get(f"{url}/ping").json() == {"pong": True}
        assert httpx.post(f"{url}/fatal").status_code == 200
        assert wait_until(lambda: results == ["still-runs", "still-runs"] and len(failures) == 8, 3)

    assert [type(f.exception) for f in failures[:4]] == [Fatal, Fatal, KeyboardInterrupt, SystemExit]
    errors = [r for r in caplog.records if r.name == BG_LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 8 and all(r.exc_info for r in errors)
    assert app.background.stats().failed == 8


def test_base_exception_from_an_async_task_with_a_timeout_is_a_failure_too() -> None:
    """With a timeout the async task goes through asyncio.wait_for; a KeyboardInterrupt or SystemExit raised
    there must still be an ordinary task failure, not something that takes the server's loop down."""
    results: list[str] = []
    failures: list[Any] = []

    async def interrupt_async() -> None:
        raise KeyboardInterrupt("async interrupt")

    async def exit_async() -> None:
        raise SystemExit(4)

    async def after() -> None:
        results.append("after")

    app = Tachyon()
    app.on_task_error(failures.append)

    @app.post("/go")
    async def go(background_tasks: BackgroundTasks):
        background_tasks.add_task(interrupt_async).with_options(timeout=1)
        background_tasks.add_task(exit_async).with_options(timeout=1)
        background_tasks.add_task(after)
        return {"ok": True}

    @app.get("/ping")
    async def ping():
        return {"pong": True}

    with serve(app) as url:
        assert httpx.post(f"{url}/go").status_code == 200
        assert wait_until(lambda: results == ["after"], 2), "the task after the failing one did not run"
        assert httpx.get(f"{url}/ping", timeout=2).json() == {"pong": True}

    assert [type(f.exception) for f in failures] == [KeyboardInterrupt, SystemExit]


# --- 3: an endpoint that raises discards its tasks ------------------------------------------------------------


def test_tasks_of_a_failed_request_never_run() -> None:
    ran: list[str] = []

    def mark(label: str) -> None:
        ran.append(label)

    def dependency_adding_a_task(tasks: BackgroundTasks):
        tasks.add_task(mark, "from-dependency")
        return "dep"

    app = Tachyon()

    @app.post("/http-error")
    def http_error(background_tasks: BackgroundTasks):
        background_tasks.add_task(mark, "http-error")
        raise HTTPException(409, "conflict")

    @app.post("/crash")
    async def crash(background_tasks: BackgroundTasks):
        background_tasks.add_task(mark, "crash")
        raise ValueError("boom")

    @app.post("/invalid")
    def invalid(limit: int, dep: str = Depends(dependency_adding_a_task)):
        return {"limit": limit}

    @app.post("/ok")
    def ok(background_tasks: BackgroundTasks):
        background_tasks.add_task(mark, "ok")
        return {"ok": True}

    with serve(app) as url:
        assert httpx.post(f"{url}/http-error").status_code == 409
        assert httpx.post(f"{url}/crash").status_code == 500
        assert httpx.post(f"{url}/invalid?limit=abc").status_code == 422
        assert httpx.post(f"{url}/ok").status_code == 200
        assert wait_until(lambda: "ok" in ran, 2)
        time.sleep(0.1)

    assert ran == ["ok"]
    assert app.background.stats().scheduled == 1


# --- 4: sync tasks have their own bounded pool --------------------------------------------------------------


def test_sync_tasks_never_block_the_loop_nor_sync_endpoints() -> None:
    lock = threading.Lock()
    state = {"active": 0, "max": 0}
    task_threads: set[str] = set()
    endpoint_threads: set[str] = set()
    done: list[int] = []

    def busy(i: int) -> None:
        with lock:
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
            task_threads.add(threading.current_thread().name)
        time.sleep(0.4)  # blocking on purpose
        with lock:
            state["active"] -= 1
            done.append(i)

    # The endpoints' pool is as small as the tasks' pool: if tasks shared it, /sync-ping would wait.
    app = Tachyon(background_threads=2, thread_pool_size=2)

    @app.post("/work/{i}")
    def work(i: int, background_tasks: BackgroundTasks):
        background_tasks.add_task(busy, i)
        return {"i": i}

    @app.get("/sync-ping")
    def sync_ping():
        endpoint_threads.add(threading.current_thread().name)
        return {"pong": "sync"}

    @app.get("/ping")
    async def ping():
        return {"pong": "async"}

    with serve(app) as url:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda i: timed("POST", f"{url}/work/{i}"), range(8)))
        seen = [(r.status_code, round(t, 3)) for r, t in responses]
        assert all(r.status_code == 200 and t < 0.3 for r, t in responses), seen
        assert wait_until(lambda: state["active"] == 2, 2)
        for _ in range(3):
            r_async, t_async = timed("GET", f"{url}/ping")
            r_sync, t_sync = timed("GET", f"{url}/sync-ping")
            assert r_async.json() == {"pong": "async"} and r_sync.json() == {"pong": "sync"}
            assert t_async < 0.2, f"the event loop was blocked by sync tasks ({t_async:.2f}s)"
            assert t_sync < 0.2, f"a sync endpoint waited for sync tasks ({t_sync:.2f}s)"
        assert len(done) < 8, "the pings must have been measured while the tasks were busy"
        assert wait_until(lambda: len(done) == 8, 4)

    assert sorted(done) == list(range(8))
    assert state["max"] == 2, "background_threads=2 bounds the sync tasks running at once"
    assert task_threads and all(name.startswith("tachyon-task") for name in task_threads)
    assert endpoint_threads and not (endpoint_threads & task_threads)


# --- 5: context variables reach the tasks ---------------------------------------------------------------------

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
dep_async_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("dep_async_var", default=None)
dep_sync_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("dep_sync_var", default=None)
endpoint_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("endpoint_var", default=None)


class RequestIdMiddleware:
    """A pure ASGI middleware that sets ``request_id`` for the call and resets it when the call returns."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = dict(scope["headers"]).get(b"x-request-id", b"none").decode()
        token = request_id.set(value)
        try:
            await self.app(scope, receive, send)
        finally:
            request_id.reset(token)


def _snapshot() -> dict[str, Any]:
    return {
        "request_id": request_id.get(),
        "dep_async": dep_async_var.get(),
        "dep_sync": dep_sync_var.get(),
        "endpoint": endpoint_var.get(),
    }


@pytest.mark.parametrize("endpoint_kind", ["sync", "async"])
def test_context_variables_are_visible_in_sync_and_async_tasks(endpoint_kind: str) -> None:
    seen: dict[str, dict[str, Any]] = {}

    def sync_task() -> None:
        time.sleep(0.05)  # after the middleware reset its variable
        seen["sync"] = _snapshot()

    async def async_task() -> None:
        await asyncio.sleep(0.05)
        seen["async"] = _snapshot()

    async def set_async_dep() -> str:
        dep_async_var.set("from-async-dependency")
        return "a"

    def set_sync_dep() -> str:
        dep_sync_var.set("from-sync-dependency")
        return "s"

    app = Tachyon()
    app.add_middleware(RequestIdMiddleware)

    if endpoint_kind == "sync":

        @app.get("/ctx")
        def ctx_sync(
            background_tasks: BackgroundTasks, a: str = Depends(set_async_dep), s: str = Depends(set_sync_dep)
        ):
            endpoint_var.set("from-sync-endpoint")
            background_tasks.add_task(sync_task)
            background_tasks.add_task(async_task)
            return {"a": a, "s": s}

    else:

        @app.get("/ctx")
        async def ctx_async(
            background_tasks: BackgroundTasks, a: str = Depends(set_async_dep), s: str = Depends(set_sync_dep)
        ):
            endpoint_var.set("from-async-endpoint")
            background_tasks.add_task(sync_task)
            background_tasks.add_task(async_task)
            return {"a": a, "s": s}

    with serve(app) as url:
        response = httpx.get(f"{url}/ctx", headers={"x-request-id": "req-7"})
        assert response.json() == {"a": "a", "s": "s"}
        assert wait_until(lambda: len(seen) == 2, 3)

    expected = {
        "request_id": "req-7",
        "dep_async": "from-async-dependency",
        "dep_sync": "from-sync-dependency",
        "endpoint": f"from-{endpoint_kind}-endpoint",
    }
    assert seen["sync"] == expected
    assert seen["async"] == expected


def test_context_variables_do_not_leak_between_concurrent_requests() -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    def sync_task(expected: str) -> None:
        time.sleep(0.1)
        seen.append(("sync", expected, request_id.get()))

    async def async_task(expected: str) -> None:
        await asyncio.sleep(0.1)
        seen.append(("async", expected, request_id.get()))

    app = Tachyon()
    app.add_middleware(RequestIdMiddleware)

    @app.get("/id/{rid}")
    async def with_id(rid: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(async_task, rid)
        background_tasks.add_task(sync_task, rid)
        return {"rid": rid}

    with serve(app) as url:
        with ThreadPoolExecutor(6) as pool:
            ids = [f"r{i}" for i in range(6)]
            list(pool.map(lambda rid: httpx.get(f"{url}/id/{rid}", headers={"x-request-id": rid}), ids))
        assert wait_until(lambda: len(seen) == 12, 3)

    assert all(expected == actual for _, expected, actual in seen), seen
    assert request_id.get() is None


def test_a_batch_of_plain_sync_tasks_keeps_its_order_and_its_request_context() -> None:
    """Plain sync tasks only (no async task, no timeout, no retries): under a lifespan the runner hands the
    whole batch to one worker thread in one hop, a path of its own. Six concurrent requests each add three
    such tasks; each task must see its own request's context variables (set by a middleware and by the sync
    endpoint), never another request's, and the tasks of a request run in the order added.

    Mutants caught (tasks/runner.py, ``BackgroundRunner._launch``): the batch posted with an empty
    ``contextvars.Context()`` instead of ``batch.context`` (every task sees the defaults); and
    ``_run_in_thread`` iterating ``reversed(batch.tasks)`` (the order).
    """
    seen: list[tuple[str, int, str | None, str | None]] = []
    lock = threading.Lock()

    def sync_task(rid: str, index: int) -> None:
        time.sleep(0.02)  # the middleware has reset its variable by now, and the requests overlap
        with lock:
            seen.append((rid, index, request_id.get(), endpoint_var.get()))

    app = Tachyon()
    app.add_middleware(RequestIdMiddleware)

    @app.get("/batch/{rid}")
    def add_three(rid: str, background_tasks: BackgroundTasks):
        endpoint_var.set(f"endpoint-{rid}")
        for index in range(3):
            background_tasks.add_task(sync_task, rid, index)
        return {"rid": rid}

    ids = [f"b{i}" for i in range(6)]
    with serve(app) as url:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda rid: httpx.get(f"{url}/batch/{rid}", headers={"x-request-id": rid}), ids))
        assert wait_until(lambda: len(seen) == 18, 5)

    for rid in ids:
        mine = [entry[1:] for entry in seen if entry[0] == rid]
        assert mine == [(index, rid, f"endpoint-{rid}") for index in range(3)], seen


# --- 6: concurrency limit, queue and overflow policies ----------------------------------------------------------


def _sleeper(kind: str, seconds: float, then: Any) -> Any:
    """A task that sleeps ``seconds`` then calls ``then(i)``: ``async def`` (runs on the loop) or a plain
    ``def`` (a batch of plain sync tasks runs in one worker thread, which reports back only when the loop
    waits for it: a queued batch, a request waiting for room, join, shutdown)."""
    if kind == "async":

        async def job(i: int) -> None:
            await asyncio.sleep(seconds)
            then(i)

        return job

    def job(i: int) -> None:  # type: ignore[no-redef]
        time.sleep(seconds)
        then(i)

    return job


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_concurrency_limit_queues_the_rest(kind: str) -> None:
    """Mutant caught on the sync path (tasks/runner.py, ``_run_in_thread``): a worker that does not ask the
    loop to start the queued batch when it leaves (the queued jobs never run)."""
    state = {"now": 0, "max": 0}
    done: list[int] = []
    lock = threading.Lock()

    def start(i: int) -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])

    def end(i: int) -> None:
        with lock:
            state["now"] -= 1
            done.append(i)

    inner = _sleeper(kind, 0.3, end)
    if kind == "async":

        async def job(i: int) -> None:
            start(i)
            await inner(i)

    else:

        def job(i: int) -> None:  # type: ignore[no-redef]
            start(i)
            inner(i)

    app = Tachyon(background_concurrency=2)

    @app.post("/job/{i}")
    async def add(i: int, background_tasks: BackgroundTasks):
        background_tasks.add_task(job, i)
        return {"i": i}

    with serve(app) as url:
        for i in range(6):
            response, elapsed = timed("POST", f"{url}/job/{i}")
            assert response.status_code == 200 and elapsed < 0.3
        busy = app.background.stats()
        assert busy.running == 2
        assert busy.queued > 0
        assert busy.scheduled == 6
        assert wait_until(lambda: len(done) == 6, 3)
        idle = app.background.stats()

    assert state["max"] == 2
    assert sorted(done) == list(range(6))
    assert (idle.queued, idle.running, idle.succeeded, idle.dropped) == (0, 0, 6, 0)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_overflow_wait_delays_the_response_until_there_is_room_and_loses_nothing(kind: str) -> None:
    """With the runner full, "wait" is admission control: the response waits for room, so clients slow down
    (a held ASGI call alone would not: uvicorn serves the connection's next request once the response is
    complete) and memory stays bounded.

    Mutant caught on the sync path (tasks/runner.py, ``_run_in_thread``): a worker that does not wake the loop
    when it frees room while a request waits for it (the third response then waits the whole
    ``shutdown_timeout``)."""
    calls: list[dict[str, Any]] = []
    done: list[int] = []
    job = _sleeper(kind, 0.4, done.append)

    app = Tachyon(background_concurrency=1, background_queue=1, background_overflow="wait")
    app.add_middleware(CallTimer, calls=calls)

    @app.post("/job/{i}")
    async def add(i: int, background_tasks: BackgroundTasks):
        background_tasks.add_task(job, i)
        return {"i": i}

    with serve(app) as url:
        elapsed = {}
        for i in (1, 2, 3):
            response, elapsed[i] = timed("POST", f"{url}/job/{i}")
            assert response.json() == {"i": i}
        assert elapsed[1] < 0.2 and elapsed[2] < 0.2  # one runs, one waits in the queue
        assert elapsed[3] > 0.25, "the third response should have waited for room (job 1 takes 0.4 s)"
        assert wait_until(lambda: len(done) == 3, 3)

    durations = {c["path"]: c["end"] - c["start"] for c in calls}
    assert all(d < 0.2 for path, d in durations.items() if path != "/job/3"), durations
    assert done == [1, 2, 3]
    stats = app.background.stats()
    assert (stats.scheduled, stats.succeeded, stats.dropped) == (3, 3, 0)


def test_overflow_wait_gives_up_after_shutdown_timeout_and_queues_past_the_limit_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The doc's bound on "wait": a response waits for room at most ``shutdown_timeout``; then its tasks are
    queued beyond the limit (not lost) and a warning names the request.

    Mutants caught (tasks/runner.py, ``BackgroundRunner.admit``): no deadline on the wait (the response waits
    for the 2 s task); the batch dropped instead of queued when the wait gives up.
    """
    caplog.set_level(logging.WARNING, logger=BG_LOGGER)
    done: list[int] = []

    async def job(i: int) -> None:
        await asyncio.sleep(2)
        done.append(i)

    app = Tachyon(background_concurrency=1, background_queue=0, background_overflow="wait", shutdown_timeout=0.8)

    @app.post("/job/{i}")
    async def add(i: int, background_tasks: BackgroundTasks):
        background_tasks.add_task(job, i)
        return {"i": i}

    with serve(app) as url:
        first, quick = timed("POST", f"{url}/job/1")
        second, waited = timed("POST", f"{url}/job/2")
        assert first.json() == {"i": 1} and second.json() == {"i": 2}
        assert quick < 0.5
        assert 0.75 < waited < 1.6, f"waited {waited:.2f}s for room with shutdown_timeout=0.8 (the job takes 2s)"
        busy = app.background.stats()
        assert (busy.running, busy.queued) == (1, 1)  # queued although background_queue=0
        assert wait_until(lambda: len(done) == 2, 5)

    warnings = [r.getMessage() for r in caplog.records if r.name == BG_LOGGER and r.levelno == logging.WARNING]
    assert warnings == ["No room in the background queue for request POST /job/2 within 0.8s; queueing past the limit"]
    assert sorted(done) == [1, 2]
    assert app.background.stats().dropped == 0


def test_overflow_drop_counts_and_logs_lost_tasks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    calls: list[dict[str, Any]] = []
    done: list[str] = []

    async def job(label: str) -> None:
        await asyncio.sleep(0.3)
        done.append(label)

    app = Tachyon(background_concurrency=1, background_queue=1, background_overflow="drop")
    app.add_middleware(CallTimer, calls=calls)

    @app.post("/job/{i}")
    async def add(i: int, background_tasks: BackgroundTasks):
        background_tasks.add_task(job, f"{i}a").with_options(name=f"job-{i}a")
        background_tasks.add_task(job, f"{i}b").with_options(name=f"job-{i}b")
        return {"i": i}

    with serve(app) as url:
        for i in (1, 2, 3):
            assert httpx.post(f"{url}/job/{i}").status_code == 200
        assert wait_until(lambda: len(calls) == 3, 2)
        assert app.background.stats().dropped == 2
        assert wait_until(lambda: len(done) == 4, 3)

    assert done == ["1a", "1b", "2a", "2b"]
    assert all(c["end"] - c["start"] < 0.2 for c in calls), "with 'drop' no call waits"
    stats = app.background.stats()
    assert (stats.scheduled, stats.succeeded, stats.dropped, stats.queued) == (6, 4, 2, 0)
    lost = [r.getMessage() for r in caplog.records if r.name == BG_LOGGER and "lost" in r.getMessage()]
    assert len(lost) == 2
    assert any("job-3a" in m for m in lost) and any("job-3b" in m for m in lost)
    assert all("POST" in m and "/job/3" in m for m in lost)


# --- a task calling its own server back; join under uvicorn ---------------------------------------------------


def test_blocking_sync_task_can_call_its_own_server() -> None:
    results: list[Any] = []
    base: dict[str, str] = {}

    def inner_task() -> None:
        results.append("inner-task")

    def call_back() -> None:
        results.append(httpx.get(f"{base['url']}/ping", timeout=5).json())
        results.append(httpx.get(f"{base['url']}/sync-ping", timeout=5).json())
        # This request adds a sync task too, while the only task thread is busy here.
        results.append(httpx.post(f"{base['url']}/inner", timeout=5).json())

    app = Tachyon(background_threads=1, thread_pool_size=1)

    @app.get("/ping")
    async def ping():
        return {"pong": "async"}

    @app.get("/sync-ping")
    def sync_ping():
        return {"pong": "sync"}

    @app.post("/inner")
    def inner(background_tasks: BackgroundTasks):
        background_tasks.add_task(inner_task)
        return {"inner": True}

    @app.post("/outer")
    def outer(background_tasks: BackgroundTasks):
        background_tasks.add_task(call_back)
        return {"outer": True}

    with serve(app) as url:
        base["url"] = url
        assert httpx.post(f"{url}/outer").json() == {"outer": True}
        assert wait_until(lambda: len(results) == 4, 5), f"deadlock? {results}"

    assert results == [{"pong": "async"}, {"pong": "sync"}, {"inner": True}, "inner-task"]
    assert app.background.stats().failed == 0


def test_join_waits_until_the_runner_is_idle() -> None:
    done: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(0.3)
        done.append("slow")

    def slow_sync() -> None:
        time.sleep(0.1)
        done.append("slow_sync")

    app = Tachyon()

    @app.post("/slow")
    def add(background_tasks: BackgroundTasks):
        background_tasks.add_task(slow)
        background_tasks.add_task(slow_sync)
        return {}

    @app.get("/join")
    async def join(timeout: float):
        return {"idle": await app.background.join(timeout), "done": list(done)}

    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:  # one client: no setup per call
        client.post("/slow")
        assert client.get("/join?timeout=0.05").json() == {"idle": False, "done": []}
        response, elapsed = timed("GET", f"{url}/join?timeout=3")
        assert response.json() == {"idle": True, "done": ["slow", "slow_sync"]}
        assert 0.2 < elapsed < 1.0
        # Idle already: returns at once.
        response, elapsed = timed("GET", f"{url}/join?timeout=3")
        assert response.json()["idle"] is True and elapsed < 0.2


def test_a_drain_left_pending_by_a_previous_loop_does_not_block_the_next_serving_session() -> None:
    """A worker asks the loop to start queued batches only when no such request is pending. If a previous
    event loop stopped before running one (a test client's loop, a restarted server), the runner must not
    believe it still pending on the next start, or queued sync batches would never start.

    Mutant caught (tasks/runner.py, ``BackgroundRunner.start``): not resetting ``_drain_scheduled``."""
    done: list[int] = []

    def job(i: int) -> None:
        time.sleep(0.1)
        done.append(i)

    app = Tachyon(background_concurrency=1)
    app.background._drain_scheduled = True  # what a loop that stopped before running the drain leaves behind

    @app.post("/job/{i}")
    def add(i: int, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(job, i)
        return {"i": i}

    with serve(app) as url:
        for i in range(3):
            assert httpx.post(f"{url}/job/{i}").status_code == 200
        assert wait_until(lambda: len(done) == 3, 3), f"queued batches never started: {done}"
    assert done == [0, 1, 2]

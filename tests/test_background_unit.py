"""Background tasks through the API and the runner, in-process (test clients, plain ASGI calls, the runner).

Injection, response-attached tasks, argument checking, the test clients' "tasks done when the call returns"
promise, options (timeout, retries, name), every kind of callable, error hooks, stats and join.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Optional

import httpx
import pytest

import tachyon_api
from tachyon_api import BackgroundTask, BackgroundTasks, Depends, Tachyon
from tachyon_api.background import BackgroundRunner, TaskStats
from tachyon_api.responses import JSONResponse, PlainTextResponse
from tachyon_api.testing import AsyncTachyonTestClient, TachyonTestClient, create_client

BG_LOGGER = "tachyon_api.background"


def test_public_imports() -> None:
    assert tachyon_api.BackgroundTasks is BackgroundTasks
    assert tachyon_api.BackgroundTask is BackgroundTask
    assert isinstance(Tachyon().background, BackgroundRunner)


# --- injection -------------------------------------------------------------------------------------------


def test_every_injection_form_gets_the_tasks_and_they_run() -> None:
    results: list[str] = []
    app = Tachyon()

    @app.get("/plain")
    def plain(tasks: BackgroundTasks):
        tasks.add_task(results.append, "plain")
        return {}

    @app.get("/optional")
    async def optional(bt: Optional[BackgroundTasks]):
        assert bt is not None
        bt.add_task(results.append, "optional")
        return {}

    @app.get("/union-none")
    def union_none(anything: BackgroundTasks | None = None):
        assert anything is not None
        anything.add_task(results.append, "union-none")
        return {}

    @app.get("/default-none")
    async def default_none(background_tasks: BackgroundTasks = None):
        if background_tasks:
            background_tasks.add_task(results.append, "default-none")
        return {}

    with TachyonTestClient(app) as client:
        for path in ("/plain", "/optional", "/union-none", "/default-none"):
            response = client.get(path)
            assert response.status_code == 200, response.text
    assert results == ["plain", "optional", "union-none", "default-none"]


def test_an_empty_background_tasks_is_still_truthy() -> None:
    assert bool(BackgroundTasks()) is True
    assert len(BackgroundTasks()) == 0


def test_dependencies_and_endpoint_share_one_instance_per_request() -> None:
    results: list[str] = []
    instances: list[int] = []

    async def inner_dep(tasks: BackgroundTasks) -> str:
        instances.append(id(tasks))
        tasks.add_task(results.append, "inner")
        return "inner"

    def sync_dep(other: Optional[BackgroundTasks], inner: str = Depends(inner_dep)) -> str:
        instances.append(id(other))
        other.add_task(results.append, "sync-dep")
        return inner + "+sync"

    app = Tachyon()

    @app.post("/shared")
    async def shared(background_tasks: BackgroundTasks, chain: str = Depends(sync_dep)):
        instances.append(id(background_tasks))
        background_tasks.add_task(results.append, "endpoint")
        return {"chain": chain, "count": len(background_tasks)}

    with TachyonTestClient(app) as client:
        first = client.post("/shared")
        assert first.json() == {"chain": "inner+sync", "count": 3}
        assert results == ["inner", "sync-dep", "endpoint"]
        assert len(set(instances)) == 1, "one BackgroundTasks per request, shared by everyone"
        second = client.post("/shared")
        assert second.json()["count"] == 3, "a new request starts with a new, empty BackgroundTasks"
    assert results == ["inner", "sync-dep", "endpoint"] * 2
    assert len(set(instances)) == 2


def test_a_dependency_alone_can_add_tasks() -> None:
    results: list[str] = []

    def audit(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(results.append, "audited")

    app = Tachyon()

    @app.get("/audited", dependencies=[Depends(audit)])
    def audited():
        return {"ok": True}

    with TachyonTestClient(app) as client:
        assert client.get("/audited").json() == {"ok": True}
    assert results == ["audited"]


# --- tasks attached to a returned response ----------------------------------------------------------------


def test_response_background_runs_first_then_injected_tasks() -> None:
    results: list[str] = []

    async def record(label: str) -> None:
        await asyncio.sleep(0.01)
        results.append(label)

    app = Tachyon()

    @app.get("/single")
    def single(background_tasks: BackgroundTasks):
        background_tasks.add_task(results.append, "injected")
        return JSONResponse({"ok": True}, background=BackgroundTask(record, "response"))

    @app.get("/many")
    async def many(background_tasks: BackgroundTasks):
        background_tasks.add_task(record, "injected-1")
        background_tasks.add_task(results.append, "injected-2")
        response_tasks = BackgroundTasks()
        response_tasks.add_task(results.append, "response-1")
        response_tasks.add_task(record, "response-2")
        return PlainTextResponse("hi", background=response_tasks)

    @app.get("/only-response")
    async def only_response():
        return JSONResponse([1], background=BackgroundTask(record, "alone"))

    with TachyonTestClient(app) as client:
        assert client.get("/single").json() == {"ok": True}
        assert results == ["response", "injected"]
        assert client.get("/many").text == "hi"
        assert results[2:] == ["response-1", "response-2", "injected-1", "injected-2"]
        assert client.get("/only-response").json() == [1]
        assert results[6:] == ["alone"]


def test_a_starlette_response_background_runs_once_before_ours() -> None:
    from starlette.background import BackgroundTask as StarletteTask
    from starlette.responses import JSONResponse as StarletteJSON

    results: list[str] = []
    app = Tachyon()

    @app.get("/starlette")
    def starlette_endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(results.append, "ours")
        return StarletteJSON({"ok": True}, background=StarletteTask(results.append, "starlette"))

    with TachyonTestClient(app) as client:
        assert client.get("/starlette").json() == {"ok": True}
    assert results == ["starlette", "ours"]


async def test_a_response_outside_an_app_runs_its_background_after_sending() -> None:
    events: list[str] = []

    async def send(message: dict) -> None:
        events.append(message["type"])

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    response = PlainTextResponse("x", background=BackgroundTask(events.append, "task"))
    await response({"type": "http", "method": "GET", "path": "/"}, receive, send)
    assert events == ["http.response.start", "http.response.body", "task"]


# --- add_task checks its call at once -------------------------------------------------------------------


def _two(a: int, b: int, *, c: int = 0) -> None:
    pass


async def _async_one(x: int) -> None:
    pass


def test_add_task_rejects_bad_calls_immediately() -> None:
    tasks = BackgroundTasks()
    coroutine = _async_one(1)
    try:
        with pytest.raises(TypeError, match="coroutine"):
            tasks.add_task(coroutine)
    finally:
        coroutine.close()
    for not_callable in (42, "send_email", None):
        with pytest.raises(TypeError):
            tasks.add_task(not_callable)
    with pytest.raises(TypeError):
        tasks.add_task(_two, 1)  # missing b
    with pytest.raises(TypeError):
        tasks.add_task(_two, 1, 2, 3)  # too many
    with pytest.raises(TypeError):
        tasks.add_task(_two, 1, 2, d=4)  # unknown keyword
    with pytest.raises(TypeError):
        tasks.add_task(_async_one)  # async functions are checked too
    with pytest.raises(TypeError):
        tasks.add_task(functools.partial(_two, 1), 2, 3)
    with pytest.raises(TypeError):
        BackgroundTask(_two, 1)
    assert len(tasks) == 0, "a rejected call is not added"
    assert tasks.add_task(_two, 1, b=2, c=3).kwargs == {"b": 2, "c": 3}
    assert len(tasks) == 1


def test_with_options_chains_and_validates() -> None:
    task = BackgroundTasks().add_task(_two, 1, 2)
    assert task.name.endswith("_two")
    assert task.with_options(name="renamed", timeout=2, retries=3, retry_delay=0.1) is task
    assert (task.name, task.timeout, task.retries, task.retry_delay) == ("renamed", 2, 3, 0.1)
    for bad in ({"timeout": 0}, {"timeout": -1}, {"retries": -1}, {"retry_delay": -0.5}):
        with pytest.raises(ValueError):
            task.with_options(**bad)

    # Options never collide with the task's own keyword arguments.
    def takes_name(name: str, timeout: int) -> None:
        pass

    other = BackgroundTasks().add_task(takes_name, name="x", timeout=5)
    assert other.kwargs == {"name": "x", "timeout": 5} and other.timeout is None


def test_bad_add_task_inside_a_request_is_a_500_and_nothing_runs() -> None:
    results: list[str] = []
    app = Tachyon()

    @app.get("/bad-args")
    def bad_args(background_tasks: BackgroundTasks):
        background_tasks.add_task(results.append, "before")
        background_tasks.add_task(_two, 1)
        return {"unreachable": True}

    @app.get("/not-callable")
    async def not_callable(background_tasks: BackgroundTasks):
        background_tasks.add_task(results.append, "before")
        background_tasks.add_task("send_email")
        return {}

    @app.get("/coroutine")
    async def coroutine_object(background_tasks: BackgroundTasks):
        background_tasks.add_task(results.append, "before")
        coroutine = _async_one(1)
        try:
            background_tasks.add_task(coroutine)
        finally:
            coroutine.close()
        return {}

    @app.get("/caught")
    def caught(background_tasks: BackgroundTasks):
        background_tasks.add_task(results.append, "kept")
        try:
            background_tasks.add_task(_two, 1)
        except TypeError as exc:
            return {"error": str(exc)[:8]}
        return {}

    with TachyonTestClient(app) as client:
        assert client.get("/bad-args").status_code == 500
        assert client.get("/not-callable").status_code == 500
        assert client.get("/coroutine").status_code == 500
        assert results == []
        response = client.get("/caught")
        assert response.status_code == 200 and response.json() == {"error": "add_task"}
    assert results == ["kept"]


# --- every client returns after the request's tasks -----------------------------------------------------


def _tasks_app() -> tuple[Tachyon, list[str]]:
    results: list[str] = []

    async def slow_async(label: str) -> None:
        await asyncio.sleep(0.1)
        results.append(label)

    def slow_sync(label: str) -> None:
        time.sleep(0.1)
        results.append(label)

    app = Tachyon()

    @app.post("/work/{label}")
    async def work(label: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(slow_async, f"{label}-async")
        background_tasks.add_task(slow_sync, f"{label}-sync")
        return {"label": label}

    return app, results


def test_test_client_without_with_waits_for_tasks() -> None:
    app, results = _tasks_app()
    client = TachyonTestClient(app)
    try:
        assert client.post("/work/a").json() == {"label": "a"}
        assert results == ["a-async", "a-sync"]
    finally:
        client.close()


def test_test_client_with_lifespan_waits_for_tasks() -> None:
    app, results = _tasks_app()
    with TachyonTestClient(app) as client:
        assert client.post("/work/b").json() == {"label": "b"}
        assert results == ["b-async", "b-sync"]
        assert client.post("/work/c").status_code == 200
        assert results == ["b-async", "b-sync", "c-async", "c-sync"]
    stats = app.background.stats()
    assert (stats.scheduled, stats.succeeded, stats.dropped) == (4, 4, 0)


@pytest.mark.parametrize("lifespan", [False, True])
async def test_async_test_client_waits_for_tasks(lifespan: bool) -> None:
    app, results = _tasks_app()
    async with AsyncTachyonTestClient(app, lifespan=lifespan) as client:
        response = await client.post("/work/d")
        assert response.json() == {"label": "d"}
        assert results == ["d-async", "d-sync"]


async def test_create_client_waits_for_tasks() -> None:
    app, results = _tasks_app()
    async with create_client(app) as client:
        await client.post("/work/e")
        assert results == ["e-async", "e-sync"]


async def test_a_bare_asgi_call_without_lifespan_runs_the_tasks_before_returning() -> None:
    app, results = _tasks_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bare") as client:
        response = await client.post("/work/f")
        assert response.json() == {"label": "f"}
        assert results == ["f-async", "f-sync"]
        await asyncio.gather(client.post("/work/g"), client.post("/work/h"))
    assert sorted(results[2:]) == ["g-async", "g-sync", "h-async", "h-sync"]
    assert app.background.stats().succeeded == 6


# --- failures and hooks -------------------------------------------------------------------------------------


def test_error_hooks_sync_async_and_a_failing_hook(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    sync_seen: list[Any] = []
    async_seen: list[Any] = []
    results: list[str] = []

    def broken_task(x: int) -> None:
        raise LookupError(f"no {x}")

    app = Tachyon()

    @app.on_task_error
    def bad_hook(failure):
        raise RuntimeError("the hook itself failed")

    @app.on_task_error
    def sync_hook(failure):
        sync_seen.append(failure)

    @app.on_task_error
    async def async_hook(failure):
        await asyncio.sleep(0)
        async_seen.append(failure)

    @app.delete("/items/{item_id}")
    def remove(item_id: int, background_tasks: BackgroundTasks):
        background_tasks.add_task(broken_task, item_id).with_options(name="cleanup-item")
        background_tasks.add_task(results.append, "after")
        return {"deleted": item_id}

    with TachyonTestClient(app) as client:
        assert client.delete("/items/7").json() == {"deleted": 7}
    assert results == ["after"]
    for seen in (sync_seen, async_seen):
        assert len(seen) == 1
        failure = seen[0]
        assert failure.task.name == "cleanup-item"
        assert isinstance(failure.exception, LookupError) and str(failure.exception) == "no 7"
        assert (failure.attempts, failure.method, failure.path) == (1, "DELETE", "/items/7")
    task_errors = [r for r in caplog.records if r.name == BG_LOGGER and "cleanup-item" in r.getMessage()]
    assert len(task_errors) == 1
    assert "DELETE" in task_errors[0].getMessage() and "/items/7" in task_errors[0].getMessage()
    assert task_errors[0].exc_info is not None and isinstance(task_errors[0].exc_info[1], LookupError)
    assert any("bad_hook" in r.getMessage() for r in caplog.records), "a failing hook is logged"


def test_failing_and_base_exception_tasks_do_not_stop_the_batch() -> None:
    results: list[str] = []

    class Halt(BaseException):
        pass

    def halt() -> None:
        raise Halt()

    async def ahalt() -> None:
        raise Halt()

    app = Tachyon()

    @app.get("/mixed")
    def mixed(background_tasks: BackgroundTasks):
        background_tasks.add_task(results.append, 1)
        background_tasks.add_task(halt)
        background_tasks.add_task(results.append, 2)
        background_tasks.add_task(ahalt)
        background_tasks.add_task(results.append, 3)
        return {}

    with TachyonTestClient(app) as client:
        assert client.get("/mixed").status_code == 200
        assert client.get("/mixed").status_code == 200
    assert results == [1, 2, 3, 1, 2, 3]
    assert app.background.stats().failed == 4


# --- options ------------------------------------------------------------------------------------------------


def test_async_timeout_cancels_the_task(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    results: list[str] = []
    failures: list[Any] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(5)
            results.append("not cancelled")
        except asyncio.CancelledError:
            results.append("cancelled")
            raise

    app = Tachyon()
    app.on_task_error(failures.append)

    @app.get("/t")
    def endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(forever).with_options(timeout=0.05, name="forever")
        background_tasks.add_task(results.append, "next")
        return {}

    with TachyonTestClient(app) as client:
        start = time.perf_counter()
        client.get("/t")
        assert time.perf_counter() - start < 1
    assert results == ["cancelled", "next"]
    stats = app.background.stats()
    assert (stats.timed_out, stats.failed, stats.succeeded) == (1, 1, 1)
    assert len(failures) == 1 and isinstance(failures[0].exception, asyncio.TimeoutError)
    assert "forever" in caplog.text


def test_sync_timeout_is_an_overrun_and_the_task_still_completes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=BG_LOGGER)
    results: list[str] = []

    def slowish() -> None:
        time.sleep(0.2)
        results.append("finished")

    app = Tachyon()

    @app.get("/t")
    def endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(slowish).with_options(timeout=0.05, name="slowish-report")
        background_tasks.add_task(results.append, "next")
        return {}

    with TachyonTestClient(app) as client:
        client.get("/t")
    assert results == ["finished", "next"]
    stats = app.background.stats()
    assert (stats.timed_out, stats.succeeded, stats.failed) == (1, 2, 0)
    overrun = [r for r in caplog.records if r.name == BG_LOGGER and "slowish-report" in r.getMessage()]
    assert overrun and overrun[0].levelno == logging.WARNING


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_retries_until_success(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=BG_LOGGER)
    attempts: list[int] = []

    def flaky_sync() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError("try again")

    async def flaky_async() -> None:
        flaky_sync()

    app = Tachyon()

    @app.get("/r")
    def endpoint(background_tasks: BackgroundTasks):
        task = flaky_sync if kind == "sync" else flaky_async
        background_tasks.add_task(task).with_options(retries=2, retry_delay=0.01, name="flaky")
        return {}

    with TachyonTestClient(app) as client:
        client.get("/r")
    assert attempts == [1, 2, 3]
    stats = app.background.stats()
    assert (stats.retried, stats.succeeded, stats.failed, stats.scheduled) == (2, 1, 0, 1)
    assert stats.duration_count == 3
    retry_logs = [r for r in caplog.records if r.name == BG_LOGGER and "flaky" in r.getMessage()]
    assert len(retry_logs) == 2 and all(r.levelno == logging.WARNING for r in retry_logs)


def test_retries_exhausted_is_one_failure_with_its_attempts() -> None:
    failures: list[Any] = []
    calls: list[int] = []

    def always_fails() -> None:
        calls.append(1)
        raise ValueError("nope")

    app = Tachyon()
    app.on_task_error(failures.append)

    @app.get("/r")
    def endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(always_fails).with_options(retries=1, retry_delay=0)
        return {}

    with TachyonTestClient(app) as client:
        client.get("/r")
    assert len(calls) == 2
    assert len(failures) == 1 and failures[0].attempts == 2
    stats = app.background.stats()
    assert (stats.retried, stats.failed, stats.succeeded) == (1, 1, 0)


def test_default_and_custom_names_appear_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)

    def generate_invoice() -> None:
        raise RuntimeError("printer on fire")

    app = Tachyon()

    @app.post("/invoices")
    def invoices(background_tasks: BackgroundTasks):
        background_tasks.add_task(generate_invoice)
        background_tasks.add_task(generate_invoice).with_options(name="invoice-pdf")
        return {}

    with TachyonTestClient(app) as client:
        client.post("/invoices")
    messages = [r.getMessage() for r in caplog.records if r.name == BG_LOGGER]
    assert len(messages) == 2
    assert "generate_invoice" in messages[0]
    assert "invoice-pdf" in messages[1] and "generate_invoice" not in messages[1]


# --- any kind of callable -----------------------------------------------------------------------------------


class Mailer:
    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def send(self, to: str) -> None:
        self.sink.append(f"send:{to}")

    async def asend(self, to: str) -> None:
        await asyncio.sleep(0)
        self.sink.append(f"asend:{to}")

    @classmethod
    def klass(cls, sink: list[str]) -> None:
        sink.append("classmethod")

    @staticmethod
    def static(sink: list[str]) -> None:
        sink.append("staticmethod")


class AsyncCallable:
    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    async def __call__(self, value: str) -> None:
        await asyncio.sleep(0.01)
        self.sink.append(f"async-call:{value}")


class SyncCallable:
    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def __call__(self, value: str) -> None:
        self.sink.append(f"sync-call:{value}")


def test_every_kind_of_callable_runs_and_async_ones_are_awaited() -> None:
    results: list[str] = []
    mailer = Mailer(results)

    async def notify(channel: str, message: str) -> None:
        await asyncio.sleep(0.01)
        results.append(f"partial-async:{channel}:{message}")

    def log(channel: str, message: str) -> None:
        results.append(f"partial-sync:{channel}:{message}")

    async def coroutine_maker() -> None:
        results.append("returned-coroutine")

    app = Tachyon()

    @app.get("/callables")
    def callables(background_tasks: BackgroundTasks):
        background_tasks.add_task(functools.partial(log, "ops"), "hello")
        background_tasks.add_task(functools.partial(notify, "ops"), message="hi")
        background_tasks.add_task(functools.partial(functools.partial(notify, "nested"), "deep"))
        background_tasks.add_task(mailer.send, "a@b.c")
        background_tasks.add_task(mailer.asend, "d@e.f")
        background_tasks.add_task(AsyncCallable(results), "x")
        background_tasks.add_task(SyncCallable(results), "y")
        background_tasks.add_task(Mailer.klass, results)
        background_tasks.add_task(Mailer.static, results)
        background_tasks.add_task(lambda: results.append("lambda"))
        background_tasks.add_task(results.append, "builtin-method")
        background_tasks.add_task(lambda: coroutine_maker())  # a sync callable returning a coroutine
        return {}

    with TachyonTestClient(app) as client:
        assert client.get("/callables").status_code == 200
    assert results == [
        "partial-sync:ops:hello",
        "partial-async:ops:hi",
        "partial-async:nested:deep",
        "send:a@b.c",
        "asend:d@e.f",
        "async-call:x",
        "sync-call:y",
        "classmethod",
        "staticmethod",
        "lambda",
        "builtin-method",
        "returned-coroutine",
    ]
    stats = app.background.stats()
    assert (stats.succeeded, stats.failed) == (12, 0)


def test_callables_are_checked_against_their_signatures() -> None:
    tasks = BackgroundTasks()
    with pytest.raises(TypeError):
        tasks.add_task(AsyncCallable([]))  # missing value
    with pytest.raises(TypeError):
        tasks.add_task(Mailer([]).send)  # missing to
    with pytest.raises(TypeError):
        tasks.add_task(Mailer([]).asend, "a", "b")
    assert len(tasks) == 0


def test_async_callables_are_detected_as_async() -> None:
    tasks = BackgroundTasks()
    assert tasks.add_task(AsyncCallable([]), "v").is_async
    assert tasks.add_task(functools.partial(Mailer([]).asend), "v").is_async
    assert not tasks.add_task(SyncCallable([]), "v").is_async
    assert not tasks.add_task(Mailer([]).send, "v").is_async


# --- standalone use (Starlette compatibility) ---------------------------------------------------------------


async def test_tasks_can_be_run_by_hand() -> None:
    results: list[str] = []

    async def arecord(x: str) -> None:
        results.append(x)

    def boom() -> None:
        raise ValueError("ignored")

    tasks = BackgroundTasks()
    tasks.add_task(arecord, "one")
    tasks.add_task(boom)
    tasks.add_task(results.append, "two")
    await tasks()
    assert results == ["one", "two"]
    await tasks.run_tasks()
    assert results == ["one", "two", "one", "two"]
    await BackgroundTask(arecord, "single")()
    assert results[-1] == "single"
    assert BackgroundTasks([BackgroundTask(arecord, "z")]).tasks[0].args == ("z",)


# --- runner: stats, join, limits ----------------------------------------------------------------------------


def test_stats_after_a_known_workload() -> None:
    app = Tachyon()

    def ok_sync() -> None:
        time.sleep(0.02)

    async def ok_async() -> None:
        await asyncio.sleep(0.08)

    def fails() -> None:
        raise ValueError("x")

    state = {"calls": 0}

    def fails_once() -> None:
        state["calls"] += 1
        if state["calls"] == 1:
            raise ValueError("first time")

    async def too_slow() -> None:
        await asyncio.sleep(2)

    @app.get("/load")
    def load(background_tasks: BackgroundTasks):
        background_tasks.add_task(ok_sync)
        background_tasks.add_task(ok_sync)
        background_tasks.add_task(ok_async)
        background_tasks.add_task(fails)
        background_tasks.add_task(fails_once).with_options(retries=1, retry_delay=0)
        background_tasks.add_task(too_slow).with_options(timeout=0.05)
        return {}

    before = app.background.stats()
    assert before == TaskStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0) and before.duration_mean == 0.0
    with TachyonTestClient(app) as client:
        client.get("/load")
    stats = app.background.stats()
    assert stats.scheduled == 6
    assert (stats.queued, stats.running) == (0, 0)
    assert stats.succeeded == 4
    assert stats.failed == 2
    assert stats.retried == 1
    assert stats.timed_out == 1
    assert stats.dropped == 0
    assert stats.duration_count == 7  # one per attempt
    assert 0.08 <= stats.duration_max < 0.5
    assert 0.08 + 0.04 + 0.05 <= stats.duration_total < 1.0
    assert stats.duration_mean == pytest.approx(stats.duration_total / 7)


async def test_join_waits_for_idle_and_honours_its_timeout() -> None:
    runner = BackgroundRunner()
    runner.start()
    results: list[str] = []
    assert runner.idle and await runner.join(0) is True

    async def slow() -> None:
        await asyncio.sleep(0.2)
        results.append("slow")

    try:
        runner.submit([BackgroundTask(slow)], "POST", "/x")
        assert results == [] and not runner.idle
        await asyncio.sleep(0.01)
        assert runner.stats().running == 1
        assert await runner.join(0.02) is False
        start = time.perf_counter()
        assert await runner.join(2) is True
        assert time.perf_counter() - start < 0.5
        assert results == ["slow"] and runner.idle
        assert runner.stats().running == 0
    finally:
        await runner.shutdown(1)


async def test_runner_concurrency_queue_and_drop() -> None:
    runner = BackgroundRunner(concurrency=1, queue_size=1, overflow="drop")
    runner.start()
    order: list[str] = []

    async def job(label: str) -> None:
        await asyncio.sleep(0.05)
        order.append(label)

    async def hand_off(tasks: list[BackgroundTask], path: str) -> None:
        # As a request does: room is checked before the response, the batch handed over after it.
        if await runner.admit(tasks, "GET", path):
            runner.submit(tasks, "GET", path)

    try:
        await hand_off([BackgroundTask(job, "a")], "/a")
        await hand_off([BackgroundTask(job, "b"), BackgroundTask(job, "b2")], "/b")
        await hand_off([BackgroundTask(job, "c")], "/c")
        await asyncio.sleep(0.01)
        stats = runner.stats()
        assert (stats.running, stats.queued, stats.dropped, stats.scheduled) == (1, 2, 1, 4)
        assert await runner.join(2)
        assert order == ["a", "b", "b2"]
    finally:
        await runner.shutdown(1)


def test_runner_defaults_are_the_documented_ones() -> None:
    """docs/background-tasks.md: 64 task lists at once, 1,000 waiting, "wait", 16 threads, and 25 s at
    shutdown (below the usual 30 s grace period of process managers)."""
    runner = Tachyon().background
    assert (runner.concurrency, runner.queue_size, runner.overflow, runner.pool.max_workers) == (64, 1_000, "wait", 16)
    assert runner.shutdown_timeout == 25.0
    assert BackgroundRunner().shutdown_timeout == 25.0


def test_runner_options_are_validated() -> None:
    with pytest.raises(ValueError):
        Tachyon(background_overflow="explode")
    with pytest.raises(ValueError):
        Tachyon(background_concurrency=0)
    with pytest.raises(ValueError):
        Tachyon(background_threads=0)
    app = Tachyon(background_concurrency=3, background_queue=7, background_overflow="drop", shutdown_timeout=1.5)
    runner = app.background
    assert (runner.concurrency, runner.queue_size, runner.overflow, runner.shutdown_timeout) == (3, 7, "drop", 1.5)


def test_the_runner_and_the_task_list_offer_what_the_framework_reads() -> None:
    tasks = BackgroundTasks()
    first = tasks.add_task(print, "a")
    batch = tasks.batch()
    tasks.add_task(print, "b")
    assert batch == [first]  # a copy: later additions do not reach a batch already handed over
    runner = BackgroundRunner()
    runner.metrics.record("job", 0, 0.001)
    assert [(name, counts[0]) for name, counts, _, _ in runner.metric_rows()] == [("job", 1)]

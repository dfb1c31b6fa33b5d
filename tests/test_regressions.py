"""Regression tests for the review fixes (commit "Review fixes: cleanups before tasks in every mode, ...").

Each test names, in its docstring, what regressed before the fix. They use the public API only (plus
``ThreadPool`` and ``safe_filename``, which the fixes touched directly), the in-process test clients where no
real server is needed, and ``serve`` (uvicorn in a thread, lifespan on) where timing or disconnects matter.
"""

import asyncio
import logging
import threading
import time
from typing import Any

import httpx
import pytest
import starlette.background
import starlette.exceptions
import starlette.requests
import starlette.responses

from tachyon_api import (
    BackgroundTask,
    BackgroundTasks,
    Depends,
    Form,
    Path,
    Request,
    Tachyon,
    UploadFile,
    injectable,
)
from tachyon_api.concurrency import ThreadPool
from tachyon_api.datastructures import safe_filename
from tachyon_api.responses import FileResponse, JSONResponse, StreamingResponse
from tachyon_api.routing import WAIT_FOR_TASKS
from tachyon_api.testing import TachyonTestClient, create_client

from .conftest import serve, wait_until

BG_LOGGER = "tachyon_api.background"
ERR_LOGGER = "tachyon_api.errors"
INTERNAL_ERROR = {"success": False, "error": "Internal Server Error", "code": "INTERNAL_SERVER_ERROR"}


# --- 1. cleanups and upload closing before the background tasks, in every mode ------------------------------


def _cleanup_app(events: list[Any]) -> Tachyon:
    app = Tachyon()

    async def resource() -> Any:
        try:
            yield "resource"
        finally:
            events.append("cleanup")

    def record(file: UploadFile) -> None:
        events.append("task")
        events.append(("closed", file.file.closed))

    @app.post("/upload")
    async def upload(file: UploadFile, tasks: BackgroundTasks, res: str = Depends(resource)) -> dict:
        assert res == "resource"
        tasks.add_task(record, file)
        return {"name": file.filename}

    return app


def _check_cleanup_order(events: list[Any]) -> None:
    assert [e for e in events if isinstance(e, str)] == ["cleanup", "task"]
    assert ("closed", True) in events


UPLOAD = {"file": ("notes.txt", b"hello", "text/plain")}


def test_cleanups_and_upload_closing_precede_tasks_in_test_client_without_lifespan() -> None:
    """Regressed: without a lifespan the tasks ran inline before the dependency cleanups and before the
    uploaded files were closed (tests saw another order than production)."""
    events: list[Any] = []
    client = TachyonTestClient(_cleanup_app(events))
    try:
        response = client.post("/upload", files=UPLOAD)
    finally:
        client.close()
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "notes.txt"}
    _check_cleanup_order(events)


def test_cleanups_and_upload_closing_precede_tasks_in_test_client_with_lifespan() -> None:
    """Regressed: under ``with TachyonTestClient`` the tasks ran before the cleanups and with the upload open."""
    events: list[Any] = []
    with TachyonTestClient(_cleanup_app(events)) as client:
        response = client.post("/upload", files=UPLOAD)
        assert response.status_code == 200, response.text
        _check_cleanup_order(events)
    _check_cleanup_order(events)


def test_cleanups_and_upload_closing_precede_tasks_under_uvicorn() -> None:
    """Regressed: the order of cleanups and tasks depended on the mode; under a real server too it must be
    cleanup first, then the task, which sees a closed upload."""
    events: list[Any] = []
    with serve(_cleanup_app(events)) as url:
        response = httpx.post(f"{url}/upload", files=UPLOAD, timeout=10)
        assert response.status_code == 200, response.text
        assert wait_until(lambda: "task" in events, 5)
    _check_cleanup_order(events)


# --- 2. the runner works again after a lifespan shut down ---------------------------------------------------


def test_tasks_still_run_after_a_lifespan_has_shut_down() -> None:
    """Regressed: after the lifespan's shutdown the runner stayed closed, so every later request (a test client
    without ``with``, a bare ASGI call) silently dropped its background tasks."""
    app = Tachyon()
    ran: list[int] = []

    def remember(n: int) -> None:
        ran.append(n)

    @app.get("/t")
    async def add(n: int, tasks: BackgroundTasks) -> dict:
        tasks.add_task(remember, n)
        return {"n": n}

    with TachyonTestClient(app) as client:
        assert client.get("/t", params={"n": 1}).status_code == 200
    assert ran == [1]

    client = TachyonTestClient(app)
    try:
        assert client.get("/t", params={"n": 2}).status_code == 200
    finally:
        client.close()
    assert ran == [1, 2]

    async def bare_call() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bare") as bare:
            response = await bare.get("/t", params={"n": 3})
            assert response.status_code == 200
            assert ran == [1, 2, 3]  # the bare ASGI call ran its batch before returning

    asyncio.run(bare_call())
    assert app.background.stats().dropped == 0


# --- 3. add_task argument checks: bound methods vs the function through the class ---------------------------


def test_add_task_bound_method_then_function_via_class() -> None:
    """Regressed: the argument check was cached per function, so after ``add_task(obj.m, 1)`` the call
    ``add_task(C.m, obj, 1)`` was checked with the bound method's signature and raised TypeError."""

    class Mailer:
        def send(self, to: int) -> None:
            pass

    obj = Mailer()
    tasks = BackgroundTasks()
    tasks.add_task(obj.send, 1)
    tasks.add_task(Mailer.send, obj, 1)
    tasks.add_task(obj.send, 2)
    assert len(tasks) == 3
    with pytest.raises(TypeError):
        tasks.add_task(obj.send)
    with pytest.raises(TypeError):
        tasks.add_task(obj.send, 1, 2)
    with pytest.raises(TypeError):
        tasks.add_task(Mailer.send, obj)
    with pytest.raises(TypeError):
        tasks.add_task(Mailer.send, obj, 1, 2)


def test_add_task_function_via_class_then_bound_method() -> None:
    """Regressed: the reverse order, ``add_task(C.m, obj, 1)`` first, made ``add_task(obj.m, 1)`` fail."""

    class Mailer:
        def send(self, to: int) -> None:
            pass

    obj = Mailer()
    tasks = BackgroundTasks()
    tasks.add_task(Mailer.send, obj, 1)
    tasks.add_task(obj.send, 1)
    tasks.add_task(Mailer.send, obj, 2)
    assert len(tasks) == 3
    with pytest.raises(TypeError):
        tasks.add_task(Mailer.send, obj)
    with pytest.raises(TypeError):
        tasks.add_task(Mailer.send, obj, 1, 2)
    with pytest.raises(TypeError):
        tasks.add_task(obj.send)
    with pytest.raises(TypeError):
        tasks.add_task(obj.send, 1, 2)


# --- 4. ThreadPool: idle accounting and the bound ---------------------------------------------------------


async def test_thread_pool_runs_blocking_jobs_in_parallel_after_a_warm_up() -> None:
    """Regressed: idle-thread accounting; a job could be counted as taken by an idle thread that was in fact
    busy, so jobs submitted together queued behind each other instead of starting new threads. A later
    semaphore-based count had the same race; whatever the pool's accounting, four blocking jobs submitted
    together must run in parallel.
    """
    timings = []
    for round_ in range(3):  # the race is timing-dependent: a few fresh pools make it show reliably
        pool = ThreadPool(16, f"regress-pool-{round_}")
        await pool.run(lambda: None)  # warm-up: one thread, now idle
        start = time.perf_counter()
        await asyncio.gather(*(pool.run(time.sleep, 0.3) for _ in range(4)))
        timings.append(round(time.perf_counter() - start, 2))
    assert max(timings) < 0.55, f"4 jobs of 0.3 s took {timings} s: some queued behind a busy thread"


async def test_thread_pool_respects_max_workers() -> None:
    """The bound holds: two workers run four 0.3 s jobs in two rounds (~0.6 s)."""
    pool = ThreadPool(2, "regress-bounded")
    await pool.run(lambda: None)
    active = 0
    peak = 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.3)
        with lock:
            active -= 1

    start = time.perf_counter()
    await asyncio.gather(*(pool.run(job) for _ in range(4)))
    elapsed = time.perf_counter() - start
    assert peak == 2
    assert 0.55 <= elapsed < 1.2, elapsed


# --- 5. streaming stops when the client goes away ---------------------------------------------------------


def test_endless_stream_is_closed_when_the_client_disconnects() -> None:
    """Regressed: an endless async generator behind a StreamingResponse ran forever after the client had
    disconnected (uvicorn ignores sends on a closed connection), so its ``finally`` never ran."""
    events: list[str] = []
    app = Tachyon()

    async def ticks() -> Any:
        try:
            while True:
                yield b"tick\n"
                await asyncio.sleep(0.02)
        finally:
            events.append("closed")

    @app.get("/events")
    async def stream() -> StreamingResponse:
        return StreamingResponse(ticks(), media_type="text/plain")

    with serve(app) as url:
        with httpx.stream("GET", f"{url}/events", timeout=5) as response:
            assert response.status_code == 200
            received = b""
            for chunk in response.iter_raw():
                received += chunk
                if received.count(b"tick") >= 3:
                    break
        assert received.startswith(b"tick\n")
        assert wait_until(lambda: "closed" in events, 2.0), "the generator was not closed after the disconnect"


# --- 6. a response that fails before its first byte ------------------------------------------------------


def _missing_file_app(ran: list[str], tmp_path: Any) -> Tachyon:
    app = Tachyon()
    missing = tmp_path / "does-not-exist.bin"

    def task(name: str) -> None:
        ran.append(name)

    @app.get("/file")
    async def download(tasks: BackgroundTasks) -> FileResponse:
        tasks.add_task(task, "injected")
        return FileResponse(missing, background=BackgroundTask(task, "response"))

    return app


def test_missing_file_response_is_a_logged_500_and_its_tasks_do_not_run(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    """Regressed: a FileResponse for a missing file raised out of the app (no response, the server's own 500),
    and the request's background tasks still ran as if it had succeeded."""
    caplog.set_level(logging.ERROR, logger=ERR_LOGGER)
    ran: list[str] = []
    client = TachyonTestClient(_missing_file_app(ran, tmp_path))
    try:
        response = client.get("/file")
    finally:
        client.close()
    assert response.status_code == 500
    assert response.json() == INTERNAL_ERROR
    errors = [r for r in caplog.records if r.name == ERR_LOGGER and r.levelno >= logging.ERROR]
    assert errors, "the failure was not logged"
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)
    assert ran == []


def test_missing_file_response_goes_through_a_user_runtime_error_handler(tmp_path: Any) -> None:
    """Regressed: the failure escaped the app instead of reaching the user's exception handler."""
    ran: list[str] = []
    app = _missing_file_app(ran, tmp_path)

    @app.exception_handler(RuntimeError)
    async def on_runtime_error(request: Request, exc: RuntimeError) -> JSONResponse:
        return JSONResponse({"handled": "RuntimeError", "path": request.url.path}, 503)

    client = TachyonTestClient(app)
    try:
        response = client.get("/file")
    finally:
        client.close()
    assert response.status_code == 503
    assert response.json() == {"handled": "RuntimeError", "path": "/file"}
    assert ran == []


# --- 7. a task that raises CancelledError itself -----------------------------------------------------------


def _cancelling_app(ran: list[str]) -> Tachyon:
    app = Tachyon()

    async def gives_up() -> None:
        raise asyncio.CancelledError("the task gave up")

    async def next_one() -> None:
        ran.append("next")

    @app.get("/cancel")
    async def endpoint(tasks: BackgroundTasks) -> dict:
        tasks.add_task(gives_up)
        tasks.add_task(next_one)
        return {"ok": True}

    return app


def _check_cancel_failure(app: Tachyon, ran: list[str], caplog: pytest.LogCaptureFixture) -> None:
    assert ran == ["next"]
    stats = app.background.stats()
    assert stats.failed == 1
    assert stats.succeeded == 1
    assert stats.dropped == 0
    errors = [r for r in caplog.records if r.name == BG_LOGGER and r.levelno == logging.ERROR]
    assert any("gives_up" in r.getMessage() and "failed" in r.getMessage() for r in errors), [
        r.getMessage() for r in errors
    ]


def test_task_raising_cancelled_error_is_a_failure_in_the_test_client(caplog: pytest.LogCaptureFixture) -> None:
    """Regressed: a CancelledError raised by a task itself was taken for the batch being cancelled: the
    rest of the batch was dropped (and the request's call was cancelled)."""
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    ran: list[str] = []
    app = _cancelling_app(ran)
    client = TachyonTestClient(app)
    try:
        response = client.get("/cancel")
    finally:
        client.close()
    assert response.status_code == 200
    _check_cancel_failure(app, ran, caplog)


def test_task_raising_cancelled_error_is_a_failure_under_uvicorn(caplog: pytest.LogCaptureFixture) -> None:
    """Regressed: under a real server the batch stopped at the self-cancelling task and the next was lost."""
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    ran: list[str] = []
    app = _cancelling_app(ran)
    with serve(app) as url:
        assert httpx.get(f"{url}/cancel", timeout=10).status_code == 200
        assert wait_until(lambda: app.background.stats().failed + app.background.stats().dropped >= 1, 5)
        # the task's own line comes before its success is counted: wait for the count too
        assert wait_until(lambda: ran == ["next"] and not app.background.unfinished(), 2)
        _check_cancel_failure(app, ran, caplog)


# --- 8. error hooks of threaded batches are awaited -------------------------------------------------------


def _hooked_app(hooked: list[str]) -> Tachyon:
    app = Tachyon()

    def broken() -> None:
        raise ValueError("sync task broke")

    @app.on_task_error
    async def hook(failure: Any) -> None:
        await asyncio.sleep(0.1)
        hooked.append(f"{failure.task.name}:{type(failure.exception).__name__}")

    @app.get("/fail")
    async def endpoint(tasks: BackgroundTasks) -> dict:
        tasks.add_task(broken)
        return {"ok": True}

    return app


async def test_error_hooks_of_a_threaded_batch_have_run_when_join_returns() -> None:
    """Regressed: the hooks of a failing plain sync task (a batch run in one worker thread) were fired and
    forgotten, so ``join()`` and shutdown returned while they were still running."""
    hooked: list[str] = []
    app = _hooked_app(hooked)
    await app.startup()  # tasks detach from requests from now on
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bare") as client:
            assert (await client.get("/fail")).status_code == 200
        assert await app.background.join(5)
        assert len(hooked) == 1 and hooked[0].endswith("broken:ValueError"), hooked
    finally:
        await app.shutdown()
    assert app.background.stats().failed == 1


class _DetachTasks:
    """ASGI middleware that removes the test client's "wait for the tasks" mark, so the request's batch is
    detached to the runner as under a real server."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            extensions = dict(scope.get("extensions") or {})
            extensions.pop(WAIT_FOR_TASKS, None)
            scope["extensions"] = extensions
        await self.app(scope, receive, send)


def test_error_hooks_of_a_threaded_batch_have_run_when_the_test_client_block_exits() -> None:
    """Regressed: the lifespan's shutdown (the end of the ``with`` block) did not wait for the hooks of a
    threaded batch; they ran after it, or never, the loop being gone."""
    hooked: list[str] = []
    app = _hooked_app(hooked)
    app.add_middleware(_DetachTasks)
    with TachyonTestClient(app) as client:
        assert client.get("/fail").status_code == 200
    assert len(hooked) == 1 and hooked[0].endswith("broken:ValueError"), hooked
    assert app.background.stats().failed == 1

    # Inline (the client waits for the tasks): the hook has run when the request returns.
    plain_hooked: list[str] = []
    with TachyonTestClient(_hooked_app(plain_hooked)) as client:
        assert client.get("/fail").status_code == 200
        assert len(plain_hooked) == 1


# --- 9. background_concurrency counts threaded batches ------------------------------------------------------


def test_background_concurrency_one_runs_sync_tasks_one_at_a_time() -> None:
    """Regressed: batches of plain sync tasks (run in a worker thread) were not counted against
    ``background_concurrency``, so with a limit of 1 they all ran at once and nothing was ever queued."""
    app = Tachyon(background_concurrency=1)
    lock = threading.Lock()
    state = {"active": 0, "peak": 0, "done": 0}

    def blocking() -> None:
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.3)
        with lock:
            state["active"] -= 1
            state["done"] += 1

    @app.get("/work")
    async def work(tasks: BackgroundTasks) -> dict:
        tasks.add_task(blocking)
        return {"ok": True}

    queued_seen = 0
    with serve(app) as url:
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(3):
                assert client.get("/work").status_code == 200
                queued_seen = max(queued_seen, app.background.stats().queued)

        def all_done() -> bool:
            nonlocal queued_seen
            queued_seen = max(queued_seen, app.background.stats().queued)
            return state["done"] == 3

        assert wait_until(all_done, 5)
    assert state["peak"] == 1, f"{state['peak']} tasks ran at once with background_concurrency=1"
    assert queued_seen > 0
    assert app.background.stats().succeeded == 3


# --- 10. a singleton is built once under concurrent first requests ------------------------------------------


async def test_singleton_with_slow_async_dependency_is_built_once() -> None:
    """Regressed: concurrent first requests each built the singleton while its slow async dependency was
    being awaited (one instance was kept, the others were constructed for nothing)."""
    built: list[int] = []
    config_calls: list[int] = []

    async def slow_config() -> str:
        config_calls.append(1)
        await asyncio.sleep(0.1)
        return "cfg"

    @injectable
    class Service:
        def __init__(self, config: str = Depends(slow_config)) -> None:
            built.append(1)
            self.config = config

    app = Tachyon()

    @app.get("/svc")
    async def endpoint(service: Service) -> dict:
        return {"id": id(service), "config": service.config}

    async with create_client(app) as client:
        responses = await asyncio.gather(*(client.get("/svc") for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert len({r.json()["id"] for r in responses}) == 1
    assert {r.json()["config"] for r in responses} == {"cfg"}
    assert len(built) == 1, f"the singleton was constructed {len(built)} times"
    assert len(config_calls) == 1


# --- 11. handlers for Starlette's HTTPException ------------------------------------------------------------


def test_user_handler_for_starlette_http_exception_is_used() -> None:
    """Regressed: Starlette's HTTPException always got the built-in ``{"detail": ...}`` answer, ignoring a
    handler the user registered for that very class."""
    app = Tachyon()

    @app.exception_handler(starlette.exceptions.HTTPException)
    async def custom(request: Request, exc: starlette.exceptions.HTTPException) -> JSONResponse:
        return JSONResponse({"custom": exc.detail, "status": exc.status_code}, exc.status_code)

    @app.get("/teapot")
    async def teapot() -> dict:
        raise starlette.exceptions.HTTPException(418, "short and stout")

    client = TachyonTestClient(app)
    try:
        response = client.get("/teapot")
    finally:
        client.close()
    assert response.status_code == 418
    assert response.json() == {"custom": "short and stout", "status": 418}


def test_exception_handler_does_not_swallow_starlette_http_exception() -> None:
    """An ``Exception`` handler alone must not turn Starlette's HTTPException into its generic answer."""
    app = Tachyon()

    @app.exception_handler(Exception)
    async def everything(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"caught": type(exc).__name__}, 500)

    @app.get("/gone")
    async def gone() -> dict:
        raise starlette.exceptions.HTTPException(404, "no such thing")

    @app.get("/boom")
    async def boom() -> dict:
        raise ValueError("boom")

    client = TachyonTestClient(app)
    try:
        gone_response = client.get("/gone")
        boom_response = client.get("/boom")
    finally:
        client.close()
    assert gone_response.status_code == 404
    assert gone_response.json() == {"detail": "no such thing"}
    assert boom_response.status_code == 500
    assert boom_response.json() == {"caught": "ValueError"}


# --- 12. form limits ------------------------------------------------------------------------------------


def _form_app() -> Tachyon:
    app = Tachyon(max_body_size=5 * 1024 * 1024)

    @app.post("/count")
    async def count(request: Request) -> dict:
        form = await request.form()
        return {"fields": len(form.multi_items())}

    @app.post("/big")
    async def big(text: str = Form(), upload: UploadFile = None) -> dict:  # type: ignore[assignment]
        return {"length": len(text)}

    return app


def test_urlencoded_form_with_too_many_fields_is_a_400() -> None:
    """Regressed: urlencoded forms had no field limit (multipart had one), so any number of fields was parsed."""
    client = TachyonTestClient(_form_app())
    try:
        too_many = "&".join(f"f{i}=v" for i in range(1001))
        response = client.post(
            "/count", content=too_many, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["code"] == "BAD_REQUEST"
        assert "errors" in body
        assert body["success"] is False

        just_enough = "&".join(f"f{i}=v" for i in range(1000))
        ok = client.post("/count", content=just_enough, headers={"content-type": "application/x-www-form-urlencoded"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"fields": 1000}
    finally:
        client.close()


def test_multipart_text_field_over_one_mib_is_a_400() -> None:
    """Regressed: a non-file multipart field was buffered in memory whatever its size (only max_body_size
    applied), so one field could take the whole body limit."""
    client = TachyonTestClient(_form_app())
    try:
        files = {"upload": ("a.txt", b"content", "text/plain")}
        response = client.post("/big", data={"text": "x" * (1024 * 1024 + 1)}, files=files)
        assert response.status_code == 400, response.text[:300]
        body = response.json()
        assert body["code"] == "BAD_REQUEST"
        assert "errors" in body

        ok = client.post("/big", data={"text": "x" * 1000}, files=files)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"length": 1000}
    finally:
        client.close()


# --- 13. Path(alias=...) must name a segment of the route --------------------------------------------------


def test_path_alias_not_in_the_route_is_a_type_error_at_registration() -> None:
    """Regressed: ``Path(alias="x")`` was accepted when the parameter's own name was in the template, and
    failed at request time (KeyError, a 500) instead of at registration."""
    app = Tachyon()
    with pytest.raises(TypeError, match="'x'"):

        @app.get("/items/{item_id}")
        async def item(item_id: int = Path(alias="x")) -> dict:
            return {"id": item_id}

    @app.get("/things/{x}")
    async def thing(thing_id: int = Path(alias="x")) -> dict:
        return {"id": thing_id}

    client = TachyonTestClient(app)
    try:
        assert client.get("/things/7").json() == {"id": 7}
    finally:
        client.close()


# --- 14. user subclasses of Starlette responses ----------------------------------------------------------


def test_user_subclass_of_starlette_json_response_is_sent_and_its_task_runs() -> None:
    """Regressed: only classes defined in ``starlette.*`` counted as Starlette responses; a user subclass was
    taken for data and rendered as JSON (a 500), and its background task never ran."""
    ran: list[str] = []

    class Envelope(starlette.responses.JSONResponse):
        def render(self, content: Any) -> bytes:
            return super().render({"data": content})

    def task(name: str) -> None:
        ran.append(name)

    app = Tachyon()

    @app.post("/things")
    async def create() -> Envelope:
        return Envelope({"id": 1}, status_code=201, background=starlette.background.BackgroundTask(task, "sub"))

    client = TachyonTestClient(app)
    try:
        response = client.post("/things")
    finally:
        client.close()
    assert response.status_code == 201, response.text
    assert response.json() == {"data": {"id": 1}}
    assert response.headers["content-type"].startswith("application/json")
    assert ran == ["sub"]  # exactly once


# --- 15. request.state shared with Starlette's Request ----------------------------------------------------


def test_request_state_is_shared_with_a_starlette_request() -> None:
    """Regressed: ``request.state`` stored a State object in ``scope["state"]``, which Starlette's Request
    cannot read (a 500), instead of the plain dict both share."""
    app = Tachyon()

    @app.get("/me")
    async def me(request: Request, raw: starlette.requests.Request) -> dict:
        request.state.user = "ada"
        return {"ours": request.state.user, "starlette": raw.state.user}

    @app.get("/them")
    async def them(raw: starlette.requests.Request, request: Request) -> dict:
        raw.state.user = "grace"
        return {"ours": request.state.user, "starlette": raw.state.user}

    client = TachyonTestClient(app)
    try:
        me_response = client.get("/me")
        them_response = client.get("/them")
    finally:
        client.close()
    assert me_response.status_code == 200, me_response.text
    assert me_response.json() == {"ours": "ada", "starlette": "ada"}
    assert them_response.status_code == 200, them_response.text
    assert them_response.json() == {"ours": "grace", "starlette": "grace"}


# --- 16. duplicate routes ---------------------------------------------------------------------------------


def test_duplicate_route_keeps_the_first_endpoint_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Regressed: registering the same method and path again silently replaced the first endpoint."""
    caplog.set_level(logging.WARNING, logger=ERR_LOGGER)
    app = Tachyon()

    @app.get("/dup")
    async def first() -> dict:
        return {"endpoint": "first"}

    @app.get("/dup")
    async def second() -> dict:
        return {"endpoint": "second"}

    warnings = [r for r in caplog.records if r.name == ERR_LOGGER and r.levelno == logging.WARNING]
    assert warnings, "no warning for the duplicate route"
    assert "/dup" in warnings[0].getMessage()

    client = TachyonTestClient(app)
    try:
        assert client.get("/dup").json() == {"endpoint": "first"}
    finally:
        client.close()


# --- 17. safe_filename ----------------------------------------------------------------------------------


def test_safe_filename_strips_only_directories_and_drive_letters() -> None:
    """Regressed: everything up to the last colon was cut, so "10:30 notes.txt" became "30 notes.txt"."""
    assert safe_filename("10:30 notes.txt") == "10:30 notes.txt"
    assert safe_filename("C:\\Users\\x\\evil.txt") == "evil.txt"
    assert safe_filename("C:evil.txt") == "evil.txt"
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("..") is None
    assert safe_filename(None) is None

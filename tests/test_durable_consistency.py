"""Durable tasks and database writes that succeed or fail together (``Depends(..., scope="function")``).

The order under test: endpoint returns -> durable tasks stored (503 if not) -> exit code of the function-scope
dependencies (commit, or rollback with the store failure raised at their ``yield``) -> response sent -> the
other dependency exits -> in-process tasks. Over real processes: the example shop under ``tachyon run``
against a redis-server that is stopped and started again, and ``tachyon worker`` processes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from rq import Retry

from tachyon_api import Depends, HTTPException, Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend

from .conftest import ROOT, RedisServer, ServerProcess, assert_error_shape, client_for, free_port, serve, wait_until
from .test_example_shop import APP as SHOP_APP
from .test_example_shop import Shop, create_order, delivery, eventually


def run_worker(cwd: Path, env: dict[str, str], target: str) -> str:
    """``tachyon worker TARGET --burst`` until the queue is empty; returns what it printed."""
    with open(cwd / f"worker-{uuid.uuid4().hex[:6]}.log", "w+b") as log:
        worker = subprocess.run(
            [sys.executable, "-m", "tachyon_api", "worker", target, "--burst"],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        log.seek(0)
        output = log.read().decode(errors="replace")
    assert worker.returncode == 0, output
    return output


# --- the shop, with Redis stopped and started again ----------------------------------------------------------
def test_shop_writes_nothing_while_redis_is_down_and_the_retry_sends_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    running = Shop(
        tmp_path,
        SHOP_TASK_BACKEND="rq",
        SHOP_REDIS_URL=redis_server.url,
        SHOP_WEBHOOK_RETRY_DELAY="0",  # RQ retries with a delay need a worker --with-scheduler
        SHOP_COMMIT_GRACE="0.5",  # how long a task looks for a row that was never committed
    )
    try:
        http = running.http
        assert http.post("/signup", json={"email": "grace@example.com", "name": "Grace"}).status_code == 201
        assert http.post("/products", json={"id": "LAMP-1", "name": "Lamp", "price": 9.99}).status_code == 201
        order_id = create_order(running, f"{running.url}/webhooks/receiver")

        redis_server.stop()
        signup = http.post("/signup", json={"email": "dave@example.com", "name": "Dave"})
        assert_error_shape(signup, {503}, "TASK_BACKEND_UNAVAILABLE")
        assert running.query("SELECT * FROM users WHERE email = 'dave@example.com'") == []
        complete = http.post(f"/orders/{order_id}/complete")
        assert_error_shape(complete, {503}, "TASK_BACKEND_UNAVAILABLE")
        assert http.get(f"/orders/{order_id}").json()["status"] == "pending"
        reset = http.post("/reset-password", params={"email": "grace@example.com"})
        assert_error_shape(reset, {503}, "TASK_BACKEND_UNAVAILABLE")
        assert running.query("SELECT * FROM password_resets") == []
        for _ in range(3):  # the view counter is in-process: product pages do not need Redis
            assert http.get("/products/LAMP-1").status_code == 200
        stats = eventually(
            lambda: (s := http.get("/stats").json())["product_views"].get("LAMP-1") == 3 and s, what="3 views"
        )
        assert "ConnectionError" in stats["durable"]["error"]

        redis_server.start()  # empty again: only what is stored from now on exists
        assert http.post("/signup", json={"email": "dave@example.com", "name": "Dave"}).status_code == 201
        assert http.post(f"/orders/{order_id}/complete").json()["order"]["status"] == "completed"
        assert http.post("/reset-password", params={"email": "grace@example.com"}).status_code == 200
        assert http.get("/stats").json()["durable"]["queued"] == 3

        run_worker(tmp_path, {"PYTHONPATH": str(ROOT), **running.env}, SHOP_APP)
        welcome = running.wait_for_mail("dave@example.com", "Welcome to the shop, Dave!")
        assert "dave@example.com" in welcome.get_content()
        running.wait_for_mail("grace@example.com", "Reset your password")
        mails = [(m["To"], m["Subject"]) for m in running.mails()]
        assert mails.count(("dave@example.com", "Welcome to the shop, Dave!")) == 1
        assert mails.count(("grace@example.com", "Reset your password")) == 1
        assert len(running.query("SELECT * FROM password_resets WHERE sent_at IS NOT NULL")) == 1
        received = delivery(running, order_id)
        assert received is not None and received["attempts"] == 1
        assert len(running.query("SELECT * FROM received_webhooks WHERE order_id = ?", order_id)) == 1
        assert http.get("/stats").json()["durable"]["failed"] == 0

        # What a commit failing after the store leaves behind: tasks whose rows were never committed (for the
        # order: whose completion was not). Each one logs it and finishes: no retry, no failed job.
        pending = create_order(running, f"{running.url}/webhooks/receiver")
        queue = RQBackend(redis_server.url, queue="shop").queue
        for task, arg in (("send_welcome_email", 9999), ("send_password_reset", 9999), ("send_order_webhook", pending)):
            queue.enqueue(f"examples.shop.tasks.{task}", arg, retry=Retry(max=3))
        output = run_worker(tmp_path, {"PYTHONPATH": str(ROOT), **running.env}, SHOP_APP)
        assert "Welcome email: user 9999 does not exist" in output
        assert "Password reset: request 9999 does not exist" in output
        assert f"Webhook: order {pending} does not exist or is not completed" in output
        durable = http.get("/stats").json()["durable"]
        assert (durable["failed"], durable["queued"], durable["scheduled"], durable["finished"]) == (0, 0, 0, 6)
        output = running.stop()
        assert output.count("Could not store durable task(s)") == 3
    finally:
        running.server.stop()


# --- a commit that fails after the store ---------------------------------------------------------------------
ORDERS_APP = """
import logging, os, sqlite3
from tachyon_api import Depends, Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend
from examples.shop.app import transaction  # the shop's own dependency (on SHOP_DB): the test checks it, no copy

DB = os.environ["SHOP_DB"]
logger = logging.getLogger("orders.tasks")
app = Tachyon(task_backend=RQBackend(os.environ["REDIS_URL"], queue=os.environ["QUEUE"]))


def connect():
    conn = sqlite3.connect(DB)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(
        "CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY);"
        "CREATE TABLE IF NOT EXISTS purchases (id INTEGER PRIMARY KEY, "
        "  customer_id INTEGER REFERENCES customers(id) DEFERRABLE INITIALLY DEFERRED, confirmed INTEGER DEFAULT 0);"
        "INSERT OR IGNORE INTO customers (id) VALUES (1);"
    )
    return conn


connect().close()  # the tables exist before the shop's transaction opens the file


def confirm_order(order_id):
    conn = connect()
    try:
        with conn:
            if not conn.execute("UPDATE purchases SET confirmed = 1 WHERE id = ?", (order_id,)).rowcount:
                logger.warning("Order %s does not exist: nothing to confirm", order_id)
    finally:
        conn.close()


@app.post("/orders", status_code=201)
def create_order(customer_id: int, background_tasks: BackgroundTasks, db=Depends(transaction, scope="function")):
    order_id = db.execute("INSERT INTO purchases (customer_id) VALUES (?)", (customer_id,)).lastrowid
    background_tasks.add_task(confirm_order, order_id).with_options(retries=3)
    return {"id": order_id}
"""


def test_a_commit_failing_after_the_store_leaves_a_task_that_finds_nothing(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "orders_app.py").write_text(ORDERS_APP)
    queue = f"orders-{uuid.uuid4().hex[:8]}"
    env = {
        "SHOP_DB": str(tmp_path / "orders.sqlite3"),
        "SHOP_DATA_DIR": str(tmp_path / "shop"),
        "REDIS_URL": redis_url,
        "QUEUE": queue,
    }
    server = ServerProcess("orders_app:app", tmp_path, env)
    try:
        good = httpx.post(f"{server.url}/orders", params={"customer_id": 1}, timeout=20)
        assert good.status_code == 201
        bad = httpx.post(f"{server.url}/orders", params={"customer_id": 999}, timeout=20)  # no such customer
        assert bad.status_code == 500
        assert bad.json() == {"success": False, "error": "Internal Server Error", "code": "INTERNAL_SERVER_ERROR"}
        backend = RQBackend(redis_url, queue=queue)
        assert backend.stats()["queued"] == 2  # both tasks were stored before the commits

        output = run_worker(tmp_path, {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **env}, "orders_app:app")
        failed_order = good.json()["id"] + 1  # the id the failed request's row had before its commit failed
        assert f"Order {failed_order} does not exist: nothing to confirm" in output
        assert output.count("does not exist") == 1  # ran once: no retry, no error loop
        stats = backend.stats()
        assert (stats["finished"], stats["failed"], stats["queued"], stats["scheduled"]) == (2, 0, 0, 0)
        conn = sqlite3.connect(tmp_path / "orders.sqlite3")
        assert conn.execute("SELECT id, confirmed FROM purchases").fetchall() == [(good.json()["id"], 1)]
        conn.close()
    finally:
        server.terminate()
        server.wait(30)
        server.stop()
    log = server.output()
    assert "FOREIGN KEY constraint failed" in log
    assert "Durable task(s) confirm_order of request POST /orders were stored, then a scope='function'" in log


# --- the order of events, and what the dependencies see ------------------------------------------------------
def record_task(events: list, name: str) -> None:
    events.append(f"task {name}")


elsewhere = RQBackend(f"redis://127.0.0.1:{free_port()}/0")


@elsewhere.task(retries=2, result_ttl=60)
def marked_task(name: str) -> None:
    """Durable on ``elsewhere`` wherever it is added, unless a call says ``durable=False``."""


class SentRecorder:
    """ASGI middleware: appends "sent" to ``events`` when the response's last byte has gone out."""

    def __init__(self, app: Any, events: list) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def recording_send(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.events.append("sent")

        await self.app(scope, receive, recording_send)


def ordered_app(backend: RQBackend, events: list) -> Tachyon:
    def tx():
        events.append("tx open")
        try:
            yield "tx"
        except Exception as exc:
            events.append(f"tx rollback {type(exc).__name__}")
            raise
        else:
            events.append(f"tx commit, {backend.queue.count} stored")
        finally:
            events.append("tx close")

    def request_scoped():
        try:
            yield
        except Exception as exc:
            events.append(f"request exit {type(exc).__name__}")
            raise
        events.append("request exit")

    app = Tachyon(task_backend=backend)
    app.add_middleware(SentRecorder, events=events)

    @app.post("/work")
    def work(background_tasks: BackgroundTasks, db=Depends(tx, scope="function"), _=Depends(request_scoped)):
        background_tasks.add_task(print, "durable")
        background_tasks.with_options(durable=False).add_task(lambda: record_task(events, "in-process"))
        events.append("endpoint")
        return {"db": db}

    return app


def test_store_then_commit_then_response_then_other_exits_then_in_process_tasks(redis_url: str) -> None:
    events: list[str] = []
    backend = RQBackend(redis_url, queue=f"order-{uuid.uuid4().hex[:8]}")
    with serve(ordered_app(backend, events)) as url:
        assert httpx.post(f"{url}/work").json() == {"db": "tx"}
        assert wait_until(lambda: "task in-process" in events)
    assert events == [
        "tx open",
        "endpoint",
        "tx commit, 1 stored",
        "tx close",
        "sent",
        "request exit",
        "task in-process",
    ]
    backend.queue.empty()


def test_a_failed_store_is_raised_at_the_yield_and_nothing_runs(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    backend = RQBackend(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    with serve(ordered_app(backend, events)) as url:
        response = httpx.post(f"{url}/work", timeout=20)
        assert_error_shape(response, {503}, "TASK_BACKEND_UNAVAILABLE")
        assert wait_until(lambda: "request exit TaskBackendUnavailable" in events)
    assert events == [
        "tx open",
        "endpoint",
        "tx rollback TaskBackendUnavailable",
        "tx close",
        "sent",
        "request exit TaskBackendUnavailable",
    ]  # and the in-process task never ran


def test_exit_code_of_the_function_scope_chooses_the_response() -> None:
    """A commit error translated at the yield (here a 409) is what the client gets; later exits see it too.
    An async generator, a route guard and a 422 go through the same function-scope exits."""
    seen: list[str] = []

    async def tx(fail: bool = False):
        try:
            yield
        except Exception as exc:
            seen.append(f"rollback {type(exc).__name__}")
            raise
        if fail:
            raise HTTPException(409, "Already exists")  # e.g. a unique constraint checked at commit
        seen.append("commit")

    def request_scoped():
        try:
            yield
        except HTTPException as exc:
            seen.append(f"request exit {exc.status_code}")
            raise

    app = Tachyon()

    @app.post("/thing")
    def thing(background_tasks: BackgroundTasks, _=Depends(tx, scope="function"), __=Depends(request_scoped)):
        background_tasks.add_task(seen.append, "task")
        return {"ok": True}

    @app.post("/guarded", dependencies=[Depends(tx, scope="function")])
    def guarded(count: int):
        seen.append("endpoint")
        return {"count": count}

    client = client_for(app)
    response = client.post("/thing?fail=true")
    assert (response.status_code, response.json()) == (409, {"detail": "Already exists"})
    assert seen == ["request exit 409"]  # the in-process task of a failed request does not run
    seen.clear()
    assert client.post("/guarded?count=2").json() == {"count": 2}
    assert client.post("/guarded?count=two").status_code == 422
    assert seen == ["endpoint", "commit", "rollback RequestValidationError"]


def test_scope_is_checked_at_registration() -> None:
    with pytest.raises(ValueError, match=r"use 'function' or 'request' .singleton and transient are scopes of"):
        Depends(print, scope="singleton")  # type: ignore[arg-type]

    def session():
        yield "session"

    def audit(s=Depends(session, scope="function")):
        yield s  # its exit code runs after the response, when the session is closed already

    app = Tachyon()
    with pytest.raises(
        TypeError,
        match=r"audit has exit code that runs after the response .scope 'request'., so it "
        r"cannot depend on .*session, whose exit code runs before the response",
    ):
        app.post("/a")(lambda a=Depends(audit): a)

    # The other way round is fine, and the same generator in both scopes gives two values, as in FastAPI.
    opened: list[int] = []

    def counted():
        opened.append(len(opened))
        yield len(opened)

    def early(s=Depends(counted)):
        yield s

    @app.get("/b")
    def both(a=Depends(early, scope="function"), b=Depends(counted, scope="function"), c=Depends(counted)):
        return [a, b, c]

    assert client_for(app).get("/b").json() == [1, 2, 1]


def test_overrides_keep_the_scope_of_the_dependency_they_replace() -> None:
    events: list[str] = []

    def real():
        yield "real"

    def fake():
        yield "fake"
        events.append("fake exit")

    app = Tachyon()
    app.add_middleware(SentRecorder, events=events)

    @app.get("/")
    def endpoint(value=Depends(real, scope="function")):
        return value

    app.dependency_overrides[real] = fake
    assert client_for(app).get("/").json() == "fake"
    assert events == ["fake exit", "sent"]


# --- options RQ would refuse, and the in-process opt-out -----------------------------------------------------
def test_options_rq_would_refuse_are_a_type_error_at_with_options(redis_url: str) -> None:
    tasks = BackgroundTasks(backend=RQBackend(redis_url))
    task = tasks.add_task(print, "x")
    for bad in ("order 1", "order:1", "", "ordre-é", 12):
        with pytest.raises(TypeError, match=r"letters \(A-Z, a-z\), digits \(0-9\), underscores \(_\) and dashes"):
            task.with_options(job_id=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="whole seconds"):
        task.with_options(result_ttl=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a datetime"):
        task.with_options(at="tomorrow")
    with pytest.raises(TypeError, match="retries must be an int"):
        task.with_options(retries=2.5)  # type: ignore[arg-type]
    assert task.with_options(job_id="order_1-completed").job_id == "order_1-completed"
    with pytest.raises(TypeError, match=r"unexpected option.s.: colour"):
        tasks.with_options(colour="red")


def test_durable_false_keeps_a_task_in_process(redis_url: str) -> None:
    backend = RQBackend(redis_url)
    tasks = BackgroundTasks(backend=backend)
    assert tasks.add_task(print, "x").with_options(durable=False).backend is None
    durable = BackgroundTasks().add_task(marked_task, "x")
    assert (durable.backend, durable.retries, durable.result_ttl) == (elsewhere, 2, 60)
    for in_process in (
        tasks.with_options(durable=False).add_task(marked_task, "x"),
        tasks.add_task(marked_task, "x").with_options(durable=False),
    ):  # the same either way: the mark's retries kept, its RQ-only result_ttl dropped
        assert (in_process.backend, in_process.retries, in_process.result_ttl) == (None, 2, None)
    assert tasks.with_options(durable=False, retries=1).add_task(marked_task, "x").retries == 1
    closure = tasks.with_options(durable=False).add_task(lambda: None)  # not checked for a worker
    assert closure.backend is None
    dropped = tasks.add_task(print, "x").with_options(job_id="a", result_ttl=5).with_options(durable=False)
    assert (dropped.backend, dropped.job_id, dropped.result_ttl) == (None, None, None)
    with pytest.raises(ValueError, match="job_id need a durable task"):
        tasks.add_task(print, "x").with_options(job_id="a", durable=False)
    with pytest.raises(ValueError, match="durable=True needs a durable backend"):
        BackgroundTasks().add_task(print).with_options(durable=True)
    assert len(tasks) == 7


def test_in_process_tasks_run_while_redis_is_down() -> None:
    done: list[str] = []
    app = Tachyon(task_backend=RQBackend(f"redis://127.0.0.1:{free_port()}/0"))

    @app.get("/products/{pid}")
    def product(pid: str, background_tasks: BackgroundTasks):
        background_tasks.with_options(durable=False).add_task(done.append, pid)
        return {"id": pid}

    with serve(app) as url:
        assert httpx.get(f"{url}/products/p1").json() == {"id": "p1"}
        assert wait_until(lambda: done == ["p1"])


# --- a cancelled request unwinds its dependencies at once ----------------------------------------------------
class Deadline:
    """ASGI middleware: cancels the request after ``seconds`` (as ``asyncio.timeout`` would) and answers 504."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            await asyncio.wait_for(self.app(scope, receive, send), self.seconds)
        except asyncio.TimeoutError:
            await send({"type": "http.response.start", "status": 504, "headers": []})
            await send({"type": "http.response.body", "body": b""})


def test_a_cancelled_request_rolls_back_its_function_scope_and_runs_its_cleanups_at_once() -> None:
    """Cancelled while the endpoint runs: the ``scope="function"`` dependency sees the cancellation at its
    ``yield`` (a rollback) and the request-scoped one runs its exit code, before the request task ends; not
    later, when the garbage collector closes their generators."""
    events: list[str] = []

    async def session():
        events.append("open")
        try:
            yield "s"
            events.append("commit")
        except BaseException as exc:
            events.append(f"rollback {type(exc).__name__}")
            raise

    async def request_scoped():
        try:
            yield
        except BaseException as exc:
            events.append(f"request exit {type(exc).__name__}")
            raise

    app = Tachyon()
    app.add_middleware(Deadline, seconds=0.3)

    @app.get("/slow")
    async def slow(s: str = Depends(session, scope="function"), _: None = Depends(request_scoped)) -> dict:
        await asyncio.sleep(10)
        return {}

    with serve(app) as url:
        assert httpx.get(f"{url}/slow", timeout=10).status_code == 504
        assert events == ["open", "rollback CancelledError", "request exit CancelledError"]

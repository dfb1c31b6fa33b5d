"""Periodic jobs in one process: schedules, declaration errors, leases, overlap, catch-up, outcomes, the CLI.

The tests with several processes (``tachyon run --workers 2``, and app processes sharing a Redis) are in
``test_schedule_processes.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tachyon_api import Tachyon
from tachyon_api.dashboard import task_dashboard
from tachyon_api.tasks.leases import FileLease
from tachyon_api.tasks.schedule import GRACE, Cron, Every

from .conftest import ROOT, serve, wait_until

UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def private_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's file leases and their state in a folder of its own (a previous test's last tick is not
    this test's)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def stamp(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp())


# --- ticks ---------------------------------------------------------------------------------------------------
def test_every_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    five = Every(dt.timedelta(minutes=5))
    noon = stamp("2025-06-01T12:00:00+00:00")
    assert five.latest(noon) == noon and five.after(noon) == noon + 300
    assert five.latest(noon + 299.9) == noon and five.after(noon + 299.9) == noon + 300
    assert five.between(noon, noon + 900) == 2
    assert Every(1).after(10.5) == 11 and Every(1).latest(10.5) == 10
    assert five.describe() == "every 5m" and Every(dt.timedelta(hours=1, minutes=30)).describe() == "every 1h30m"


def test_cron_ticks_follow_the_time_zone_and_its_daylight_saving_changes() -> None:
    madrid = Cron("30 2 * * *", "Europe/Madrid")
    spring = stamp("2025-03-29T12:00:00+01:00")
    # 02:30 does not exist on 30 March in Madrid: cron runs it at the change (03:00 summer time)
    assert madrid.after(spring) == stamp("2025-03-30T03:00:00+02:00")
    assert madrid.after(madrid.after(spring)) == stamp("2025-03-31T02:30:00+02:00")
    autumn = stamp("2025-10-25T12:00:00+02:00")  # 02:30 happens twice on 26 October: once
    assert madrid.after(autumn) == stamp("2025-10-26T02:30:00+02:00")
    assert madrid.after(madrid.after(autumn)) == stamp("2025-10-27T02:30:00+01:00")
    nightly = Cron("0 3 * * *", "Europe/Madrid")
    three = stamp("2025-06-01T03:00:00+02:00")
    assert nightly.latest(three) == three and nightly.latest(three - 1) == three - 86_400
    assert nightly.after(three) == three + 86_400
    assert nightly.between(three - 3 * 86_400, three) == 2
    assert Cron("*/10 * * * * *", None).after(stamp("2025-01-01T00:00:05+00:00")) == stamp("2025-01-01T00:00:10+00:00")


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({}, TypeError, "exactly one of every="),
        ({"every": 5, "cron": "* * * * *"}, TypeError, "exactly one of every="),
        ({"every": 0.5}, ValueError, "whole number of seconds, at least 1"),
        ({"every": dt.timedelta(seconds=1.5)}, ValueError, "whole number of seconds"),
        ({"every": "5m"}, TypeError, "timedelta or a number of seconds"),
        ({"every": 5, "timezone": "UTC"}, TypeError, "timezone=...) applies to cron="),
        ({"cron": "61 * * * *"}, ValueError, "not a valid cron expression"),
        ({"cron": "0 3 * *"}, ValueError, "not a valid cron expression"),
        ({"cron": "0 0 30 2 *"}, ValueError, "not a valid cron expression"),
        ({"cron": "0 3 * * *", "timezone": "Europe/Atlantis"}, ValueError, "not an IANA time zone"),
        ({"every": 5, "jitter": 5}, ValueError, "shorter than the interval"),
        ({"every": 5, "jitter": -1}, ValueError, "not negative"),
        ({"every": 5, "retries": -1}, ValueError, "retries cannot be negative"),
        ({"every": 5, "timeout": 0}, ValueError, "timeout must be positive"),
    ],
)
def test_a_bad_declaration_fails_at_once_with_what_is_wrong(kwargs: dict, error: type, words: str) -> None:
    app = Tachyon()

    def job() -> None:
        pass

    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        app.periodic(**kwargs)(job)
    assert list(app.scheduler) == []


def test_a_job_is_called_without_arguments_but_may_ask_for_its_tick_and_names_are_unique() -> None:
    app = Tachyon()

    def needs(user_id: int) -> None:
        pass

    with pytest.raises(TypeError, match="it needs: user_id"):
        app.periodic(every=5)(needs)

    @app.periodic(every=5)
    def report(tick: dt.datetime) -> None:
        pass

    with pytest.raises(ValueError, match="declared already"):
        app.periodic(every=10)(report)
    app.periodic(every=10, name="report-again")(report)
    assert [job.name for job in app.scheduler] == [f"{__name__}.{report.__qualname__}", "report-again"]
    job = app.scheduler.jobs["report-again"]
    assert job.arguments(1_700_000_000) == {"tick": dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)}


def test_jitter_is_random_per_tick_but_the_same_in_every_process() -> None:
    app = Tachyon()
    app.periodic(every=60, jitter=dt.timedelta(seconds=20), name="j")(lambda: None)
    job = app.scheduler.jobs["j"]
    offsets = [job.offset(tick) for tick in range(0, 6000, 60)]
    assert all(0 <= offset <= 20 for offset in offsets) and len(set(offsets)) > 50
    assert offsets == [job.offset(tick) for tick in range(0, 6000, 60)]
    assert job.job_id(120).startswith("periodic-j-") and job.job_id(120).endswith("-120")


async def test_a_file_lease_has_one_holder_and_its_state_only_moves_forward(tmp_path: Path) -> None:
    first, second = FileLease(str(tmp_path / "job.lock")), FileLease(str(tmp_path / "job.lock"))
    assert await first.hold() == (True, None)
    assert await second.hold() == (False, None)  # another open file: the lock is taken
    assert await first.claim(100, "running") and not await first.claim(100, "running")
    assert not await first.claim(90, None)
    assert await first.claim(110, None)  # skipped: the last run stays 100
    await first.record(100, "succeeded")
    assert await second.read() == {"tick": 110, "run": 100, "outcome": "succeeded"}
    assert not await second.claim(120, None)  # not the holder
    await first.release()
    assert await second.hold() == (True, 110)
    await second.release()


# --- runs in one process, under a real server --------------------------------------------------------------
def intervals(events: list[tuple[str, float]]) -> list[tuple[float, float]]:
    starts = [t for kind, t in events if kind == "start"]
    ends = [t for kind, t in events if kind == "end"]
    return list(zip(starts, ends, strict=False))  # the last start may have no end yet


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
SKIP_RUNNING = re.compile(
    rf"Periodic job single: tick {STAMP} skipped, the previous run \(tick {STAMP}\) is still running: attempt 1 "
    rf"started {STAMP} \(\d+s ago\)"
)


def test_overlapping_ticks_are_skipped_and_counted_unless_overlap_is_allowed(caplog: pytest.LogCaptureFixture) -> None:
    app = Tachyon()
    app.include_router(task_dashboard(public=True))
    events: dict[str, list[tuple[str, float]]] = {"single": [], "overlap": []}

    async def slow(kind: str) -> None:
        events[kind].append(("start", time.monotonic()))
        await asyncio.sleep(1.6)
        events[kind].append(("end", time.monotonic()))

    @app.periodic(every=1, name="single")
    async def single() -> None:
        await slow("single")

    @app.periodic(every=1, name="overlap", overlap=True)
    async def overlapping() -> None:
        await slow("overlap")

    with caplog.at_level(logging.WARNING, "tachyon_api.schedule"), serve(app) as url:
        assert wait_until(lambda: len([e for e in events["single"] if e[0] == "start"]) >= 2, 8)
        periodic = {row["name"]: row for row in httpx.get(url + "/tasks/data").json()["periodic"]}
    runs = intervals(events["single"])
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(runs))  # one at a time
    assert periodic["single"]["skipped"] >= 1 and periodic["overlap"]["skipped"] == 0
    # The skip line says what the previous run is doing and since when: a slow run, not a stuck one.
    skips = [r.getMessage() for r in caplog.records if r.name == "tachyon_api.schedule" and "skipped" in r.getMessage()]
    assert skips and all(SKIP_RUNNING.fullmatch(line) for line in skips), skips
    together = intervals(events["overlap"])
    assert len(together) >= 2 and any(start < end for (_, end), (start, _) in itertools.pairwise(together))


def test_an_in_process_run_has_a_status_record_the_dashboard_shows_and_cancels() -> None:
    app = Tachyon()
    app.include_router(task_dashboard(public=True))
    ended: list[str] = []

    @app.periodic(every=1, name="stuck")
    async def stuck() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            ended.append("finally")

    with serve(app) as url:

        def running() -> list[dict[str, Any]]:
            return [row for row in httpx.get(url + "/tasks/data").json()["running"] if row["name"] == "stuck"]

        assert wait_until(running, 8)
        task_id = running()[0]["id"]
        assert task_id
        cancel = httpx.post(f"{url}/tasks/cancel/{task_id}", headers={"x-tachyon-dashboard": "cancel"})
        assert cancel.status_code == 200, cancel.text
        assert wait_until(lambda: ended == ["finally"], 5)  # cancelled, its finally ran (the next tick may start)
        assert app.background.stats().cancelled == 1


def test_each_run_is_a_task_with_its_options_hooks_stats_and_dashboard_row(caplog: pytest.LogCaptureFixture) -> None:
    app = Tachyon()
    app.include_router(task_dashboard(public=True))
    failures: list[Any] = []
    attempts: list[dt.datetime] = []
    app.on_task_error(failures.append)

    @app.periodic(every=1, name="flaky", retries=1, retry_delay=0.01)
    def flaky(tick: dt.datetime) -> None:
        attempts.append(tick)
        raise RuntimeError(f"tick {tick.isoformat()}")

    with caplog.at_level(logging.WARNING, "tachyon_api"), serve(app) as url:
        assert wait_until(lambda: len(failures) >= 1, 5)
        data = httpx.get(url + "/tasks/data").json()
        stats = app.background.stats()
    row = {r["name"]: r for r in data["periodic"]}["flaky"]
    assert failures[0].task.name == "flaky" and failures[0].attempts == 2 and failures[0].method == "PERIODIC"
    assert attempts[0] == attempts[1]  # the retry is the same tick
    assert failures[0].path == attempts[0].isoformat()
    assert stats.failed >= 1 and stats.retried >= 1
    assert row["schedule"] == "every 1s" and row["held_here"] is True and row["runs"] >= 1
    assert row["last_outcome"] in ("failed", "running")
    assert stamp(row["next_run"]) > stamp(row["last_run"])
    assert "Background task flaky failed (request PERIODIC" in caplog.text and "RuntimeError: tick" in caplog.text
    names = {r["name"]: r for r in data["names"]}
    assert names["flaky"]["failed"] >= 1


def seed(job: Any, tick: int) -> None:
    """What a previous run of the app left: ``tick`` claimed and run."""
    lease = FileLease.for_job(job.name, job.func)
    Path(lease.state_path).write_text(json.dumps({"tick": tick, "run": tick, "outcome": "succeeded"}))


@pytest.mark.parametrize("catch_up", [False, True])
def test_missed_ticks_are_counted_and_catch_up_runs_the_latest_one(
    catch_up: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The app was down for a day: yesterday's tick ran, today's is five minutes old (past the grace)."""
    app = Tachyon()
    ran: list[dt.datetime] = []
    when = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=5)

    @app.periodic(cron=f"{when.second} {when.minute} {when.hour} * * *", name="daily", catch_up=catch_up)
    def daily(tick: dt.datetime) -> None:
        ran.append(tick)

    job = app.scheduler.jobs["daily"]
    today = int(when.timestamp())
    seed(job, today - 86_400)
    assert today < time.time() - GRACE
    with caplog.at_level(logging.WARNING, "tachyon_api.schedule"), serve(app):
        assert wait_until(lambda: job.last_tick == today, 5)
        time.sleep(0.2)
        row = job.row(None)
    assert ran == ([when] if catch_up else [])
    assert row["missed"] == (0 if catch_up else 1) and row["runs"] == (1 if catch_up else 0)
    assert "tick(s) missed" in caplog.text if not catch_up else "running the latest" not in caplog.text
    state = json.loads(Path(FileLease.for_job(job.name, job.func).state_path).read_text())
    assert state["tick"] == today and state["run"] == (today if catch_up else today - 86_400)


def test_a_tick_interrupted_by_a_restart_runs_late_within_the_grace() -> None:
    app = Tachyon()
    ran: list[dt.datetime] = []

    @app.periodic(every=dt.timedelta(hours=1), name="hourly")
    def hourly(tick: dt.datetime) -> None:
        ran.append(tick)

    job = app.scheduler.jobs["hourly"]
    now = time.time()
    due = job.schedule.latest(now)
    seed(job, due - 3600)
    with serve(app):
        assert wait_until(lambda: job.last_tick == due, 5)
        time.sleep(0.1)
    expected = [dt.datetime.fromtimestamp(due, UTC)] if now - due <= GRACE else []
    assert ran == expected


def test_shutdown_releases_the_lease_after_the_runs_drained() -> None:
    app = Tachyon(shutdown_timeout=5)
    ended: list[float] = []

    @app.periodic(every=1, name="drained")
    async def drained() -> None:
        await asyncio.sleep(0.5)
        ended.append(time.monotonic())

    job = app.scheduler.jobs["drained"]
    with serve(app):
        assert wait_until(lambda: job.running == 1, 3)
        other = FileLease.for_job(job.name, job.func)
        assert asyncio.run(other.hold())[0] is False
    released = time.monotonic()
    assert ended and ended[-1] <= released  # the run finished before the lease was given up
    assert asyncio.run(other.hold())[0] is True
    asyncio.run(other.release())


# --- tachyon schedule --------------------------------------------------------------------------------------
def test_the_cli_lists_each_job_with_its_next_run_times(tmp_path: Path) -> None:
    (tmp_path / "jobs_app.py").write_text(
        textwrap.dedent("""
        from datetime import timedelta
        from tachyon_api import Tachyon

        app = Tachyon()

        @app.periodic(every=timedelta(minutes=5), jitter=10)
        def cleanup():
            pass

        @app.periodic(cron="0 3 * * *", timezone="Europe/Madrid", retries=2, name="nightly-report")
        async def report(tick):
            pass
    """)
    )
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "tachyon_api", "schedule", "jobs_app:app", "--next", "2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SCHEDULE", "RUNS", "NEXT", "RUN", "OPTIONS"]
    cleanup = lines[1].split()
    assert cleanup[:4] == ["jobs_app.cleanup", "every", "5m", "in-process"] and cleanup[5] == "jitter=10s"
    first = (int(before) // 300 + 1) * 300
    assert stamp(cleanup[4]) in (first, first + 300)
    assert stamp(lines[2].strip()) == stamp(cleanup[4]) + 300
    report = lines[3].split()
    assert report[:3] == ["nightly-report", "cron", "'0"] and "(Europe/Madrid)" in lines[3] and "retries=2" in lines[3]
    nightly = dt.datetime.fromisoformat(report[report.index("in-process") + 1])
    assert (nightly.hour, nightly.minute) == (3, 0)
    assert nightly.utcoffset() in (dt.timedelta(hours=1), dt.timedelta(hours=2))
    # a day later (23 or 25 hours across a daylight saving change)
    assert stamp(lines[4].strip()) - int(nightly.timestamp()) in (82_800, 86_400, 90_000)


def durable_beat() -> None:
    """A periodic job stored in Redis (the test reads the stored jobs, no worker runs them)."""


def test_a_redis_outage_is_logged_once_and_the_ticks_resume_after_it(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from redis import Redis

    from tachyon_api.background import RQBackend

    backend = RQBackend(redis_server.url, queue="outage", socket_timeout=0.5)
    app = Tachyon(task_backend=backend, schedule_lease=1.5)
    app.periodic(every=1, name="beat", overlap=True)(durable_beat)  # no worker: the jobs stay queued
    job = app.scheduler.jobs["beat"]

    def stored() -> list[int]:
        redis = Redis.from_url(redis_server.url)
        try:
            return sorted(int(key.rsplit(b"-", 1)[1]) for key in redis.keys(b"rq:job:periodic-beat-*"))
        finally:
            redis.close()

    with caplog.at_level(logging.INFO, "tachyon_api.schedule"), serve(app):
        assert wait_until(lambda: len(stored()) >= 2, 6)
        redis_server.stop()
        time.sleep(2)
        assert not job.held
        redis_server.start()  # empty again: the job's state starts over with the next tick
        assert wait_until(lambda: len(stored()) >= 2, 8)
    after = stored()
    assert after == list(range(after[0], after[0] + len(after)))  # one job per tick, none twice
    failures = [r for r in caplog.records if "the schedule step failed" in r.getMessage()]
    # once per outage, not once per retry (every 0.5 s here); a second time when the first store after the restart
    # finds its old connection closed (the backend reconnects on the next one)
    assert 1 <= len(failures) <= 2 and all(r.exc_info is not None for r in failures)
    assert "Periodic job beat: the schedule works again" in caplog.text

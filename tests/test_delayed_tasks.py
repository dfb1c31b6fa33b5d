"""In-process delayed tasks: ``with_options(delay=...)`` and ``with_options(at=...)`` without a durable backend.

A timer of the runner holds each delayed task: it runs no earlier than asked, is counted as ``delayed`` while
it waits, shows on the dashboard, can be cancelled, and at shutdown is logged by name and counted when it has
not started.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import httpx
import pytest

from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTask, BackgroundTasks
from tachyon_api.dashboard import task_dashboard

from .conftest import serve, wait_until

BG_LOGGER = "tachyon_api.background"


def delayed_app() -> tuple[Tachyon, dict[str, float], dict[str, BackgroundTask]]:
    app = Tachyon(shutdown_timeout=5)
    app.include_router(task_dashboard(public=True))
    ran: dict[str, float] = {}
    handles: dict[str, BackgroundTask] = {}

    def record(tag: str) -> None:
        ran[tag] = time.time()

    async def record_async(tag: str) -> None:
        ran[tag] = time.time()

    @app.post("/later")
    def later(delay: float, at_in: float, background_tasks: BackgroundTasks) -> dict[str, float]:
        asked = time.time()
        background_tasks.add_task(record, "now")
        background_tasks.add_task(record, "delay").with_options(delay=delay)
        when = dt.datetime.fromtimestamp(asked + at_in, dt.timezone.utc)
        background_tasks.add_task(record_async, "at").with_options(at=when, name="at-task")
        background_tasks.add_task(record, "timedelta").with_options(delay=dt.timedelta(seconds=delay))
        return {"asked": asked}

    @app.post("/cancellable")
    def cancellable(background_tasks: BackgroundTasks) -> dict[str, bool]:
        handles["cancel"] = background_tasks.add_task(record, "cancelled").with_options(delay=0.8)
        return {"ok": True}

    @app.post("/cancel")
    def cancel() -> dict[str, bool]:
        return {"cancelled": app.background.cancel(handles["cancel"])}

    return app, ran, handles


def test_delayed_tasks_run_no_earlier_than_asked_and_are_counted_and_shown_while_they_wait() -> None:
    app, ran, _ = delayed_app()
    with serve(app) as url:
        asked = httpx.post(url + "/later", params={"delay": 0.7, "at_in": 1.2}).json()["asked"]
        assert wait_until(lambda: "now" in ran, 3)
        waiting = httpx.get(url + "/tasks/data").json()
        assert waiting["totals"]["delayed"] == 3 and app.background.stats().delayed == 3
        rows = {row["name"]: row for row in waiting["delayed"]}
        assert set(rows) == {"delayed_app.<locals>.record", "at-task"}
        assert rows["at-task"]["method"] == "POST" and rows["at-task"]["path"] == "/later"
        assert dt.datetime.fromisoformat(rows["at-task"]["due"]).timestamp() == pytest.approx(asked + 1.2, abs=0.01)
        assert wait_until(lambda: len(ran) == 4, 5)
        done = httpx.get(url + "/tasks/data").json()
    assert ran["delay"] >= asked + 0.7 and ran["timedelta"] >= asked + 0.7
    assert ran["at"] >= asked + 1.2
    assert ran["now"] < asked + 0.7  # the others of the request did not wait for them
    assert done["totals"]["delayed"] == 0 and done["delayed"] == [] and done["totals"]["succeeded"] == 4


def test_a_delayed_task_can_be_cancelled_before_it_starts() -> None:
    app, ran, _handles = delayed_app()
    with serve(app) as url:
        httpx.post(url + "/cancellable")
        assert wait_until(lambda: app.background.stats().delayed == 1, 3)
        assert httpx.post(url + "/cancel").json() == {"cancelled": True}
        assert app.background.stats().delayed == 0
        time.sleep(1.0)
        assert httpx.post(url + "/cancel").json() == {"cancelled": False}  # nothing left to cancel
    assert "cancelled" not in ran


def test_at_shutdown_a_delayed_task_not_started_is_logged_by_name_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    app, ran, _ = delayed_app()
    with serve(app) as url:
        httpx.post(url + "/later", params={"delay": 30, "at_in": 60})
        assert wait_until(lambda: "now" in ran, 3)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 4  # no wait for timers that end after the shutdown deadline
    stats = app.background.stats()
    assert (stats.delayed, stats.dropped, stats.succeeded) == (0, 3, 1)
    lost = [r.getMessage() for r in caplog.records if r.name == BG_LOGGER and " lost " in r.getMessage()]
    assert len(lost) == 3 and all("(request POST /later)" in line and "not run" in line for line in lost)
    assert any(line.startswith("Background task at-task lost") for line in lost)
    assert set(ran) == {"now"}


def test_delay_and_at_are_checked_at_with_options() -> None:
    tasks = BackgroundTasks()
    task: Any = tasks.add_task(print, "x")
    with pytest.raises(TypeError, match="seconds"):
        task.with_options(delay="5")
    with pytest.raises(TypeError, match=r"a datetime\.datetime"):
        task.with_options(at=time.time())
    with pytest.raises(ValueError, match="job_id need a durable task"):
        task.with_options(job_id="a")
    assert task.with_options(delay=5).delay == 5  # in-process too, now


def test_without_a_lifespan_the_request_runs_its_delayed_task_at_its_time() -> None:
    app, ran, _ = delayed_app()
    with serve(app, lifespan="off") as url:
        started = time.time()
        asked = httpx.post(url + "/later", params={"delay": 0.3, "at_in": 0.5}).json()["asked"]
        assert wait_until(lambda: len(ran) == 4, 5)  # the request's ASGI call ran them, nobody else owns a timer
    assert asked >= started and ran["now"] <= ran["delay"]
    assert ran["delay"] >= asked + 0.3 and ran["timedelta"] >= asked + 0.3 and ran["at"] >= asked + 0.5
    assert app.background.stats().delayed == 0


def test_delayed_tasks_take_room_in_the_queue() -> None:
    app = Tachyon(background_concurrency=1, background_queue=1, background_overflow="drop")

    @app.post("/remind")
    def remind(background_tasks: BackgroundTasks) -> dict[str, bool]:
        background_tasks.add_task(print, "later").with_options(delay=30)
        return {"ok": True}

    with serve(app) as url:
        for _ in range(3):
            assert httpx.post(url + "/remind").status_code == 200
        held = app.background.stats()
    assert (held.delayed, held.dropped) == (2, 1)  # concurrency 1 + queue 1: the third is refused for lack of room
    assert (app.background.stats().delayed, app.background.stats().dropped) == (0, 3)  # not run at shutdown

"""Shutdown: the runner stops taking tasks, drains running and queued ones up to ``shutdown_timeout``, then
cancels the rest and logs every lost task by name. Over real uvicorn (in a thread) and real ``tachyon run``
processes stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tachyon_api import BackgroundTask, BackgroundTasks, Tachyon
from tachyon_api.background import BackgroundRunner
from tachyon_api.testing import TachyonTestClient

from .conftest import serve, wait_until

BG_LOGGER = "tachyon_api.background"


def lost_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == BG_LOGGER and " lost " in r.getMessage()]


# --- in-process uvicorn -------------------------------------------------------------------------------------


def test_short_deadline_cancels_running_and_queued_tasks_and_logs_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    events: list[str] = []

    async def long_report() -> None:
        events.append("started")
        try:
            await asyncio.sleep(5)
            events.append("finished")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    app = Tachyon(shutdown_timeout=0.5, background_concurrency=1)

    @app.post("/report")
    async def report(background_tasks: BackgroundTasks):
        background_tasks.add_task(long_report).with_options(name="long-report")
        background_tasks.add_task(events.append, "after").with_options(name="after-report")
        return {"ok": True}

    @app.post("/queued")
    async def queued(background_tasks: BackgroundTasks):
        background_tasks.add_task(events.append, "queued").with_options(name="queued-report")
        return {"ok": True}

    with serve(app) as url:
        assert httpx.post(f"{url}/report").status_code == 200
        assert httpx.post(f"{url}/queued").status_code == 200
        assert wait_until(lambda: events == ["started"], 2)
        assert app.background.stats().queued == 1
        stopping = time.perf_counter()
    elapsed = time.perf_counter() - stopping

    assert elapsed < 3, f"shutdown took {elapsed:.1f}s with shutdown_timeout=0.5"
    assert events == ["started", "cancelled"]
    lost = lost_messages(caplog)
    for name in ("long-report", "after-report", "queued-report"):
        assert sum(name in m for m in lost) == 1, f"{name} not logged as lost once: {lost}"
    assert any("/report" in m and "POST" in m for m in lost)
    stats = app.background.stats()
    assert stats.dropped == 3
    assert stats.succeeded == 0 and (stats.running, stats.queued) == (0, 0)


def test_short_deadline_does_not_wait_for_a_blocking_sync_task(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    started = threading.Event()

    def blocking_export() -> None:
        started.set()
        time.sleep(2)

    app = Tachyon(shutdown_timeout=0.3)

    @app.post("/export")
    def export(background_tasks: BackgroundTasks):
        background_tasks.add_task(blocking_export)
        return {}

    with serve(app) as url:
        httpx.post(f"{url}/export")
        assert started.wait(2)
        stopping = time.perf_counter()
    assert time.perf_counter() - stopping < 1.5
    lost = lost_messages(caplog)
    assert len(lost) == 1 and "blocking_export" in lost[0]


def test_generous_deadline_drains_running_and_queued_tasks_before_lifespan_exit_and_shutdown_handlers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mutant caught (applications.py, ``Tachyon.shutdown``): the lifespan exited before the drain."""
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    done: list[str] = []
    seen_by_shutdown: list[list[str]] = []
    seen_by_lifespan_exit: list[list[str]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Tachyon):
        yield
        seen_by_lifespan_exit.append(list(done))

    started: list[float] = []

    async def one_second() -> None:
        started.append(time.perf_counter())
        await asyncio.sleep(1)
        done.append("one-second")

    def quick(label: str) -> None:
        time.sleep(0.05)
        done.append(label)

    app = Tachyon(shutdown_timeout=10, background_concurrency=1, lifespan=lifespan)

    @app.on_event("shutdown")
    def on_shutdown() -> None:
        seen_by_shutdown.append(list(done))

    @app.post("/slow")
    async def slow(background_tasks: BackgroundTasks):
        background_tasks.add_task(one_second)
        return {}

    @app.post("/quick/{label}")
    def quick_endpoint(label: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(quick, label)
        return {}

    with serve(app) as url:
        httpx.post(f"{url}/slow")
        httpx.post(f"{url}/quick/q1")
        httpx.post(f"{url}/quick/q2")
        assert done == []
    # From the start of the 1 s task (the requests themselves may be slow on a busy machine): the shutdown
    # waited for it and the two queued after it, and not for the 10 s deadline.
    elapsed = time.perf_counter() - started[0]

    assert done == ["one-second", "q1", "q2"]
    assert seen_by_lifespan_exit == [["one-second", "q1", "q2"]], "tasks drain before the lifespan exits"
    assert seen_by_shutdown == [["one-second", "q1", "q2"]], "tasks drain before the shutdown handlers run"
    assert 1.0 < elapsed < 5
    assert lost_messages(caplog) == []
    assert app.background.stats().dropped == 0


def test_shutdown_deadline_holds_even_when_a_request_waits_for_queue_room(caplog: pytest.LogCaptureFixture) -> None:
    """With overflow "wait", a request's call may be waiting for room when the server stops. Shutdown must
    still end about ``shutdown_timeout`` after it starts, not when the running task happens to finish."""
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)

    async def long_job(label: str) -> None:
        await asyncio.sleep(3)

    app = Tachyon(shutdown_timeout=0.3, background_concurrency=1, background_queue=1)

    @app.post("/job/{label}")
    async def job(label: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(long_job, label).with_options(name=f"job-{label}")
        return {}

    with serve(app) as url:
        for label in ("a", "b", "c"):  # a runs, b waits in the queue, c's call waits for room
            assert httpx.post(f"{url}/job/{label}").status_code == 200
        assert wait_until(lambda: app.background.stats().queued >= 1, 2)
        stopping = time.perf_counter()
    elapsed = time.perf_counter() - stopping

    assert elapsed < 2, f"shutdown took {elapsed:.1f}s although shutdown_timeout=0.3"
    lost = lost_messages(caplog)
    assert all(any(f"job-{label}" in m for m in lost) for label in "abc"), lost


async def test_runner_takes_no_new_tasks_once_shutdown_started(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    results: list[str] = []

    async def running() -> None:
        await asyncio.sleep(0.2)
        results.append("running")

    runner = BackgroundRunner(shutdown_timeout=5)
    runner.start()
    runner.submit([BackgroundTask(running)], "GET", "/first")
    stopping = asyncio.ensure_future(runner.shutdown())
    await asyncio.sleep(0.01)
    late = BackgroundTask(results.append, "late").with_options(name="late-task")
    runner.submit([late], "GET", "/late")
    await stopping
    assert results == ["running"]
    stats = runner.stats()
    assert (stats.scheduled, stats.succeeded, stats.dropped) == (2, 1, 1)
    lost = lost_messages(caplog)
    assert len(lost) == 1 and "late-task" in lost[0] and "/late" in lost[0]


def test_an_app_serves_tasks_again_after_a_restart() -> None:
    results: list[str] = []
    app = Tachyon()

    @app.get("/t/{label}")
    def endpoint(label: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(results.append, label)
        return {}

    with TachyonTestClient(app) as client:
        client.get("/t/first")
    with TachyonTestClient(app) as client:
        client.get("/t/second")
    assert results == ["first", "second"]
    assert app.background.stats().dropped == 0


# --- SIGTERM to `tachyon run` ---------------------------------------------------------------------------------

SIGTERM_APP = textwrap.dedent(
    """
    import asyncio
    import time
    from pathlib import Path

    from tachyon_api import BackgroundTasks, Tachyon

    app = Tachyon(shutdown_timeout={shutdown_timeout})


    async def async_part(name: str) -> None:
        Path(name + ".started").write_text("started")
        await asyncio.sleep({async_seconds})
        Path(name + ".async-done").write_text("async done")
        print("async part of", name, "done", flush=True)


    def sync_part(name: str) -> None:
        time.sleep({sync_seconds})
        Path(name + ".sync-done").write_text("sync done")
        print("sync part of", name, "done", flush=True)


    @app.post("/reports/{{name}}")
    async def report(name: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(async_part, name).with_options(name="async-part-" + name)
        background_tasks.add_task(sync_part, name).with_options(name="sync-part-" + name)
        return {{"name": name}}
    """
)


def test_sigterm_lets_running_tasks_finish(serve_process: Any, tmp_path: Path) -> None:
    server = serve_process(SIGTERM_APP.format(shutdown_timeout=10, async_seconds=1.0, sync_seconds=1.0))
    response = httpx.post(f"{server.url}/reports/monthly", timeout=5)
    assert response.json() == {"name": "monthly"}
    assert wait_until(lambda: (tmp_path / "monthly.started").exists(), 3)
    server.terminate()
    signalled = time.perf_counter()
    assert server.wait(15) in (0, -15)
    elapsed = time.perf_counter() - signalled
    output = server.output()

    assert (tmp_path / "monthly.async-done").read_text() == "async done", output
    assert (tmp_path / "monthly.sync-done").read_text() == "sync done", output
    assert "async part of monthly done" in output and "sync part of monthly done" in output
    assert "Application shutdown complete" in output
    assert " lost " not in output
    assert elapsed > 1.5, "the process must have waited for the tasks"


def test_sigterm_past_the_deadline_logs_lost_tasks(serve_process: Any, tmp_path: Path) -> None:
    server = serve_process(SIGTERM_APP.format(shutdown_timeout=0.5, async_seconds=5, sync_seconds=0.1))
    assert httpx.post(f"{server.url}/reports/yearly", timeout=5).status_code == 200
    assert wait_until(lambda: (tmp_path / "yearly.started").exists(), 3)
    server.terminate()
    signalled = time.perf_counter()
    assert server.wait(15) in (0, -15)
    elapsed = time.perf_counter() - signalled
    output = server.output()

    assert elapsed < 4, f"exit took {elapsed:.1f}s with shutdown_timeout=0.5"
    assert not (tmp_path / "yearly.async-done").exists()
    assert not (tmp_path / "yearly.sync-done").exists()
    lost_lines = [line for line in output.splitlines() if " lost " in line]
    assert any("async-part-yearly" in line for line in lost_lines), output
    assert any("sync-part-yearly" in line for line in lost_lines), output
    assert "Application shutdown complete" in output


# --- retry backoff at shutdown, and a second Ctrl+C -----------------------------------------------------------


def test_a_task_waiting_to_retry_is_counted_and_retried_before_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """A backoff that would end after the drain deadline ends when shutdown starts: the retry runs while it
    can still finish, instead of the task being reported lost with "0 running and 0 queued"."""
    caplog.set_level(logging.WARNING, logger=BG_LOGGER)
    attempts: list[float] = []

    def flaky() -> None:
        attempts.append(time.perf_counter())
        if len(attempts) == 1:
            raise ConnectionError("partner down")

    app = Tachyon(shutdown_timeout=2)

    @app.post("/notify")
    def notify(background_tasks: BackgroundTasks):
        background_tasks.add_task(flaky).with_options(retries=2, retry_delay=20, name="notify-partner")
        return {}

    with serve(app) as url:
        httpx.post(f"{url}/notify")
        assert wait_until(lambda: app.background.stats().waiting == 1, 3)
        stats = app.background.stats()
        assert (stats.running, stats.queued, stats.retried) == (0, 0, 1)
        stopping = time.perf_counter()
    elapsed = time.perf_counter() - stopping

    assert len(attempts) == 2 and attempts[1] >= stopping, "the retry ran at shutdown"
    assert elapsed < 1.5, f"shutdown waited {elapsed:.1f}s for a backoff of 10-20 s"
    stats = app.background.stats()
    assert (stats.succeeded, stats.dropped, stats.waiting) == (1, 0, 0)
    assert lost_messages(caplog) == []


SECOND_SIGINT_APP = textwrap.dedent(
    """
    import asyncio
    from pathlib import Path

    from tachyon_api import BackgroundTasks, Tachyon

    app = Tachyon(shutdown_timeout=30)


    async def long_export() -> None:
        Path("export.started").write_text("started")
        await asyncio.sleep(60)


    @app.post("/export")
    async def export(background_tasks: BackgroundTasks):
        background_tasks.add_task(long_export).with_options(name="nightly-export")
        return {}


    @app.post("/slow")
    async def slow():
        Path("slow.started").write_text("started")
        await asyncio.sleep(60)
        return {}
    """
)


def test_a_second_ctrl_c_exits_non_zero_with_one_line_naming_what_is_lost(serve_process: Any, tmp_path: Path) -> None:
    server = serve_process(SECOND_SIGINT_APP)
    assert httpx.post(f"{server.url}/export", timeout=5).status_code == 200
    assert wait_until(lambda: (tmp_path / "export.started").exists(), 3)

    def slow_request() -> None:
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{server.url}/slow", timeout=20)

    slow = threading.Thread(target=slow_request)
    slow.start()
    assert wait_until(lambda: (tmp_path / "slow.started").exists(), 3)

    server.proc.send_signal(signal.SIGINT)
    assert wait_until(lambda: "Waiting for connections to close" in server.output(), 5), server.output()
    server.proc.send_signal(signal.SIGINT)
    status = server.wait(10)
    slow.join(20)
    output = server.output()

    assert status == 130, output  # 128 + SIGINT, as a shell reports an interrupted program
    forced = [line for line in output.splitlines() if "Forced exit" in line]
    assert len(forced) == 1, output
    assert "1 request(s) in progress cancelled" in forced[0]
    assert "1 background task(s) lost: nightly-export (POST /export)" in forced[0]
    assert "Traceback" not in output and "appears unsupported" not in output
    assert output.strip().splitlines()[-1] == forced[0], "the forced-exit line is the last word"


FIRST_SIGINT_APP = textwrap.dedent(
    """
    import asyncio
    from pathlib import Path

    from tachyon_api import BackgroundTasks, Tachyon

    app = Tachyon(shutdown_timeout=30)


    async def send_report() -> None:
        Path("report.started").write_text("started")
        while not Path("report.release").exists():
            await asyncio.sleep(0.02)


    @app.post("/report")
    async def report(background_tasks: BackgroundTasks):
        background_tasks.add_task(send_report)
        return {}
    """
)


def test_the_first_ctrl_c_says_what_it_waits_for_until_when_and_how_to_stop_waiting(
    serve_process: Any, tmp_path: Path
) -> None:
    """With a task still running, the first Ctrl+C used to print uvicorn's "Waiting for application shutdown."
    and then nothing until the task ended: it looked like a hang."""
    server = serve_process(FIRST_SIGINT_APP)
    assert httpx.post(f"{server.url}/report", timeout=5).status_code == 200
    assert wait_until(lambda: (tmp_path / "report.started").exists(), 3)

    server.proc.send_signal(signal.SIGINT)
    assert wait_until(lambda: "Waiting up to" in server.output(), 5), server.output()
    lines = server.output().splitlines()
    hint = next(line for line in lines if "press Ctrl+C again" in line)
    waiting = next(line for line in lines if "Waiting up to" in line)
    assert "Stopping after 0 request(s) in progress and 1 background task(s); press Ctrl+C again to exit at once" in (
        hint
    )
    assert re.search(
        r"Waiting up to 30\.0s \(until \d\d:\d\d:\d\d\) for 1 background task\(s\) to finish: "
        r"send_report \(POST /report\)$",
        waiting,
    ), waiting
    assert lines.index(hint) < lines.index(waiting)
    time.sleep(0.5)
    assert server.proc.poll() is None, server.output()  # still waiting for the task

    (tmp_path / "report.release").write_text("go")
    assert server.wait(10) == 0, server.output()  # a graceful stop, without a KeyboardInterrupt traceback
    output = server.output()
    assert "Traceback" not in output and "cancelling" not in output and "Forced exit" not in output, output

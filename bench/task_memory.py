#!/usr/bin/env python3
"""Memory of task status records: does a process that keeps a record for every task stay bounded?

Drives ``--tasks`` requests (1,000,000 by default) through an app with ``Tachyon(task_status=True)``, in
process (the ASGI app called directly, under its lifespan, as bench/profile_hotpath.py does), each request
adding one cheap sync task, so every task gets an id and a status record in the app's ``MemoryTaskStore``
(10,000 ended records kept at most, one hour each). The resident memory is read after the first ``--baseline``
tasks (10,000) and then every ``--every``; the target is that the last reading stays within 10% of the
baseline.

    python bench/task_memory.py                       # 1,000,000 tasks (a few minutes)
    python bench/task_memory.py --tasks 200000        # quicker

It prints one line per reading (tasks done, records held, RSS in MiB, ratio to the baseline) and exits 1 if
the final ratio is above 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


app = Tachyon(task_status=True)


def record_view(product_id: int) -> None:
    """A cheap sync task, as the task-sync benchmark scenario adds."""


@app.post("/task")
def add_one(background_tasks: BackgroundTasks) -> dict:
    background_tasks.add_task(record_view, 1)
    return {"ok": True}


SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/task",
    "raw_path": b"/task",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"0")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


async def request() -> None:
    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise SystemExit(f"HTTP {message['status']}")

    await app(dict(SCOPE), receive, send)


async def main(tasks: int, baseline: int, every: int) -> float:
    messages: asyncio.Queue = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def lifespan_send(message: dict) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, messages.get, lifespan_send))
    await started.wait()
    base = None
    ratio = 1.0
    print(f"{'tasks':>10} {'records':>8} {'RSS MiB':>8} {'ratio':>6}")
    for done in range(1, tasks + 1):
        await request()
        if done in (baseline, tasks) or (done > baseline and done % every == 0):
            await app.background.join()
            gc.collect()
            rss = rss_mib()
            base = base or rss
            ratio = rss / base
            print(f"{done:>10,} {len(app.tasks.store):>8,} {rss:>8.1f} {ratio:>6.3f}", flush=True)
    stats = app.background.stats()
    assert stats.succeeded == tasks, stats
    await messages.put({"type": "lifespan.shutdown"})
    await lifespan
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=100_000)
    args = parser.parse_args()
    final = asyncio.run(main(args.tasks, args.baseline, args.every))
    print(f"final / after {args.baseline:,} tasks: {final:.3f} (target: at most 1.10)")
    sys.exit(0 if final <= 1.10 else 1)

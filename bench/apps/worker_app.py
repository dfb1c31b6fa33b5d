"""Benchmark app for ``tachyon worker`` (bench/workers.py): a trivial task, a task awaiting 1 s of I/O, and a
durable endpoint storing the trivial one."""

import asyncio
import os

from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend

backend = RQBackend(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), queue="bench-workers")
app = Tachyon(task_backend=backend)


def trivial(value: int) -> None:
    """No work: the figures measure the worker's own cost per job."""


async def io_second(value: int) -> None:
    """One second of waiting, as an HTTP call or a database query would: measures concurrency."""
    await asyncio.sleep(1)


@app.post("/durable")
def add_durable(background_tasks: BackgroundTasks):
    background_tasks.add_task(trivial, 1)
    return {"ok": True}

"""Benchmark app for durable vs in-process tasks (bench/durable.py): the same endpoint, two task kinds."""

import os

from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend

backend = RQBackend(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), queue="bench")
app = Tachyon()


def record(value: int) -> None:
    """The task: trivial, so the figures measure the hand-off, not the work."""


def durable(value: int) -> None:
    """Same as ``record``, marked durable: stored in Redis before the response."""


backend.task()(durable)


@app.post("/inprocess")
def add_inprocess(background_tasks: BackgroundTasks):
    background_tasks.add_task(record, 1)
    return {"ok": True}


@app.post("/durable")
def add_durable(background_tasks: BackgroundTasks):
    background_tasks.add_task(durable, 1)
    return {"ok": True}

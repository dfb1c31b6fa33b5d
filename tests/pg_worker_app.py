"""The app of tests/test_postgres_worker.py: durable tasks that note each run as a line in a file (so a run is
counted even while the database is down), one that hangs on its first run (a worker to kill), one that outlives
its timeout, and a payment written in the request's transaction with its task.

``TEST_PG_URL`` names the database; ``TEST_STALLED_AFTER`` the seconds after which a silent worker counts as
dead. The web side (the tests' client) and ``tachyon worker`` both import this module.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, AsyncIterator

import psycopg

from tachyon_api import Depends, Tachyon
from tachyon_api.backends.postgres import PostgresBackend
from tachyon_api.background import BackgroundTasks

DSN = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:1/postgres")
backend = PostgresBackend(DSN, connect_timeout=2, stalled_after=float(os.environ.get("TEST_STALLED_AFTER", "30")))
app = Tachyon(task_backend=backend)


def runs(path: str) -> list[str]:
    """The keys of the runs noted in ``path``, in order."""
    file = Path(path)
    return file.read_text().split() if file.exists() else []


async def note(path: str, key: str, seconds: float = 0) -> None:
    """A run of ``key``, noted after ``seconds``."""
    await asyncio.sleep(seconds)
    with open(path, "a") as out:
        out.write(key + "\n")


async def hang_once(path: str, key: str) -> None:
    """Notes its run; the first run of ``key`` then hangs (until its worker is killed), the next ones return."""
    first = key not in runs(path)
    await note(path, key)
    if first:
        await asyncio.sleep(3600)


async def sleeper(seconds: float) -> None:
    """Longer than its timeout."""
    await asyncio.sleep(seconds)


@app.post("/note/{key}", status_code=201)
async def add_note(key: str, path: str, background_tasks: BackgroundTasks, seconds: float = 0) -> dict[str, Any]:
    background_tasks.add_task(note, path, key, seconds)
    return {"key": key}


@app.post("/hang/{key}", status_code=201)
async def add_hang(key: str, path: str, retries: int, background_tasks: BackgroundTasks) -> dict[str, Any]:
    background_tasks.add_task(hang_once, path, key).with_options(retries=retries, retry_delay=0)
    return {"key": key}


@app.post("/sleep", status_code=201)
async def add_sleeper(seconds: float, timeout: float, background_tasks: BackgroundTasks) -> dict[str, Any]:
    background_tasks.add_task(sleeper, seconds).with_options(timeout=timeout)
    return {}


async def transaction() -> AsyncIterator[psycopg.AsyncConnection]:
    """The request's connection: committed after its tasks are inserted in its transaction, rolled back on an
    error."""
    async with await psycopg.AsyncConnection.connect(DSN) as conn:  # commits on a clean exit, else rolls back
        yield conn


@app.post("/payments/{payment}", status_code=201)
async def pay(
    payment: str,
    amount: int,
    path: str,
    background_tasks: BackgroundTasks,
    db: psycopg.AsyncConnection = Depends(transaction, scope="function"),
) -> dict[str, Any]:
    """A payment (written or overwritten) and its receipt task, in one transaction: a retried request writes the
    same row again, and the Idempotency-Key keeps its task from being stored twice."""
    await db.execute(
        "INSERT INTO payments (id, amount) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount",
        (payment, amount),
    )
    background_tasks.add_task(note, path, payment)
    return {"id": payment}


def create_tables(dsn: str = DSN) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS payments (id text PRIMARY KEY, amount int NOT NULL)")

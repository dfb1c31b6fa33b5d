"""Benchmark app for the Postgres tier (bench/postgres.py): the same trivial task added in-process, stored
in PostgreSQL on its own, stored in the transaction of the request's own connection (with a row of data; its
baseline is the same transaction and row with an in-process task), and stored in Redis (when
``BENCH_REDIS_URL`` is set)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import AsyncConnectionPool

from tachyon_api import Depends, Tachyon
from tachyon_api.backends.postgres import PostgresBackend
from tachyon_api.background import BackgroundTasks, RQBackend

DSN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
backend = PostgresBackend(DSN, queue="bench", pool_size=20)
rq = RQBackend(os.environ["BENCH_REDIS_URL"], queue="bench") if os.environ.get("BENCH_REDIS_URL") else None
pool = AsyncConnectionPool(DSN, min_size=4, max_size=32, open=False)


@contextlib.asynccontextmanager
async def lifespan(app: Tachyon) -> AsyncIterator[None]:
    await pool.open()
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_rows (id bigserial PRIMARY KEY, value int)")
        await conn.commit()
    yield
    await pool.close()


app = Tachyon(task_backend=backend, lifespan=lifespan)


def trivial(value: int) -> None:
    """No work: the figures measure the cost of storing and running a job."""


async def transaction() -> AsyncIterator[Any]:
    """The request's connection: committed after its tasks are inserted in the same transaction."""
    async with pool.connection() as conn:  # commits on a clean exit, rolls back on an error
        yield conn


@app.post("/inprocess")
async def inprocess(background_tasks: BackgroundTasks) -> dict:
    background_tasks.add_task(trivial, 1).with_options(durable=False)
    return {"ok": True}


@app.post("/durable")
async def durable(background_tasks: BackgroundTasks) -> dict:
    background_tasks.add_task(trivial, 1)
    return {"ok": True}


@app.post("/inprocess-tx")
async def inprocess_tx(background_tasks: BackgroundTasks, db: Any = Depends(transaction, scope="function")) -> dict:
    """The same work as ``/durable-tx`` (a transaction, a row) with an in-process task: its baseline."""
    await db.execute("INSERT INTO bench_rows (value) VALUES (1)")
    background_tasks.add_task(trivial, 1).with_options(durable=False)
    return {"ok": True}


@app.post("/durable-tx")
async def durable_tx(background_tasks: BackgroundTasks, db: Any = Depends(transaction, scope="function")) -> dict:
    await db.execute("INSERT INTO bench_rows (value) VALUES (1)")
    background_tasks.add_task(trivial, 1)
    return {"ok": True}


def redis_trivial(value: int) -> None:
    """The same no-op, marked durable on Redis below (when there is a Redis)."""


if rq is not None:
    rq.task()(redis_trivial)

    @app.post("/redis")
    async def redis(background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(redis_trivial, 1)
        return {"ok": True}

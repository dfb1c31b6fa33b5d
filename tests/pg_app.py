"""The app of the Postgres-tier tests: orders written through a ``scope="function"`` transaction, and durable
tasks that record, in the same database, whether they found their order when they ran.

``TEST_PG_URL`` names the database (each test has its own); the web process and ``tachyon worker`` both
import this module.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator

import psycopg

from tachyon_api import Depends, HTTPException, Tachyon
from tachyon_api.backends.postgres import PostgresBackend
from tachyon_api.background import BackgroundTasks
from tachyon_api.tasks import cancelled, report_progress, task_status_router

DSN = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:1/postgres")
backend = PostgresBackend(DSN, connect_timeout=2)
app = Tachyon(task_backend=backend)
app.include_router(task_status_router(public=True))

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY);
CREATE TABLE IF NOT EXISTS runs (order_id bigint, found boolean, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS attempts (key text PRIMARY KEY, count int NOT NULL);
CREATE TABLE IF NOT EXISTS notes (text text, at timestamptz DEFAULT clock_timestamp());
"""


def create_tables(dsn: str = DSN) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


async def transaction(
    order_id: int = 0, pause: float = 0, await_run: float = 0
) -> AsyncIterator[psycopg.AsyncConnection]:
    """One request's writes: committed after its durable tasks are stored, rolled back when anything failed.

    Before the commit it waits ``pause`` seconds (a window in which the web process may die), and up to
    ``await_run`` seconds for a worker to have run the order's task (a window in which a worker could look
    too early: it ends as soon as one did)."""
    conn = await psycopg.AsyncConnection.connect(DSN)
    try:
        yield conn
    except BaseException:
        await conn.rollback()
        raise
    else:
        await asyncio.sleep(pause)
        deadline = asyncio.get_running_loop().time() + await_run
        while asyncio.get_running_loop().time() < deadline and not await ran(order_id):
            await asyncio.sleep(0.05)
        await conn.commit()
    finally:
        await conn.close()


async def ran(order_id: int) -> bool:
    """Whether a task of the order has run (seen from another connection)."""
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as other:
        cursor = await other.execute("SELECT 1 FROM runs WHERE order_id = %s", (order_id,))
        return await cursor.fetchone() is not None


def record(order_id: int) -> None:
    """A durable task: note whether its order was there when it ran."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM orders WHERE id = %s", (order_id,)).fetchone() is not None
        conn.execute("INSERT INTO runs (order_id, found) VALUES (%s, %s)", (order_id, found))


async def flaky(key: str, failures: int) -> None:
    """Fails its first ``failures`` runs, then records a run."""
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        cursor = await conn.execute(
            "INSERT INTO attempts (key, count) VALUES (%s, 1) ON CONFLICT (key) DO UPDATE "
            "SET count = attempts.count + 1 RETURNING count",
            (key,),
        )
        (count,) = await cursor.fetchone()
        if count <= failures:
            raise RuntimeError(f"{key}: failure {count} of {failures}")
        await conn.execute("INSERT INTO runs (order_id, found) VALUES (%s, true)", (-count,))


@app.post("/orders/{order_id}", status_code=201)
async def create_order(
    order_id: int,
    background_tasks: BackgroundTasks,
    db: psycopg.AsyncConnection = Depends(transaction, scope="function"),
    fail: bool = False,
) -> dict[str, Any]:
    await db.execute("INSERT INTO orders (id) VALUES (%s)", (order_id,))
    background_tasks.add_task(record, order_id)
    if fail:
        raise HTTPException(409, "refused after the write")
    return {"id": order_id}


@app.post("/plain/{order_id}", status_code=201)
async def plain(order_id: int, background_tasks: BackgroundTasks, delay: float | None = None) -> dict[str, Any]:
    """No transaction to join: the tasks are stored in one of their own."""
    background_tasks.add_task(record, order_id).with_options(delay=delay)
    return {"id": order_id}


@app.post("/flaky/{key}")
async def add_flaky(key: str, failures: int, retries: int, background_tasks: BackgroundTasks) -> dict[str, Any]:
    background_tasks.add_task(flaky, key, failures).with_options(retries=retries, retry_delay=0)
    return {"key": key}


class Unknown:
    """A wrapper the backend does not recognise: the tasks of ``/unjoined`` are stored on their own, before the
    commit, as the Redis tier stores them (what the tests contrast the joined path with)."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn


async def wrapped_transaction(order_id: int = 0, await_run: float = 0) -> AsyncIterator[Unknown]:
    async for conn in transaction(order_id, 0, await_run):
        yield Unknown(conn)


@app.post("/unjoined/{order_id}", status_code=201)
async def create_unjoined(
    order_id: int, background_tasks: BackgroundTasks, db: Unknown = Depends(wrapped_transaction, scope="function")
) -> dict[str, Any]:
    await db.conn.execute("INSERT INTO orders (id) VALUES (%s)", (order_id,))
    background_tasks.add_task(record, order_id)
    return {"id": order_id}


async def session() -> AsyncIterator[Any]:
    """A SQLAlchemy ``AsyncSession`` on psycopg, committed after the tasks are stored."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(DSN.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        async with AsyncSession(engine) as db:
            try:
                yield db
            except BaseException:
                await db.rollback()
                raise
            else:
                await db.commit()
    finally:
        await engine.dispose()


@app.post("/sqlalchemy/{order_id}", status_code=201)
async def create_with_sqlalchemy(
    order_id: int, background_tasks: BackgroundTasks, db: Any = Depends(session, scope="function"), fail: bool = False
) -> dict[str, Any]:
    from sqlalchemy import text

    await db.execute(text("INSERT INTO orders (id) VALUES (:id)"), {"id": order_id})
    background_tasks.add_task(record, order_id)
    if fail:
        raise HTTPException(409, "refused after the write")
    return {"id": order_id}


# --- status records (tests/test_postgres_status.py) ----------------------------------------------------------
held_ids: list[str] = []  # ids of tasks added by requests that then failed (the test client runs in-process)


def compute(steps: int, pause: float, raise_when_cancelled: bool = False) -> dict[str, int]:
    """Reports its progress at each step; stops early (and says so) when its cancellation was requested,
    returning or raising."""
    for step in range(steps):
        if cancelled():
            note(f"compute stopped at {step}")
            if raise_when_cancelled:
                raise RuntimeError("stopped: cancelled")
            return {"steps": step}
        time.sleep(pause)
        report_progress((step + 1) / steps, f"step {step + 1} of {steps}")
    note("compute finished")
    return {"steps": steps}


async def wait_async(seconds: float) -> None:
    """Sleeps; notes whether it was cancelled or ran to its end."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        note("wait_async cancelled")
        raise
    note("wait_async finished")


def broken(message: str) -> None:
    raise ValueError(message)


def note(text: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("INSERT INTO notes (text) VALUES (%s)", (text,))


@app.post("/status/compute", status_code=202)
async def start_compute(
    background_tasks: BackgroundTasks,
    steps: int = 3,
    pause: float = 0.0,
    owner: str | None = None,
    raising: bool = False,
) -> dict[str, Any]:
    task = background_tasks.add_task(compute, steps, pause, raising).with_options(keep_result=True, owner=owner)
    return {"id": task.id}


@app.post("/status/wait", status_code=202)
async def start_wait(background_tasks: BackgroundTasks, seconds: float, delay: float | None = None) -> dict[str, Any]:
    return {"id": background_tasks.add_task(wait_async, seconds).with_options(delay=delay).id}


@app.post("/status/broken", status_code=202)
async def start_broken(background_tasks: BackgroundTasks, message: str) -> dict[str, Any]:
    return {"id": background_tasks.add_task(broken, message).id}


@app.post("/status/rolled-back/{order_id}", status_code=201)
async def rolled_back(
    order_id: int,
    background_tasks: BackgroundTasks,
    db: psycopg.AsyncConnection = Depends(transaction, scope="function"),
) -> dict[str, Any]:
    await db.execute("INSERT INTO orders (id) VALUES (%s)", (order_id,))
    held_ids.append(background_tasks.add_task(record, order_id).id)
    raise HTTPException(409, "refused after the write")

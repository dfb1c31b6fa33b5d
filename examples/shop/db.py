"""SQLite storage: the schema and a connection helper.

Every unit of work opens its own short-lived connection (SQLite connections are cheap), so the web process,
its background threads and RQ workers in other processes can all use the same file. The database runs in WAL
mode, so readers never wait for the writer, and a busy timeout makes concurrent writers queue up instead of
failing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from .settings import get_settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id              INTEGER PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    welcome_sent_at TEXT
);
CREATE TABLE IF NOT EXISTS password_resets (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id),
    token_hash  TEXT UNIQUE,            -- set by the email task, with expires_at and sent_at
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    sent_at     TEXT
);
CREATE TABLE IF NOT EXISTS products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    stock       INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS product_views (
    product_id  TEXT PRIMARY KEY,
    views       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS imports (
    id             TEXT PRIMARY KEY,
    filename       TEXT,
    status         TEXT NOT NULL,
    total_rows     INTEGER,
    processed_rows INTEGER NOT NULL DEFAULT 0,
    imported_rows  INTEGER NOT NULL DEFAULT 0,
    error_count    INTEGER NOT NULL DEFAULT 0,
    failure        TEXT,
    created_at     TEXT NOT NULL,
    started_at     TEXT,
    finished_at    TEXT
);
CREATE TABLE IF NOT EXISTS import_errors (
    import_id   TEXT NOT NULL REFERENCES imports(id),
    line        INTEGER NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS import_errors_by_import ON import_errors (import_id, line);
CREATE TABLE IF NOT EXISTS orders (
    id                   INTEGER PRIMARY KEY,
    customer_email       TEXT NOT NULL,
    total_cents          INTEGER NOT NULL,
    webhook_url          TEXT NOT NULL,
    status               TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    completed_at         TEXT,
    webhook_attempts     INTEGER NOT NULL DEFAULT 0,
    webhook_last_error   TEXT,
    webhook_delivered_at TEXT
);
CREATE TABLE IF NOT EXISTS received_webhooks (
    id          INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL UNIQUE,
    event       TEXT NOT NULL,
    order_id    INTEGER,
    payload     TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receiver_attempts (
    delivery_id TEXT PRIMARY KEY,
    attempts    INTEGER NOT NULL
);
"""

_ready: set[Path] = set()
_ready_lock = threading.Lock()


def now() -> str:
    """The current UTC time as ISO 8601 text (how every timestamp is stored)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def connect(path: Path | None = None) -> sqlite3.Connection:
    """A new connection to the shop database, creating the file and its tables on first use in this process.

    ``check_same_thread=False``: a connection opened by a sync dependency is used by the endpoint in another
    thread of the pool; it is still used by one request at a time.
    """
    path = path or get_settings().db_path
    if path not in _ready:
        with _ready_lock:
            if path not in _ready:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, timeout=10)
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(SCHEMA)
                finally:
                    conn.close()
                _ready.add(path)
    conn = sqlite3.connect(path, timeout=10, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.contextmanager
def transaction(path: Path | None = None) -> Iterator[sqlite3.Connection]:
    """``with transaction() as conn:`` commits at the end of the block (rolls back on error) and closes."""
    conn = connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()

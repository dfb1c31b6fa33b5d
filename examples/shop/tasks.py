"""The shop's background tasks.

Every task is a module-level function that takes only ids, paths and strings, and loads what it needs from
the database when it runs. That is what lets the same functions run in-process (the default) or in a worker
in another process (``SHOP_TASK_BACKEND=rq`` or ``postgresql://...``): a durable task is stored by reference
with its arguments, and an id still means the same row when the worker picks the job up minutes later.

Delivery of durable tasks is at least once, so each task is safe to run twice: the welcome email checks a
"sent" marker, the import upserts by SKU, the webhook carries a stable delivery id that the receiver
de-duplicates on.

On Redis, a durable task is stored before the request's transaction commits (``Depends(transaction,
scope="function")`` in ``app.py``). So a worker may pick it up a few milliseconds before that commit is
visible, and in the rare case where the commit fails the task runs anyway and finds nothing. Every task loads
its row by id through :func:`committed_row`, which waits up to ``SHOP_COMMIT_GRACE`` seconds for the row (in
the state the request committed); when it is still absent, the task logs it and returns normally, so it is
neither retried nor reported as failed. On PostgreSQL the task is inserted in the request's transaction: it
exists only if the row does, and no worker sees it before the commit, so there is no grace period.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

import httpx

from tachyon_api.tasks import report_progress

from . import mail
from .db import Row, now, transaction
from .settings import get_settings
from .webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

logger = logging.getLogger("shop.tasks")


def hash_token(token: str) -> str:
    """How reset tokens are stored: only their SHA-256, so a leaked database leaks no usable token."""
    return hashlib.sha256(token.encode()).hexdigest()


def format_cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def committed_row(sql: str, params: tuple, ready: Callable[[Row], bool] = lambda row: True) -> Row | None:
    """The row a task was given the id of, once the request that stored the task has committed it.

    On Redis (or in-process) the task was stored just *before* that commit, so a fast worker may look first:
    re-check until the row is there and ``ready`` (in the state the request committed), for up to
    ``commit_grace`` seconds. None (or the row as it is) after that: the commit failed, and the task has
    nothing to do.
    """
    settings = get_settings()
    # On PostgreSQL the grace period is skipped: the task was inserted in the request's own transaction, so a
    # worker sees it only once the row is committed, and never if the commit failed. One read is enough.
    grace = 0.0 if settings.postgres_url is not None else settings.commit_grace
    deadline = time.monotonic() + grace
    while True:
        with transaction() as conn:
            row = conn.execute(sql, params).fetchone()
        if (row is not None and ready(row)) or time.monotonic() >= deadline:
            return row
        time.sleep(0.05)


# --- emails ------------------------------------------------------------------------------------------------
def send_welcome_email(user_id: int) -> None:
    """Email the welcome message to a new user, once (the ``welcome_sent_at`` marker makes a re-run a no-op)."""
    user = committed_row("SELECT * FROM users WHERE id = %s", (user_id,))
    if user is None:
        logger.warning("Welcome email: user %s does not exist", user_id)
        return
    if user["welcome_sent_at"] is not None:
        return
    message = mail.compose(
        user["email"],
        f"Welcome to the shop, {user['name']}!",
        f"Hello {user['name']},\n\n"
        f"Welcome to the Tachyon shop! Your account for {user['email']} is ready.\n\n"
        "-- The shop\n",
    )
    mail.send(message)
    with transaction() as conn:
        conn.execute("UPDATE users SET welcome_sent_at = %s WHERE id = %s", (now(), user_id))
    logger.info("Welcome email sent to %s", user["email"])


def send_password_reset(reset_id: int) -> None:
    """Make the token of a reset request, store its hash, and email the token itself.

    The token is made here, in the task, rather than in the endpoint: it then never travels through the
    task queue (Redis, in durable mode), only through the email. A re-run after a failed send makes a new
    token (the old one stops working); once the email is sent, a re-run does nothing.
    """
    settings = get_settings()
    user = committed_row(
        "SELECT users.*, password_resets.sent_at FROM password_resets JOIN users ON users.id = user_id "
        "WHERE password_resets.id = %s",
        (reset_id,),
    )
    if user is None:
        logger.warning("Password reset: request %s does not exist", reset_id)
        return
    if user["sent_at"] is not None:
        return
    token = secrets.token_urlsafe(32)
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=settings.reset_token_ttl)
    with transaction() as conn:
        conn.execute(
            "UPDATE password_resets SET token_hash = %s, expires_at = %s WHERE id = %s",
            (hash_token(token), expires.isoformat(), reset_id),
        )
    minutes = settings.reset_token_ttl // 60
    message = mail.compose(
        user["email"],
        "Reset your password",
        f"Hello {user['name']},\n\n"
        f"Someone (hopefully you) asked to reset the password of {user['email']}.\n\n"
        f"Your reset token: {token}\n\n"
        f"It is valid for {minutes} minutes. If you did not ask for it, ignore this email.\n\n"
        "-- The shop\n",
    )
    mail.send(message)
    with transaction() as conn:
        conn.execute("UPDATE password_resets SET sent_at = %s WHERE id = %s", (now(), reset_id))
    logger.info("Password reset email sent to %s", user["email"])


# --- CSV import --------------------------------------------------------------------------------------------
COLUMNS = ("sku", "name", "price", "stock")
CHUNK = 500  # rows per transaction; progress is updated after each
SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ImportFailed(Exception):
    """The file as a whole cannot be imported (not a row): the import ends as ``failed``."""


def _parse_row(record: list[str], columns: dict[str, int], width: int) -> tuple[str, str, int, int]:
    """One CSV record to ``(sku, name, price_cents, stock)``; ``ValueError`` says what is wrong with it."""
    if len(record) != width:
        raise ValueError(f"expected {width} fields, got {len(record)}")
    sku = record[columns["sku"]].strip()
    if not SKU.match(sku):
        raise ValueError(f"invalid sku {sku!r}: 1 to 64 letters, digits, '.', '_' or '-'")
    name = record[columns["name"]].strip()
    if not name:
        raise ValueError("name is empty")
    price_text = record[columns["price"]].strip()
    try:
        price = Decimal(price_text)
    except InvalidOperation:
        raise ValueError(f"invalid price {price_text!r}") from None
    exponent = price.as_tuple().exponent
    if not price.is_finite() or price < 0 or (isinstance(exponent, int) and exponent < -2):
        raise ValueError(f"invalid price {price_text!r}: a non-negative amount with at most 2 decimals")
    stock_text = record[columns["stock"]].strip()
    try:
        stock = int(stock_text)
    except ValueError:
        raise ValueError(f"invalid stock {stock_text!r}") from None
    if stock < 0:
        raise ValueError(f"invalid stock {stock}: cannot be negative")
    return sku, name, int(price * 100), stock


def _count_records(path: Path) -> int:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return max(0, sum(1 for record in csv.reader(handle) if record) - 1)  # minus the header


def import_products_csv(import_id: str, path: str) -> dict | None:
    """Import (upsert by SKU) the products of a CSV file with the columns ``sku,name,price,stock``.

    A broken row is recorded with its line number (the header is line 1) and skipped; the other rows are
    imported. Progress is written every ``CHUNK`` rows, both to the ``imports`` row (``GET /imports/{id}``) and
    to the task's status (``report_progress``: ``GET /tasks/{id}`` and its event stream, which the import page
    shows as a progress bar). A file that cannot be imported at all ends the task ``failed`` with the reason.
    Returns the summary, kept as the task's result. The file is deleted once the import has ended.
    """
    file = Path(path)
    if committed_row("SELECT id FROM imports WHERE id = %s", (import_id,)) is None:
        logger.warning("CSV import: import %s does not exist", import_id)
        file.unlink(missing_ok=True)
        return None
    with transaction() as conn:
        conn.execute(
            "UPDATE imports SET status = 'running', started_at = %s, finished_at = NULL, failure = NULL, "
            "total_rows = NULL, processed_rows = 0, imported_rows = 0, error_count = 0 WHERE id = %s",
            (now(), import_id),
        )
        conn.execute("DELETE FROM import_errors WHERE import_id = %s", (import_id,))  # a retried run starts over
    try:
        total, imported, errors = _import(import_id, file)
    except ImportFailed as exc:  # the file is unusable: retrying would not help
        _finish(import_id, "failed", str(exc))
        file.unlink(missing_ok=True)
        raise
    except Exception as exc:  # e.g. the database is unavailable: fail this attempt, retries may follow
        _finish(import_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    _finish(import_id, "completed", None)
    file.unlink(missing_ok=True)
    return {
        "import_id": import_id,
        "total_rows": total,
        "imported_rows": imported,
        "error_count": errors,
        "details": f"/imports/{import_id}",
    }


def _import(import_id: str, file: Path) -> tuple[int, int, int]:
    """Import the file; returns (rows, rows imported, rows with an error)."""
    try:
        total = _count_records(file)
    except FileNotFoundError:
        raise ImportFailed("the uploaded file is gone") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportFailed(f"not a UTF-8 CSV file: {exc}") from None
    with transaction() as conn:
        conn.execute("UPDATE imports SET total_rows = %s WHERE id = %s", (total, import_id))
    report_progress(0.0, f"0 of {total:,} rows")

    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ImportFailed("the file is empty")
        columns = {name.strip().lower(): index for index, name in enumerate(header)}
        missing = [name for name in COLUMNS if name not in columns]
        if missing:
            raise ImportFailed(f"missing column(s): {', '.join(missing)} (expected {','.join(COLUMNS)})")
        rows: list[tuple[str, str, int, int, str]] = []
        errors: list[tuple[str, int, str]] = []
        processed = imported = failed = 0
        last_line = reader.line_num
        try:
            for record in reader:
                line, last_line = last_line + 1, reader.line_num
                if not record:  # a blank line
                    continue
                processed += 1
                try:
                    sku, name, price_cents, stock = _parse_row(record, columns, len(header))
                except ValueError as exc:
                    errors.append((import_id, line, str(exc)))
                else:
                    rows.append((sku, name, price_cents, stock, now()))
                if processed % CHUNK == 0:
                    _flush(import_id, rows, errors, processed)
                    imported, failed, rows, errors = imported + len(rows), failed + len(errors), [], []
                    report_progress(processed / total, f"{processed:,} of {total:,} rows")
        except csv.Error as exc:
            raise ImportFailed(f"line {reader.line_num}: {exc}") from None
        _flush(import_id, rows, errors, processed)
        report_progress(1.0, f"{processed:,} of {total:,} rows")
        return processed, imported + len(rows), failed + len(errors)


def _flush(import_id: str, rows: list, errors: list, processed: int) -> None:
    with transaction() as conn:
        conn.cursor().executemany(
            "INSERT INTO products (id, name, price_cents, stock, updated_at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents, "
            "stock = excluded.stock, updated_at = excluded.updated_at",
            rows,
        )
        conn.cursor().executemany("INSERT INTO import_errors (import_id, line, message) VALUES (%s, %s, %s)", errors)
        conn.execute(
            "UPDATE imports SET processed_rows = %s, imported_rows = imported_rows + %s, "
            "error_count = error_count + %s WHERE id = %s",
            (processed, len(rows), len(errors), import_id),
        )


def _finish(import_id: str, status: str, failure: str | None) -> None:
    with transaction() as conn:
        conn.execute(
            "UPDATE imports SET status = %s, failure = %s, finished_at = %s WHERE id = %s",
            (status, failure, now(), import_id),
        )


# --- webhooks ----------------------------------------------------------------------------------------------
def order_payload(order: dict) -> dict:
    return {
        "id": order["id"],
        "status": order["status"],
        "customer_email": order["customer_email"],
        "total": format_cents(order["total_cents"]),
        "completed_at": order["completed_at"],
    }


def send_order_webhook(order_id: int) -> None:
    """POST a signed ``order.completed`` event to the order's ``webhook_url``.

    Any network error or non-2xx answer raises, so the task's ``retries`` apply. Every attempt is counted on
    the order (``webhook_attempts``, ``webhook_last_error``). The delivery id is the same on every attempt,
    so the receiver can ignore a duplicate.
    """
    row = committed_row("SELECT * FROM orders WHERE id = %s", (order_id,), lambda row: row["status"] == "completed")
    if row is None or row["status"] != "completed":
        logger.warning("Webhook: order %s does not exist or is not completed", order_id)
        return
    if row["webhook_delivered_at"] is not None:
        return  # already delivered (a re-run of a durable job)
    with transaction() as conn:
        conn.execute("UPDATE orders SET webhook_attempts = webhook_attempts + 1 WHERE id = %s", (order_id,))
    order = dict(row)
    delivery_id = f"order-{order_id}-completed"
    body = json.dumps(
        {"event": "order.completed", "delivery_id": delivery_id, "order": order_payload(order)},
        separators=(",", ":"),
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "tachyon-shop-webhooks/1.0",
        SIGNATURE_HEADER: sign(body, get_settings().webhook_secret),
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: "order.completed",
    }
    try:
        response = httpx.post(order["webhook_url"], content=body, headers=headers, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        with transaction() as conn:
            conn.execute("UPDATE orders SET webhook_last_error = %s WHERE id = %s", (error, order_id))
        raise
    with transaction() as conn:
        conn.execute(
            "UPDATE orders SET webhook_delivered_at = %s, webhook_last_error = NULL WHERE id = %s", (now(), order_id)
        )
    logger.info("Webhook for order %s delivered to %s", order_id, order["webhook_url"])


# --- analytics ---------------------------------------------------------------------------------------------
def track_view(product_id: str) -> None:
    """Count one view of a product."""
    with transaction() as conn:
        conn.execute(
            "INSERT INTO product_views (product_id, views) VALUES (%s, 1) "
            "ON CONFLICT (product_id) DO UPDATE SET views = product_views.views + 1",
            (product_id,),
        )

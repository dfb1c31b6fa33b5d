"""The example shop's web app: ``tachyon run examples.shop.app:app`` from the repository root.

Endpoints write to the database (SQLite, see ``db.py``) and return at once; the slow parts (SMTP, the CSV
import, the webhook, the view counter) are background tasks from ``tasks.py``. With ``SHOP_TASK_BACKEND=rq``
the same tasks are stored in Redis, and run by ``tachyon worker examples.shop.app:app`` instead. With
``SHOP_TASK_BACKEND=postgresql://...`` the tasks *and* the shop's tables live in that PostgreSQL database.

Every endpoint gets its connection from :func:`transaction`, declared ``Depends(transaction,
scope="function")``: its writes are committed after its tasks are stored and before the response is sent.
On SQLite with Redis, a 503 while Redis is down leaves nothing behind and the retry starts from scratch. On
PostgreSQL the backend inserts the tasks on that very connection: a 2xx means the rows and their tasks
committed together, any failure means neither. The view counter stays in-process
(``with_options(durable=False)``): losing a view is fine, answering a product page with a 503 is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import json
import logging
import secrets
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any

from msgspec import Meta

from tachyon_api import Cookie, Depends, Header, HTTPException, Request, Struct, Tachyon, UploadFile
from tachyon_api.backends.base import TaskBackend
from tachyon_api.background import BackgroundTasks, RQBackend
from tachyon_api.exceptions import RequestValidationError
from tachyon_api.responses import Accepted, HTMLResponse, JSONResponse, validation_error_response
from tachyon_api.tasks import task_status_router

from . import db as database
from . import tasks
from .db import AsyncConnection, Row, now, query, query_one
from .mailserver import start_mailbox_server
from .pages import IMPORT_PAGE
from .settings import get_settings
from .webhooks import verify

logger = logging.getLogger("shop")
settings = get_settings()


# --- the app -----------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def lifespan(app: Tachyon) -> AsyncIterator[dict[str, Any]]:
    """Create the folders and the tables (and the PostgreSQL pool), and start the mailbox SMTP server unless a
    real one is set.

    Background tasks are drained before this block exits, so emails sent during the drain still reach the
    mailbox server.
    """
    for folder in (settings.data_dir, settings.upload_dir, settings.mailbox_dir):
        folder.mkdir(parents=True, exist_ok=True)
    await database.open_database()
    if settings.task_backend == "postgres":  # the job tables too, so /stats can count jobs before the first one
        await backend.create_schema()  # type: ignore[union-attr]  # a PostgresBackend
    server = None
    if settings.local_smtp:
        try:
            server = await start_mailbox_server(settings.mailbox_dir, "127.0.0.1", settings.smtp_port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            # Several web processes (tachyon run --workers N): the first one serves the mailbox.
            logger.warning(
                "SMTP port %d is in use; assuming another shop process serves the mailbox there", settings.smtp_port
            )
    yield {"mail_server": server}
    if server is not None:
        server.close()
        await server.wait_closed()
    await database.close_database()


def make_backend() -> TaskBackend | None:
    """The durable backend the settings ask for (None: in-process tasks)."""
    if settings.task_backend == "rq":
        return RQBackend(settings.redis_url, queue=settings.queue)
    if settings.task_backend == "postgres":
        from tachyon_api.backends.postgres import PostgresBackend

        return PostgresBackend(settings.postgres_url, queue=settings.queue)
    return None


backend = make_backend()

app = Tachyon(
    lifespan=lifespan,
    task_backend=backend,  # None: in-process tasks; otherwise every task is stored in Redis or PostgreSQL
    max_body_size=settings.max_upload_bytes,  # CSV uploads can be large
    shutdown_timeout=settings.shutdown_timeout,
)


def database_error(request: Request, exc: Exception) -> JSONResponse:
    """A locked SQLite database, or a PostgreSQL that cannot be reached, is a temporary condition: 503 and a
    hint to retry. Anything else is a plain 500.

    A handler replaces the framework's logging of the error, so it logs what it handles itself.
    """
    if not isinstance(exc, sqlite3.OperationalError) or "locked" in str(exc) or "busy" in str(exc):
        logger.warning("Database unavailable in %s %s: %s", request.method, request.url.path, exc)
        detail = "The database is busy, try again" if isinstance(exc, sqlite3.Error) else "The database is unavailable"
        return JSONResponse({"detail": detail}, 503, headers={"Retry-After": "1"})
    logger.error("Database error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"success": False, "error": "Internal Server Error", "code": "INTERNAL_SERVER_ERROR"}, 500)


def invalid_value(request: Request, exc: Exception) -> JSONResponse:
    """A value PostgreSQL refuses (a NUL character in a text, which SQLite stores): the client's error, a 422
    with the framework's validation body."""
    logger.info("Value refused by the database in %s %s: %s", request.method, request.url.path, exc)
    return validation_error_response(f"Value refused by the database: {exc}")


app.add_exception_handler(sqlite3.OperationalError, database_error)
if settings.postgres_url is not None:
    import psycopg

    app.add_exception_handler(psycopg.OperationalError, database_error)  # the pool's timeout included
    app.add_exception_handler(psycopg.DataError, invalid_value)


async def transaction() -> AsyncIterator[AsyncConnection]:
    """The request's connection, whose writes commit only if the request succeeds, tasks included.

    Used as ``Depends(transaction, scope="function")``: the code after ``yield`` runs when the endpoint has
    returned and its durable tasks are stored, before the response. If the endpoint raised, or the tasks could
    not be stored (``TaskBackendUnavailable``, a 503), that exception is raised at the ``yield`` and nothing
    the endpoint wrote is kept. On PostgreSQL the tasks are inserted on this connection, in this transaction;
    on SQLite with Redis the write lock is held one Redis round trip longer than a commit inside the endpoint.
    Tasks open their own connections: they get ids, not this.
    """
    async with database.connection() as conn:
        yield conn


MAX_INT = 2**63 - 1  # the largest integer SQLite and PostgreSQL's BIGINT store


def validation_error(field: str, message: str) -> RequestValidationError:
    """A 422 with the framework's error body, for a rule the type annotations cannot express."""
    return RequestValidationError([{"loc": ["body", field], "msg": message, "type": "value_error"}])


def to_cents(amount: Decimal, field: str) -> int:
    """An amount as whole cents, which the database stores as a 64-bit integer (larger ones are refused here:
    the database would fail on them, and quantizing one of more than 28 digits raises)."""
    if not amount.is_finite() or not 0 <= amount * 100 <= MAX_INT or amount != amount.quantize(Decimal("0.01")):
        raise validation_error(field, "Expected a non-negative amount with at most 2 decimals")
    return int(amount * 100)


# No control character anywhere: the name and the address go into email headers, where a line break fails the
# welcome email (or would add a header). A lookahead, because a pattern's "$" also matches before a final "\n".
NO_CONTROL = r"^(?![\s\S]*[\x00-\x1f\x7f])"
Email = Annotated[str, Meta(pattern=NO_CONTROL + r"[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
Name = Annotated[str, Meta(min_length=1, max_length=100, pattern=NO_CONTROL)]
Sku = Annotated[str, Meta(pattern=tasks.SKU.pattern)]
Url = Annotated[str, Meta(pattern=r"^https?://[^\s]+$", max_length=2000)]
# The databases' integers are 64-bit: a larger value makes the query fail (SQLite: OverflowError, PostgreSQL:
# out of range), so it is refused (422) first.
RowId = Annotated[int, Meta(ge=1, le=MAX_INT)]


@app.get("/")
def index() -> dict[str, Any]:
    return {"name": "Tachyon example shop", "routes": [f"{r['method']} {r['path']}" for r in app.routes]}


# --- 1. signup: a welcome email ------------------------------------------------------------------------------
class SignupIn(Struct):
    email: Email
    name: Name


@app.post("/signup", status_code=201, responses={409: {"description": "A user with this email already exists"}})
async def signup(
    user: SignupIn, background_tasks: BackgroundTasks, db: AsyncConnection = Depends(transaction, scope="function")
):
    """The user row is committed with its welcome email task (PostgreSQL), or once that task is stored (Redis):
    no user without it.

    The address is unique: a second signup is a 409, found by the database (no race between two requests).
    """
    email = user.email.lower()
    row = await query_one(
        db,
        "INSERT INTO users (email, name, created_at) VALUES (%s, %s, %s) ON CONFLICT (email) DO NOTHING RETURNING id",
        email,
        user.name,
        now(),
    )
    if row is None:
        raise HTTPException(409, "A user with this email already exists")
    user_id = row["id"]
    background_tasks.add_task(tasks.send_welcome_email, user_id).with_options(
        name="welcome-email", retries=3, retry_delay=1, timeout=30
    )
    return {"id": user_id, "email": email, "name": user.name}


# --- 2. password reset: an email with a token ----------------------------------------------------------------
@app.post("/reset-password")
async def reset_password(
    email: str, background_tasks: BackgroundTasks, db: AsyncConnection = Depends(transaction, scope="function")
):
    """Record the reset request and email its token (made by the task, so it never goes through the queue).

    The same answer whether or not the account exists, so the endpoint does not reveal who has one. The
    request row is committed only once its email task is stored.
    """
    user = await query_one(db, "SELECT id FROM users WHERE email = %s", email.strip().lower())
    if user is not None:
        (reset,) = await query(
            db, "INSERT INTO password_resets (user_id, created_at) VALUES (%s, %s) RETURNING id", user["id"], now()
        )
        background_tasks.add_task(tasks.send_password_reset, reset["id"]).with_options(
            name="password-reset-email", retries=3, retry_delay=1, timeout=30
        )
    return {"message": "Check your email"}


class TokenIn(Struct):
    token: str


@app.post("/reset-password/verify", responses={400: {"description": "Invalid or expired token"}})
async def verify_reset_token(body: TokenIn, db: AsyncConnection = Depends(transaction, scope="function")):
    """Check a token from a reset email (looked up by its hash; the token itself is stored nowhere)."""
    row = await query_one(
        db,
        "SELECT users.email, password_resets.expires_at FROM password_resets "
        "JOIN users ON users.id = password_resets.user_id WHERE token_hash = %s",
        tasks.hash_token(body.token),
    )
    if row is None or dt.datetime.fromisoformat(row["expires_at"]) <= dt.datetime.now(dt.timezone.utc):
        raise HTTPException(400, "Invalid or expired token")
    return {"valid": True, "email": row["email"], "expires_at": row["expires_at"]}


# --- 3. CSV import: answered at once, imported in the background, followed live ------------------------------
def session(shop_session: str | None = Cookie(None)) -> str | None:
    """Who is asking: the browser session of the import page (its cookie), or nobody (curl without cookies).

    The guard of the task status routes, and the owner of the imports started with it: a browser sees only its
    own imports; an import started without a session is followed by whoever holds its id (the id is a 128-bit
    capability, returned only to the client that started it).
    """
    return shop_session


app.include_router(task_status_router(prefix="/tasks", dependencies=[Depends(session)]))


@app.get("/imports/new", include_in_schema=False)
def import_page(shop_session: str | None = Cookie(None)) -> HTMLResponse:
    """A small page: pick a CSV file, watch its import's progress bar fill from the task's event stream."""
    response = HTMLResponse(IMPORT_PAGE)
    if shop_session is None:
        response.set_cookie("shop_session", secrets.token_urlsafe(16), httponly=True, samesite="strict")
    return response


def save_upload(file: UploadFile, import_id: str) -> str:
    """Copy the upload to a file of our own (the upload is deleted after the response); blocking file I/O."""
    path = settings.upload_dir / f"{import_id}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("wb") as out:
            shutil.copyfileobj(file.file, out, 1024 * 1024)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return str(path)


@app.post("/import", status_code=202)
async def import_products(
    file: UploadFile,
    background_tasks: BackgroundTasks,
    db: AsyncConnection = Depends(transaction, scope="function"),
    owner: str | None = Depends(session),
):
    """Save the upload, record the import as queued, and import it later (the row commits with its task).

    Answers 202 with the task's id and status URL (``Location``): ``GET /tasks/{id}`` for the status,
    ``/tasks/{id}/events`` to follow it live, ``DELETE /tasks/{id}`` to cancel it. Its result, when it
    succeeds, is the import's summary with the id of ``GET /imports/{import_id}`` (the broken lines).
    """
    import_id = uuid.uuid4().hex
    path = await asyncio.to_thread(save_upload, file, import_id)
    await query(
        db,
        "INSERT INTO imports (id, filename, status, created_at) VALUES (%s, %s, 'queued', %s)",
        import_id,
        file.filename,
        now(),
    )
    task = background_tasks.add_task(tasks.import_products_csv, import_id, path).with_options(
        name="csv-import", timeout=600, keep_result=True, owner=owner
    )
    return Accepted(task)


@app.get("/imports/{import_id}")
async def import_status(
    import_id: str,
    max_errors: Annotated[int, Meta(le=MAX_INT)] = 100,
    db: AsyncConnection = Depends(transaction, scope="function"),
):
    """Progress and outcome: ``status`` is queued, running, completed or failed."""
    row = await query_one(db, "SELECT * FROM imports WHERE id = %s", import_id)
    if row is None:
        raise HTTPException(404, "Import not found")
    errors = await query(
        db,
        "SELECT line, message FROM import_errors WHERE import_id = %s ORDER BY line LIMIT %s",
        import_id,
        max(0, max_errors),
    )
    return {**row, "errors": errors}


# --- products and 4. view counting ---------------------------------------------------------------------------
class ProductIn(Struct):
    id: Sku
    name: Name
    price: Decimal
    stock: Annotated[int, Meta(ge=0, le=MAX_INT)] = 0


def product_out(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "price": tasks.format_cents(row["price_cents"]),
        "stock": row["stock"],
    }


@app.post("/products", status_code=201)
async def create_product(product: ProductIn, db: AsyncConnection = Depends(transaction, scope="function")):
    cents = to_cents(product.price, "price")
    (row,) = await query(
        db,
        "INSERT INTO products (id, name, price_cents, stock, updated_at) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents, "
        "stock = excluded.stock, updated_at = excluded.updated_at RETURNING *",
        product.id,
        product.name,
        cents,
        product.stock,
        now(),
    )
    return product_out(row)


@app.get("/products/{product_id}")
async def get_product(
    product_id: str, background_tasks: BackgroundTasks, db: AsyncConnection = Depends(transaction, scope="function")
):
    row = await query_one(db, "SELECT * FROM products WHERE id = %s", product_id)
    if row is None:
        raise HTTPException(404, "Product not found")  # raised before add_task: no view is counted
    # In-process even when tasks are durable: a lost view is acceptable, a 503 for a product page is not.
    background_tasks.add_task(tasks.track_view, product_id).with_options(name="track-view", durable=False)
    return product_out(row)


@app.get("/stats")
async def stats(db: AsyncConnection = Depends(transaction, scope="function")):
    views = await query(db, "SELECT product_id, views FROM product_views ORDER BY views DESC, product_id")
    totals = await query_one(
        db,
        "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM products) AS products, "
        "(SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM imports) AS imports",
    )
    result: dict[str, Any] = {
        "product_views": {row["product_id"]: row["views"] for row in views},
        "totals": totals,
        "task_backend": settings.task_backend,
        "background": app.background.stats(),  # the in-process runner's counters
    }
    if backend is not None:
        try:
            result["durable"] = await asyncio.to_thread(backend.stats)  # blocking calls: in a thread
        except Exception as exc:  # Redis or PostgreSQL down: the rest of the page is still useful
            result["durable"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


# --- 5. orders and their webhook -----------------------------------------------------------------------------
class OrderIn(Struct):
    customer_email: Email
    total: Decimal
    webhook_url: Url


def order_out(row: Row) -> dict[str, Any]:
    order = dict(row)
    order["total"] = tasks.format_cents(order.pop("total_cents"))
    return order


@app.post("/orders", status_code=201)
async def create_order(order: OrderIn, db: AsyncConnection = Depends(transaction, scope="function")):
    cents = to_cents(order.total, "total")
    (row,) = await query(
        db,
        "INSERT INTO orders (customer_email, total_cents, webhook_url, status, created_at) "
        "VALUES (%s, %s, %s, 'pending', %s) RETURNING *",
        order.customer_email,
        cents,
        order.webhook_url,
        now(),
    )
    return order_out(row)


@app.get("/orders/{order_id}")
async def get_order(order_id: RowId, db: AsyncConnection = Depends(transaction, scope="function")):
    row = await query_one(db, "SELECT * FROM orders WHERE id = %s", order_id)
    if row is None:
        raise HTTPException(404, "Order not found")
    return order_out(row)


@app.post("/orders/{order_id}/complete")
async def complete_order(
    order_id: RowId, background_tasks: BackgroundTasks, db: AsyncConnection = Depends(transaction, scope="function")
):
    """Mark the order completed and notify its ``webhook_url``; completing it again sends nothing new.

    The new status is committed with the webhook task (or once it is stored): if it cannot be, the order stays
    pending and the client's retry completes it (and sends the webhook) then.
    """
    changed = await query(
        db,
        "UPDATE orders SET status = 'completed', completed_at = %s WHERE id = %s AND status != 'completed' "
        "RETURNING id",
        now(),
        order_id,
    )
    row = await query_one(db, "SELECT * FROM orders WHERE id = %s", order_id)
    if row is None:
        raise HTTPException(404, "Order not found")
    if changed:
        background_tasks.add_task(tasks.send_order_webhook, order_id).with_options(
            name="order-webhook",
            retries=settings.webhook_retries,
            retry_delay=settings.webhook_retry_delay,
            timeout=30,
        )
    return {"order": order_out(row)}


# --- the webhook receiver (what a partner would run) ---------------------------------------------------------
async def raw_body(request: Request) -> bytes:
    """The exact bytes received: the signature covers them, not a re-encoding of the parsed JSON."""
    return await request.body()


@app.post(
    "/webhooks/receiver",
    responses={
        400: {"description": "The body is not a JSON object with a delivery_id"},
        401: {"description": "Invalid signature"},
        503: {"description": "A simulated failure (?fail_times=N)"},
    },
)
async def receive_webhook(
    fail_times: int = 0,
    body: bytes = Depends(raw_body),
    x_shop_signature: str | None = Header(None),
    db: AsyncConnection = Depends(transaction, scope="function"),
):
    """Verify the signature (401 if wrong), then record the delivery once per delivery id.

    ``?fail_times=N`` makes the receiver answer 503 to the first N attempts of each delivery: a flaky
    partner, to watch the sender's retries. That 503 is returned, not raised, so the attempt count commits.
    """
    if not verify(body, x_shop_signature, settings.webhook_secret):
        raise HTTPException(401, "Invalid signature")
    try:
        event = json.loads(body)
        delivery_id = str(event["delivery_id"])
        order = event.get("order") or {}
        order_id = order.get("id") if isinstance(order, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise HTTPException(400, "Expected a JSON object with a delivery_id") from None
    (counted,) = await query(
        db,
        "INSERT INTO receiver_attempts (delivery_id, attempts) VALUES (%s, 1) "
        "ON CONFLICT (delivery_id) DO UPDATE SET attempts = receiver_attempts.attempts + 1 RETURNING attempts",
        delivery_id,
    )
    attempt = counted["attempts"]
    if attempt <= fail_times:
        detail = f"Simulated failure (attempt {attempt}, failing the first {fail_times})"
        return JSONResponse({"detail": detail}, status_code=503)
    inserted = await query(
        db,
        "INSERT INTO received_webhooks (delivery_id, event, order_id, payload, received_at) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
        delivery_id,
        str(event.get("event")),
        order_id,
        body.decode(),
        now(),
    )
    return {"status": "received" if inserted else "duplicate", "delivery_id": delivery_id, "attempt": attempt}


@app.get("/webhooks/received")
async def received_webhooks(db: AsyncConnection = Depends(transaction, scope="function")):
    """Every delivery the receiver accepted; only correctly signed ones are ever recorded."""
    rows = await query(
        db,
        "SELECT received_webhooks.*, receiver_attempts.attempts FROM received_webhooks "
        "LEFT JOIN receiver_attempts USING (delivery_id) ORDER BY received_webhooks.id",
    )
    return [
        {
            "delivery_id": row["delivery_id"],
            "event": row["event"],
            "order_id": row["order_id"],
            "signature_verified": True,
            "attempts": row["attempts"],
            "received_at": row["received_at"],
            "payload": json.loads(row["payload"]),
        }
        for row in rows
    ]

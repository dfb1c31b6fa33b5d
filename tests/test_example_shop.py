"""The example shop (examples/shop), end to end.

The app runs as ``python -m tachyon_api run examples.shop.app:app`` in a subprocess, configured only through
its ``SHOP_*`` environment variables, and every check goes through real parts: HTTP to uvicorn, the app's
own SMTP server (aiosmtpd) writing .eml files, the SQLite file, the webhook receiver, and, for the durable
modes, a real redis-server or PostgreSQL (embedded) and a ``tachyon worker --burst`` process.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httpx
import pytest
from aiosmtpd.controller import Controller

from .conftest import ROOT, ServerProcess, free_port
from .postgres_server import PostgresServer

APP = "examples.shop.app:app"
SECRET = "test-webhook-secret"
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {result!r})")
        time.sleep(0.05)


class Shop:
    """One running shop process with its data folder, and helpers to look at its mailbox and database."""

    def __init__(self, base: Path, **env: str) -> None:
        self.data = base / "data"
        self.mailbox = self.data / "mailbox"
        self.db_path = self.data / "shop.sqlite3"
        self.env = {
            "SHOP_DATA_DIR": str(self.data),
            "SHOP_SMTP_HOST": "",
            "SHOP_SMTP_PORT": str(free_port()),
            "SHOP_WEBHOOK_SECRET": SECRET,
            "SHOP_WEBHOOK_RETRIES": "3",
            "SHOP_WEBHOOK_RETRY_DELAY": "0.05",
            "SHOP_TASK_BACKEND": "inprocess",
            **env,
        }
        self.expected_task_failures = 0  # a test that makes a task fail for good on purpose counts it here
        self.expected_errors = 0  # and a request it makes fail with a 500 on purpose (logged with its traceback)
        # Fuzzers upload files that cannot be imported: each fails its import task (on purpose, logged as such).
        self.unusable_imports_expected = False
        self.server = ServerProcess(APP, base, self.env)
        self.url = self.server.url
        self.http = httpx.Client(base_url=self.url, timeout=20)

    def stop(self) -> str:
        """SIGTERM, as a process manager would: the server drains its tasks, runs the lifespan exit and stops
        (recent uvicorn versions then re-raise the signal, so the exit status is -15)."""
        self.http.close()
        self.server.terminate()
        code = self.server.wait(30)
        output = self.server.output()
        assert code in (0, -15) and "Application shutdown complete." in output, output
        assert output.count("Unhandled error") == self.expected_errors and " lost (request" not in output, output
        failures = len(re.findall(r"Background task \S+ failed \(request", output))
        if self.unusable_imports_expected:
            failures -= output.count("examples.shop.tasks.ImportFailed: ")
        assert failures == self.expected_task_failures, output
        return output

    # --- mailbox ---
    def mails(self) -> list[EmailMessage]:
        if not self.mailbox.exists():
            return []
        return [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for path in sorted(self.mailbox.glob("*.eml"))
        ]

    def wait_for_mail(self, to: str, subject: str) -> EmailMessage:
        def find() -> EmailMessage | None:
            for message in self.mails():
                if message["To"] == to and message["Subject"] == subject:
                    return message
            return None

        return eventually(find, what=f"an email to {to} with subject {subject!r}")

    # --- database ---
    def query(self, sql: str, *params: Any) -> list[Any]:
        """Rows of the shop's database: SQLite (``?`` placeholders), or PostgreSQL (``%s``, rows as dicts)."""
        url = self.env["SHOP_TASK_BACKEND"]
        if url.startswith("postgresql://"):
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(url, row_factory=dict_row) as pg:
                return pg.execute(sql, params).fetchall()
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = Shop(tmp_path_factory.mktemp("shop"))
    try:
        yield running
        running.stop()
    finally:
        running.server.stop()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- signup ------------------------------------------------------------------------------------------------
def test_signup_stores_the_user_and_emails_a_welcome(shop: Shop) -> None:
    response = shop.http.post("/signup", json={"email": "Ada@Example.com", "name": "Ada"})
    assert response.status_code == 201, response.text
    user = response.json()
    assert user == {"id": user["id"], "email": "ada@example.com", "name": "Ada"}

    message = shop.wait_for_mail("ada@example.com", "Welcome to the shop, Ada!")
    assert message["From"] == "Tachyon Shop <shop@example.com>"
    assert "Your account for ada@example.com is ready" in message.get_content()

    sent = "SELECT * FROM users WHERE welcome_sent_at IS NOT NULL AND id = ?"
    rows = eventually(lambda: shop.query(sent, user["id"]))
    assert rows[0]["email"] == "ada@example.com" and rows[0]["name"] == "Ada"

    again = shop.http.post("/signup", json={"email": "ada@example.com", "name": "Ada"})
    assert again.status_code == 409
    assert again.json() == {"detail": "A user with this email already exists"}

    invalid = shop.http.post("/signup", json={"email": "not-an-address", "name": "X"})
    assert invalid.status_code == 422
    body = invalid.json()
    assert body["code"] == "VALIDATION_ERROR" and body["success"] is False
    assert [error["loc"] for error in body["errors"]] == [["body", "email"]]


def test_signup_refuses_control_characters_that_would_break_the_email_headers(shop: Shop) -> None:
    """The name goes into the Subject and the address into To: a line break there made every attempt of the
    welcome email fail (found by schemathesis). A pattern's ``$`` also matches before a final newline in
    Python, so the address pattern alone let ``ada@example.com\\n`` through."""
    for body, field in (
        ({"email": "eve@example.com", "name": "Eve\r\nBcc: all@example.com"}, "name"),
        ({"email": "eve@example.com\n", "name": "Eve"}, "email"),
        ({"email": "eve@example.com", "name": "Eve\x00"}, "name"),
    ):
        response = shop.http.post("/signup", json=body)
        assert response.status_code == 422, response.text
        assert [error["loc"] for error in response.json()["errors"]] == [["body", field]]
    assert shop.http.post("/signup", json={"email": "eve@example.com", "name": "Ève Zoë"}).status_code == 201


# --- password reset ----------------------------------------------------------------------------------------
def test_reset_password_emails_a_token_that_is_stored_hashed(shop: Shop) -> None:
    assert shop.http.post("/signup", json={"email": "grace@example.com", "name": "Grace"}).status_code == 201
    shop.wait_for_mail("grace@example.com", "Welcome to the shop, Grace!")

    response = shop.http.post("/reset-password", params={"email": "grace@example.com"})
    assert response.status_code == 200
    assert response.json() == {"message": "Check your email"}

    message = shop.wait_for_mail("grace@example.com", "Reset your password")
    found = re.search(r"Your reset token: (\S+)", message.get_content())
    assert found, message.get_content()
    token = found.group(1)

    stored = shop.query(
        "SELECT password_resets.* FROM password_resets JOIN users ON users.id = user_id WHERE email = ?",
        "grace@example.com",
    )
    assert len(stored) == 1
    assert stored[0]["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in [str(value) for value in tuple(stored[0])]

    verified = shop.http.post("/reset-password/verify", json={"token": token})
    assert verified.status_code == 200
    assert verified.json()["valid"] is True and verified.json()["email"] == "grace@example.com"
    wrong = shop.http.post("/reset-password/verify", json={"token": token + "x"})
    assert (wrong.status_code, wrong.json()) == (400, {"detail": "Invalid or expired token"})

    # Unknown addresses get the same answer (nothing to learn from it); the parameter itself is required.
    assert shop.http.post("/reset-password", params={"email": "nobody@example.com"}).json() == {
        "message": "Check your email"
    }
    missing = shop.http.post("/reset-password")
    assert missing.status_code == 422
    assert missing.json()["errors"] == [{"loc": ["query", "email"], "msg": "Field required", "type": "missing"}]


# --- CSV import --------------------------------------------------------------------------------------------
def products_csv(rows: int, broken: dict[int, str]) -> bytes:
    """``rows`` data rows after the header; ``broken`` maps a row index to the raw line to put instead."""
    lines = ["sku,name,price,stock"]
    for index in range(rows):
        lines.append(broken.get(index, f"IMP-{index:05d},Product {index},{index % 100}.{index % 10}9,{index % 7}"))
    return ("\n".join(lines) + "\n").encode()


def follow(shop: Shop, status_url: str, **headers: str) -> dict[str, Any]:
    """The task's record once it has ended (it must never be seen in another state than these)."""

    def ended() -> dict[str, Any] | None:
        record = shop.http.get(status_url, headers=headers).json()
        assert record["state"] in ("queued", "running", "succeeded", "failed"), record
        return record if record["state"] in ("succeeded", "failed") else None

    return eventually(ended, what=f"the task {status_url} to end")


def test_csv_import_is_accepted_with_a_status_url_and_reports_progress_and_broken_lines(shop: Shop) -> None:
    data = products_csv(3000, {1000: "IMP-01000,Broken,12,50,1", 2500: "IMP-02500,Negative,3.00,-3"})
    response = shop.http.post("/import", files={"file": ("products.csv", data, "text/csv")})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"id", "status_url"} and response.headers["location"] == accepted["status_url"]

    record = follow(shop, accepted["status_url"])
    assert record["state"] == "succeeded" and record["name"] == "csv-import" and record["error"] is None
    assert record["progress"] == {"done": 1.0, "message": "3,000 of 3,000 rows"}
    summary = record["result"]
    import_id = summary["import_id"]
    assert summary == {
        "import_id": import_id,
        "total_rows": 3000,
        "imported_rows": 2998,
        "error_count": 2,
        "details": f"/imports/{import_id}",
    }
    result = shop.http.get(summary["details"]).json()
    assert result["status"] == "completed"
    assert (result["total_rows"], result["processed_rows"], result["imported_rows"]) == (3000, 3000, 2998)
    assert result["error_count"] == 2
    assert result["filename"] == "products.csv"
    # Header = line 1, so data row i is on line i + 2.
    assert result["errors"] == [
        {"line": 1002, "message": "expected 4 fields, got 5"},
        {"line": 2502, "message": "invalid stock -3: cannot be negative"},
    ]

    assert shop.query("SELECT count(*) FROM products WHERE id LIKE 'IMP-%'")[0][0] == 2998
    assert not shop.query("SELECT * FROM products WHERE id IN ('IMP-01000', 'IMP-02500')")
    assert shop.http.get("/products/IMP-00123").json() == {
        "id": "IMP-00123",
        "name": "Product 123",
        "price": "23.39",
        "stock": 4,
    }
    assert list((shop.data / "uploads").iterdir()) == []  # the saved upload is removed when done

    bad = shop.http.post("/import", files={"file": ("bad.csv", b"sku,title\nA,B\n", "text/csv")})
    shop.expected_task_failures += 1  # an unusable file fails its task (logged with its traceback)
    failed = follow(shop, bad.json()["status_url"])
    message = "missing column(s): name, price, stock (expected sku,name,price,stock)"
    assert failed["state"] == "failed" and failed["error"] == {"type": "ImportFailed", "message": message}
    assert shop.query("SELECT failure FROM imports WHERE filename = 'bad.csv'")[0][0] == message
    assert shop.http.get("/imports/does-not-exist").status_code == 404


def test_an_import_started_by_a_browser_session_is_only_that_sessions(shop: Shop) -> None:
    files = {"file": ("p.csv", b"sku,name,price,stock\nOWN-1,Owned,1.00,1\n", "text/csv")}
    status_url = shop.http.post("/import", files=files, headers={"Cookie": "shop_session=alice"}).json()["status_url"]
    assert follow(shop, status_url, Cookie="shop_session=alice")["state"] == "succeeded"
    for headers in ({}, {"Cookie": "shop_session=bob"}):
        for method in ("GET", "DELETE"):
            response = shop.http.request(method, status_url, headers=headers)
            assert response.status_code == 404 and response.json()["code"] == "TASK_NOT_FOUND"


def test_the_import_page_follows_the_progress_bar_to_done(shop: Shop, page: Any, tmp_path: Path) -> None:
    csv_file = tmp_path / "catalogue.csv"
    csv_file.write_bytes(products_csv(2000, {5: "PAGE-BROKEN,Broken,x,1"}).replace(b"IMP-", b"PAGE-"))
    page.goto(f"{shop.url}/imports/new")
    assert any(cookie["name"] == "shop_session" for cookie in page.context.cookies())
    assert page.locator("#bar").evaluate("bar => bar.value") == 0
    page.set_input_files("#file", str(csv_file))
    page.click("#start")
    page.wait_for_selector("body[data-state=succeeded]", timeout=15000)
    assert page.locator("#bar").evaluate("bar => bar.value") == 1
    assert page.locator("#state").inner_text() == "succeeded"
    assert page.locator("#message").inner_text() == "2,000 of 2,000 rows"
    summary = json.loads(page.locator("#result").inner_text())
    assert (summary["imported_rows"], summary["error_count"]) == (1999, 1)
    assert page.locator("#cancel").is_hidden()


# --- webhooks ----------------------------------------------------------------------------------------------
def create_order(shop: Shop, webhook_url: str) -> int:
    response = shop.http.post(
        "/orders", json={"customer_email": "buyer@example.com", "total": 42.5, "webhook_url": webhook_url}
    )
    assert response.status_code == 201, response.text
    order = response.json()
    assert (order["status"], order["total"]) == ("pending", "42.50")
    return order["id"]


def delivery(shop: Shop, order_id: int) -> dict[str, Any] | None:
    for item in shop.http.get("/webhooks/received").json():
        if item["delivery_id"] == f"order-{order_id}-completed":
            return item
    return None


def test_completing_an_order_sends_a_signed_webhook_the_receiver_verifies(shop: Shop) -> None:
    order_id = create_order(shop, f"{shop.url}/webhooks/receiver")
    completed = shop.http.post(f"/orders/{order_id}/complete")
    assert completed.status_code == 200
    assert completed.json()["order"]["status"] == "completed"

    received = eventually(lambda: delivery(shop, order_id), what="the webhook delivery")
    assert received["signature_verified"] is True and received["attempts"] == 1
    assert received["event"] == "order.completed" and received["order_id"] == order_id
    assert received["payload"]["order"] == {
        "id": order_id,
        "status": "completed",
        "customer_email": "buyer@example.com",
        "total": "42.50",
        "completed_at": completed.json()["order"]["completed_at"],
    }
    order = eventually(lambda: (o := shop.http.get(f"/orders/{order_id}").json())["webhook_delivered_at"] and o)
    assert order["webhook_attempts"] == 1 and order["webhook_last_error"] is None

    # Completing it again changes nothing and sends nothing.
    assert shop.http.post(f"/orders/{order_id}/complete").json()["order"]["completed_at"] == order["completed_at"]
    assert shop.http.post("/orders/999999/complete").status_code == 404


def test_ids_and_limits_beyond_sqlite_integers_are_a_422_not_a_500(shop: Shop) -> None:
    """SQLite integers are 64-bit: a larger order id or ``max_errors`` made the query raise OverflowError (a
    500, found by schemathesis). The app declares the range, so the schema shows it and the server refuses
    the value with a 422."""
    status_url = shop.http.post("/import", files={"file": ("p.csv", b"sku,name,price,stock\n")}).json()["status_url"]
    import_id = follow(shop, status_url)["result"]["import_id"]
    for url in (
        "/orders/210869809585473248559104",
        "/orders/9223372036854775808/complete",
        f"/imports/{import_id}?max_errors=9223372036854775808",
    ):
        response = shop.http.get(url) if "complete" not in url else shop.http.post(url)
        assert response.status_code == 422, (url, response.text)
    assert shop.http.get("/orders/9223372036854775807").status_code == 404  # the largest id is a valid one


def test_receiver_rejects_wrong_signatures_with_401(shop: Shop) -> None:
    body = json.dumps({"event": "order.completed", "delivery_id": "forged-1", "order": {"id": 1}}).encode()
    for signature in (None, "sha256=" + "0" * 64, sign(body, "another-secret"), sign(body + b" "), "md5=abc"):
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Shop-Signature"] = signature
        response = shop.http.post("/webhooks/receiver", content=body, headers=headers)
        assert (response.status_code, response.json()) == (401, {"detail": "Invalid signature"}), signature

    genuine = json.dumps({"event": "order.completed", "delivery_id": "manual-1", "order": {"id": 7}}).encode()
    headers = {"Content-Type": "application/json", "X-Shop-Signature": sign(genuine)}
    first = shop.http.post("/webhooks/receiver", content=genuine, headers=headers)
    assert first.json() == {"status": "received", "delivery_id": "manual-1", "attempt": 1}
    second = shop.http.post("/webhooks/receiver", content=genuine, headers=headers)
    assert second.json() == {"status": "duplicate", "delivery_id": "manual-1", "attempt": 2}

    ids = [item["delivery_id"] for item in shop.http.get("/webhooks/received").json()]
    assert "manual-1" in ids and "forged-1" not in ids


def test_webhook_to_a_flaky_receiver_is_retried_until_delivered(shop: Shop) -> None:
    order_id = create_order(shop, f"{shop.url}/webhooks/receiver?fail_times=2")
    assert shop.http.post(f"/orders/{order_id}/complete").status_code == 200

    received = eventually(lambda: delivery(shop, order_id), what="the retried webhook delivery")
    assert received["attempts"] == 3  # two 503s, then accepted
    order = eventually(lambda: (o := shop.http.get(f"/orders/{order_id}").json())["webhook_delivered_at"] and o)
    assert order["webhook_attempts"] == 3 and order["webhook_last_error"] is None


def test_webhook_that_never_gets_through_is_recorded_as_failed(shop: Shop) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    order_id = create_order(shop, nowhere)
    assert shop.http.post(f"/orders/{order_id}/complete").status_code == 200

    def exhausted() -> dict[str, Any] | None:
        order = shop.http.get(f"/orders/{order_id}").json()
        return order if order["webhook_attempts"] == 4 and order["webhook_last_error"] else None

    shop.expected_task_failures += 1  # the final failure is logged at ERROR with its traceback
    order = eventually(exhausted, what="1 attempt and 3 retries")  # SHOP_WEBHOOK_RETRIES=3
    assert order["webhook_delivered_at"] is None
    assert order["webhook_last_error"].startswith("ConnectError")
    eventually(
        lambda: (
            f"Background task order-webhook failed (request POST /orders/{order_id}/complete)" in shop.server.output()
        ),
        what="the final failure in the log",
    )


# --- views and stats ---------------------------------------------------------------------------------------
def test_product_views_are_counted_in_the_background(shop: Shop) -> None:
    created = shop.http.post("/products", json={"id": "VIEW-1", "name": "Lamp", "price": 9.99, "stock": 3})
    assert created.status_code == 201
    assert created.json() == {"id": "VIEW-1", "name": "Lamp", "price": "9.99", "stock": 3}
    for _ in range(3):
        assert shop.http.get("/products/VIEW-1").json()["name"] == "Lamp"
    assert shop.http.get("/products/VIEW-404").status_code == 404  # raised before add_task: not counted

    stats = eventually(
        lambda: (s := shop.http.get("/stats").json())["product_views"].get("VIEW-1") == 3 and s,
        what="3 views of VIEW-1",
    )
    assert "VIEW-404" not in stats["product_views"]
    assert stats["task_backend"] == "inprocess"
    background = stats["background"]
    assert background["succeeded"] >= 3 and background["scheduled"] >= 3
    assert set(background) >= {"scheduled", "queued", "running", "succeeded", "failed", "retried", "dropped"}

    for price in (1.234, "1e30", "92233720368547758.08"):  # the last one is 2**63 cents: beyond 64-bit integers
        invalid = shop.http.post("/products", json={"id": "VIEW-2", "name": "Lamp", "price": price})
        assert invalid.status_code == 422, (price, invalid.text)
        assert invalid.json()["errors"] == [
            {
                "loc": ["body", "price"],
                "msg": "Expected a non-negative amount with at most 2 decimals",
                "type": "value_error",
            }
        ]
    too_many = shop.http.post("/products", json={"id": "VIEW-2", "name": "Lamp", "price": 1, "stock": 2**63})
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["loc"] == ["body", "stock"]


# --- a real SMTP host instead of the built-in one ------------------------------------------------------------
class Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 OK"


def test_shop_smtp_host_sends_through_that_server(tmp_path: Path) -> None:
    collect = Collect()
    port = free_port()
    smtp = Controller(collect, hostname="127.0.0.1", port=port, server_hostname="relay.test")
    smtp.start()
    running = Shop(tmp_path, SHOP_SMTP_HOST="127.0.0.1", SHOP_SMTP_PORT=str(port))
    try:
        assert running.http.post("/signup", json={"email": "lin@example.com", "name": "Lin"}).status_code == 201
        rcpts, content = eventually(lambda: collect.messages and collect.messages[0], what="the relayed email")
        assert rcpts == ["lin@example.com"]
        assert b"Subject: Welcome to the shop, Lin!" in content
        assert running.mails() == []  # no built-in mailbox server in this mode
        running.stop()
    finally:
        running.server.stop()
        smtp.stop()


# --- durable mode: Redis + an RQ worker ----------------------------------------------------------------------
def test_durable_mode_tasks_run_in_a_tachyon_worker(tmp_path: Path, redis_url: str) -> None:
    running = Shop(
        tmp_path,
        SHOP_TASK_BACKEND="rq",
        SHOP_REDIS_URL=redis_url,
        SHOP_QUEUE=f"shop-{uuid.uuid4().hex[:8]}",
        SHOP_WEBHOOK_RETRY_DELAY="0",  # RQ retries with a delay need a worker --with-scheduler
    )
    try:
        assert running.http.post("/signup", json={"email": "carol@example.com", "name": "Carol"}).status_code == 201
        order_id = create_order(running, f"{running.url}/webhooks/receiver?fail_times=1")
        assert running.http.post(f"/orders/{order_id}/complete").status_code == 200
        files = {"file": ("p.csv", products_csv(1200, {}), "text/csv")}
        imported = running.http.post("/import", files=files)
        assert imported.status_code == 202
        status_url = imported.json()["status_url"]
        assert status_url == f"/tasks/{imported.json()['id']}"  # the id is the RQ job's id
        assert running.http.get(status_url).json()["state"] == "queued"

        stats = running.http.get("/stats").json()
        assert stats["task_backend"] == "rq"
        assert stats["durable"]["queued"] == 3  # stored in Redis before the responses were sent
        assert stats["background"]["scheduled"] == 0  # nothing runs in the web process
        assert running.mails() == []

        with open(tmp_path / "worker.log", "w+b") as log:
            worker = subprocess.run(
                [sys.executable, "-m", "tachyon_api", "worker", APP, "--burst"],
                cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(ROOT), **running.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
            log.seek(0)
            output = log.read().decode(errors="replace")
        assert worker.returncode == 0, output

        message = running.wait_for_mail("carol@example.com", "Welcome to the shop, Carol!")
        assert "carol@example.com" in message.get_content()
        received = delivery(running, order_id)
        assert received is not None and received["attempts"] == 2, output  # one 503, one RQ retry
        stats = running.http.get("/stats").json()
        assert stats["durable"]["queued"] == 0 and stats["durable"]["failed"] == 0
        assert stats["durable"]["finished"] == 3
        record = running.http.get(status_url).json()  # progress and result, written by the worker
        assert record["state"] == "succeeded" and record["progress"] == {"done": 1.0, "message": "1,200 of 1,200 rows"}
        assert record["result"]["imported_rows"] == 1200
        running.stop()
    finally:
        running.server.stop()


# --- PostgreSQL: the shop's data and its tasks in one database, run by procrastinate's worker -------------------
def burst_worker(shop: Shop) -> str:
    """``tachyon worker --burst`` with the shop's settings, until no job is due; what it printed."""
    worker = subprocess.run(
        [sys.executable, "-m", "tachyon_api", "worker", APP, "--burst"],
        cwd=shop.data.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT), **shop.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    return worker.stdout + worker.stderr


def jobs(shop: Shop, task: str) -> list[dict[str, Any]]:
    """The jobs of one of the shop's task functions in procrastinate's table: status and arguments."""
    return shop.query(
        "SELECT status::text AS status, args FROM procrastinate_jobs WHERE task_name = %s ORDER BY id",
        f"examples.shop.tasks:{task}",
    )


def test_postgres_mode_keeps_the_data_and_its_tasks_in_one_database(tmp_path: Path, postgres_url: str) -> None:
    running = Shop(tmp_path, SHOP_TASK_BACKEND=postgres_url, SHOP_WEBHOOK_RETRY_DELAY="0")
    try:
        signup = running.http.post("/signup", json={"email": "dave@example.com", "name": "Dave"})
        assert signup.status_code == 201
        user_id = signup.json()["id"]
        # The row and its job, both committed when the 201 was sent; nothing in SQLite.
        assert [row["name"] for row in running.query("SELECT * FROM users WHERE id = %s", user_id)] == ["Dave"]
        assert [(job["status"], job["args"]["args"]) for job in jobs(running, "send_welcome_email")] == [
            ("todo", [user_id])
        ]
        assert not running.db_path.exists()
        assert running.http.post("/reset-password", params={"email": "dave@example.com"}).status_code == 200
        assert len(jobs(running, "send_password_reset")) == 1
        order_id = create_order(running, f"{running.url}/webhooks/receiver?fail_times=1")
        assert running.http.post(f"/orders/{order_id}/complete").status_code == 200
        assert [job["args"]["args"] for job in jobs(running, "send_order_webhook")] == [[order_id]]

        # PostgreSQL refuses a NUL character in a text (SQLite takes it): the client's mistake, a 422, not a 500.
        for response in (
            running.http.get("/products/A%00B"),
            running.http.post("/reset-password", params={"email": "dave@example.com\x00"}),
        ):
            assert response.status_code == 422 and response.json()["code"] == "VALIDATION_ERROR", response.text

        stats = running.http.get("/stats").json()
        assert stats["task_backend"] == "postgres" and stats["totals"]["users"] == 1
        assert stats["durable"]["queued"] == 3
        assert running.mails() == []

        output = burst_worker(running)
        message = running.wait_for_mail("dave@example.com", "Welcome to the shop, Dave!")
        assert "dave@example.com" in message.get_content()
        assert running.query("SELECT welcome_sent_at FROM users WHERE id = %s", user_id)[0]["welcome_sent_at"]
        reset = running.wait_for_mail("dave@example.com", "Reset your password")
        token = re.search(r"Your reset token: (\S+)", reset.get_content())
        assert token is not None
        verified = running.http.post("/reset-password/verify", json={"token": token.group(1)})
        assert verified.status_code == 200 and verified.json()["email"] == "dave@example.com"
        received = delivery(running, order_id)
        assert received is not None and received["attempts"] == 2, output  # one 503, one retry
        stats = running.http.get("/stats").json()
        assert stats["durable"]["queued"] == 0 and stats["durable"]["failed"] == 0
        assert stats["durable"]["finished"] == 3
        running.stop()
    finally:
        running.server.stop()


def test_postgres_mode_a_signup_that_fails_after_its_insert_leaves_neither_user_nor_job(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two failures after the user's row is inserted: the job's insert is refused (a trigger on procrastinate's
    table), and the commit itself fails (a deferred constraint trigger on ``users``). Either way the answer is
    an error, and neither the user nor the welcome job is left: the same address signs up afterwards."""
    import psycopg

    running = Shop(tmp_path, SHOP_TASK_BACKEND=postgres_url)
    try:
        assert running.http.get("/stats").json()["durable"]["queued"] == 0  # the tables exist
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
            )
            conn.execute("CREATE TRIGGER refuse_jobs BEFORE INSERT ON procrastinate_jobs EXECUTE FUNCTION refuse()")
            refused = running.http.post("/signup", json={"email": "erin@example.com", "name": "Erin"})
            assert refused.status_code == 503 and refused.json()["code"] == "TASK_BACKEND_UNAVAILABLE", refused.text
            conn.execute("DROP TRIGGER refuse_jobs ON procrastinate_jobs")

            conn.execute(
                "CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON users DEFERRABLE INITIALLY DEFERRED "
                "FOR EACH ROW WHEN (NEW.email = 'frank@example.com') EXECUTE FUNCTION refuse()"
            )
            running.expected_errors += 1  # a commit that fails is the server's error, logged with its traceback
            failed = running.http.post("/signup", json={"email": "frank@example.com", "name": "Frank"})
            assert failed.status_code == 500 and failed.json()["code"] == "INTERNAL_SERVER_ERROR", failed.text
            conn.execute("DROP TRIGGER refuse_commit ON users")

        assert running.query("SELECT email FROM users") == []
        assert jobs(running, "send_welcome_email") == []
        for name in ("Erin", "Frank"):
            again = running.http.post("/signup", json={"email": f"{name.lower()}@example.com", "name": name})
            assert again.status_code == 201, again.text
        assert [job["status"] for job in jobs(running, "send_welcome_email")] == ["todo", "todo"]
        burst_worker(running)
        for name in ("Erin", "Frank"):
            running.wait_for_mail(f"{name.lower()}@example.com", f"Welcome to the shop, {name}!")
        assert len(running.mails()) == 2
        running.stop()
    finally:
        running.server.stop()


def test_postgres_mode_imports_a_csv_and_its_progress_shows_while_it_runs(tmp_path: Path, postgres_url: str) -> None:
    """The import row commits with its job; the worker writes the progress every 500 rows. The test holds a
    lock on a product of the second chunk, so the import is seen halfway (first chunk committed) until the
    test lets it go on."""
    import psycopg

    running = Shop(tmp_path, SHOP_TASK_BACKEND=postgres_url)
    try:
        product = {"id": "IMP-00600", "name": "Old name", "price": "1.00", "stock": 1}
        assert running.http.post("/products", json=product).status_code == 201
        data = products_csv(1200, {700: "IMP-00700,Broken,x,1"})
        accepted = running.http.post("/import", files={"file": ("catalogue.csv", data, "text/csv")})
        assert accepted.status_code == 202, accepted.text
        (queued,) = running.query("SELECT id, status FROM imports WHERE filename = 'catalogue.csv'")
        assert queued["status"] == "queued"
        assert [job["args"]["args"][0] for job in jobs(running, "import_products_csv")] == [queued["id"]]
        url = f"/imports/{queued['id']}"

        with psycopg.connect(postgres_url) as lock:
            lock.execute("SELECT * FROM products WHERE id = 'IMP-00600' FOR UPDATE")
            worker = subprocess.Popen(
                [sys.executable, "-m", "tachyon_api", "worker", APP, "--burst"],
                cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(ROOT), **running.env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                halfway = eventually(
                    lambda: (i := running.http.get(url).json())["processed_rows"] and i, what="the first chunk"
                )
                assert (halfway["status"], halfway["total_rows"], halfway["processed_rows"]) == ("running", 1200, 500)
                assert running.query("SELECT name FROM products WHERE id = 'IMP-00600'") == [{"name": "Old name"}]
                lock.rollback()  # the second chunk goes on
                output, _ = worker.communicate(timeout=60)
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        assert worker.returncode == 0, output
        result = running.http.get(url).json()
        assert result["status"] == "completed" and result["failure"] is None
        assert (result["total_rows"], result["processed_rows"], result["imported_rows"]) == (1200, 1200, 1199)
        assert result["errors"] == [{"line": 702, "message": "invalid price 'x'"}]
        assert running.query("SELECT count(*) AS n FROM products")[0]["n"] == 1199
        assert running.query("SELECT name FROM products WHERE id = 'IMP-00600'") == [{"name": "Product 600"}]
        running.stop()
    finally:
        running.server.stop()


def test_postgres_mode_the_import_task_status_follows_the_job(tmp_path: Path, postgres_url: str) -> None:
    """The import's status URL (from ``Accepted``) is served from the PostgreSQL tier's status records: queued
    when answered, then succeeded with the task's last progress report and its result once a worker ran it."""
    running = Shop(tmp_path, SHOP_TASK_BACKEND=postgres_url)
    try:
        accepted = running.http.post("/import", files={"file": ("p.csv", products_csv(600, {}), "text/csv")})
        assert accepted.status_code == 202, accepted.text
        status_url = accepted.json()["status_url"]
        assert running.http.get(status_url).json()["state"] == "queued"
        burst_worker(running)
        record = running.http.get(status_url).json()
        assert record["state"] == "succeeded", record
        assert record["progress"] == {"done": 1.0, "message": "600 of 600 rows"}
        assert record["result"]["imported_rows"] == 600
        running.stop()
    finally:
        running.server.stop()


def test_postgres_mode_answers_503_while_the_database_is_down_and_recovers(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    running = Shop(tmp_path, SHOP_TASK_BACKEND=own_postgres.url)
    try:
        assert running.http.post("/signup", json={"email": "gil@example.com", "name": "Gil"}).status_code == 201
        own_postgres.stop()
        down = running.http.post("/signup", json={"email": "hana@example.com", "name": "Hana"})
        assert (down.status_code, down.json()) == (503, {"detail": "The database is unavailable"})
        assert down.headers["retry-after"] == "1"
        own_postgres.start()
        again = running.http.post("/signup", json={"email": "hana@example.com", "name": "Hana"})
        assert again.status_code == 201, again.text  # the pool replaced the connections that died
        assert [row["email"] for row in running.query("SELECT email FROM users ORDER BY id")] == [
            "gil@example.com",
            "hana@example.com",
        ]
        assert len(jobs(running, "send_welcome_email")) == 2
        running.stop()
    finally:
        running.server.stop()

"""Every example of the seed chapter 09-background-tasks.md, code unchanged, over real HTTP.

Each example keeps its promises: the response is sent first (the user does not wait), tasks run in the order
they were added, and a failing task affects neither the response nor the tasks after it. Only the helpers the
chapter leaves to the reader (``generate_reset_token``, ``save_temp_file``...) are written here; the lines
marked "seed, verbatim" are copied from the chapter as they are.
"""

import builtins
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import msgspec
import pytest

from .conftest import CallTimer, serve, timed, wait_until

BG_LOGGER = "tachyon_api.background"


class PrintRecorder:
    """Wraps ``print`` (which the examples call): output still goes to stdout (and capsys), and each printed
    line is timestamped so a test can tell whether it came after the response."""

    def __init__(self, real_print: Callable[..., None]) -> None:
        self.real_print = real_print
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __call__(
        self, *args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
    ) -> None:
        if file is None:
            with self._lock:
                self.lines.append((time.perf_counter(), (" " if sep is None else sep).join(map(str, args))))
        self.real_print(*args, sep=sep, end=end, file=file, flush=flush)

    def texts(self) -> list[str]:
        with self._lock:
            return [line for _, line in self.lines]


@pytest.fixture
def stdout(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[PrintRecorder]:
    recorder = PrintRecorder(builtins.print)
    monkeypatch.setattr(builtins, "print", recorder)
    yield recorder


def sent_time(calls: list[dict[str, Any]], path: str) -> float:
    assert wait_until(lambda: any(c["path"] == path for c in calls), 2)
    return [c for c in calls if c["path"] == path][-1]["sent"]


# --- 🎯 Uso Básico ----------------------------------------------------------------------------------------


def build_basic_app() -> Any:
    # seed, verbatim
    from tachyon_api import Tachyon
    from tachyon_api.background import BackgroundTasks

    app = Tachyon()

    def send_email(to: str, subject: str):
        """Tarea que se ejecuta en background."""
        print(f"Sending email to {to}: {subject}")
        # Lógica de envío...

    @app.post("/signup")
    def signup(background_tasks: BackgroundTasks):
        # Crear usuario...
        user_email = "new@user.com"

        # Programar email para después
        background_tasks.add_task(send_email, user_email, "Welcome!")

        # Respuesta inmediata (email se envía después)
        return {"message": "User created"}

    # end of the seed
    return app


def test_basic_signup_sends_the_email_after_the_response(
    stdout: PrintRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    app = build_basic_app()
    calls: list[dict[str, Any]] = []
    app.add_middleware(CallTimer, calls=calls)
    with serve(app) as url:
        response, elapsed = timed("POST", f"{url}/signup")
        assert response.status_code == 200
        assert response.json() == {"message": "User created"}
        assert elapsed < 0.3
        expected = "Sending email to new@user.com: Welcome!"
        assert wait_until(lambda: expected in stdout.texts(), 2)
        sent = sent_time(calls, "/signup")
    printed_at = [at for at, line in stdout.lines if line == expected]
    assert len(printed_at) == 1 and printed_at[0] >= sent, "the email must go out after the response was sent"
    assert capsys.readouterr().out.count(expected) == 1


# --- 🔄 Tareas Async ----------------------------------------------------------------------------------------


def test_async_upload_responds_immediately_while_processing_runs(
    stdout: PrintRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    from tachyon_api import Tachyon
    from tachyon_api.background import BackgroundTasks

    app = Tachyon(shutdown_timeout=0.3)  # the example takes 5 s; do not wait that long at shutdown

    # seed, verbatim
    import asyncio

    async def process_upload(file_id: str):
        """Procesar archivo de forma asíncrona."""
        await asyncio.sleep(5)  # Simular procesamiento
        print(f"File {file_id} processed")

    @app.post("/upload")
    async def upload(background_tasks: BackgroundTasks):
        file_id = "file_123"

        # Tarea async
        background_tasks.add_task(process_upload, file_id)

        return {"file_id": file_id, "status": "processing"}

    # end of the seed

    with serve(app) as url:
        response, elapsed = timed("POST", f"{url}/upload")
        assert response.json() == {"file_id": "file_123", "status": "processing"}
        assert elapsed < 0.5, "the user must not wait for the 5 s processing"
        assert wait_until(lambda: app.background.stats().running == 1, 1), "processing is running in background"
        assert "File file_123 processed" not in stdout.texts()
    assert any("process_upload" in r.getMessage() and " lost " in r.getMessage() for r in caplog.records)


# --- every other example of the chapter, on one app ------------------------------------------------------------


class Order(msgspec.Struct):
    id: str
    status: str
    webhook_url: str


def build_chapter_app(sink: dict[str, list[Any]], base: dict[str, str], tmp_dir: Path) -> Any:
    from tachyon_api import Tachyon, UploadFile
    from tachyon_api.background import BackgroundTasks

    app = Tachyon()

    # Helpers the chapter leaves to the reader.
    def generate_reset_token(email: str) -> str:
        return f"token-for-{email}"

    def send_reset_email(email: str, token: str) -> None:
        sink["reset_emails"].append((email, token))

    def save_temp_file(file: UploadFile) -> str:
        path = tmp_dir / f"import-{len(sink['imports'])}.csv"
        file.file.seek(0)
        path.write_bytes(file.file.read())
        return str(path)

    def process_csv(file_path: str) -> None:
        import csv

        with open(file_path, newline="") as handle:
            sink["imports"].append(list(csv.DictReader(handle)))

    def complete_order_in_db(order_id: str) -> Order:
        return Order(id=order_id, status="completed", webhook_url=f"{base['url']}/webhook-receiver")

    def send_webhook(url: str, order: Order) -> None:
        httpx.post(url, json=msgspec.to_builtins(order), timeout=5)

    @app.post("/webhook-receiver")
    def webhook_receiver(payload: dict):
        sink["webhooks"].append(payload)
        return {"received": True}

    def fetch_product(product_id: str) -> dict:
        return {"id": product_id, "name": "Widget", "price": 9.5}

    def track_view(product_id: str) -> None:
        sink["views"].append(product_id)

    def log_access() -> None:
        sink["accesses"].append("data")

    # seed, verbatim (📦 Múltiples Tareas)
    def log_action(action: str, user_id: str):
        print(f"[LOG] {user_id}: {action}")

    def update_stats(action: str):
        print(f"[STATS] {action} +1")

    def notify_admins(message: str):
        print(f"[NOTIFY] {message}")

    @app.post("/orders")
    def create_order(background_tasks: BackgroundTasks):
        order_id = "order_123"

        # Múltiples tareas en orden
        background_tasks.add_task(log_action, "order_created", "user_1")
        background_tasks.add_task(update_stats, "orders")
        background_tasks.add_task(notify_admins, f"New order: {order_id}")

        return {"order_id": order_id}

    # seed, verbatim (🔧 Posicionales), in an endpoint of ours
    def task(a, b, c):
        print(a, b, c)

    @app.post("/positional")
    def positional(background_tasks: BackgroundTasks):
        background_tasks.add_task(task, "arg1", "arg2", "arg3")
        return {"ok": True}

    # seed, verbatim (🔧 Keyword Arguments), in an endpoint of ours
    def send_notification(user_id: str, message: str, urgent: bool = False):
        print(f"To {user_id}: {message} (urgent: {urgent})")

    @app.post("/keywords")
    def keywords(background_tasks: BackgroundTasks):
        background_tasks.add_task(send_notification, user_id="123", message="Hello!", urgent=True)
        return {"ok": True}

    # seed, verbatim (⚠️ Manejo de Errores)
    def risky_task():
        raise ValueError("Task failed!")

    def safe_task():
        print("This still runs")

    @app.get("/with-error")
    def endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(risky_task)  # Fallará
        background_tasks.add_task(safe_task)  # Aún se ejecuta

        return {"status": "ok"}  # Response: 200 OK

    # seed, verbatim (safe_wrapper)
    import logging

    logger = logging.getLogger(__name__)

    def safe_wrapper(func, *args, **kwargs):
        try:
            func(*args, **kwargs)
        except Exception as e:
            logger.error("Background task failed: %s", e)

    @app.post("/safe")
    def safe_endpoint(background_tasks: BackgroundTasks):
        background_tasks.add_task(safe_wrapper, risky_task)
        return {"status": "ok"}

    # seed, verbatim (Envío de Emails)
    @app.post("/reset-password")
    def reset_password(email: str, background_tasks: BackgroundTasks):
        token = generate_reset_token(email)
        background_tasks.add_task(send_reset_email, email, token)
        return {"message": "Check your email"}

    # seed, verbatim (Procesamiento de Archivos)
    @app.post("/import")
    async def import_data(file: UploadFile, background_tasks: BackgroundTasks):
        file_path = save_temp_file(file)
        background_tasks.add_task(process_csv, file_path)
        return {"status": "import_started"}

    # seed, verbatim (Webhooks)
    @app.post("/orders/{order_id}/complete")
    def complete_order(order_id: str, background_tasks: BackgroundTasks):
        order = complete_order_in_db(order_id)
        background_tasks.add_task(send_webhook, order.webhook_url, order)
        return {"order": order}

    # seed, verbatim (Analytics)
    @app.get("/products/{product_id}")
    def get_product(product_id: str, background_tasks: BackgroundTasks):
        product = fetch_product(product_id)
        background_tasks.add_task(track_view, product_id)
        return product

    # seed, verbatim (⚡ Opcional con Default)

    @app.get("/data")
    def get_data(background_tasks: BackgroundTasks = None):
        result = {"data": "value"}

        if background_tasks:
            background_tasks.add_task(log_access)

        return result

    # end of the seed
    return app


class Chapter:
    def __init__(self, app: Any, url: str, sink: dict[str, list[Any]], calls: list[dict[str, Any]]) -> None:
        self.app = app
        self.url = url
        self.sink = sink
        self.calls = calls


@pytest.fixture(scope="module")
def chapter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chapter]:
    sink: dict[str, list[Any]] = {"reset_emails": [], "imports": [], "webhooks": [], "views": [], "accesses": []}
    base: dict[str, str] = {}
    calls: list[dict[str, Any]] = []
    app = build_chapter_app(sink, base, tmp_path_factory.mktemp("imports"))
    app.add_middleware(CallTimer, calls=calls)
    with serve(app) as url:
        base["url"] = url
        yield Chapter(app, url, sink, calls)


def settled_stats(chapter: Chapter) -> Any:
    """The runner's counters once the tasks of earlier tests have finished: a test that waited only for a
    task's output could leave its success to be counted after this test's baseline (a flaky off-by-one)."""
    runner = chapter.app.background
    assert wait_until(lambda: runner.unfinished() == [], 5), runner.unfinished()
    return runner.stats()


def test_multiple_tasks_run_in_the_order_added_after_the_response(chapter: Chapter, stdout: PrintRecorder) -> None:
    response, elapsed = timed("POST", f"{chapter.url}/orders")
    assert response.json() == {"order_id": "order_123"}
    assert elapsed < 0.3
    expected = ["[LOG] user_1: order_created", "[STATS] orders +1", "[NOTIFY] New order: order_123"]
    assert wait_until(lambda: len(stdout.lines) >= 3, 2)
    assert stdout.texts() == expected
    sent = sent_time(chapter.calls, "/orders")
    assert all(at >= sent for at, _ in stdout.lines)


def test_positional_arguments(chapter: Chapter, stdout: PrintRecorder) -> None:
    assert httpx.post(f"{chapter.url}/positional").json() == {"ok": True}
    assert wait_until(lambda: stdout.texts() == ["arg1 arg2 arg3"], 2), stdout.texts()


def test_keyword_arguments(chapter: Chapter, stdout: PrintRecorder) -> None:
    assert httpx.post(f"{chapter.url}/keywords").json() == {"ok": True}
    assert wait_until(lambda: stdout.texts() == ["To 123: Hello! (urgent: True)"], 2), stdout.texts()


def test_a_failing_task_affects_neither_the_response_nor_the_next_task(
    chapter: Chapter, stdout: PrintRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=BG_LOGGER)
    before = settled_stats(chapter)
    response = httpx.get(f"{chapter.url}/with-error")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert wait_until(lambda: stdout.texts() == ["This still runs"], 2), stdout.texts()
    assert wait_until(lambda: chapter.app.background.stats().failed == before.failed + 1, 1)
    failures = [r for r in caplog.records if r.name == BG_LOGGER and "risky_task" in r.getMessage()]
    assert len(failures) == 1
    assert "GET" in failures[0].getMessage() and "/with-error" in failures[0].getMessage()
    assert failures[0].exc_info is not None and str(failures[0].exc_info[1]) == "Task failed!"
    # safe_task's line comes before its success is counted
    assert wait_until(lambda: chapter.app.background.stats().succeeded == before.succeeded + 1, 2)


def test_safe_wrapper_logs_the_failure_itself(chapter: Chapter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    before = settled_stats(chapter)
    response = httpx.post(f"{chapter.url}/safe")
    assert response.json() == {"status": "ok"}
    assert wait_until(lambda: chapter.app.background.stats().succeeded == before.succeeded + 1, 2)
    wrapped = [r for r in caplog.records if r.name == __name__]
    assert [r.getMessage() for r in wrapped] == ["Background task failed: Task failed!"]
    assert wrapped[0].levelno == logging.ERROR
    assert chapter.app.background.stats().failed == before.failed, "the wrapper swallowed the error"


def test_reset_password_email(chapter: Chapter) -> None:
    response, elapsed = timed("POST", f"{chapter.url}/reset-password", params={"email": "ana@example.com"})
    assert response.json() == {"message": "Check your email"}
    assert elapsed < 0.3
    assert wait_until(lambda: chapter.sink["reset_emails"] == [("ana@example.com", "token-for-ana@example.com")], 2)
    # email is required: no task for a rejected request
    assert httpx.post(f"{chapter.url}/reset-password").status_code == 422
    time.sleep(0.05)
    assert len(chapter.sink["reset_emails"]) == 1


def test_import_processes_the_uploaded_csv_in_background(chapter: Chapter) -> None:
    content = b"name,qty\napple,3\npear,5\n"
    response = httpx.post(f"{chapter.url}/import", files={"file": ("data.csv", content, "text/csv")})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "import_started"}
    assert wait_until(lambda: len(chapter.sink["imports"]) == 1, 2)
    assert chapter.sink["imports"][0] == [{"name": "apple", "qty": "3"}, {"name": "pear", "qty": "5"}]


def test_webhook_is_sent_after_completing_the_order(chapter: Chapter) -> None:
    response = httpx.post(f"{chapter.url}/orders/o-77/complete")
    assert response.status_code == 200
    hook_url = f"{chapter.url}/webhook-receiver"
    assert response.json() == {"order": {"id": "o-77", "status": "completed", "webhook_url": hook_url}}
    assert wait_until(lambda: len(chapter.sink["webhooks"]) == 1, 3)
    assert chapter.sink["webhooks"][0] == {"id": "o-77", "status": "completed", "webhook_url": hook_url}


def test_analytics_tracks_the_view(chapter: Chapter) -> None:
    response = httpx.get(f"{chapter.url}/products/p-9")
    assert response.json() == {"id": "p-9", "name": "Widget", "price": 9.5}
    assert wait_until(lambda: chapter.sink["views"] == ["p-9"], 2)


def test_optional_default_none_still_gets_tasks(chapter: Chapter) -> None:
    assert httpx.get(f"{chapter.url}/data").json() == {"data": "value"}
    assert wait_until(lambda: chapter.sink["accesses"] == ["data"], 2), "if background_tasks: must be true"
    assert httpx.get(f"{chapter.url}/data").json() == {"data": "value"}
    assert wait_until(lambda: chapter.sink["accesses"] == ["data", "data"], 2)

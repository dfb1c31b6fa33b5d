"""Task statistics, the live dashboard (in a real browser), Prometheus metrics and trace links.

The browser tests drive a headless chromium (the system's, else Playwright's own) with Playwright under
``tachyon run``; a screenshot of each page is kept under ``tests/artifacts/`` when a browser test fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tachyon_api import BackgroundTasks, Depends, HTTPException, Tachyon
from tachyon_api.background import DURATION_BOUNDS, FAILED, SUCCEEDED, RQBackend, TaskMetrics
from tachyon_api.dashboard import task_dashboard
from tachyon_api.metrics import instrument
from tachyon_api.requests import Request

from .conftest import ARTIFACTS, ROOT, client_for, free_port, serve, wait_for_port, wait_until


# --- statistics --------------------------------------------------------------------------------------------
def test_histogram_percentiles_are_within_the_bucket_resolution() -> None:
    metrics = TaskMetrics()
    for ms in range(1, 101):  # 1 ms .. 100 ms, uniform
        metrics.record("t", SUCCEEDED, ms / 1000)
    row = metrics.snapshot()["names"][0]
    assert row["count"] == 100 and row["succeeded"] == 100
    for q, exact in ((50, 0.050), (95, 0.095), (99, 0.099)):
        assert abs(row[f"p{q}"] - exact) / exact < 0.1, (q, row[f"p{q}"])
    assert (metrics.duration_count, metrics.totals[SUCCEEDED]) == (100, 100)


def test_task_names_and_failures_are_bounded() -> None:
    metrics = TaskMetrics(max_names=3, max_failures=2)
    for i in range(10):
        metrics.record(f"name{i}", FAILED, 0.001)
        metrics.failure(f"name{i}", "GET", "/", 1, ValueError(i))
    snapshot = metrics.snapshot()
    assert [r["name"] for r in snapshot["names"]] == ["(other)", "name0", "name1", "name2"]
    assert next(r for r in snapshot["names"] if r["name"] == "(other)")["failed"] == 7
    assert [f["error"] for f in snapshot["failures"]] == ["ValueError: 9", "ValueError: 8"]  # newest first


def test_statistics_can_be_switched_off_and_totals_stay() -> None:
    app = Tachyon(task_statistics=False)

    def job() -> None:
        pass

    @app.post("/job")
    def add(background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(job)
        return {}

    client = client_for(app)
    assert client.post("/job").status_code == 200
    snapshot = app.background.snapshot()
    assert (snapshot["names"], snapshot["running"], snapshot["failures"]) == ([], [], [])
    assert snapshot["totals"]["succeeded"] == 1


def test_snapshot_over_http_counts_outcomes_running_tasks_and_failures() -> None:
    release = threading.Event()
    app = Tachyon()

    def quick() -> None:
        pass

    def broken(order_id: int) -> None:
        raise RuntimeError(f"order {order_id} has no address")

    def stuck() -> None:
        release.wait(10)

    async def flaky_timeout() -> None:
        import asyncio

        await asyncio.sleep(1)

    @app.post("/orders/{order_id}")
    def order(order_id: int, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(quick)
        background_tasks.add_task(broken, order_id).with_options(retries=1, retry_delay=0)
        return {}

    @app.post("/stuck")
    def start_stuck(background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(stuck)
        return {}

    @app.post("/slow")
    def slow(background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(flaky_timeout).with_options(timeout=0.05)
        return {}

    app.include_router(task_dashboard(public=True, prefix="/admin/tasks"))
    with serve(app) as url, httpx.Client(base_url=url) as http:
        for order_id in (1, 2):
            assert http.post(f"/orders/{order_id}").status_code == 200
        assert http.post("/slow").status_code == 200
        assert http.post("/stuck").status_code == 200
        assert wait_until(lambda: http.get("/admin/tasks/data").json()["totals"]["failed"] == 3, 5)
        assert wait_until(lambda: http.get("/admin/tasks/data").json()["running"], 5)
        time.sleep(1.1)
        data = http.get("/admin/tasks/data").json()
        release.set()
    rows = {r["name"].rsplit(".", 1)[-1]: r for r in data["names"]}  # qualified names of local functions
    assert rows["quick"]["succeeded"] == 2 and rows["quick"]["p50"] is not None
    assert (rows["broken"]["failed"], rows["broken"]["retried"], rows["broken"]["count"]) == (2, 2, 4)
    assert rows["flaky_timeout"]["timed_out"] == 1 and rows["flaky_timeout"]["failed"] == 1
    [running] = data["running"]
    assert running["name"].endswith("stuck") and running["path"] == "/stuck" and running["age"] >= 1.0
    failure = next(f for f in data["failures"] if f["name"].endswith("broken"))
    assert failure["method"] == "POST" and failure["path"] in ("/orders/1", "/orders/2")
    assert failure["attempts"] == 2 and "RuntimeError: order" in failure["error"]
    assert "Traceback (most recent call last)" in failure["traceback"] and "in broken" in failure["traceback"]
    assert data["totals"]["failed"] == 3 and data["totals"]["retried"] == 2


# --- the dashboard's guard and its requeue protection --------------------------------------------------------
def test_a_dashboard_without_a_guard_must_be_declared_public() -> None:
    with pytest.raises(ValueError, match="public=True"):
        task_dashboard()
    assert task_dashboard(public=True).prefix == "/tasks"


def admin_only(request: Request) -> None:
    if request.headers.get("x-admin-token") != "s3cret":
        raise HTTPException(401, "Not an admin")


def test_the_guard_covers_every_dashboard_route() -> None:
    app = Tachyon()
    app.include_router(task_dashboard(dependencies=[Depends(admin_only)]))
    client = client_for(app)
    routes = (("GET", "/tasks"), ("GET", "/tasks/data"), ("GET", "/tasks/events"), ("POST", "/tasks/requeue/x"))
    for method, path in routes:
        assert client.request(method, path).status_code == 401, path
    assert client.get("/tasks/data", headers={"x-admin-token": "s3cret"}).status_code == 200


def test_requeue_refuses_cross_site_requests() -> None:
    app = Tachyon()
    app.include_router(task_dashboard(public=True))
    client = client_for(app)
    assert client.post("/tasks/requeue/job1").status_code == 403  # a plain form post: no custom header
    cross = client.post(
        "/tasks/requeue/job1", headers={"x-tachyon-dashboard": "requeue", "origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    same = client.post("/tasks/requeue/job1", headers={"x-tachyon-dashboard": "requeue"})
    assert same.status_code == 404 and "no durable task backend" in same.json()["detail"]
    header = {"x-tachyon-dashboard": "requeue"}
    for origin, status in (
        ("http://testserver", 404),  # this site (the test client's base URL): passes the check
        ("HTTP://TestServer", 404),  # origins compare without case
        ("https://testserver", 403),  # same host, other scheme: another origin
        ("ws://testserver", 403),
        ("http://testserver:8080", 403),
        ("null", 403),
    ):
        answer = client.post("/tasks/requeue/job1", headers={**header, "origin": origin})
        assert answer.status_code == status, origin
    for site, status in (("same-origin", 404), ("same-site", 403), ("cross-site", 403)):
        answer = client.post("/tasks/requeue/job1", headers={**header, "sec-fetch-site": site})
        assert answer.status_code == status, site


# --- Prometheus ------------------------------------------------------------------------------------------------
def test_prometheus_metrics_match_requests_and_tasks() -> None:
    app = Tachyon()

    def fine() -> None:
        pass

    def bad() -> None:
        raise ValueError("bad")

    @app.post("/items/{item_id}")
    def create(item_id: int, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(fine)
        if item_id % 2:
            background_tasks.add_task(bad)
        return {"id": item_id}

    metrics = instrument(app)
    with serve(app) as url, httpx.Client(base_url=url) as http:
        for item_id in range(5):
            assert http.post(f"/items/{item_id}").status_code == 200
        assert http.post("/items/not-a-number").status_code == 404
        for probe in ("/a", "/b", "/c"):  # random URLs share one label value
            assert http.get(probe).status_code == 404
        assert wait_until(lambda: app.background.stats().succeeded + app.background.stats().failed == 7, 5)
        text = http.get("/metrics").text
    assert metrics.registry is not None
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    req = "tachyon_http_requests_total"
    assert samples[(req, (("method", "POST"), ("route", "/items/{item_id}"), ("status", "200")))] == 5
    assert samples[(req, (("method", "POST"), ("route", "/items/{item_id}"), ("status", "404")))] == 1
    assert samples[(req, (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 3
    post_item = (("method", "POST"), ("route", "/items/{item_id}"))
    assert samples[("tachyon_http_request_duration_seconds_count", post_item)] == 6
    fine_name, bad_name = fine.__qualname__, bad.__qualname__
    assert samples[("tachyon_tasks_total", (("name", fine_name), ("outcome", "succeeded")))] == 5
    assert samples[("tachyon_tasks_total", (("name", bad_name), ("outcome", "failed")))] == 2
    assert samples[("tachyon_task_duration_seconds_count", (("name", fine_name),))] == 5
    assert samples[("tachyon_task_duration_seconds_bucket", (("le", "+Inf"), ("name", bad_name)))] == 2
    assert samples[("tachyon_tasks_running", ())] == 0
    buckets = [
        v
        for (name, labels), v in samples.items()
        if name == "tachyon_task_duration_seconds_bucket" and ("name", fine_name) in labels
    ]
    assert buckets == sorted(buckets) and len(buckets) == len(range(0, len(DURATION_BOUNDS), 4)) + 1


# --- trace links -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spans() -> Iterator[Any]:
    """An in-memory span exporter behind the process's tracer provider (which can be set once per process)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the framework's tracer follows it
    yield exporter


def traced_app(**options: Any) -> Tachyon:
    """An app with what OpenTelemetry's ASGI instrumentation does: a span around each request."""
    from opentelemetry import trace

    tracer = trace.get_tracer("test")

    class RequestSpans:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            with tracer.start_as_current_span(f"{scope['method']} {scope['path']}"):
                await self.app(scope, receive, send)

    app = Tachyon(**options)
    app.add_middleware(RequestSpans)
    return app


def test_each_task_runs_in_a_span_linked_to_the_request_span(spans: Any) -> None:
    from opentelemetry import trace

    spans.clear()
    app = traced_app()

    def sync_task() -> None:
        pass

    async def failing_task() -> None:
        raise ValueError("broken")

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(sync_task)
        background_tasks.add_task(failing_task)
        return {}

    with serve(app) as url:
        assert httpx.post(f"{url}/work").status_code == 200
        assert wait_until(lambda: len(spans.get_finished_spans()) == 3, 5)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    request_span = by_name["POST /work"]
    for func in (sync_task, failing_task):
        span = by_name[f"task {func.__qualname__}"]
        assert span.context.trace_id != request_span.context.trace_id  # a trace of its own ...
        assert [link.context.span_id for link in span.links] == [request_span.context.span_id]  # ... linked
        assert span.attributes["tachyon.task.name"] == func.__qualname__
        assert span.attributes["url.path"] == "/work"
    assert by_name[f"task {failing_task.__qualname__}"].status.status_code == trace.StatusCode.ERROR


def test_a_durable_job_continues_the_request_trace_in_the_worker(spans: Any, redis_url: str) -> None:
    """The traceparent travels in the job's meta; RQ's own worker (in this process, to see its spans)
    runs the job with the job class `tachyon worker` uses, in a span whose parent is the request's span."""
    from redis import Redis
    from rq import Queue, SimpleWorker

    from tachyon_api.backends.rq import traced_job_class

    spans.clear()
    backend = RQBackend(redis_url, queue="traced")
    app = traced_app(task_backend=backend)

    @app.post("/reports/{name}")
    def report(name: str, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(durable_report, name)
        return {}

    with serve(app) as url:
        assert httpx.post(f"{url}/reports/q3").status_code == 200
    [request_span] = spans.get_finished_spans()
    connection = Redis.from_url(redis_url)
    [job] = Queue("traced", connection=connection).get_jobs()
    assert job.meta["traceparent"].split("-")[1] == format(request_span.context.trace_id, "032x")
    worker = SimpleWorker([Queue("traced", connection=connection)], connection=connection, job_class=traced_job_class())
    assert worker.work(burst=True)
    job_span = next(s for s in spans.get_finished_spans() if s.name.startswith("task "))
    assert job_span.name == "task durable_report"  # the task name, as the in-process spans have
    assert job_span.context.trace_id == request_span.context.trace_id
    assert job_span.parent.span_id == request_span.context.span_id
    assert job_span.attributes["messaging.message.id"] == job.id
    assert REPORTS == ["q3"]


REPORTS: list[str] = []


def durable_report(name: str) -> None:
    REPORTS.append(name)


# --- the page in a real browser -------------------------------------------------------------------------------
DASHBOARD_APP = """
import os
from tachyon_api import BackgroundTasks, Depends, HTTPException, Tachyon
from tachyon_api.dashboard import task_dashboard
from tachyon_api.requests import Request

app = Tachyon()

def send_invoice(order_id: int):
    raise ConnectionError(f"mail server refused the invoice of order {order_id}")

@app.post("/orders/{order_id}")
def complete(order_id: int, background_tasks: BackgroundTasks):
    background_tasks.add_task(send_invoice, order_id)
    return {"order": order_id}

def admin(request: Request):
    if request.cookies.get("admin") != "yes":
        raise HTTPException(403, "admins only")

app.include_router(task_dashboard(prefix="/admin/tasks", dependencies=[Depends(admin)]))
"""


def test_a_failure_appears_on_the_open_page_without_a_reload(page: Any, serve_process: Any) -> None:
    server = serve_process(DASHBOARD_APP)
    page.context.add_cookies([{"name": "admin", "value": "yes", "url": server.url}])
    page.goto(f"{server.url}/admin/tasks")
    page.wait_for_selector("text=live")
    assert page.locator("#failures").inner_text().strip() == "no failures"
    loads = []
    page.on("load", lambda _: loads.append(1))
    assert httpx.post(f"{server.url}/orders/42").status_code == 200
    started = time.monotonic()
    page.wait_for_selector("text=mail server refused the invoice of order 42", timeout=2000)
    assert time.monotonic() - started < 2.0
    assert loads == []  # updated in place
    page.click("#failures summary")
    assert "Traceback (most recent call last)" in page.locator("#failures pre").inner_text()
    assert "in send_invoice" in page.locator("#failures pre").inner_text()
    cells = page.locator("#names tr").first.locator("td").all_inner_texts()
    assert cells[:3] == ["send_invoice", "0", "1"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)


def test_open_dashboards_share_their_reads_of_redis(redis_url: str) -> None:
    """Five pages listening to the event stream of an app with a durable backend: the queue is read a few
    times per refresh period in all, not once per page and period (which would be 5 x 8 = 40 reads here)."""
    backend = RQBackend(redis_url, queue="dashboard-shared")
    reads = []
    read_stats = backend.stats

    def counted_stats() -> Any:
        reads.append(time.monotonic())
        return read_stats()

    backend.stats = counted_stats  # the real read, counted
    app = Tachyon(task_backend=backend)
    refresh = 0.2
    app.include_router(task_dashboard(prefix="/admin/tasks", public=True, refresh=refresh))
    pages = 5
    events: list[list[str]] = [[] for _ in range(pages)]

    async def listen(url: str, received: list[str]) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            async with client.stream("GET", f"{url}/admin/tasks/events") as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        received.append(line)

    async def listen_for(url: str, received: list[str], seconds: float) -> None:
        try:
            await asyncio.wait_for(listen(url, received), seconds)
        except asyncio.TimeoutError:  # the page is closed
            pass

    with serve(app) as url:
        started = time.monotonic()

        async def open_pages() -> None:
            await asyncio.gather(*(listen_for(url, received, 8 * refresh) for received in events))

        asyncio.run(open_pages())
        elapsed = time.monotonic() - started
    assert all(received and '"durable"' in received[0] for received in events), events
    periods = elapsed / refresh
    assert 1 <= len(reads) <= 2 * periods + 2, (len(reads), periods)


DURABLE_APP = """
import os
from tachyon_api import BackgroundTasks, Tachyon
from tachyon_api.background import RQBackend
from tachyon_api.dashboard import task_dashboard

backend = RQBackend(os.environ["REDIS_URL"], queue=os.environ["QUEUE"])
app = Tachyon(task_backend=backend)
FLAG = os.environ["FLAG"]
OUT = os.environ["OUT"]

def import_file(name: str):
    if not os.path.exists(FLAG):
        raise FileNotFoundError(f"{name} is not uploaded yet")
    with open(OUT, "a") as f:
        f.write(name + "\\n")

@app.post("/imports/{name}")
def start_import(name: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(import_file, name)
    return {"queued": name}

app.include_router(task_dashboard(prefix="/admin/tasks", public=True))
"""


def test_a_failed_durable_job_is_requeued_from_the_page(page: Any, tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "durable_app.py").write_text(DURABLE_APP)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "REDIS_URL": redis_url,
        "QUEUE": "dashboard-test",
        "FLAG": str(tmp_path / "uploaded"),
        "OUT": str(tmp_path / "out.txt"),
    }
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", "run", "durable_app:app", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "tachyon_api", "worker", "durable_app:app"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_for_port(port, 20)
        url = f"http://127.0.0.1:{port}"
        page.goto(f"{url}/admin/tasks")
        page.wait_for_selector("text=Durable queue dashboard-test")
        assert httpx.post(f"{url}/imports/prices.csv").status_code == 200
        page.wait_for_selector("text=prices.csv is not uploaded yet", state="attached", timeout=15000)
        assert "FileNotFoundError" in page.locator("#durable pre").first.text_content()
        page.click("#durable summary")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-durable-failed.png"), full_page=True)
        (tmp_path / "uploaded").touch()
        # The answer, not the button's new label: the page may redraw the list (the job requeued, then run) first.
        with page.expect_response(lambda response: "/requeue/" in response.url) as requeued:
            page.click("#durable button:has-text('Requeue')")
        assert requeued.value.status == 200
        out = tmp_path / "out.txt"  # created by open() before the line is written: wait for the line
        assert wait_until(lambda: out.exists() and out.read_text().endswith("\n"), 15)
        assert out.read_text() == "prices.csv\n"
        page.wait_for_selector("text=no failed jobs", timeout=5000)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


# --- bounds and promises of the metrics (each test kills a mutant the suite let live) -------------------------
def _samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_task_names_are_capped_in_statistics_and_metrics_over_http() -> None:
    """Task names built from request data (5,000 characters each here) are cut to 100 characters in the
    dashboard's snapshot and in /metrics, so a scrape cannot be made as large as a client wants."""
    from tachyon_api.background import MAX_NAME_LENGTH

    app = Tachyon()

    def job() -> None:
        pass

    @app.post("/import")
    def start_import(source: str, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(job).with_options(name=f"import:{source}")
        return {}

    instrument(app)
    with serve(app) as url, httpx.Client(base_url=url) as http:
        for i in range(20):
            assert http.post("/import", params={"source": f"{i}-" + "x" * 5000}).status_code == 200
        assert wait_until(lambda: app.background.stats().succeeded == 20, 5)
        text = http.get("/metrics").text
    names = {dict(labels)["name"] for (metric, labels) in _samples(text) if metric == "tachyon_tasks_total"}
    assert len(names) == 20 and all(len(name) == MAX_NAME_LENGTH and name.endswith("...") for name in names)
    assert len(text) < 20 * 40 * 300  # 20 names of ~40 series each, every line well under 300 bytes
    rows = app.background.snapshot()["names"]
    assert sorted(row["name"] for row in rows) == sorted(names)


def test_metrics_route_is_guarded_by_its_dependencies() -> None:
    def admin(request: Request) -> None:
        if request.headers.get("x-admin") != "yes":
            raise HTTPException(403, "admins only")

    app = Tachyon()
    instrument(app, dependencies=[Depends(admin)])
    with serve(app) as url:
        assert httpx.get(url + "/metrics").status_code == 403
        guarded = httpx.get(url + "/metrics", headers={"X-Admin": "yes"})
        assert guarded.status_code == 200 and "tachyon_http_requests" in guarded.text


def test_a_failing_app_is_counted_as_500() -> None:
    """A middleware inside the metrics one fails before any answer: the server answers 500, and so do the
    metrics (never the 200 a default status would claim)."""

    class Broken:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/boom":
                raise RuntimeError("broken middleware")
            await self.app(scope, receive, send)

    app = Tachyon()

    @app.get("/boom")
    def boom() -> dict:
        return {}

    app.add_middleware(Broken)  # added first: inside the metrics middleware
    instrument(app)
    with serve(app) as url:
        assert httpx.get(url + "/boom").status_code == 500
        samples = _samples(httpx.get(url + "/metrics").text)
    assert samples[("tachyon_http_requests_total", (("method", "GET"), ("route", "/boom"), ("status", "500")))] == 1
    assert ("tachyon_http_requests_total", (("method", "GET"), ("route", "/boom"), ("status", "200"))) not in samples


def test_the_inf_bucket_counts_every_observation() -> None:
    """Durations above the largest bound count in ``+Inf`` only, which equals ``_count`` (HTTP and tasks)."""
    app = Tachyon()
    metrics = instrument(app, path=None)
    metrics.observe("GET", "/slow", 200, 0.0001)
    metrics.observe("GET", "/slow", 200, 99.0)  # above the 10 s bound
    app.background.metrics.record("slow_task", SUCCEEDED, 0.001)
    app.background.metrics.record("slow_task", SUCCEEDED, 10_000.0)  # above every task bound
    samples = _samples(metrics.render().decode())
    http_labels = (("method", "GET"), ("route", "/slow"))
    assert samples[("tachyon_http_request_duration_seconds_bucket", (("le", "10.0"), *http_labels))] == 1
    assert samples[("tachyon_http_request_duration_seconds_bucket", (("le", "+Inf"), *http_labels))] == 2
    assert samples[("tachyon_http_request_duration_seconds_count", http_labels)] == 2
    task_labels = (("name", "slow_task"),)
    task_buckets = [
        v
        for (name, labels), v in samples.items()
        if name == "tachyon_task_duration_seconds_bucket" and ("name", "slow_task") in labels
    ]
    assert max(task_buckets) == 2 and sorted(task_buckets)[-2] == 1
    assert samples[("tachyon_task_duration_seconds_bucket", (("le", "+Inf"), *task_labels))] == 2
    assert samples[("tachyon_task_duration_seconds_count", task_labels)] == 2


def test_open_dashboard_pages_share_their_reads() -> None:
    """Data younger than half a refresh period is shared by every page: a change made 0.2 s after a read is
    not fetched again for a 2 s period, and is once the half period (1 s) has passed."""
    from tachyon_api.dashboard import _SharedData

    app = Tachyon()
    shared = _SharedData(2.0)

    async def reads() -> tuple[bytes, bytes, bytes]:
        first = await shared.get(app)
        app.background.metrics.record("changed", SUCCEEDED, 0.001)
        await asyncio.sleep(0.2)
        second = await shared.get(app)
        await asyncio.sleep(1.1)
        return first, second, await shared.get(app)

    first, second, third = asyncio.run(reads())
    assert second == first  # shared
    assert b"changed" not in second and b"changed" in third  # fetched again after refresh / 2

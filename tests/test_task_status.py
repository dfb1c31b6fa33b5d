"""Tasks you can hold, in-process: Accepted, the status routes, the event stream, cancellation, ownership,
over real HTTP to uvicorn (and, for several web processes, ``tachyon run`` processes sharing a Redis)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Iterator

import httpx
import pytest

from tachyon_api import Depends, Header, Tachyon
from tachyon_api.background import BackgroundTasks
from tachyon_api.responses import Accepted
from tachyon_api.tasks import MemoryTaskStore, cancelled, report_progress, task_status_router

from .conftest import assert_error_shape, serve, wait_until

FINAL = ("succeeded", "failed", "cancelled")


class Events:
    """An SSE client in a thread: collects the records of ``url``'s event stream until it ends."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, headers or {}), daemon=True)
        self._thread.start()

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", url, headers=headers, timeout=30) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.records.append(json.loads(line[6:]))
                    elif line.startswith("id: "):
                        self.ids.append(line[4:])
        finally:
            self.ended.set()

    def wait(self, timeout: float = 10) -> list[dict[str, Any]]:
        assert self.ended.wait(timeout), f"the stream did not end; got {self.records}"
        return self.records


def states(records: list[dict[str, Any]]) -> list[str]:
    collapsed: list[str] = []
    for record in records:
        if not collapsed or collapsed[-1] != record["state"]:
            collapsed.append(record["state"])
    return collapsed


def user(x_user: str | None = Header(None)) -> str | None:
    """The guard: the principal named by the request (a stand-in for real authentication)."""
    return x_user


class Gates:
    """Thread events a test opens to let its tasks go on, with a record of what the tasks did."""

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}
        self.log: list[str] = []

    def __getitem__(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())


def make_app(gates: Gates, **options: Any) -> Tachyon:
    app = Tachyon(**options)
    app.include_router(task_status_router(prefix="/tasks", dependencies=[Depends(user)]))

    def blocker() -> None:
        gates["blocker"].wait(30)

    def importer(rows: int) -> dict[str, int]:
        report_progress(0.0, "starting")
        gates["started"].set()
        gates["half"].wait(30)
        report_progress(0.5, f"{rows // 2} of {rows}")
        gates["finish"].wait(30)
        report_progress(1.0, f"{rows} of {rows}")
        gates.log.append("imported")
        return {"imported": rows}

    def failing() -> None:
        raise ValueError("row 7 is broken")

    async def sleeper() -> None:
        try:
            gates["started"].set()
            await asyncio.sleep(30)
            gates.log.append("slept")
        finally:
            gates.log.append("finally")

    def after() -> None:
        gates.log.append("after")

    def cooperative() -> None:
        gates["started"].set()
        for step in range(3000):
            if cancelled():
                gates.log.append(f"stopped at {step}")
                return
            time.sleep(0.01)
        gates.log.append("ran to the end")

    def stubborn() -> str:
        gates["started"].set()
        gates["finish"].wait(30)
        gates.log.append("stubborn done")
        return "done"

    def run_later() -> None:
        gates.log.append("queued task ran")

    @app.post("/block")
    def block(background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(blocker)
        return {}

    @app.post("/import")
    def start_import(background_tasks: BackgroundTasks, principal: str | None = Depends(user)):
        task = background_tasks.add_task(importer, 100).with_options(keep_result=True, owner=principal)
        return Accepted(task)

    @app.post("/fail")
    def start_failing(background_tasks: BackgroundTasks):
        return Accepted(background_tasks.add_task(failing))

    @app.post("/sleep")
    async def start_sleep(background_tasks: BackgroundTasks):
        task = background_tasks.add_task(sleeper)
        background_tasks.add_task(after)
        return Accepted(task)

    @app.post("/cooperative")
    def start_cooperative(background_tasks: BackgroundTasks):
        return Accepted(background_tasks.add_task(cooperative))

    @app.post("/stubborn")
    def start_stubborn(background_tasks: BackgroundTasks):
        return Accepted(background_tasks.add_task(stubborn).with_options(keep_result=True))

    @app.post("/later")
    def start_later(background_tasks: BackgroundTasks):
        return Accepted(background_tasks.add_task(run_later))

    return app


@pytest.fixture
def gates() -> Iterator[Gates]:
    found = Gates()
    yield found
    for event in found.events.values():  # never leave a task waiting in a thread
        event.set()


def record(url: str, location: str, **headers: str) -> dict[str, Any]:
    response = httpx.get(url + location, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


def test_accepted_then_queued_running_progress_events_and_the_result(gates: Gates) -> None:
    app = make_app(gates, background_concurrency=1)
    with serve(app) as url:
        httpx.post(f"{url}/block").raise_for_status()  # the only slot is busy: the import waits in the queue
        accepted = httpx.post(f"{url}/import", headers={"x-user": "ada"})
        assert accepted.status_code == 202
        body = accepted.json()
        assert set(body) == {"id", "status_url"} and len(body["id"]) == 32
        assert accepted.headers["location"] == body["status_url"] == f"/tasks/{body['id']}"
        queued = record(url, body["status_url"], **{"x-user": "ada"})
        assert queued["state"] == "queued" and queued["attempts"] == 0 and queued["started_at"] is None
        assert queued["name"] == "make_app.<locals>.importer"

        events = Events(f"{url}{body['status_url']}/events", {"x-user": "ada"})
        assert wait_until(lambda: events.records)  # connected while the task waits in the queue
        gates["blocker"].set()
        assert gates["started"].wait(10)
        assert wait_until(lambda: record(url, body["status_url"], **{"x-user": "ada"})["state"] == "running")
        gates["half"].set()
        assert wait_until(lambda: any(r["progress"]["done"] == 0.5 for r in events.records))
        gates["finish"].set()
        seen = events.wait()

    assert events.status == 200 and events.content_type.startswith("text/event-stream")
    assert seen[0]["state"] == "queued"  # a client that connects first gets the record as it is
    assert states(seen) == ["queued", "running", "succeeded"]
    done = [r["progress"]["done"] or 0.0 for r in seen]
    assert 0.5 in done and done == sorted(done)
    assert seen[-1]["result"] == {"imported": 100} and seen[-1]["error"] is None
    assert seen[-1]["progress"] == {"done": 1.0, "message": "100 of 100"}
    assert seen[-1]["attempts"] == 1 and seen[-1]["ended_at"] >= seen[-1]["started_at"] >= seen[-1]["created_at"]
    assert events.ids == [str(n) for n in range(1, len(seen) + 1)]


def test_a_failing_task_ends_failed_with_its_error_and_no_traceback(gates: Gates, caplog: Any) -> None:
    app = make_app(gates)
    with serve(app) as url:
        accepted = httpx.post(f"{url}/fail").json()
        assert wait_until(lambda: record(url, accepted["status_url"])["state"] == "failed")
        failed = record(url, accepted["status_url"])
        late = Events(f"{url}{accepted['status_url']}/events").wait()
    assert failed["error"] == {"type": "ValueError", "message": "row 7 is broken"}
    assert failed["result"] is None and "Traceback" not in json.dumps(failed)
    assert [r["state"] for r in late] == ["failed"]  # a late client gets the final record, then the end
    assert any("row 7 is broken" in str(r.exc_info) for r in caplog.records if r.name == "tachyon_api.background")


def test_cancel_a_queued_task_it_never_runs(gates: Gates) -> None:
    app = make_app(gates, background_concurrency=1)
    with serve(app) as url:
        httpx.post(f"{url}/block").raise_for_status()
        accepted = httpx.post(f"{url}/later").json()
        response = httpx.delete(url + accepted["status_url"])
        assert response.status_code == 202 and response.json()["state"] == "cancelled"
        gates["blocker"].set()
        assert wait_until(lambda: app.background.idle)
        assert record(url, accepted["status_url"])["state"] == "cancelled"
        again = httpx.delete(url + accepted["status_url"])
        assert_error_shape(again, {409}, "TASK_FINISHED")
        stats = app.background.stats()
    assert "queued task ran" not in gates.log
    assert stats.cancelled == 1 and stats.failed == 0


def test_cancel_a_running_async_task_runs_its_finally_and_the_next_task(gates: Gates) -> None:
    from tachyon_api.metrics import instrument

    app = make_app(gates)
    instrument(app)
    with serve(app) as url:
        accepted = httpx.post(f"{url}/sleep").json()
        assert gates["started"].wait(10)
        assert record(url, accepted["status_url"])["state"] == "running"
        events = Events(f"{url}{accepted['status_url']}/events")
        assert wait_until(lambda: events.records)
        response = httpx.delete(url + accepted["status_url"])
        assert response.status_code == 202
        seen = events.wait()
        assert wait_until(lambda: "after" in gates.log)
        stats = app.background.stats()
        metrics = httpx.get(f"{url}/metrics").text
    assert 'tachyon_tasks_total{name="make_app.<locals>.sleeper",outcome="cancelled"} 1.0' in metrics
    assert states(seen) == ["running", "cancelled"]
    assert seen[-1]["error"] is None and seen[-1]["ended_at"] is not None
    assert gates.log == ["finally", "after"]  # cancelled in its await; the batch went on with the next task
    assert (stats.cancelled, stats.failed, stats.succeeded) == (1, 0, 1)


def test_cancel_a_running_sync_task_cooperatively(gates: Gates) -> None:
    app = make_app(gates)
    with serve(app) as url:
        accepted = httpx.post(f"{url}/cooperative").json()
        assert gates["started"].wait(10)
        assert httpx.delete(url + accepted["status_url"]).status_code == 202
        assert wait_until(lambda: record(url, accepted["status_url"])["state"] == "cancelled", 10)
    assert len(gates.log) == 1 and gates.log[0].startswith("stopped at")


def test_a_sync_task_that_never_looks_runs_to_its_end_and_says_so(gates: Gates) -> None:
    app = make_app(gates)
    with serve(app) as url:
        accepted = httpx.post(f"{url}/stubborn").json()
        assert gates["started"].wait(10)
        assert httpx.delete(url + accepted["status_url"]).status_code == 202
        gates["finish"].set()
        assert wait_until(lambda: record(url, accepted["status_url"])["state"] in FINAL)
        final = record(url, accepted["status_url"])
    assert gates.log == ["stubborn done"]
    assert final["state"] == "succeeded" and final["result"] == "done"


def test_unknown_expired_and_other_owners_ids_get_the_same_404(gates: Gates) -> None:
    app = make_app(gates, task_store=MemoryTaskStore(ttl=0.3))
    with serve(app) as url:
        mine = httpx.post(f"{url}/import", headers={"x-user": "ada"}).json()  # runs until the test ends
        expired = httpx.post(f"{url}/fail").json()
        assert wait_until(lambda: httpx.get(url + expired["status_url"]).json().get("state") == "failed")
        time.sleep(0.4)  # the failed task's record expires (ttl=0.3); an unfinished one never does
        other = {"x-user": "bob"}
        answers = []
        for location, headers in (
            ("/tasks/" + "0" * 32, {}),
            (expired["status_url"], {}),
            (mine["status_url"], other),
            (mine["status_url"], {}),
        ):
            for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
                response = httpx.request(method, f"{url}{location}{suffix}", headers=headers)
                assert_error_shape(response, {404}, "TASK_NOT_FOUND")
                answers.append(response.content)
        assert len(set(answers)) == 1
        assert record(url, mine["status_url"], **{"x-user": "ada"})["state"] == "running"
        gates["half"].set()
        gates["finish"].set()


def test_the_router_needs_a_guard_unless_public() -> None:
    with pytest.raises(ValueError, match="public=True"):
        task_status_router()
    app = Tachyon()
    app.include_router(task_status_router(public=True, prefix="/jobs"))

    def noop() -> None:
        pass

    @app.post("/go")
    def go(background_tasks: BackgroundTasks):
        return Accepted(background_tasks.add_task(noop))

    with serve(app) as url:
        accepted = httpx.post(f"{url}/go")
        assert accepted.headers["location"].startswith("/jobs/")
        assert wait_until(lambda: httpx.get(url + accepted.headers["location"]).json()["state"] == "succeeded")


def test_a_finished_stream_tells_a_reconnecting_browser_to_stop(gates: Gates) -> None:
    app = make_app(gates)
    with serve(app) as url:
        accepted = httpx.post(f"{url}/fail").json()
        assert wait_until(lambda: record(url, accepted["status_url"])["state"] == "failed")
        again = httpx.get(f"{url}{accepted['status_url']}/events", headers={"last-event-id": "3"})
    assert again.status_code == 204


def test_fire_and_forget_tasks_get_no_record_unless_the_app_keeps_them_all() -> None:
    seen: list[str | None] = []

    def note() -> None:
        pass

    for keep_all in (False, True):
        app = Tachyon(task_status=keep_all)

        @app.post("/plain")
        def plain(background_tasks: BackgroundTasks) -> dict:
            task = background_tasks.add_task(note)
            seen.append(task._id)  # not read: no id made
            return {}

        with serve(app) as url:
            httpx.post(f"{url}/plain").raise_for_status()
            assert wait_until(lambda app=app: app.background.stats().succeeded == 1)
        assert len(app.tasks.store) == (1 if keep_all else 0)
    assert seen == [None, None]


# --- the dashboard: ids and cancellation ------------------------------------------------------------------
DASHBOARD_APP = """
import asyncio
from tachyon_api import BackgroundTasks, Tachyon
from tachyon_api.dashboard import task_dashboard

app = Tachyon(task_status=True)
app.include_router(task_dashboard(prefix="/admin/tasks", public=True))
LOG = []

async def rebuild_index(name: str):
    try:
        await asyncio.sleep(60)
    finally:
        LOG.append("stopped")

@app.post("/rebuild")
def rebuild(background_tasks: BackgroundTasks):
    background_tasks.add_task(rebuild_index, "products")
    return {}

@app.get("/log")
def log():
    return LOG
"""


def test_the_dashboard_shows_the_running_task_id_and_cancels_it(page: Any, serve_process: Any) -> None:
    server = serve_process(DASHBOARD_APP)
    page.goto(f"{server.url}/admin/tasks")
    page.wait_for_selector("text=live")
    assert httpx.post(f"{server.url}/rebuild").status_code == 200
    button = page.locator("#running button:has-text('Cancel')")
    button.wait_for(timeout=5000)
    task_id = button.get_attribute("data-task")
    assert task_id and len(task_id) == 32 and task_id in page.locator("#running").inner_text()
    button.click()
    page.wait_for_selector("text=nothing running", timeout=5000)
    assert httpx.get(f"{server.url}/log").json() == ["stopped"]
    totals = page.locator("#totals").inner_text()
    assert "1\ncancelled" in totals
    page.wait_for_selector("#names td:has-text('rebuild_index')")
    cells = page.locator("#names tr").first.locator("td").all_inner_texts()
    assert cells[:7] == ["rebuild_index", "0", "0", "0", "0", "0", "1"]


def test_the_dashboard_cancel_button_refuses_cross_site_requests_and_unknown_ids() -> None:
    from tachyon_api.dashboard import task_dashboard

    from .conftest import client_for

    app = Tachyon()
    app.include_router(task_dashboard(public=True))
    client = client_for(app)
    assert client.post("/tasks/cancel/abc").status_code == 403  # a plain form post: no custom header
    header = {"x-tachyon-dashboard": "cancel"}
    assert client.post("/tasks/cancel/abc", headers={**header, "origin": "https://evil.example"}).status_code == 403
    assert_error_shape(client.post("/tasks/cancel/abc", headers=header), {404}, "TASK_NOT_FOUND")


def test_a_delayed_task_is_scheduled_then_runs_and_one_cancelled_never_runs() -> None:
    app = Tachyon()
    app.include_router(task_status_router(public=True))
    ran: list[str] = []

    def note(tag: str) -> None:
        ran.append(tag)

    @app.post("/later/{tag}")
    def later(tag: str, delay: float, background_tasks: BackgroundTasks):
        return Accepted(background_tasks.add_task(note, tag).with_options(delay=delay))

    with serve(app) as url:
        soon = httpx.post(f"{url}/later/soon", params={"delay": 0.3}).json()["status_url"]
        never = httpx.post(f"{url}/later/never", params={"delay": 30}).json()["status_url"]
        assert record(url, soon)["state"] == "scheduled" and record(url, never)["state"] == "scheduled"
        cancelled = httpx.delete(url + never)
        assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
        assert wait_until(lambda: record(url, soon)["state"] == "succeeded")
        assert wait_until(lambda: app.background.stats().delayed == 0)  # taken off its timer, not left waiting
        stats = app.background.stats()
    assert ran == ["soon"] and (stats.cancelled, stats.succeeded) == (1, 1)


def test_a_task_that_succeeds_on_its_retry_keeps_no_error_from_the_failed_attempt() -> None:
    """A record's error is written only when it changes at an attempt's end: the retry's success must still
    clear the first attempt's error (sync on the loop with retries, and async)."""
    app = Tachyon()
    app.include_router(task_status_router(prefix="/tasks", public=True))
    calls = {"sync": 0, "async": 0}

    def flaky_sync() -> str:
        calls["sync"] += 1
        if calls["sync"] == 1:
            raise ValueError("first attempt fails")
        return "ok"

    async def flaky_async() -> str:
        calls["async"] += 1
        if calls["async"] == 1:
            raise ValueError("first attempt fails")
        return "ok"

    @app.post("/flaky/{kind}")
    def start(kind: str, background_tasks: BackgroundTasks):
        func = flaky_sync if kind == "sync" else flaky_async
        return Accepted(background_tasks.add_task(func).with_options(retries=1, retry_delay=0.01, keep_result=True))

    with serve(app) as url:
        for kind in ("sync", "async"):
            accepted = httpx.post(f"{url}/flaky/{kind}").json()
            assert wait_until(lambda: record(url, accepted["status_url"])["state"] in FINAL)  # noqa: B023
            done = record(url, accepted["status_url"])
            assert (done["state"], done["attempts"], done["error"], done["result"]) == ("succeeded", 2, None, "ok")

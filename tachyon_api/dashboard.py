"""A live task dashboard: in-process tasks and the durable queue of the app's task backend (Redis or PostgreSQL),
on one page.

``task_dashboard(...)`` returns a :class:`~tachyon_api.routing.Router` the app includes wherever it likes. It
is off until included, and it refuses to be built without a guard (a dependency that rejects strangers)
unless ``public=True`` says so explicitly: task names, request paths and tracebacks are internal details.

Routes, relative to the router's prefix:

- ``GET /`` (the prefix itself): the page. Server-rendered HTML with its CSS and JavaScript inline (no build step,
  no CDN, so it works on an air-gapped host); it updates itself from the event stream without a reload.
- ``GET /data``: the same data as JSON, for scripts.
- ``GET /events``: Server-Sent Events, one ``data:`` line of that JSON whenever it changes (checked every
  ``refresh`` seconds) and a comment line every 15 s to keep proxies from closing an idle stream. The open
  pages of one app share the reads: the data is fetched at most twice per ``refresh`` period however many
  pages are open (with a durable backend, each fetch reads Redis).
- ``POST /requeue/{job_id}``: put a failed RQ job back on its queue. Only accepted with the header
  ``X-Tachyon-Dashboard: requeue``, which a cross-site form cannot set, and only from the page's own origin:
  when the browser says where the request comes from (``Sec-Fetch-Site``, ``Origin``), it must be this site,
  scheme and host included. The origin check holds even if the app's CORS middleware lets other sites send
  custom headers. Behind a proxy that terminates TLS, run uvicorn with ``--proxy-headers`` (and
  ``--forwarded-allow-ips``) so the app sees the scheme the browser used.
- ``POST /cancel/{task_id}``: cancel a task by its id (``app.tasks.cancel``): a running in-process task that has
  a status record, or a durable job. The same header (``X-Tachyon-Dashboard: cancel``) and origin checks.

The page shows the ids of the tasks it lists (running in-process tasks that have a status record, running
durable jobs, failures), so an operator can find a task a client asks about, and cancel it.
"""

from __future__ import annotations

import asyncio
import html
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from .concurrency import run_in_threadpool
from .dependencies import Depends
from .exceptions import HTTPException
from .requests import Request
from .responses import HTMLResponse, StreamingResponse
from .routing import Router

__all__ = ["task_dashboard", "dashboard_data"]

_KEEPALIVE_SECONDS = 15.0


async def dashboard_data(app: Any) -> dict[str, Any]:
    """The dashboard's data for ``app``: the runner's snapshot, the periodic jobs, plus the durable queue when
    there is one."""
    data: dict[str, Any] = app.background.snapshot()
    scheduler = getattr(app, "scheduler", None)
    data["periodic"] = await scheduler.snapshot() if scheduler is not None else []
    backend = getattr(app, "task_backend", None)
    if backend is not None and hasattr(backend, "failed_jobs"):
        try:
            counts, running, failed = await run_in_threadpool(
                lambda: (backend.stats(), backend.started_jobs(50), backend.failed_jobs(50))
            )
        except Exception as exc:  # Redis down: the in-process view still works, and says why the rest is missing
            data["durable"] = {"queue": backend.queue_name, "error": f"{type(exc).__name__}: {exc}"}
        else:
            data["durable"] = {"queue": backend.queue_name, "counts": counts, "running": running, "failed": failed}
    return data


def task_dashboard(
    *,
    prefix: str = "/tasks",
    dependencies: Sequence[Depends] | None = None,
    public: bool = False,
    refresh: float = 1.0,
    title: str = "Tasks",
) -> Router:
    """The dashboard's routes under ``prefix``, guarded by ``dependencies`` (for example an admin check).

    Raises ``ValueError`` without ``dependencies`` unless ``public=True``: exposing it to everyone must be a
    decision, never an accident.
    """
    if not dependencies and not public:
        raise ValueError(
            "task_dashboard() needs dependencies=[Depends(your_admin_check)] to guard it; "
            "pass public=True to expose it without a guard on purpose"
        )
    router = Router(prefix=prefix, dependencies=dependencies)
    page = _PAGE.replace("{{title}}", html.escape(title)).encode()
    shared = _SharedData(refresh)

    @router.get("/", include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return HTMLResponse(page)

    @router.get("/data", include_in_schema=False)
    async def dashboard_json(request: Request) -> dict[str, Any]:
        return await dashboard_data(request.app)

    @router.get("/events", include_in_schema=False)
    async def dashboard_events(request: Request) -> StreamingResponse:
        return StreamingResponse(
            _events(request.app, shared, refresh),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @router.post("/requeue/{job_id}", include_in_schema=False)
    async def dashboard_requeue(job_id: str, request: Request) -> dict[str, Any]:
        _check_action(request, "requeue")
        backend = getattr(request.app, "task_backend", None)
        if backend is None or not hasattr(backend, "requeue"):
            raise HTTPException(404, "This app has no durable task backend")
        if not await run_in_threadpool(backend.requeue, job_id):
            raise HTTPException(404, f"No failed job {job_id!r}")
        return {"requeued": job_id}

    @router.post("/cancel/{task_id}", include_in_schema=False)
    async def dashboard_cancel(task_id: str, request: Request) -> dict[str, Any]:
        _check_action(request, "cancel")
        if not await request.app.tasks.cancel(task_id):  # TaskNotFound: the framework's 404
            raise HTTPException(409, "The task has already finished")
        return {"cancelled": task_id}

    return router


def _check_action(request: Request, action: str) -> None:
    """A button of the page, not a cross-site form: the custom header, and the page's own origin."""
    if request.headers.get("x-tachyon-dashboard") != action:
        raise HTTPException(403, f"Missing the X-Tachyon-Dashboard: {action} header")
    if not _same_origin(request):
        raise HTTPException(403, "Cross-origin requests are refused")


def _same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (or another scheme or port)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    if origin is None:  # not sent by browsers for this site's own GETs, nor by scripts and curl
        return True
    url = request.url
    return origin.lower() == f"{url.scheme}://{url.netloc}".lower()


class _SharedData:
    """The event streams' data, fetched once for every open page of an app, and fetched again only when it is
    older than half a ``refresh`` period: ten open pages must not read Redis ten times a second. A page
    therefore sees a change at most 1.5 periods late, and an app's dashboard reads at most twice a period."""

    def __init__(self, refresh: float) -> None:
        self._max_age = refresh / 2
        self._latest: weakref.WeakKeyDictionary[Any, tuple[float, asyncio.Future[bytes]]] = weakref.WeakKeyDictionary()

    async def get(self, app: Any) -> bytes:
        loop = asyncio.get_running_loop()
        now = loop.time()
        latest = self._latest.get(app)
        if latest is None or now - latest[0] > self._max_age or latest[1].get_loop() is not loop:
            latest = self._latest[app] = (now, loop.create_task(self._fetch(app)))
        # shielded: one page closing while the read is in flight must not cancel it for the others
        return await asyncio.shield(latest[1])

    @staticmethod
    async def _fetch(app: Any) -> bytes:
        data = await dashboard_data(app)
        for row in data["running"]:  # ages change every second; round them so an idle page stays quiet
            row["age"] = round(row["age"])
        return msgspec.json.encode(data)


async def _events(app: Any, shared: _SharedData, refresh: float) -> AsyncIterator[bytes]:
    """Send the data when it changed; endless: StreamingResponse stops it when the client disconnects."""
    last = b""
    quiet = 0.0
    while True:
        body = await shared.get(app)
        if body != last:
            last, quiet = body, 0.0
            yield b"data: " + body + b"\n\n"
        elif quiet >= _KEEPALIVE_SECONDS:
            quiet = 0.0
            yield b": keep-alive\n\n"
        await asyncio.sleep(refresh)
        quiet += refresh


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1f24;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 .2rem}h2{font-size:1.05rem;margin:1.4rem 0 .4rem}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:.3rem .6rem;border-bottom:1px solid #e3e3e3;
text-align:left;vertical-align:top}th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.totals{display:flex;flex-wrap:wrap;gap:.6rem}.totals div{background:#fff;border:1px solid #e3e3e3;padding:.4rem .7rem}
.totals b{display:block;font-size:1.2rem}.bad{color:#b00020}.muted{color:#777}
pre{white-space:pre-wrap;margin:.3rem 0 0;font-size:12px;background:#f6f6f6;padding:.4rem;max-height:18rem;
overflow:auto}
#status{font-size:12px}button{cursor:pointer}
</style></head>
<body>
<h1>{{title}}</h1><div id="status" class="muted">connecting...</div>
<h2>Totals</h2><div class="totals" id="totals"></div>
<h2>By task name</h2><table><thead><tr><th>name</th><th>succeeded</th><th>failed</th><th>retried</th>
<th>timed out</th><th>dropped</th><th>cancelled</th><th>p50</th><th>p95</th><th>p99</th></tr></thead>
<tbody id="names"></tbody></table>
<h2>Running now</h2><table><thead><tr><th>name</th><th>request</th><th>attempt</th><th>age</th><th>id</th></tr></thead>
<tbody id="running"></tbody></table>
<h2>Delayed</h2><table><thead><tr><th>name</th><th>request</th><th>due</th></tr></thead>
<tbody id="delayed"></tbody></table>
<h2>Periodic jobs</h2><table><thead><tr><th>name</th><th>schedule</th><th>last run</th><th>last outcome</th>
<th>next run</th><th>runs here</th><th>skipped</th><th>missed</th><th>held here</th></tr></thead>
<tbody id="periodic"></tbody></table>
<h2>Recent failures</h2><div id="failures"></div>
<div id="durable"></div>
<script>
"use strict";
const base = location.pathname.replace(/\\/$/, "");
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
function ms(s) {
  return s === null || s === undefined ? "-" : s < 1 ? (s * 1000).toFixed(1) + " ms" : s.toFixed(2) + " s";
}
function row(cells) {
  const tr = el("tr"); for (const [v, cls] of cells) tr.append(el("td", String(v), cls)); return tr;
}
function note(text, span) {
  const tr = el("tr"); const td = el("td", text, "muted"); td.colSpan = span; tr.append(td); return tr;
}
function cancelButton(id) {
  const b = el("button", "Cancel"); b.dataset.task = id;
  b.onclick = async (ev) => { ev.preventDefault(); b.disabled = true;
    const r = await fetch(base + "/cancel/" + encodeURIComponent(id),
                          {method: "POST", headers: {"X-Tachyon-Dashboard": "cancel"}});
    b.textContent = r.ok ? "cancelling" : "failed: " + r.status; };
  return b;
}
function idCell(id) {
  const td = el("td"); if (!id) { td.textContent = "-"; td.className = "muted"; return td; }
  td.append(el("code", id + " "), cancelButton(id)); return td;
}
function failureBlock(f) {
  const d = el("details"); const s = el("summary");
  s.append(el("b", f.name + " "), el("span", f.error, "bad"), el("code", f.id ? " " + f.id : "", "muted"),
           el("span", "  " + f.method + " " + f.path + ", attempts " + f.attempts + ", " +
              new Date(f.time * 1000).toLocaleTimeString(), "muted"));
  d.append(s, el("pre", f.traceback)); return d;
}
function render(data) {
  const t = $("totals"); t.replaceChildren();
  const keys = ["scheduled", "delayed", "queued", "running", "succeeded", "failed", "retried", "timed_out", "dropped",
                "cancelled"];
  for (const k of keys) {
    const box = el("div", k.replace("_", " ")); box.prepend(el("b", String(data.totals[k]))); t.append(box); }
  $("names").replaceChildren(...data.names.map((r) => row([[r.name], [r.succeeded, "n"],
    [r.failed, r.failed ? "n bad" : "n"], [r.retried, "n"], [r.timed_out, "n"], [r.dropped, "n"],
    [r.cancelled, "n"], [ms(r.p50), "n"], [ms(r.p95), "n"], [ms(r.p99), "n"]])));
  $("running").replaceChildren(...data.running.map((r) => { const tr = row([[r.name], [r.method + " " + r.path],
    [r.attempt, "n"], [r.age.toFixed(0) + " s", "n"]]); tr.append(idCell(r.id)); return tr; }));
  if (!data.running.length) $("running").append(note("nothing running", 5));
  if (!data.names.length) $("names").append(note("no task has run yet", 10));
  $("delayed").replaceChildren(...data.delayed.map((d) => row([[d.name], [d.method + " " + d.path], [d.due]])));
  if (!data.delayed.length) $("delayed").append(note("no task waits for its time", 3));
  $("periodic").replaceChildren(...data.periodic.map((p) => row([[p.name], [p.schedule], [p.last_run || "-"],
    [p.last_outcome || "-", p.last_outcome === "failed" || p.last_outcome === "lost" ? "bad" : ""], [p.next_run],
    [p.runs, "n"], [p.skipped, "n"], [p.missed, p.missed ? "n bad" : "n"], [p.held_here ? "yes" : "no"]])));
  if (!data.periodic.length) $("periodic").append(note("no periodic jobs", 9));
  $("failures").replaceChildren(...data.failures.map(failureBlock));
  if (!data.failures.length) $("failures").append(el("p", "no failures", "muted"));
  const dv = $("durable"); dv.replaceChildren();
  if (data.durable) {
    dv.append(el("h2", "Durable queue " + data.durable.queue));
    if (data.durable.error) { dv.append(el("p", data.durable.error, "bad")); return; }
    const c = el("div"); c.className = "totals";
    for (const [k, v] of Object.entries(data.durable.counts)) {
      const box = el("div", k); box.prepend(el("b", String(v))); c.append(box);
    }
    const running = el("table"); running.id = "durable-running";
    for (const job of data.durable.running) {
      const tr = row([[job.name]]); tr.append(idCell(job.id)); running.append(tr);
    }
    if (!data.durable.running.length) running.append(note("no job running", 2));
    dv.append(c, el("h2", "Running jobs"), running, el("h2", "Failed jobs"));
    if (!data.durable.failed.length) dv.append(el("p", "no failed jobs", "muted"));
    for (const job of data.durable.failed) {
      const d = el("details"); const s = el("summary"); const b = el("button", "Requeue");
      b.dataset.job = job.id;
      b.onclick = async (ev) => { ev.preventDefault(); b.disabled = true;
        const r = await fetch(base + "/requeue/" + encodeURIComponent(job.id),
                              {method: "POST", headers: {"X-Tachyon-Dashboard": "requeue"}});
        b.textContent = r.ok ? "requeued" : "failed: " + r.status; };
      s.append(el("b", job.name + " "), el("span", job.id + " ", "muted"), b);
      d.append(s, el("pre", job.exc_info || "")); dv.append(d);
    }
  }
}
function connect() {
  const source = new EventSource(base + "/events");
  source.onopen = () => { $("status").textContent = "live"; };
  source.onmessage = (ev) => { render(JSON.parse(ev.data));
    $("status").textContent = "live, updated " + new Date().toLocaleTimeString(); };
  source.onerror = () => { $("status").textContent = "disconnected, retrying..."; };
}
connect();
</script></body></html>
"""

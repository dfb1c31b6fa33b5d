"""Sync endpoints, dependencies and exception handlers run in a thread pool, never on the event loop.

Timing tests run over real uvicorn: an endpoint blocking the loop would serialise the requests.
"""

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tachyon_api import Depends, Tachyon
from tachyon_api.responses import JSONResponse
from tachyon_api.testing import AsyncTachyonTestClient

from .conftest import client_for, serve, timed

SLEEP = 0.3


def has_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Boom(Exception):
    pass


def build_app() -> Tachyon:
    app = Tachyon()

    @app.get("/sleep")
    def sleepy():
        time.sleep(SLEEP)
        return {"slept": True}

    def slow_dependency():
        time.sleep(SLEEP)
        return "dep"

    @app.get("/sleepy-dep")
    async def sleepy_dep(value: str = Depends(slow_dependency)):
        return {"value": value}

    @app.exception_handler(Boom)
    def slow_handler(request, exc):
        time.sleep(SLEEP)
        return JSONResponse({"handled": True}, 409)

    @app.get("/sleepy-handler")
    async def sleepy_handler():
        raise Boom()

    @app.get("/ping")
    async def ping():
        return "pong"

    return app


def concurrent_gets(url: str, n: int) -> tuple[float, list[httpx.Response]]:
    with httpx.Client(timeout=5) as warm:
        warm.get(url.rsplit("/", 1)[0] + "/ping")  # connection set up and pool threads out of the picture
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(lambda _: timed("GET", url)[0], range(n)))
    return time.perf_counter() - start, responses


def test_sync_endpoints_run_concurrently_over_uvicorn():
    with serve(build_app()) as url:
        elapsed, responses = concurrent_gets(f"{url}/sleep", 3)
    assert [r.json() for r in responses] == [{"slept": True}] * 3
    assert elapsed < 0.75, f"3 x {SLEEP}s sync endpoints took {elapsed:.2f}s: they ran one after another"


async def test_endpoint_pool_grows_for_work_submitted_together_while_a_worker_is_idle():
    """Blocking calls handed over in the same loop iteration each get a thread, even if one thread is idle.

    This is what happens under a server when several requests' bytes arrive together. The calls go to the
    app's ``endpoint_pool`` directly, which makes the interleaving deterministic.
    """
    app = build_app()
    async with AsyncTachyonTestClient(app) as client:
        assert (await client.get("/sleep")).json() == {"slept": True}  # the pool now has one idle worker
    start = time.perf_counter()
    await asyncio.gather(*(app.endpoint_pool.run(time.sleep, SLEEP) for _ in range(4)))
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"4 blocking {SLEEP}s calls took {elapsed:.2f}s: they queued behind the idle worker"


def test_async_endpoint_answers_while_sync_endpoints_sleep():
    with serve(build_app()) as url:
        with httpx.Client(timeout=5) as warm:
            warm.get(f"{url}/ping")
        with ThreadPoolExecutor(4) as pool:
            slow_started = time.perf_counter()
            slow = [pool.submit(timed, "GET", f"{url}/sleep") for _ in range(3)]
            time.sleep(0.05)  # the three sleeps are under way
            ping, ping_elapsed = timed("GET", f"{url}/ping")
            ping_done_at = time.perf_counter() - slow_started
            results = [f.result()[0] for f in slow]
    assert ping.json() == "pong"
    assert ping_elapsed < 0.2, f"/ping took {ping_elapsed:.2f}s while sync endpoints slept"
    assert ping_done_at < SLEEP, "the ping must finish before the sleeping requests"
    assert all(r.status_code == 200 for r in results)


def test_sync_dependencies_run_concurrently_over_uvicorn():
    with serve(build_app()) as url:
        elapsed, responses = concurrent_gets(f"{url}/sleepy-dep", 3)
    assert [r.json() for r in responses] == [{"value": "dep"}] * 3
    assert elapsed < 0.75, f"3 x {SLEEP}s sync dependencies took {elapsed:.2f}s"


def test_sync_exception_handlers_run_concurrently_over_uvicorn():
    with serve(build_app()) as url:
        elapsed, responses = concurrent_gets(f"{url}/sleepy-handler", 3)
    assert [(r.status_code, r.json()) for r in responses] == [(409, {"handled": True})] * 3
    assert elapsed < 0.75, f"3 x {SLEEP}s sync exception handlers took {elapsed:.2f}s"


def test_sync_callables_run_in_worker_threads_not_the_loop_thread():
    seen: dict[str, tuple[threading.Thread, bool]] = {}
    app = Tachyon()

    def sync_dep():
        seen["dependency"] = (threading.current_thread(), has_running_loop())
        return 1

    async def async_dep():
        seen["async_dependency"] = (threading.current_thread(), has_running_loop())
        return 2

    @app.exception_handler(Boom)
    def sync_handler(request, exc):
        seen["handler"] = (threading.current_thread(), has_running_loop())
        return JSONResponse({"handled": True}, 400)

    @app.on_event("startup")
    def sync_startup():
        seen["startup"] = (threading.current_thread(), has_running_loop())

    @app.get("/sync")
    def sync_endpoint(a: int = Depends(sync_dep), b: int = Depends(async_dep)):
        seen["endpoint"] = (threading.current_thread(), has_running_loop())
        return a + b

    @app.get("/async")
    async def async_endpoint():
        seen["loop"] = (threading.current_thread(), has_running_loop())
        return "ok"

    @app.get("/boom")
    def boom():
        raise Boom()

    with serve(app) as url, httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/async").json() == "ok"
        assert client.get("/sync").json() == 3
        boom_response = client.get("/boom")
        assert boom_response.status_code == 400
        assert boom_response.json() == {"handled": True}

    loop_thread, loop_running = seen["loop"]
    assert loop_running
    assert seen["async_dependency"] == (loop_thread, True)
    for name in ("endpoint", "dependency", "handler", "startup"):
        thread, running = seen[name]
        assert thread is not loop_thread, f"sync {name} ran on the event loop thread"
        assert thread is not threading.main_thread()
        assert not running, f"sync {name} ran with an event loop running in its thread"


def test_sync_endpoint_off_loop_with_test_client():
    seen = {}
    app = Tachyon()

    @app.get("/sync")
    def sync_endpoint():
        seen["sync"] = threading.current_thread()
        return has_running_loop()

    @app.get("/async")
    async def async_endpoint():
        seen["async"] = threading.current_thread()
        return has_running_loop()

    client = client_for(app)
    assert client.get("/sync").json() is False
    assert client.get("/async").json() is True
    assert seen["sync"] is not seen["async"]


def test_sync_to_thread_false_runs_a_def_endpoint_on_the_loop_per_route_and_app_wide():
    """The explicit opt-in: per route, and app-wide with a per-route way back to the thread."""
    seen: dict[str, bool] = {}
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

    def mark(name: str) -> dict:
        seen[name] = has_running_loop()
        return {"on_loop": seen[name]}

    app = Tachyon()

    @app.get("/inline/{n}", sync_to_thread=False)
    def inline(n: int, q: str = "x"):
        request_id.set(f"r{n}")  # set on the loop, in the request's own context: later code sees it as is
        return {**mark("inline"), "n": n, "q": q}

    @app.get("/threaded")
    def threaded():
        return mark("threaded")

    on_loop = Tachyon(sync_to_thread=False)

    @on_loop.get("/inline")
    def app_inline():
        return mark("app-inline")

    @on_loop.get("/threaded", sync_to_thread=True)
    def app_threaded():
        return mark("app-threaded")

    with serve(app) as url, httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/inline/7?q=y").json() == {"on_loop": True, "n": 7, "q": "y"}
        assert client.get("/inline/x").status_code == 404  # the plan still validates
        assert client.get("/threaded").json() == {"on_loop": False}
    with serve(on_loop) as url, httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/inline").json() == {"on_loop": True}
        assert client.get("/threaded").json() == {"on_loop": False}
    assert seen == {"inline": True, "threaded": False, "app-inline": True, "app-threaded": False}
    assert request_id.get() == "-"  # the request's context, not the test's


def test_sync_to_thread_false_blocks_the_loop_as_documented():
    """The danger of the opt-in, measured: a blocking inline endpoint holds up an async one."""
    app = Tachyon()

    @app.get("/block", sync_to_thread=False)
    def block():
        time.sleep(SLEEP)
        return {"slept": True}

    @app.get("/ping")
    async def ping():
        return "pong"

    with serve(app) as url:
        with httpx.Client(timeout=5) as warm:
            warm.get(f"{url}/ping")
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(httpx.get, f"{url}/block", timeout=5)
            time.sleep(0.05)
            start = time.perf_counter()
            assert httpx.get(f"{url}/ping", timeout=5).json() == "pong"
            waited = time.perf_counter() - start
            assert slow.result().json() == {"slept": True}
    assert waited > SLEEP / 2, f"/ping answered in {waited:.2f}s although the loop was blocked"

"""Lifecycle: on_event startup/shutdown handlers, the lifespan context, app.state, order and failures."""

import asyncio
import contextlib
import threading

import httpx
import pytest

from tachyon_api import Request, Tachyon
from tachyon_api.testing import AsyncTachyonTestClient

from .conftest import client_for, serve


def test_on_event_sync_and_async_handlers_run_in_order():
    events = []
    app = Tachyon()

    @app.on_event("startup")
    def start_sync():
        events.append("startup-sync")

    @app.on_event("startup")
    async def start_async():
        await asyncio.sleep(0)
        events.append("startup-async")

    @app.on_event("shutdown")
    async def stop_async():
        events.append("shutdown-async")

    @app.on_event("shutdown")
    def stop_sync():
        events.append("shutdown-sync")

    @app.get("/events")
    def get_events():
        return list(events)

    assert events == []
    with client_for(app) as client:
        assert events == ["startup-sync", "startup-async"]
        assert client.get("/events").json() == ["startup-sync", "startup-async"]
    assert events == ["startup-sync", "startup-async", "shutdown-async", "shutdown-sync"]


def test_on_event_returns_function_unchanged():
    app = Tachyon()

    def handler():
        pass

    assert app.on_event("startup")(handler) is handler
    assert app.on_event("shutdown")(handler) is handler


@pytest.mark.parametrize("name", ["start", "Startup", "", "teardown", "lifespan"])
def test_invalid_event_name_raises_value_error(name):
    app = Tachyon()
    with pytest.raises(ValueError):
        app.on_event(name)(lambda: None)
    with pytest.raises(ValueError):
        app.add_event_handler(name, lambda: None)


def test_no_lifespan_without_context_manager():
    started = []
    app = Tachyon()

    @app.on_event("startup")
    def start():
        started.append(True)

    @app.get("/x")
    def x():
        return "x"

    client = client_for(app)  # not used as a context manager: no lifespan
    assert client.get("/x").json() == "x"
    assert started == []


def test_lifespan_receives_the_app_and_sets_state():
    seen = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        seen["app"] = app
        app.state.db = {"connected": True}
        yield
        app.state.db["connected"] = False
        seen["closed"] = True

    app = Tachyon(lifespan=lifespan)

    @app.get("/db")
    def db(request: Request):
        return request.app.state.db

    with client_for(app) as client:
        assert seen["app"] is app
        assert client.get("/db").json() == {"connected": True}
        assert "closed" not in seen
    assert seen["closed"] is True
    assert app.state.db == {"connected": False}


def test_lifespan_yielding_dict_populates_state():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield {"greeting": "hello", "number": 7}

    app = Tachyon(lifespan=lifespan)
    with client_for(app):
        assert app.state.greeting == "hello"
        assert app.state.number == 7


def test_lifespan_as_plain_async_generator_function():
    events = []

    async def lifespan(app):
        events.append(("enter", app))
        yield
        events.append(("exit", app))

    app = Tachyon(lifespan=lifespan)
    with client_for(app):
        assert events == [("enter", app)]
    assert events == [("enter", app), ("exit", app)]


def test_state_is_an_attribute_bag():
    app = Tachyon()
    app.state.counter = 1
    app.state.counter += 1
    assert app.state.counter == 2
    with pytest.raises(AttributeError):
        _ = app.state.missing


def test_order_startup_lifespan_shutdown():
    events = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("lifespan-enter")
        yield
        events.append("lifespan-exit")

    app = Tachyon(lifespan=lifespan)

    @app.on_event("startup")
    def first_start():
        events.append("startup-1")

    @app.on_event("startup")
    async def second_start():
        events.append("startup-2")

    @app.on_event("shutdown")
    def first_stop():
        events.append("shutdown-1")

    @app.on_event("shutdown")
    async def second_stop():
        events.append("shutdown-2")

    @app.get("/")
    def root():
        events.append("request")
        return "ok"

    with client_for(app) as client:
        client.get("/")
    assert events == [
        "startup-1",
        "startup-2",
        "lifespan-enter",
        "request",
        "lifespan-exit",
        "shutdown-1",
        "shutdown-2",
    ]


def test_shutdown_handlers_run_even_if_lifespan_exit_raises():
    events = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("enter")
        yield
        events.append("exit-raising")
        raise RuntimeError("lifespan exit failed")

    app = Tachyon(lifespan=lifespan)

    @app.on_event("shutdown")
    def stop_one():
        events.append("shutdown-1")

    @app.on_event("shutdown")
    async def stop_two():
        events.append("shutdown-2")

    with pytest.raises(RuntimeError), client_for(app):
        pass
    assert events == ["enter", "exit-raising", "shutdown-1", "shutdown-2"]


def test_all_shutdown_handlers_run_even_if_one_raises():
    events = []
    app = Tachyon()

    @app.on_event("shutdown")
    def broken():
        events.append("broken")
        raise ValueError("first handler failed")

    @app.on_event("shutdown")
    def after():
        events.append("after")

    with pytest.raises(RuntimeError, match="first handler failed"), client_for(app):
        pass
    assert events == ["broken", "after"]


def test_startup_failure_is_reported():
    app = Tachyon()

    @app.on_event("startup")
    def broken():
        raise RuntimeError("cannot start")

    with pytest.raises(RuntimeError, match="cannot start"), client_for(app):
        pass


def test_lifespan_enter_failure_is_reported():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        raise ConnectionError("db down")
        yield  # pragma: no cover

    app = Tachyon(lifespan=lifespan)
    with pytest.raises(Exception, match="db down"), client_for(app):
        pass


async def test_async_client_with_lifespan():
    events = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("enter")
        app.state.ready = True
        yield
        events.append("exit")

    app = Tachyon(lifespan=lifespan)

    @app.on_event("shutdown")
    async def stop():
        events.append("shutdown")

    @app.get("/ready")
    async def ready(request: Request):
        return {"ready": request.app.state.ready}

    async with AsyncTachyonTestClient(app, lifespan=True) as client:
        assert events == ["enter"]
        assert (await client.get("/ready")).json() == {"ready": True}
    assert events == ["enter", "exit", "shutdown"]


async def test_async_client_without_lifespan_does_not_start():
    events = []
    app = Tachyon()

    @app.on_event("startup")
    def start():
        events.append("startup")

    @app.get("/x")
    async def x():
        return 1

    async with AsyncTachyonTestClient(app) as client:
        assert (await client.get("/x")).json() == 1
    assert events == []


def test_lifecycle_under_real_uvicorn():
    events = []
    seen = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        seen["lifespan_app"] = app
        events.append("lifespan-enter")
        app.state.resource = "open"
        yield
        app.state.resource = "closed"
        events.append("lifespan-exit")

    app = Tachyon(lifespan=lifespan)

    @app.on_event("startup")
    def startup():
        events.append("startup")

    @app.on_event("shutdown")
    async def shutdown():
        events.append("shutdown")

    @app.get("/resource")
    async def resource(request: Request):
        return {"resource": request.app.state.resource, "events": list(events)}

    with serve(app) as url:
        response = httpx.get(f"{url}/resource")
        assert response.json() == {"resource": "open", "events": ["startup", "lifespan-enter"]}
    assert seen["lifespan_app"] is app
    assert events == ["startup", "lifespan-enter", "lifespan-exit", "shutdown"]
    assert app.state.resource == "closed"


def test_lifespan_exit_failure_under_uvicorn_still_runs_shutdown_handlers():
    events = []
    done = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        events.append("lifespan-exit")
        raise RuntimeError("exit failed")

    app = Tachyon(lifespan=lifespan)

    @app.on_event("shutdown")
    def shutdown():
        events.append("shutdown")
        done.set()

    @app.get("/ok")
    def ok():
        return "ok"

    with serve(app) as url:
        assert httpx.get(f"{url}/ok").json() == "ok"
    assert done.is_set()
    assert events == ["lifespan-exit", "shutdown"]


GC_APP = """
import gc
from tachyon_api import Tachyon

app = Tachyon({options})
BUILT_AT_IMPORT = [object()]  # alive for the whole process, like a route table or a connection pool


@app.get("/gc")
def gc_state():
    per_request = [object()]
    tracked = gc.get_objects()  # frozen objects are out of the collector's lists
    return {{
        "frozen": gc.get_freeze_count(),
        "import_object_scanned": any(obj is BUILT_AT_IMPORT for obj in tracked),
        "request_object_scanned": any(obj is per_request for obj in tracked),
    }}
"""


@pytest.mark.parametrize("options, frozen", [("", True), ("gc_freeze=False", False)])
def test_objects_alive_at_startup_leave_the_collectors_full_scans_unless_turned_off(serve_process, options, frozen):
    """Under a real server, the objects alive after startup are frozen (so a full collection, which holds the GIL,
    no longer scans them: it was the p99 of `def` endpoints), while what a request makes is still collected."""
    server = serve_process(GC_APP.format(options=options))
    state = httpx.get(f"{server.url}/gc", timeout=10).json()
    assert state["request_object_scanned"] is True
    assert state["import_object_scanned"] is (not frozen)
    assert (state["frozen"] > 0) is frozen

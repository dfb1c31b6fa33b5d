"""Dependency injection: Depends with functions, generators and classes, @injectable scopes, constructor
injection, cycles, per-request caching, overrides, route guards and threads (issue "Parameters, validation,
uploads and DI", point 7)."""

import asyncio
import threading
from typing import Optional

import pytest

from tachyon_api import (
    BackgroundTasks,
    Depends,
    Header,
    HTTPException,
    Query,
    Request,
    Router,
    Struct,
    Tachyon,
    injectable,
)
from tachyon_api.testing import TachyonTestClient, create_client

from .conftest import assert_validation_error


# --- kinds of dependencies -------------------------------------------------------------------------------
def test_sync_and_async_function_dependencies():
    app = Tachyon()

    def sync_dep():
        return "sync"

    async def async_dep():
        await asyncio.sleep(0)
        return "async"

    @app.get("/")
    async def endpoint(a: str = Depends(sync_dep), b: str = Depends(async_dep)):
        return {"a": a, "b": b}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"a": "sync", "b": "async"}


def test_callable_object_dependency():
    app = Tachyon()

    class Pager:
        def __init__(self, max_size: int):
            self.max_size = max_size

        def __call__(self, size: int = 10):
            return min(size, self.max_size)

    @app.get("/")
    def endpoint(size: int = Depends(Pager(50))):
        return {"size": size}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"size": 10}
        assert client.get("/?size=80").json() == {"size": 50}


def test_generator_dependency_cleanup_runs_after_endpoint():
    app = Tachyon()
    events = []

    def sync_resource():
        events.append("sync-open")
        yield "sync-res"
        events.append("sync-close")

    async def async_resource():
        events.append("async-open")
        yield "async-res"
        events.append("async-close")

    @app.get("/")
    async def endpoint(a: str = Depends(sync_resource), b: str = Depends(async_resource)):
        events.append("endpoint")
        return {"a": a, "b": b}

    with TachyonTestClient(app) as client:
        response = client.get("/")
    assert response.json() == {"a": "sync-res", "b": "async-res"}
    assert events[:3] == ["sync-open", "async-open", "endpoint"]
    # cleanups run in reverse order of set-up
    assert events[3:] == ["async-close", "sync-close"]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_generator_cleanup_runs_after_the_response_is_sent(kind):
    app = Tachyon()
    events = []

    if kind == "sync":

        def resource():
            yield "r"
            events.append("cleanup")

    else:

        async def resource():
            yield "r"
            events.append("cleanup")

    @app.get("/")
    async def endpoint(value: str = Depends(resource)):
        events.append("endpoint")
        return {"value": value}

    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()

    async def send(message):
        events.append(message["type"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    assert events == ["endpoint", "http.response.start", "http.response.body", "cleanup"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_generator_cleanup_sees_the_endpoint_exception(kind):
    app = Tachyon()
    seen = []

    if kind == "sync":

        def session():
            try:
                yield "s"
            except Exception as exc:
                seen.append(exc)
                raise
            finally:
                seen.append("finally")

    else:

        async def session():
            try:
                yield "s"
            except Exception as exc:
                seen.append(exc)
                raise
            finally:
                seen.append("finally")

    @app.get("/http")
    def http_error(s: str = Depends(session)):
        raise HTTPException(409, "conflict")

    @app.get("/crash")
    async def crash(s: str = Depends(session)):
        raise ValueError("boom")

    @app.get("/fine")
    async def fine(s: str = Depends(session)):
        return {"s": s}

    with TachyonTestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/http")
        assert response.status_code == 409
        assert response.json() == {"detail": "conflict"}
        assert isinstance(seen[0], HTTPException) and seen[0].status_code == 409
        assert seen[1] == "finally"
        seen.clear()

        response = client.get("/crash")
        assert response.status_code == 500
        assert isinstance(seen[0], ValueError) and str(seen[0]) == "boom"
        assert seen[1] == "finally"
        seen.clear()

        assert client.get("/fine").json() == {"s": "s"}
        assert seen == ["finally"]


# --- classes: Depends() and @injectable ------------------------------------------------------------------
def test_depends_without_argument_uses_class_annotation():
    app = Tachyon()
    created = []

    class Settings:
        def __init__(self, env: str = "dev"):
            self.env = env
            created.append(self)

    @app.get("/")
    def endpoint(settings: Settings = Depends()):
        assert isinstance(settings, Settings)
        return {"env": settings.env}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"env": "dev"}
        assert client.get("/?env=prod").json() == {"env": "prod"}
    assert len(created) == 2


def test_injectable_singleton_is_shared_across_requests():
    app = Tachyon()
    created = []

    @injectable
    class Database:
        def __init__(self):
            created.append(self)

    @injectable(scope="singleton")
    class Cache:
        pass

    @app.get("/")
    def endpoint(db: Database, cache: Cache):
        return {"db": id(db), "cache": id(cache)}

    with TachyonTestClient(app) as client:
        first = client.get("/").json()
        second = client.get("/").json()
    assert first == second
    assert len(created) == 1


def test_singletons_belong_to_the_app():
    @injectable
    class Service:
        pass

    ids = []
    for _ in range(2):
        app = Tachyon()

        @app.get("/")
        def endpoint(service: Service):
            return {"id": id(service)}

        with TachyonTestClient(app) as client:
            ids.append(client.get("/").json()["id"])
            assert client.get("/").json()["id"] == ids[-1]
    assert ids[0] != ids[1]


def test_request_scope_same_within_request_new_across():
    app = Tachyon()

    @injectable(scope="request")
    class UnitOfWork:
        pass

    def uses_uow(uow: UnitOfWork):
        return uow

    @app.get("/")
    def endpoint(a: UnitOfWork, b: UnitOfWork, c: UnitOfWork = Depends(uses_uow)):
        assert a is b is c
        return {"id": id(a)}

    kept = []

    @app.get("/keep")
    def keep(a: UnitOfWork):
        kept.append(a)
        return {}

    with TachyonTestClient(app) as client:
        assert client.get("/").status_code == 200
        client.get("/keep")
        client.get("/keep")
    assert len(kept) == 2 and kept[0] is not kept[1]


def test_transient_scope_new_each_injection():
    app = Tachyon()
    created = []

    @injectable(scope="transient")
    class Builder:
        def __init__(self):
            created.append(self)

    def uses_builder(builder: Builder):
        return builder

    @app.get("/")
    def endpoint(a: Builder, b: Builder, c: Builder = Depends(uses_builder)):
        return {"distinct": len({id(a), id(b), id(c)})}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"distinct": 3}
        assert client.get("/").json() == {"distinct": 3}
    assert len(created) == 6


def test_invalid_scope_rejected():
    with pytest.raises(ValueError):

        @injectable(scope="forever")
        class Nope:
            pass


def test_constructor_injection():
    app = Tachyon()

    @injectable
    class Config:
        def __init__(self):
            self.dsn = "sqlite://"

    @injectable(scope="request")
    class Database:
        def __init__(self, config: Config):
            self.config = config

    @injectable(scope="transient")
    class UserRepository:
        def __init__(self, db: Database, config: Config):
            self.db = db
            self.config = config

    @app.get("/")
    def endpoint(repo: UserRepository, db: Database, config: Config):
        assert repo.db is db
        assert repo.config is config is db.config
        return {"dsn": repo.db.config.dsn}

    with TachyonTestClient(app) as client:
        response = client.get("/")
    assert response.status_code == 200, response.text
    assert response.json() == {"dsn": "sqlite://"}


def test_constructor_injection_with_request_params():
    app = Tachyon()

    @injectable(scope="request")
    class CurrentUser:
        def __init__(self, x_user: str = Header("anonymous"), lang: str = "en"):
            self.name = x_user
            self.lang = lang

    @app.get("/")
    def endpoint(user: CurrentUser):
        return {"name": user.name, "lang": user.lang}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"name": "anonymous", "lang": "en"}
        assert client.get("/?lang=fr", headers={"x-user": "ada"}).json() == {"name": "ada", "lang": "fr"}


@injectable
class CycleA:
    def __init__(self, b: "CycleB"):
        self.b = b


@injectable
class CycleB:
    def __init__(self, c: "CycleC"):
        self.c = c


@injectable
class CycleC:
    def __init__(self, a: CycleA):
        self.a = a


@injectable
class SelfCycle:
    def __init__(self, me: "SelfCycle"):
        self.me = me


def test_cycle_detection_at_registration():
    app = Tachyon()
    with pytest.raises(TypeError, match="Circular dependency"):

        @app.get("/")
        def endpoint(a: CycleA):
            return {}

    with pytest.raises(TypeError, match="Circular dependency"):

        @app.get("/self")
        def self_endpoint(s: SelfCycle = Depends()):
            return {}

    with pytest.raises(TypeError, match="Circular dependency"):

        @app.get("/guarded", dependencies=[Depends(CycleB)])
        def guarded():
            return {}


def test_function_cycle_detection_at_registration():
    def first(value=None):
        return value

    def second(value=Depends(first)):
        return value

    first.__defaults__ = (Depends(second),)
    app = Tachyon()
    with pytest.raises(TypeError, match="Circular dependency"):

        @app.get("/")
        def endpoint(value=Depends(second)):
            return {}


# --- caching ---------------------------------------------------------------------------------------------
def test_dependency_called_once_per_request_when_shared():
    app = Tachyon()
    calls = []

    def get_db():
        calls.append(1)
        return object()

    def repo_a(db=Depends(get_db)):
        return db

    def repo_b(db=Depends(get_db)):
        return db

    @app.get("/")
    def endpoint(a=Depends(repo_a), b=Depends(repo_b), db=Depends(get_db)):
        return {"same": a is b is db}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"same": True}
        assert len(calls) == 1
        assert client.get("/").json() == {"same": True}
        assert len(calls) == 2


def test_use_cache_false_calls_again():
    app = Tachyon()
    calls = []

    def counter():
        calls.append(1)
        return len(calls)

    def other(value: int = Depends(counter, use_cache=False)):
        return value

    @app.get("/")
    def endpoint(a: int = Depends(counter, use_cache=False), b: int = Depends(other)):
        return {"a": a, "b": b}

    with TachyonTestClient(app) as client:
        response = client.get("/")
    assert response.json() == {"a": 1, "b": 2}
    assert len(calls) == 2


def test_generator_dependency_cached_and_cleaned_once():
    app = Tachyon()
    events = []

    def session():
        events.append("open")
        yield "s"
        events.append("close")

    def repo(s=Depends(session)):
        return s

    @app.get("/")
    def endpoint(a=Depends(session), b=Depends(repo)):
        return {"a": a, "b": b}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"a": "s", "b": "s"}
    assert events == ["open", "close"]


# --- overrides -------------------------------------------------------------------------------------------
def test_dependency_overrides_with_callable_and_clear_restores():
    app = Tachyon()

    def get_user():
        return "real"

    async def fake_user():
        return "fake"

    def uses_user(user: str = Depends(get_user)):
        return f"via:{user}"

    @app.get("/")
    def endpoint(user: str = Depends(get_user), via: str = Depends(uses_user)):
        return {"user": user, "via": via}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"user": "real", "via": "via:real"}
        app.dependency_overrides[get_user] = fake_user
        assert client.get("/").json() == {"user": "fake", "via": "via:fake"}
        app.dependency_overrides[get_user] = lambda: "lambda"
        assert client.get("/").json() == {"user": "lambda", "via": "via:lambda"}
        app.dependency_overrides.clear()
        assert client.get("/").json() == {"user": "real", "via": "via:real"}
        app.dependency_overrides[get_user] = fake_user
        del app.dependency_overrides[get_user]
        assert client.get("/").json() == {"user": "real", "via": "via:real"}


def test_override_is_cached_per_request_like_the_original():
    app = Tachyon()
    calls = []

    def get_db():
        return "real"

    def fake_db():
        calls.append(1)
        return object()

    def repo(db=Depends(get_db)):
        return db

    @app.get("/")
    def endpoint(a=Depends(get_db), b=Depends(repo)):
        return {"same": a is b}

    app.dependency_overrides[get_db] = fake_db
    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"same": True}
    assert len(calls) == 1


def test_generator_override_is_cleaned_up():
    app = Tachyon()
    events = []

    def get_session():
        return "real"

    async def fake_session():
        events.append("open")
        yield "fake"
        events.append("close")

    @app.get("/")
    async def endpoint(s=Depends(get_session)):
        events.append("endpoint")
        return {"s": s}

    app.dependency_overrides[get_session] = fake_session
    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"s": "fake"}
    assert events == ["open", "endpoint", "close"]


def test_override_can_take_request_params():
    app = Tachyon()

    def get_user():
        return "real"

    def fake_user(name: str = Query("tester"), x_role: str = Header("none")):
        return f"{name}:{x_role}"

    @app.get("/")
    def endpoint(user: str = Depends(get_user)):
        return {"user": user}

    app.dependency_overrides[get_user] = fake_user
    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"user": "tester:none"}
        assert client.get("/?name=bob", headers={"x-role": "admin"}).json() == {"user": "bob:admin"}


def test_dependency_overrides_with_class():
    app = Tachyon()

    @injectable
    class EmailService:
        def send(self):
            return "smtp"

    class FakeEmailService:
        def send(self):
            return "fake"

    @app.get("/")
    def endpoint(mail: EmailService):
        return {"sent": mail.send(), "type": type(mail).__name__}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"sent": "smtp", "type": "EmailService"}
        app.dependency_overrides[EmailService] = FakeEmailService
        assert client.get("/").json() == {"sent": "fake", "type": "FakeEmailService"}
        app.dependency_overrides.clear()
        assert client.get("/").json() == {"sent": "smtp", "type": "EmailService"}


def test_override_of_a_function_dependency_with_a_class():
    app = Tachyon()

    def get_client():
        return "real"

    class StubClient:
        def __init__(self):
            self.kind = "stub"

    @app.get("/")
    def endpoint(c=Depends(get_client)):
        return {"c": c if isinstance(c, str) else c.kind}

    with TachyonTestClient(app) as client:
        app.dependency_overrides[get_client] = StubClient
        assert client.get("/").json() == {"c": "stub"}
        app.dependency_overrides.pop(get_client)
        assert client.get("/").json() == {"c": "real"}


def test_override_of_a_route_guard():
    app = Tachyon()

    def require_admin():
        raise HTTPException(403, "no")

    @app.get("/", dependencies=[Depends(require_admin)])
    def endpoint():
        return {"ok": True}

    with TachyonTestClient(app) as client:
        assert client.get("/").status_code == 403
        app.dependency_overrides[require_admin] = lambda: None
        assert client.get("/").json() == {"ok": True}
        app.dependency_overrides.clear()
        assert client.get("/").status_code == 403


# --- what dependencies can take --------------------------------------------------------------------------
def test_dependencies_take_the_same_parameter_kinds_as_endpoints():
    app = Tachyon()
    seen = {}

    def get_token(x_token: str = Header()) -> str:
        return x_token

    async def pagination(page: int = Query(1), size: int = 10, token: str = Depends(get_token)):
        return {"page": page, "size": size, "token": token}

    def audit(request: Request, tasks: BackgroundTasks, pag: dict = Depends(pagination)):
        seen["dep_tasks"] = tasks
        tasks.add_task(seen.setdefault("log", []).append, f"{request.method} {request.url.path}")
        return pag

    @app.get("/items/{item_id}")
    def endpoint(item_id: int, background_tasks: BackgroundTasks, pag: dict = Depends(audit)):
        seen["endpoint_tasks"] = background_tasks
        background_tasks.add_task(seen["log"].append, "endpoint task")
        return {"item_id": item_id, **pag}

    with TachyonTestClient(app) as client:
        response = client.get("/items/3?page=2&size=5", headers={"x-token": "tok"})
        assert response.status_code == 200, response.text
        assert response.json() == {"item_id": 3, "page": 2, "size": 5, "token": "tok"}
        assert seen["dep_tasks"] is seen["endpoint_tasks"]
        assert seen["log"] == ["GET /items/3", "endpoint task"]

        errors = assert_validation_error(client.get("/items/3?page=x"))
        locs = [e["loc"] for e in errors]
        assert ["query", "page"] in locs
        assert ["header", "x-token"] in locs


def test_dependency_and_endpoint_errors_reported_together():
    app = Tachyon()
    called = []

    def get_token(x_token: str = Header()):
        return x_token

    @app.get("/")
    def endpoint(token: str = Depends(get_token), limit: int = Query()):
        called.append(token)
        return {}

    with TachyonTestClient(app) as client:
        errors = assert_validation_error(client.get("/?limit=x"))
    locs = sorted(e["loc"] for e in errors)
    assert locs == [["header", "x-token"], ["query", "limit"]]
    assert called == []


def test_dependency_can_take_a_json_body():
    app = Tachyon()

    class Credentials(Struct):
        username: str
        password: str

    def authenticate(creds: Credentials) -> str:
        if creds.password != "pw":
            raise HTTPException(401, "bad credentials")
        return creds.username

    @app.post("/login")
    def login(user: str = Depends(authenticate), remember: bool = False):
        return {"user": user, "remember": remember}

    with TachyonTestClient(app) as client:
        ok = client.post("/login?remember=yes", json={"username": "ada", "password": "pw"})
        assert ok.json() == {"user": "ada", "remember": True}
        assert client.post("/login", json={"username": "ada", "password": "no"}).status_code == 401
        assert_validation_error(client.post("/login", json={"username": "ada"}), [["body", "password"]])


def test_dependency_can_use_request_state_and_path_params():
    app = Tachyon()

    async def load_user(request: Request, user_id: int):
        request.state.loaded = user_id
        return {"id": user_id}

    @app.get("/users/{user_id}")
    async def endpoint(request: Request, user: dict = Depends(load_user)):
        return {"user": user, "state": request.state.loaded}

    with TachyonTestClient(app) as client:
        assert client.get("/users/7").json() == {"user": {"id": 7}, "state": 7}


# --- route guards ----------------------------------------------------------------------------------------
def test_route_dependencies_run_before_endpoint_and_can_stop_it():
    app = Tachyon()
    events = []

    def verify_token(x_token: Optional[str] = Header(None)):
        events.append("guard")
        if x_token != "secret":
            raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})

    async def log_request(request: Request):
        events.append(f"log {request.url.path}")

    @app.get("/private", dependencies=[Depends(verify_token), Depends(log_request)])
    def private():
        events.append("endpoint")
        return {"ok": True}

    with TachyonTestClient(app) as client:
        denied = client.get("/private")
        assert denied.status_code == 401
        assert denied.json() == {"detail": "Unauthorized"}
        assert denied.headers["www-authenticate"] == "Bearer"
        assert events == ["guard"]
        events.clear()
        allowed = client.get("/private", headers={"x-token": "secret"})
        assert allowed.json() == {"ok": True}
        assert events == ["guard", "log /private", "endpoint"]


def test_router_and_app_level_guards():
    events = []

    def app_guard():
        events.append("app")

    def router_guard(x_key: str = Header("")):
        events.append("router")
        if x_key != "k":
            raise HTTPException(401, "bad key")

    app = Tachyon(dependencies=[Depends(app_guard)])
    router = Router(prefix="/api", dependencies=[Depends(router_guard)])

    @router.get("/thing")
    def thing():
        events.append("endpoint")
        return {"thing": True}

    app.include_router(router)
    with TachyonTestClient(app) as client:
        assert client.get("/api/thing").status_code == 401
        assert "endpoint" not in events
        events.clear()
        assert client.get("/api/thing", headers={"x-key": "k"}).json() == {"thing": True}
        assert events == ["app", "router", "endpoint"]


def test_guard_generator_cleanup_runs():
    app = Tachyon()
    events = []

    async def transaction():
        events.append("begin")
        yield
        events.append("commit")

    @app.post("/", dependencies=[Depends(transaction)])
    async def endpoint():
        events.append("endpoint")
        return {}

    with TachyonTestClient(app) as client:
        assert client.post("/").status_code == 200
    assert events == ["begin", "endpoint", "commit"]


# --- threads ---------------------------------------------------------------------------------------------
def test_sync_dependencies_run_in_a_worker_thread():
    app = Tachyon()
    threads = {}

    def sync_dep():
        threads["sync"] = threading.get_ident()
        return 1

    def sync_gen():
        threads["gen_enter"] = threading.get_ident()
        yield 2
        threads["gen_exit"] = threading.get_ident()

    async def async_dep():
        threads["async"] = threading.get_ident()
        return 3

    @app.get("/")
    async def endpoint(a=Depends(sync_dep), b=Depends(sync_gen), c=Depends(async_dep)):
        threads["loop"] = threading.get_ident()
        return {"sum": a + b + c}

    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"sum": 6}
    loop = threads["loop"]
    assert threads["async"] == loop
    assert threads["sync"] != loop
    assert threads["gen_enter"] != loop
    assert threads["gen_exit"] != loop
    assert threads["sync"] != threading.get_ident()


def test_slow_sync_dependency_does_not_block_the_loop():
    app = Tachyon()
    gate = threading.Event()

    def blocking():
        assert gate.wait(5), "the loop was blocked"
        return "done"

    @app.get("/slow")
    async def slow(value: str = Depends(blocking)):
        return {"value": value}

    @app.get("/release")
    async def release():
        gate.set()
        return {"released": True}

    async def run():
        async with create_client(app) as client:
            slow_call = asyncio.ensure_future(client.get("/slow"))
            await asyncio.sleep(0.05)
            released = await client.get("/release")
            return await asyncio.wait_for(slow_call, 5), released

    slow_response, released = asyncio.run(run())
    assert released.json() == {"released": True}
    assert slow_response.json() == {"value": "done"}


def test_failing_generator_cleanup_is_logged_and_does_not_escape(caplog):
    import logging

    from tachyon_api import Depends, Tachyon
    from tachyon_api.testing import TachyonTestClient

    app = Tachyon()

    def resource():
        yield "r"
        raise RuntimeError("cleanup broke")

    @app.get("/")
    def endpoint(value: str = Depends(resource)):
        return {"value": value}

    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    with TachyonTestClient(app) as client:
        assert client.get("/").json() == {"value": "r"}
        assert client.get("/").status_code == 200
    records = [r for r in caplog.records if r.name == "tachyon_api.errors"]
    assert len(records) == 2
    assert "Dependency cleanup failed after GET /" in records[0].getMessage()
    assert isinstance(records[0].exc_info[1], RuntimeError)

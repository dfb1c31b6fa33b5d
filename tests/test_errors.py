"""Errors: HTTPException, exception handlers (most specific class wins), 500s, logging, header-mutating middleware."""

import logging

import httpx
import pytest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse as StarletteJSONResponse

from tachyon_api import Depends, HTTPException, Request, Tachyon
from tachyon_api.responses import JSONResponse, PlainTextResponse

from .conftest import client_for, serve

INTERNAL = {"success": False, "error": "Internal Server Error", "code": "INTERNAL_SERVER_ERROR"}


class AppError(Exception):
    pass


class NotFoundError(AppError):
    pass


class DeepNotFound(NotFoundError):
    pass


class MyHTTPError(HTTPException):
    pass


def error_records(caplog):
    return [r for r in caplog.records if r.name == "tachyon_api.errors" and r.levelno >= logging.ERROR]


def raising_app(exc_factory) -> Tachyon:
    app = Tachyon()

    @app.get("/boom")
    def boom():
        raise exc_factory()

    @app.get("/async-boom")
    async def async_boom():
        raise exc_factory()

    return app


# --- HTTPException ---------------------------------------------------------------------------------------
def test_http_exception_status_detail_and_headers():
    app = raising_app(lambda: HTTPException(418, "I'm a teapot", headers={"X-Tea": "earl grey"}))
    client = client_for(app)
    for path in ("/boom", "/async-boom"):
        response = client.get(path)
        assert response.status_code == 418
        assert response.json() == {"detail": "I'm a teapot"}
        assert response.headers["x-tea"] == "earl grey"
        assert response.headers["content-type"] == "application/json"


def test_http_exception_without_detail_and_with_structured_detail():
    app = Tachyon()

    @app.get("/none")
    def none():
        raise HTTPException(403)

    @app.get("/structured")
    def structured():
        raise HTTPException(409, detail={"field": "email", "problem": ["taken"]})

    client = client_for(app)
    response = client.get("/none")
    assert response.status_code == 403
    assert response.json() == {"detail": None}
    structured_response = client.get("/structured")
    assert structured_response.status_code == 409
    assert structured_response.json() == {"detail": {"field": "email", "problem": ["taken"]}}


def test_http_exception_attributes():
    exc = HTTPException(404, "missing", {"A": "b"})
    assert exc.status_code == 404
    assert exc.detail == "missing"
    assert exc.headers == {"A": "b"}
    assert HTTPException(500).headers is None


def test_http_exception_is_not_logged_as_error(caplog):
    caplog.set_level(logging.DEBUG, logger="tachyon_api.errors")
    app = raising_app(lambda: HTTPException(400, "bad"))
    assert client_for(app).get("/boom").status_code == 400
    assert error_records(caplog) == []


def test_starlette_http_exception_in_endpoint():
    app = raising_app(lambda: StarletteHTTPException(status_code=409, detail="conflict", headers={"X-S": "1"}))
    client = client_for(app)
    for path in ("/boom", "/async-boom"):
        response = client.get(path)
        assert response.status_code == 409
        assert response.json() == {"detail": "conflict"}
        assert response.headers["x-s"] == "1"


# --- unhandled exceptions --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/boom", "/async-boom"])
def test_unhandled_exception_is_500_and_logged(path, caplog):
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    app = raising_app(lambda: RuntimeError("database password is hunter2"))
    response = client_for(app).get(path)
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    records = error_records(caplog)
    assert len(records) == 1
    exc_type, exc_value, tb = records[0].exc_info
    assert exc_type is RuntimeError
    assert "hunter2" in str(exc_value)
    assert tb is not None


def test_unhandled_exception_in_dependency_is_500(caplog):
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")

    def broken_dep():
        raise ValueError("dep broke")

    app = Tachyon()

    @app.get("/d")
    def d(value=Depends(broken_dep)):
        return value

    response = client_for(app).get("/d")
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert error_records(caplog)[0].exc_info[0] is ValueError


# --- custom handlers -------------------------------------------------------------------------------------
def test_sync_and_async_exception_handlers():
    app = Tachyon()

    class SyncErr(Exception):
        pass

    class AsyncErr(Exception):
        pass

    @app.exception_handler(SyncErr)
    def on_sync(request: Request, exc: SyncErr):
        return JSONResponse({"handled": "sync", "path": request.url.path, "msg": str(exc)}, status_code=400)

    @app.exception_handler(AsyncErr)
    async def on_async(request: Request, exc: AsyncErr):
        return PlainTextResponse(f"async:{exc}", status_code=422, headers={"X-Handled": "1"})

    @app.get("/sync")
    def sync_route():
        raise SyncErr("s")

    @app.get("/async")
    async def async_route():
        raise AsyncErr("a")

    client = client_for(app)
    response = client.get("/sync")
    assert response.status_code == 400
    assert response.json() == {"handled": "sync", "path": "/sync", "msg": "s"}
    async_response = client.get("/async")
    assert async_response.status_code == 422
    assert async_response.text == "async:a"
    assert async_response.headers["x-handled"] == "1"


def test_exception_handler_decorator_returns_function():
    app = Tachyon()

    def handler(request, exc):
        return PlainTextResponse("x")

    assert app.exception_handler(AppError)(handler) is handler


def _hierarchy_app(order):
    app = Tachyon()
    handlers = {
        Exception: lambda request, exc: JSONResponse({"by": "Exception"}, 500),
        AppError: lambda request, exc: JSONResponse({"by": "AppError"}, 400),
        NotFoundError: lambda request, exc: JSONResponse({"by": "NotFoundError"}, 404),
    }
    for cls in order:
        app.add_exception_handler(cls, handlers[cls])

    @app.get("/{kind}")
    def raise_kind(kind: str):
        raise {"app": AppError, "nf": NotFoundError, "deep": DeepNotFound, "other": KeyError}[kind]("x")

    return app


@pytest.mark.parametrize(
    "order",
    [
        [Exception, AppError, NotFoundError],
        [NotFoundError, AppError, Exception],
        [AppError, Exception, NotFoundError],
    ],
    ids=["general-first", "specific-first", "mixed"],
)
def test_most_specific_handler_wins_regardless_of_order(order):
    client = client_for(_hierarchy_app(order))
    assert client.get("/app").json() == {"by": "AppError"}
    assert client.get("/nf").json() == {"by": "NotFoundError"}
    nf = client.get("/nf")
    assert nf.status_code == 404
    assert client.get("/deep").json() == {"by": "NotFoundError"}
    other = client.get("/other")
    assert other.status_code == 500
    assert other.json() == {"by": "Exception"}


def test_exception_handler_registered_via_decorator_exception_then_subclass():
    app = Tachyon()

    @app.exception_handler(Exception)
    async def catch_all(request, exc):
        return JSONResponse({"by": "catch_all"}, 500)

    @app.exception_handler(AppError)
    async def app_error(request, exc):
        return JSONResponse({"by": "app_error"}, 400)

    @app.get("/e")
    def e():
        raise NotFoundError()

    response = client_for(app).get("/e")
    assert response.status_code == 400
    assert response.json() == {"by": "app_error"}


def test_exception_handler_does_not_swallow_http_exception():
    app = Tachyon()

    @app.exception_handler(Exception)
    async def catch_all(request, exc):
        return JSONResponse({"by": "catch_all"}, 500)

    @app.get("/forbidden")
    def forbidden():
        raise HTTPException(403, "no", headers={"X-Reason": "policy"})

    @app.get("/item/{n}")
    def item(n: int):
        return n

    @app.get("/crash")
    def crash():
        raise ZeroDivisionError

    client = client_for(app)
    response = client.get("/forbidden")
    assert response.status_code == 403
    assert response.json() == {"detail": "no"}
    assert response.headers["x-reason"] == "policy"
    not_found = client.get("/missing")
    assert not_found.status_code == 404
    assert not_found.json() == {"detail": "Not Found"}
    bad_param = client.get("/item/abc")
    assert bad_param.status_code == 404
    assert bad_param.json() == {"detail": "Not Found"}
    not_allowed = client.post("/forbidden")
    assert not_allowed.status_code == 405
    assert not_allowed.headers["allow"] == "GET, HEAD"
    crashed = client.get("/crash")
    assert crashed.json() == {"by": "catch_all"}


def test_exception_handler_does_not_swallow_starlette_http_exception():
    app = Tachyon()

    @app.exception_handler(Exception)
    async def catch_all(request, exc):
        return JSONResponse({"by": "catch_all"}, 500)

    @app.get("/s")
    def s():
        raise StarletteHTTPException(status_code=401, detail="login first")

    response = client_for(app).get("/s")
    assert response.status_code == 401
    assert response.json() == {"detail": "login first"}


def test_exception_handler_does_not_swallow_validation_errors():
    app = Tachyon()

    @app.exception_handler(Exception)
    async def catch_all(request, exc):
        return JSONResponse({"by": "catch_all"}, 500)

    @app.get("/q")
    def q(limit: int):
        return limit

    response = client_for(app).get("/q", params={"limit": "many"})
    assert response.status_code == 422
    assert response.json()["code"] == "VALIDATION_ERROR"


def test_handler_for_http_exception_overrides_default():
    app = Tachyon()

    @app.exception_handler(HTTPException)
    def custom(request, exc: HTTPException):
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, exc.status_code)

    @app.exception_handler(MyHTTPError)
    def mine(request, exc: MyHTTPError):
        return JSONResponse({"mine": exc.detail}, 499)

    @app.get("/h")
    def h():
        raise HTTPException(400, "bad")

    @app.get("/m")
    def m():
        raise MyHTTPError(400, "custom")

    client = client_for(app)
    assert client.get("/h").json() == {"error": "bad", "status": 400}
    # unknown paths go through the HTTPException handler too
    assert client.get("/nope").json() == {"error": "Not Found", "status": 404}
    response = client.get("/m")
    assert response.status_code == 499
    assert response.json() == {"mine": "custom"}


def test_status_code_handlers():
    app = Tachyon()

    @app.exception_handler(404)
    async def not_found(request, exc):
        return PlainTextResponse(f"nothing at {request.url.path}", status_code=404)

    @app.exception_handler(405)
    def not_allowed(request, exc):
        return PlainTextResponse("wrong method", status_code=405, headers=exc.headers)

    @app.exception_handler(403)
    def forbidden(request, exc):
        return JSONResponse({"custom403": exc.detail}, 403)

    @app.get("/thing")
    def thing():
        raise HTTPException(404, "no thing")

    @app.get("/secret")
    def secret():
        raise HTTPException(403, "hidden")

    client = client_for(app)
    assert client.get("/missing").text == "nothing at /missing"
    raised = client.get("/thing")
    assert raised.status_code == 404
    assert raised.text == "nothing at /thing"
    wrong = client.post("/thing")
    assert wrong.status_code == 405
    assert wrong.text == "wrong method"
    assert wrong.headers["allow"] == "GET, HEAD"
    forbidden_response = client.get("/secret")
    assert forbidden_response.json() == {"custom403": "hidden"}


def test_status_code_handler_applies_to_starlette_http_exception():
    app = Tachyon()

    @app.exception_handler(404)
    async def not_found(request, exc):
        return PlainTextResponse("custom 404", status_code=404)

    @app.get("/s")
    def s():
        raise StarletteHTTPException(status_code=404, detail="gone")

    response = client_for(app).get("/s")
    assert response.status_code == 404
    assert response.text == "custom 404"


def test_status_code_handler_takes_priority_over_class_handler():
    app = Tachyon()

    @app.exception_handler(HTTPException)
    def by_class(request, exc):
        return PlainTextResponse("class", status_code=exc.status_code)

    @app.exception_handler(404)
    def by_status(request, exc):
        return PlainTextResponse("status", status_code=404)

    client = client_for(app)
    assert client.get("/missing").text == "status"


def test_handler_may_return_starlette_response():
    app = Tachyon()

    @app.exception_handler(AppError)
    async def handler(request, exc):
        return StarletteJSONResponse({"starlette": True}, status_code=418)

    @app.get("/e")
    def e():
        raise AppError()

    response = client_for(app).get("/e")
    assert response.status_code == 418
    assert response.json() == {"starlette": True}


def test_handler_returning_non_response_is_logged_500(caplog):
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    app = Tachyon()

    @app.exception_handler(AppError)
    def handler(request, exc):
        return {"not": "a response"}

    @app.get("/e")
    def e():
        raise AppError()

    response = client_for(app).get("/e")
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert any(r.exc_info and r.exc_info[0] is TypeError for r in error_records(caplog))


@pytest.mark.parametrize("async_handler", [False, True], ids=["sync-handler", "async-handler"])
def test_exception_inside_handler_is_logged_500(async_handler, caplog):
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    app = Tachyon()

    if async_handler:

        async def handler(request, exc):
            raise LookupError("handler broke")
    else:

        def handler(request, exc):
            raise LookupError("handler broke")

    app.add_exception_handler(AppError, handler)

    @app.get("/e")
    def e():
        raise AppError("original")

    response = client_for(app).get("/e")
    assert response.status_code == 500
    assert response.json() == INTERNAL
    assert "handler broke" not in response.text
    records = error_records(caplog)
    assert any(r.exc_info and r.exc_info[0] is LookupError for r in records)


def test_exception_inside_handler_server_keeps_serving(caplog):
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    app = Tachyon()

    @app.exception_handler(AppError)
    async def handler(request, exc):
        raise RuntimeError("handler exploded")

    @app.exception_handler(404)
    def handler404(request, exc):
        raise RuntimeError("404 handler exploded")

    @app.get("/e")
    async def e():
        raise AppError()

    @app.get("/ok")
    async def ok():
        return {"ok": True}

    with serve(app) as url, httpx.Client(base_url=url, timeout=5) as client:
        for _ in range(3):
            failed = client.get("/e")
            assert failed.status_code == 500
            assert failed.json() == INTERNAL
            missing = client.get("/nowhere")
            assert missing.status_code == 500
            assert missing.json() == INTERNAL
            good = client.get("/ok")
            assert good.status_code == 200
            assert good.json() == {"ok": True}
    messages = [r.exc_info[1] for r in error_records(caplog) if r.exc_info]
    assert any(str(m) == "handler exploded" for m in messages)
    assert any(str(m) == "404 handler exploded" for m in messages)


# --- header-mutating middleware --------------------------------------------------------------------------
class AppendHeaderMiddleware:
    """Appends a header by mutating ``message["headers"]`` in place, as many real middlewares do."""

    def __init__(self, app, name=b"x-request-id", value=b"abc"):
        self.app = app
        self.name = name
        self.value = value

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"].append((self.name, self.value))
            await send(message)

        await self.app(scope, receive, wrapped)


def _failing_app() -> Tachyon:
    app = Tachyon()

    @app.get("/only-get")
    def only_get():
        return {"ok": True}

    @app.get("/crash")
    def crash():
        raise RuntimeError("crash")

    @app.get("/http-error")
    def http_error():
        raise HTTPException(400, "bad", headers={"X-Err": "1"})

    @app.get("/typed/{n}")
    def typed(n: int):
        return n

    app.add_middleware(AppendHeaderMiddleware)
    return app


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/missing", 404),
        ("GET", "/typed/notanint", 404),
        ("POST", "/only-get", 405),
        ("GET", "/crash", 500),
        ("GET", "/http-error", 400),
        ("GET", "/only-get", 200),
        ("HEAD", "/only-get", 200),
    ],
)
def test_in_place_header_mutation_never_accumulates(method, path, status, caplog):
    caplog.set_level(logging.CRITICAL, logger="tachyon_api.errors")
    client = client_for(_failing_app())
    for _ in range(3):
        response = client.request(method, path)
        assert response.status_code == status
        assert response.headers.get_list("x-request-id") == ["abc"]
        if status == 405:
            assert response.headers.get_list("allow") == ["GET, HEAD"]
        if status == 400:
            assert response.headers.get_list("x-err") == ["1"]


def test_in_place_header_mutation_with_custom_handlers_over_real_server(caplog):
    caplog.set_level(logging.CRITICAL, logger="tachyon_api.errors")
    shared_404 = JSONResponse({"detail": "shared"}, 404)
    app = Tachyon()

    @app.exception_handler(404)
    def not_found(request, exc):
        return shared_404  # the same object for every request

    @app.exception_handler(AppError)
    async def app_error(request, exc):
        return PlainTextResponse("app error", 500)

    @app.get("/app-error")
    def app_error_route():
        raise AppError()

    @app.get("/crash")
    def crash():
        raise RuntimeError()

    @app.put("/put-only")
    def put_only():
        return 1

    app.add_middleware(AppendHeaderMiddleware)
    with serve(app) as url, httpx.Client(base_url=url, timeout=5) as client:
        for method, path, status in [
            ("GET", "/missing", 404),
            ("GET", "/app-error", 500),
            ("GET", "/crash", 500),
            ("GET", "/put-only", 405),
        ]:
            for _ in range(3):
                response = client.request(method, path)
                assert response.status_code == status
                assert response.headers.get_list("x-request-id") == ["abc"], (method, path)


def test_status_404_handler_also_sees_path_values_that_do_not_convert():
    from tachyon_api import Tachyon
    from tachyon_api.responses import JSONResponse
    from tachyon_api.testing import TachyonTestClient

    app = Tachyon()

    @app.exception_handler(404)
    def not_found(request, exc):
        return JSONResponse({"custom": True, "path": request.url.path}, status_code=404)

    @app.get("/items/{item_id}")
    def item(item_id: int):
        return item_id

    with TachyonTestClient(app) as client:
        assert client.get("/nowhere").json() == {"custom": True, "path": "/nowhere"}
        assert client.get("/items/abc").json() == {"custom": True, "path": "/items/abc"}
        assert client.get("/items/7").json() == 7

"""The rest of tachyon-api 1.3's public surface: import paths, response helpers and their bodies, route lists in
1.3's shape, register_instance/get_instance."""

import importlib
import logging

import httpx
import pytest

from tachyon_api import Depends, Router, Tachyon, injectable
from tachyon_api.dependencies import SCOPE_REQUEST
from tachyon_api.responses import (
    TachyonBytesResponse,
    TachyonJSONResponse,
    conflict_response,
    error_response,
    internal_server_error_response,
    not_found_response,
    response_validation_error_response,
    success_response,
    validation_error_response,
)

from .conftest import client_for, serve

# Section 1.2 of the reference, minus what other issues own (OpenAPI, the CLI's Typer app) and 1.3's
# internals (core, utils, processing, the radix trie, the server's direct-write fast path).
PUBLIC = {
    "tachyon_api": "Tachyon Struct Query Body Path Header Cookie Form File UploadFile injectable Depends "
    "HTTPException Router cache CacheConfig create_cache_config set_cache_config get_cache_config "
    "InMemoryCacheBackend BaseCacheBackend RedisCacheBackend MemcachedCacheBackend",
    "tachyon_api.background": "BackgroundTasks",
    "tachyon_api.testing": "TachyonTestClient AsyncTachyonTestClient create_client",
    "tachyon_api.responses": "Response JSONResponse HTMLResponse TachyonJSONResponse TachyonBytesResponse "
    "success_response error_response not_found_response conflict_response validation_error_response "
    "response_validation_error_response internal_server_error_response",
    "tachyon_api.params": "Query Path Body Header Cookie Form File",
    "tachyon_api.exceptions": "HTTPException",
    "tachyon_api.files": "UploadFile",
    "tachyon_api.models": "Struct Meta encode_json decode_json",
    "tachyon_api.di": "Depends injectable SCOPE_SINGLETON SCOPE_REQUEST SCOPE_TRANSIENT",
    "tachyon_api.router": "Router",
    "tachyon_api.cache": "cache CacheConfig create_cache_config set_cache_config get_cache_config "
    "InMemoryCacheBackend BaseCacheBackend RedisCacheBackend MemcachedCacheBackend _default_key_builder",
    "tachyon_api.security": "HTTPBearer HTTPBasic OAuth2PasswordBearer APIKeyHeader APIKeyQuery APIKeyCookie "
    "HTTPAuthorizationCredentials HTTPBasicCredentials",
    "tachyon_api.middlewares": "CORSMiddleware LoggerMiddleware SecurityHeadersMiddleware",
    "tachyon_api.middlewares.core": "apply_middleware_to_router create_decorated_middleware_class",
    "tachyon_api.server": "TachyonHTTPProtocol run",
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    imported = importlib.import_module(module)
    missing = [name for name in PUBLIC[module].split() if not hasattr(imported, name)]
    assert missing == []


def test_response_helpers_over_http(caplog):
    app = Tachyon()
    helpers = {
        "/success": lambda: success_response({"id": 1}, "Created", 201),
        "/success-default": lambda: success_response(),
        "/error": lambda: error_response("Bad thing"),
        "/error-code": lambda: error_response("Nope", 403, "FORBIDDEN"),
        "/not-found": lambda: not_found_response(),
        "/conflict": lambda: conflict_response("Email taken"),
        "/invalid": lambda: validation_error_response(errors={"email": ["required"]}),
        "/invalid-plain": lambda: validation_error_response("Bad input"),
        "/response-invalid": lambda: response_validation_error_response("price missing"),
        "/internal": lambda: internal_server_error_response(),
        "/json": lambda: TachyonJSONResponse({"a": [1, 2]}, status_code=202),
        "/bytes": lambda: TachyonBytesResponse(b'{"pre":"encoded"}'),
    }
    for path, helper in helpers.items():
        app.get(path)(helper)
    caplog.set_level(logging.ERROR, logger="tachyon_api.errors")
    with serve(app) as url:
        got = {path: httpx.get(url + path) for path in helpers}
    expected = {
        "/success": (201, {"success": True, "message": "Created", "data": {"id": 1}}),
        "/success-default": (200, {"success": True, "message": "Success", "data": None}),
        "/error": (400, {"success": False, "error": "Bad thing"}),
        "/error-code": (403, {"success": False, "error": "Nope", "code": "FORBIDDEN"}),
        "/not-found": (404, {"success": False, "error": "Resource not found", "code": "NOT_FOUND"}),
        "/conflict": (409, {"success": False, "error": "Email taken", "code": "CONFLICT"}),
        "/invalid": (
            422,
            {
                "success": False,
                "error": "Validation failed",
                "code": "VALIDATION_ERROR",
                "errors": {"email": ["required"]},
            },
        ),
        "/invalid-plain": (422, {"success": False, "error": "Bad input", "code": "VALIDATION_ERROR"}),
        "/response-invalid": (
            500,
            {"success": False, "error": "Internal Server Error", "code": "RESPONSE_VALIDATION_ERROR"},
        ),
        "/internal": (500, {"success": False, "error": "Internal Server Error", "code": "INTERNAL_SERVER_ERROR"}),
        "/json": (202, {"a": [1, 2]}),
        "/bytes": (200, {"pre": "encoded"}),
    }
    for path, (status, body) in expected.items():
        assert (got[path].status_code, got[path].json()) == (status, body), path
        assert got[path].headers["content-type"] == "application/json"
    assert "price missing" in caplog.text  # logged, never sent
    assert "price missing" not in got["/response-invalid"].text


def test_internal_error_response_is_fresh_each_time():
    first, second = internal_server_error_response(), internal_server_error_response()
    first.headers["X-Mine"] = "1"
    assert first is not second and "X-Mine" not in second.headers


def test_routes_in_the_shape_of_1_3():
    router = Router(prefix="/users", tags=["users"])

    @router.get("/", tags=["list"], summary="All users")
    def list_users():
        return []

    @router.post("/{uid}")
    def update(uid: int):
        return uid

    assert [(r["path"], r["method"], r["func"]) for r in router.routes] == [
        ("/", "GET", list_users),
        ("/{uid}", "POST", update),
    ]
    assert router.routes[0]["summary"] == "All users"
    assert router.routes[0].get("missing", "dflt") == "dflt"
    assert {"path", "method", "func", "tags", "dependencies"} <= set(router.routes[0].keys())
    # A read-only mapping, as 1.3's dicts were: membership, iteration, dict(), items().
    first = router.routes[0]
    assert "path" in first and "missing" not in first and 0 not in first
    assert dict(first) == first.as_dict() and list(first) == list(first.as_dict()) and len(first) == len(dict(first))
    assert dict(first.items())["func"] is list_users
    with pytest.raises(TypeError):
        first["path"] = "/x"  # type: ignore[index]
    assert len({*router.routes}) == 2  # still hashable, compared by identity
    app = Tachyon()
    app.include_router(router)
    routes = {(r["method"], r["path"]): r for r in app.routes}
    assert routes["GET", "/users"]["tags"] == ["users", "list"]
    assert routes["POST", "/users/{uid}"]["func"] is update


def test_register_and_get_instance():
    @injectable
    class Settings:
        def __init__(self) -> None:
            self.name = "built by the app"

    @injectable(scope=SCOPE_REQUEST)
    class PerRequest:
        pass

    app = Tachyon()
    assert app.get_instance(Settings) is None
    given = Settings()
    given.name = "registered"
    app.register_instance(Settings, given)
    assert app.get_instance(Settings) is given

    @app.get("/name")
    def name(settings: Settings = Depends()):
        return settings.name

    assert client_for(app).get("/name").json() == "registered"
    with pytest.raises(TypeError, match="singleton"):
        app.register_instance(PerRequest, PerRequest())

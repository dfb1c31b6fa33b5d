"""The last gaps to tachyon-api 1.3's public API, each checked against 1.3's documented behaviour and
signatures: security schemes on WebSocket routes, markers and constructors by position, the security headers
middleware's pairs, the OpenAPI helpers, the 500 component's name, the cache backends' clients, and the CLI.
"""

from __future__ import annotations

import base64
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tachyon_api import (
    Body,
    Cookie,
    Depends,
    File,
    Form,
    Header,
    InMemoryCacheBackend,
    MemcachedCacheBackend,
    Path,
    Query,
    RedisCacheBackend,
    Router,
    Struct,
    Tachyon,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
    cache,
    create_cache_config,
    get_cache_config,
    set_cache_config,
)
from tachyon_api.models import encode_json
from tachyon_api.openapi import Contact, Info, License, OpenAPIConfig, OpenAPIGenerator, Server, create_openapi_config
from tachyon_api.responses import TachyonBytesResponse
from tachyon_api.security import (
    APIKeyCookie,
    APIKeyHeader,
    APIKeyQuery,
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBearer,
    OAuth2PasswordBearer,
)
from tachyon_api.testing import TachyonTestClient

from .conftest import client_for, wait_until

# --- 1. security schemes guard WebSocket routes ----------------------------------------------------------------
BASIC = "Basic " + base64.b64encode(b"ann:pw").decode()
SCHEMES: list[tuple[Any, dict[str, Any], str]] = [
    # (scheme, what a client sends to pass, what the scheme returns then, as text)
    (
        HTTPBearer(),
        {"headers": {"authorization": "Bearer tok"}},
        "HTTPAuthorizationCredentials(scheme='Bearer', credentials='tok')",
    ),
    (HTTPBasic(), {"headers": {"authorization": BASIC}}, "HTTPBasicCredentials(username='ann', password='pw')"),
    (OAuth2PasswordBearer("/token"), {"headers": {"authorization": "Bearer tok"}}, "tok"),
    (APIKeyHeader("x-key"), {"headers": {"x-key": "k1"}}, "k1"),
    (APIKeyQuery("key"), {"query": "?key=k2"}, "k2"),
    (APIKeyCookie("key"), {"headers": {"cookie": "key=k3"}}, "k3"),
]


def _ws_refusal(app: Tachyon, path: str) -> WebSocketDisconnect:
    with pytest.raises(WebSocketDisconnect) as refused:
        with client_for(app).websocket_connect(path):
            pass
    return refused.value


@pytest.mark.parametrize(("scheme", "passing", "returned"), SCHEMES, ids=[type(s[0]).__name__ for s in SCHEMES])
def test_every_security_scheme_guards_a_websocket_route(scheme: Any, passing: dict[str, Any], returned: str) -> None:
    """Directly, nested in another dependency, and in app and router ``dependencies=``: accepted with the
    credentials, refused with a 1008 close (not an HTTP 401/403 body) without them."""

    def current_user(credentials: Any = Depends(scheme)) -> str:
        return str(credentials)

    app = Tachyon(dependencies=[Depends(scheme)])
    router = Router(prefix="/r", dependencies=[Depends(scheme)])

    @app.websocket("/direct")
    async def direct(websocket: WebSocket, credentials: Any = Depends(scheme)) -> None:
        await websocket.accept()
        await websocket.send_text(str(credentials))

    @app.websocket("/nested")
    async def nested(websocket: WebSocket, user: str = Depends(current_user)) -> None:
        await websocket.accept()
        await websocket.send_text(user)

    @router.websocket("/guarded")
    async def guarded(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("in")

    app.include_router(router)
    client = client_for(app)
    query = passing.get("query", "")
    headers = passing.get("headers")
    for path, expected in (("/direct", returned), ("/nested", returned), ("/r/guarded", "in")):
        with client.websocket_connect(path + query, headers=headers) as ws:
            assert ws.receive_text() == expected
        refused = _ws_refusal(app, path)
        assert (refused.code, refused.reason) == (1008, "Not authenticated")


def test_optional_scheme_on_a_websocket_serves_anonymous_users_and_keeps_its_openapi_name() -> None:
    """1.3's example: an admin socket behind ``Depends(get_optional_user)`` over ``HTTPBearer(auto_error=False)``."""
    bearer = HTTPBearer(auto_error=False)

    def optional_user(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str | None:
        return credentials.credentials if credentials else None

    app = Tachyon()

    @app.websocket("/admin")
    async def admin(websocket: WebSocket, user: str | None = Depends(optional_user)) -> None:
        await websocket.accept()
        await websocket.send_json({"user": user})

    @app.get("/me")
    def me(user: str | None = Depends(optional_user)) -> dict:
        return {"user": user}

    client = client_for(app)
    with client.websocket_connect("/admin") as ws:
        assert ws.receive_json() == {"user": None}
    with client.websocket_connect("/admin", headers={"authorization": "Bearer abc"}) as ws:
        assert ws.receive_json() == {"user": "abc"}
    assert client.get("/me", headers={"authorization": "Bearer abc"}).json() == {"user": "abc"}
    schema = app.openapi()
    assert schema["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    assert schema["paths"]["/me"]["get"]["security"] == [{"HTTPBearer": []}]


# --- 2. markers by position ------------------------------------------------------------------------------
def test_markers_by_position_keep_their_1_3_meaning() -> None:
    """1.3's signatures: ``Query(default, description)``, ``Header/Cookie/Form/File(default, alias,
    description)``, ``Path(description)``."""
    app = Tachyon()

    @app.get("/items/{item_id}")
    def read(
        item_id: int = Path("The item"),
        page: int = Query(1, "Page number"),
        token: str = Header(..., "X-Token", "The caller's token"),
        session: str = Cookie("none", "sid", "The session"),
    ) -> dict:
        return {"item_id": item_id, "page": page, "token": token, "session": session}

    @app.post("/upload")
    async def upload(note: str = Form(..., "the-note", "A note"), doc: UploadFile = File(..., "document", "The file")):
        return {"note": note, "name": doc.filename, "size": len(await doc.read())}

    client = client_for(app)
    answer = client.get("/items/3?page=2", headers={"X-Token": "t", "Cookie": "sid=s1"})
    assert answer.json() == {"item_id": 3, "page": 2, "token": "t", "session": "s1"}
    assert client.get("/items/3", headers={"X-Token": "t"}).json()["page"] == 1
    assert client.get("/items/3", headers={"token": "t"}).status_code == 422  # read under its alias only
    sent = client.post("/upload", data={"the-note": "hi"}, files={"document": ("a.txt", b"abc", "text/plain")})
    assert sent.json() == {"note": "hi", "name": "a.txt", "size": 3}
    parameters = {p["name"]: p for p in app.openapi()["paths"]["/items/{item_id}"]["get"]["parameters"]}
    assert parameters["item_id"]["description"] == "The item"
    assert parameters["page"]["description"] == "Page number"
    assert parameters["x-token"]["description"] == "The caller's token"
    assert parameters["sid"]["description"] == "The session"
    with pytest.raises(TypeError, match="multiple values for argument 'alias'"):
        Header(None, "X-A", alias="X-B")
    with pytest.raises(TypeError, match="at most 2 positional"):
        Query(1, "doc", "extra")


def test_body_by_position_is_refused_loudly_where_1_3_and_fastapi_disagree() -> None:
    """1.3's ``Body("text")`` was the description, FastAPI's is the default: refused, naming both keywords,
    never silently read one way."""
    with pytest.raises(TypeError, match=r"Body\(description='The order'\) or Body\(default='The order'\)"):
        Body("The order")
    assert Body(description="The order").description == "The order"
    assert Body(default="x").default == "x"
    assert Body(None).default is None  # not text: FastAPI's default (1.3's description=None meant nothing)
    assert Body("", max_length=2).default == ""  # a FastAPI keyword: 1.3's Body took none


# --- 3. constructors and helpers by 1.3's signatures --------------------------------------------------------
def test_tachyon_arguments_by_position_in_1_3_order() -> None:
    """1.3: ``Tachyon(openapi_config, cache_config, lifespan, max_body_size)``."""
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Tachyon):
        events.append("up")
        yield
        events.append("down")

    config = create_openapi_config(title="By position")
    previous = get_cache_config()
    cache_config = create_cache_config(backend=InMemoryCacheBackend())
    set_cache_config(previous)
    try:
        app = Tachyon(config, cache_config, lifespan, 10)
        assert app.openapi_config is config and app.cache_config is cache_config
        assert get_cache_config() is cache_config
    finally:
        set_cache_config(previous)

    @app.post("/echo")
    def echo(data: dict) -> dict:
        return data

    with TachyonTestClient(app) as client:
        assert client.post("/echo", content=b'{"a":1}', headers={"content-type": "application/json"}).json() == {"a": 1}
        assert client.post("/echo", json={"long": "x" * 20}).status_code == 413  # max_body_size=10
        assert app.openapi()["info"]["title"] == "By position"
    assert events == ["up", "down"]


def test_bytes_response_takes_body_and_encode_json_takes_orjson_options() -> None:
    app = Tachyon()

    @app.get("/raw")
    def raw() -> TachyonBytesResponse:
        return TachyonBytesResponse(body=b'{"ready":true}', status_code=201)

    answer = client_for(app).get("/raw")
    assert (answer.status_code, answer.json(), answer.headers["content-type"]) == (
        201,
        {"ready": True},
        "application/json",
    )
    with pytest.raises(TypeError, match="not both"):
        TachyonBytesResponse(b"{}", body=b"{}")
    # orjson's OPT_INDENT_2 | OPT_SORT_KEYS | OPT_APPEND_NEWLINE, as 1.3 passed them through.
    indented = encode_json({"b": [1, {}], "a": {"y": 1, "x": []}}, option=1 | 32 | 1024)
    assert indented == b'{\n  "a": {\n    "x": [],\n    "y": 1\n  },\n  "b": [\n    1,\n    {}\n  ]\n}\n'
    assert encode_json({"b": 1, "a": 2}, option=None) == b'{"b":1,"a":2}'
    with pytest.raises(ValueError, match="not supported"):
        encode_json({}, option=8)  # OPT_OMIT_MICROSECONDS: refused, not ignored


# --- 4. SecurityHeadersMiddleware(extra_headers=...) ---------------------------------------------------------
@pytest.mark.parametrize("extra", [[("X-A", "1"), ("X-B", "2")], {"X-A": "1", "X-B": "2"}], ids=["pairs", "mapping"])
def test_security_headers_extra_headers_as_pairs_or_mapping(extra: Any) -> None:
    """1.3 documented ``extra_headers`` as an iterable of ``(name, value)`` pairs; a mapping works too."""
    from tachyon_api.middlewares import SecurityHeadersMiddleware

    app = Tachyon()
    app.add_middleware(SecurityHeadersMiddleware, extra_headers=extra)

    @app.get("/")
    def home() -> dict:
        return {}

    headers = client_for(app).get("/").headers
    assert (headers["x-a"], headers["x-b"], headers["x-frame-options"]) == ("1", "2", "DENY")


# --- 5. OpenAPI helpers, asset URLs, tags ---------------------------------------------------------------------
class Out(Struct):
    id: int


def test_openapi_config_objects_have_1_3_to_dict_helpers() -> None:
    contact = Contact(name="Ops", email="ops@example.com")
    license_ = License("MIT", "https://opensource.org/licenses/MIT")
    server = Server("https://api.example.com", "production")
    assert contact.to_dict() == {"name": "Ops", "email": "ops@example.com"}
    assert Contact().to_dict() == {}
    assert license_.to_dict() == {"name": "MIT", "url": "https://opensource.org/licenses/MIT"}
    assert server.to_dict() == {"url": "https://api.example.com", "description": "production"}
    info = Info(
        title="KYC", version="2.0.0", terms_of_service="https://example.com/tos", contact=contact, license=license_
    )
    assert info.to_dict() == {
        "title": "KYC",
        "version": "2.0.0",
        "description": "A fast API built with Tachyon",
        "termsOfService": "https://example.com/tos",
        "contact": contact.to_dict(),
        "license": license_.to_dict(),
    }
    config = OpenAPIConfig(info=info, servers=[server], openapi_version="3.0.3")
    assert config.to_openapi_dict() == {
        "openapi": "3.0.3",
        "info": info.to_dict(),
        "servers": [server.to_dict()],
        "paths": {},
        "components": {"schemas": {}},
    }


def test_asset_url_fields_hold_real_urls_by_default() -> None:
    for config in (OpenAPIConfig(), create_openapi_config()):
        for field in ("scalar_js_url", "redoc_js_url", "swagger_js_url", "swagger_css_url", "swagger_favicon_url"):
            assert getattr(config, field).startswith("https://"), field
    custom = create_openapi_config(redoc_js_url="https://cdn.example/redoc.js")
    assert custom.redoc_js_url == "https://cdn.example/redoc.js"
    app = Tachyon(create_openapi_config())
    page = client_for(app).get("/docs").text
    assert f'src="{app.openapi_config.scalar_js_url}"' in page


def test_generate_route_documents_a_function_without_serving_it() -> None:
    def find(item_id: int, q: str = Query("x", "Search text")) -> Out:
        """Find one item."""
        return Out(id=item_id)

    generator = OpenAPIGenerator(create_openapi_config(title="Generated"))
    generator.generate_route("/items/{item_id}", "GET", find, response_model=Out, tags=["items"])
    operation = generator.get_openapi_schema()["paths"]["/items/{item_id}"]["get"]
    assert operation["summary"] == "Find one item." and operation["tags"] == ["items"]
    assert {p["name"]: p["in"] for p in operation["parameters"]} == {"item_id": "path", "q": "query"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Out"
    }


def test_tags_a_string_is_one_tag_and_router_routes_hold_the_routers_tags() -> None:
    app = Tachyon()
    router = Router(prefix="/users", tags=["users"])

    @app.get("/solo", tags="solo")
    def solo() -> dict:
        return {}

    @router.get("/", tags="list")
    def list_users() -> list:
        return []

    @router.get("/plain")
    def plain() -> list:
        return []

    assert [r["tags"] for r in router.routes] == [["users", "list"], ["users"]]
    app.include_router(router, tags="v1")
    tags = {r["path"]: r["tags"] for r in app.routes}
    assert tags["/solo"] == ["solo"]
    assert tags["/users"] == ["v1", "users", "list"] and tags["/users/plain"] == ["v1", "users"]
    paths = app.openapi()["paths"]
    assert paths["/solo"]["get"]["tags"] == ["solo"]
    assert paths["/users"]["get"]["tags"] == ["v1", "users", "list"]


# --- 6. the 500 component keeps 1.3's name -------------------------------------------------------------------
def test_the_500_response_is_the_response_validation_error_component() -> None:
    app = Tachyon()

    @app.get("/items/{item_id}", response_model=Out)
    def item(item_id: int) -> dict:
        return {"id": "not a number"}

    schema = app.openapi()
    reference = schema["paths"]["/items/{item_id}"]["get"]["responses"]["500"]["content"]["application/json"]["schema"]
    assert reference == {"$ref": "#/components/schemas/ResponseValidationError"}
    component = schema["components"]["schemas"]["ResponseValidationError"]
    answer = client_for(app).get("/items/1")
    assert answer.status_code == 500
    body = answer.json()
    assert set(component["required"]) <= set(body) and body["code"] in component["properties"]["code"]["enum"]


# --- 7. cache backends with the clients 1.3 users have --------------------------------------------------------
def test_memcached_backend_retries_with_time_for_clients_that_refuse_expire(memcached_address: Any) -> None:
    """python-memcached names the expiry ``time=``; 1.3 retried with it when ``expire=`` was refused."""
    import memcache

    client = memcache.Client([f"{memcached_address[0]}:{memcached_address[1]}"])
    with pytest.raises(TypeError, match="expire"):
        client.set("probe", b"x", expire=1)  # this client really refuses expire=
    backend = MemcachedCacheBackend(client)
    backend.set("point", {"x": 1}, ttl=60)
    assert backend.get("point") == {"x": 1}
    backend.set("short", "v", ttl=0.2)  # one second for memcached: it does expire
    assert backend.get("short") == "v"
    assert wait_until(lambda: backend.get("short") is None, 4)
    backend.delete("point")
    assert backend.get("point") is None


def test_redis_backend_works_with_a_decode_responses_client(redis_url: str) -> None:
    """A common client setting that 1.3 supported (it stored text): reads hit instead of failing."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    backend = RedisCacheBackend(client, prefix="compat:text:")
    backend.set("out", Out(id=7), ttl=60)
    assert backend.get("out") == Out(id=7)
    assert isinstance(client.get("compat:text:out"), str)
    calls: list[int] = []

    @cache(TTL=60, backend=backend)
    def lookup(n: int) -> dict:
        calls.append(n)
        return {"n": n}

    assert lookup(3) == lookup(3) == {"n": 3}
    assert calls == [3]
    backend.clear()
    assert client.keys("compat:text:*") == []


# --- 8. the tachyon command -----------------------------------------------------------------------------------
CLI_APP = """
from tachyon_api import Tachyon

app = Tachyon()


@app.get("/ping")
def ping():
    return {"pong": True}
"""


def test_run_accepts_1_3_flags_no_reload_prod_and_tachyon_server(serve_process: Any) -> None:
    """``--prod`` is 1.3's production mode (no reload, no access log); ``--tachyon-server`` runs the default
    server with a notice; ``--no-reload`` is accepted."""
    import httpx

    server = serve_process(CLI_APP, "--no-reload", "--prod", "--tachyon-server")
    assert httpx.get(f"{server.url}/ping", timeout=5).json() == {"pong": True}
    server.terminate()
    server.wait()
    output = server.output()
    assert "--tachyon-server" in output and "default server is used" in output
    assert "GET /ping" not in output  # --prod: no access log
    assert "Traceback" not in output


@pytest.mark.parametrize("kind", ["controller", "repository", "dto"])
def test_generate_with_path_writes_one_file_named_after_the_kind(kind: str, tmp_path: Any, monkeypatch: Any) -> None:
    """1.3: ``tachyon generate controller users --path P`` wrote ``P/users_controller.py``."""
    from tachyon_api.cli import main

    monkeypatch.chdir(tmp_path)
    main(["generate", kind, "users", "--path", "app_code"])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        f"app_code/users_{kind}.py"
    ]
    compile((tmp_path / "app_code" / f"users_{kind}.py").read_text(), kind, "exec")


def test_generate_service_with_an_absolute_path_prints_a_usable_import(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    from tachyon_api.cli import main

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    main(["generate", "service", "users", "--path", str(project / "features")])
    assert "from features.users import router as users_router" in capsys.readouterr().out
    main(["generate", "service", "orders", "--path", str(tmp_path / "elsewhere")])
    printed = capsys.readouterr().out
    assert "from orders import router as orders_router" in printed
    assert f"add {tmp_path / 'elsewhere'} to sys.path" in printed
    assert "from /" not in printed


def test_openapi_validate_says_why_a_file_without_openapi_is_refused(tmp_path: Any) -> None:
    import json

    from tachyon_api.cli import main

    document = tmp_path / "schema.json"
    document.write_text(json.dumps({"info": {"title": "x", "version": "1"}, "paths": {}}))
    with pytest.raises(SystemExit) as refused:
        main(["openapi", "validate", str(document)])
    assert "no 'openapi' key" in str(refused.value.code)

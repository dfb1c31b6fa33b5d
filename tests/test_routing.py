"""Routing: decorators, routers, path templates and typed parameters, 404/405, HEAD, status codes."""

from __future__ import annotations

import enum
import uuid

import pytest

from tachyon_api import Depends, Header, HTTPException, Request, Router, Tachyon
from tachyon_api.responses import PlainTextResponse

from .conftest import client_for

VERBS = ["get", "post", "put", "patch", "delete", "options"]


# --- decorators ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_decorator_serves_its_method(verb):
    app = Tachyon()

    def endpoint():
        return {"verb": verb}

    decorated = getattr(app, verb)("/thing")(endpoint)
    assert decorated is endpoint

    client = client_for(app)
    response = client.request(verb.upper(), "/thing")
    assert response.status_code == 200
    assert response.json() == {"verb": verb}


def test_head_decorator_registers_an_explicit_head_route():
    app = Tachyon()
    calls = []

    @app.head("/probe")
    def probe():
        calls.append("head")
        return {"x": 1}

    client = client_for(app)
    response = client.head("/probe")
    assert response.status_code == 200
    assert response.content == b""
    assert calls == ["head"]
    # Only HEAD was registered: GET is not allowed.
    other = client.get("/probe")
    assert other.status_code == 405
    assert other.headers["allow"] == "HEAD"


def test_route_with_several_methods_returns_function_unchanged():
    app = Tachyon()

    async def multi():
        return {"ok": True}

    assert app.route("/multi", methods=["GET", "POST", "PUT"])(multi) is multi
    client = client_for(app)
    for method in ("GET", "POST", "PUT"):
        response = client.request(method, "/multi")
        assert response.status_code == 200, method
        assert response.json() == {"ok": True}
    response = client.delete("/multi")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST, PUT"


def test_route_methods_are_case_insensitive():
    app = Tachyon()

    @app.route("/lower", methods=["post", "patch"])
    def lower():
        return "ok"

    client = client_for(app)
    assert client.post("/lower").json() == "ok"
    assert client.patch("/lower").json() == "ok"


def test_same_path_different_methods_dispatch_to_different_endpoints():
    app = Tachyon()

    @app.get("/items")
    def list_items():
        return ["list"]

    @app.post("/items", status_code=201)
    def create_item():
        return {"created": True}

    @app.delete("/items")
    def delete_items():
        return None

    client = client_for(app)
    assert client.get("/items").json() == ["list"]
    created = client.post("/items")
    assert created.status_code == 201
    assert created.json() == {"created": True}
    deleted = client.delete("/items")
    assert deleted.status_code == 200
    assert deleted.json() is None


def user_routes(app: Tachyon) -> list[dict]:
    """``app.routes`` without the docs pages (/openapi.json, /docs, ...), which every app has."""
    return [r for r in app.routes if r.get("include_in_schema", True)]


def test_routes_property_lists_method_path_name():
    app = Tachyon()

    @app.route("/a", methods=["GET", "POST"])
    def alpha():
        return {}

    @app.get("/b/{x}", name="custom")
    def beta(x: int):
        return {}

    rows = {(r["method"], r["path"], r["name"]) for r in user_routes(app)}
    assert rows == {("GET", "/a", "alpha"), ("POST", "/a", "alpha"), ("GET", "/b/{x}", "custom")}


def test_invalid_path_templates_fail_at_registration():
    app = Tachyon()
    with pytest.raises(ValueError):
        app.get("no-slash")(lambda: None)
    with pytest.raises(ValueError):
        app.get("/files/prefix-{name}")(lambda name: None)


# --- status codes ----------------------------------------------------------------------------------------
def test_status_code_on_decorator_is_honoured():
    app = Tachyon()

    @app.post("/made", status_code=201)
    def made():
        return {"id": 1}

    @app.put("/accepted", status_code=202)
    async def accepted():
        return {"queued": True}

    client = client_for(app)
    response = client.post("/made")
    assert response.status_code == 201
    assert response.json() == {"id": 1}
    assert client.put("/accepted").status_code == 202


def test_status_code_204_sends_no_body():
    app = Tachyon()

    @app.delete("/gone", status_code=204)
    def gone():
        return None

    response = client_for(app).delete("/gone")
    assert response.status_code == 204
    assert response.content == b""


# --- routers ---------------------------------------------------------------------------------------------
def test_router_prefix_and_all_decorators():
    router = Router(prefix="/api")
    for verb in VERBS:

        def endpoint(verb=verb):
            return {"via": verb}

        assert getattr(router, verb)("/r")(endpoint) is endpoint

    def head_only():
        return None

    assert router.head("/h")(head_only) is head_only

    @router.route("/both", methods=["GET", "POST"])
    def both():
        return "both"

    app = Tachyon()
    app.include_router(router)
    client = client_for(app)
    for verb in VERBS:
        response = client.request(verb.upper(), "/api/r")
        assert response.status_code == 200, verb
        assert response.json() == {"via": verb}
    assert client.head("/api/h").status_code == 200
    assert client.post("/api/both").json() == "both"
    assert client.get("/r").status_code == 404


def test_router_prefix_without_slash_is_normalised():
    router = Router(prefix="api")
    assert router.prefix == "/api"

    @router.get("/ping")
    def ping():
        return "pong"

    app = Tachyon()
    app.include_router(router)
    client = client_for(app)
    assert client.get("/api/ping").json() == "pong"
    assert client.get("/apiping").status_code == 404


def test_include_router_prefix_without_slash_is_normalised():
    router = Router()

    @router.get("/ping")
    def ping():
        return "pong"

    app = Tachyon()
    app.include_router(router, prefix="api")
    client = client_for(app)
    assert client.get("/api/ping").json() == "pong"
    assert [r["path"] for r in user_routes(app)] == ["/api/ping"]


def test_include_router_with_extra_prefix_and_tags():
    router = Router(prefix="/users", tags=["users"])

    @router.get("/")
    def list_users():
        return ["u"]

    @router.get("/{uid}", tags=["detail"])
    def get_user(uid: int):
        return {"uid": uid}

    app = Tachyon()
    app.include_router(router, prefix="/v1", tags=["v1"])
    client = client_for(app)
    assert client.get("/v1/users").json() == ["u"]
    assert client.get("/v1/users/").json() == ["u"]
    assert client.get("/v1/users/7").json() == {"uid": 7}
    assert client.get("/users/7").status_code == 404

    by_path = {r["path"]: r for r in user_routes(app)}
    assert set(by_path) == {"/v1/users", "/v1/users/{uid}"}
    assert by_path["/v1/users"]["tags"] == ["v1", "users"]
    assert by_path["/v1/users/{uid}"]["tags"] == ["v1", "users", "detail"]


def test_include_router_rejects_non_router():
    app = Tachyon()
    with pytest.raises(TypeError):
        app.include_router(object())  # type: ignore[arg-type]


def test_router_dependencies_guard_the_endpoint():
    calls = []

    def guard(authorization: str | None = Header(None)):
        calls.append("guard")
        if authorization != "Bearer good":
            raise HTTPException(401, "Unauthorized", {"WWW-Authenticate": "Bearer"})

    router = Router(prefix="/secure", dependencies=[Depends(guard)])

    @router.get("/data")
    def data():
        calls.append("endpoint")
        return {"secret": 42}

    app = Tachyon()
    app.include_router(router)
    client = client_for(app)

    denied = client.get("/secure/data")
    assert denied.status_code == 401
    assert denied.json() == {"detail": "Unauthorized"}
    assert denied.headers["www-authenticate"] == "Bearer"
    assert calls == ["guard"]

    calls.clear()
    allowed = client.get("/secure/data", headers={"Authorization": "Bearer good"})
    assert allowed.status_code == 200
    assert allowed.json() == {"secret": 42}
    assert calls == ["guard", "endpoint"]


def test_include_router_dependencies_and_route_dependencies_run_in_order():
    order = []

    def outer():
        order.append("include")

    def router_dep():
        order.append("router")

    async def route_dep():
        order.append("route")

    router = Router(dependencies=[Depends(router_dep)])

    @router.get("/x", dependencies=[Depends(route_dep)])
    def endpoint():
        order.append("endpoint")
        return "done"

    app = Tachyon()
    app.include_router(router, prefix="/p", dependencies=[Depends(outer)])
    response = client_for(app).get("/p/x")
    assert response.json() == "done"
    assert order == ["include", "router", "route", "endpoint"]


def test_route_dependency_guard_raising_stops_request():
    endpoint_calls = []

    async def deny():
        raise HTTPException(401, "nope")

    app = Tachyon()

    @app.get("/guarded", dependencies=[Depends(deny)])
    def guarded():
        endpoint_calls.append(1)
        return "should not happen"

    response = client_for(app).get("/guarded")
    assert response.status_code == 401
    assert response.json() == {"detail": "nope"}
    assert endpoint_calls == []


def test_app_level_dependencies_apply_to_routes_and_routers():
    seen = []

    def app_guard():
        seen.append("app")

    app = Tachyon(dependencies=[Depends(app_guard)])

    @app.get("/direct")
    def direct():
        return 1

    router = Router()

    @router.get("/routed")
    def routed():
        return 2

    app.include_router(router)
    client = client_for(app)
    assert client.get("/direct").json() == 1
    assert client.get("/routed").json() == 2
    assert seen == ["app", "app"]


# --- path parameters -------------------------------------------------------------------------------------
class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def _typed_app() -> Tachyon:
    app = Tachyon()

    @app.get("/int/{value}")
    def as_int(value: int):
        return {"value": value, "type": type(value).__name__}

    @app.get("/float/{value}")
    def as_float(value: float):
        return {"value": value, "type": type(value).__name__}

    @app.get("/str/{value}")
    def as_str(value: str):
        return {"value": value, "type": type(value).__name__}

    @app.get("/uuid/{value}")
    def as_uuid(value: uuid.UUID):
        return {"value": str(value), "type": type(value).__name__}

    @app.get("/enum/{value}")
    def as_enum(value: Color):
        return {"value": value.value, "type": type(value).__name__}

    @app.get("/two/{a}/and/{b}")
    async def two(a: int, b: str):
        return {"a": a, "b": b}

    return app


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/int/42", {"value": 42, "type": "int"}),
        ("/int/-3", {"value": -3, "type": "int"}),
        ("/float/2.5", {"value": 2.5, "type": "float"}),
        ("/float/3", {"value": 3.0, "type": "float"}),
        ("/str/hello", {"value": "hello", "type": "str"}),
        ("/str/123", {"value": "123", "type": "str"}),
        (
            "/uuid/12345678-1234-5678-1234-567812345678",
            {"value": "12345678-1234-5678-1234-567812345678", "type": "UUID"},
        ),
        ("/enum/red", {"value": "red", "type": "Color"}),
        ("/two/1/and/x", {"a": 1, "b": "x"}),
    ],
)
def test_typed_path_parameters_convert(path, expected):
    response = client_for(_typed_app()).get(path)
    assert response.status_code == 200
    assert response.json() == expected


@pytest.mark.parametrize(
    "path",
    ["/int/abc", "/int/1.5", "/float/nope", "/uuid/not-a-uuid", "/enum/green", "/two/x/and/y"],
)
def test_non_converting_path_value_is_404(path):
    response = client_for(_typed_app()).get(path)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_percent_encoded_path_parameter_is_decoded():
    app = Tachyon()

    @app.get("/echo/{word}")
    def echo(word: str):
        return {"word": word}

    assert client_for(app).get("/echo/a%20b").json() == {"word": "a b"}


def test_untyped_path_parameter_is_a_string():
    app = Tachyon()

    @app.get("/raw/{thing}")
    def raw(thing):
        return {"thing": thing, "type": type(thing).__name__}

    assert client_for(app).get("/raw/12").json() == {"thing": "12", "type": "str"}


def test_static_segment_wins_over_parameter():
    app = Tachyon()

    @app.get("/users/me")
    def me():
        return {"route": "me"}

    @app.get("/users/{uid}")
    def user(uid: str):
        return {"route": "user", "uid": uid}

    client = client_for(app)
    assert client.get("/users/me").json() == {"route": "me"}
    assert client.get("/users/bob").json() == {"route": "user", "uid": "bob"}


def test_static_segment_backtracks_to_parameter():
    app = Tachyon()

    @app.get("/users/me/settings")
    def settings():
        return {"route": "settings"}

    @app.get("/users/{uid}/posts")
    def posts(uid: str):
        return {"route": "posts", "uid": uid}

    client = client_for(app)
    assert client.get("/users/me/settings").json() == {"route": "settings"}
    assert client.get("/users/me/posts").json() == {"route": "posts", "uid": "me"}
    assert client.get("/users/42/posts").json() == {"route": "posts", "uid": "42"}
    assert client.get("/users/42/settings").status_code == 404


def test_backtracking_is_registration_order_independent():
    app = Tachyon()

    @app.get("/users/{uid}/posts")
    def posts(uid: str):
        return {"route": "posts", "uid": uid}

    @app.get("/users/me/settings")
    def settings():
        return {"route": "settings"}

    client = client_for(app)
    assert client.get("/users/me/posts").json() == {"route": "posts", "uid": "me"}
    assert client.get("/users/me/settings").json() == {"route": "settings"}


def test_different_param_names_at_same_position():
    app = Tachyon()

    @app.get("/a/{x}")
    def first(x: str):
        return {"route": "first", "x": x}

    @app.get("/a/{y}/b")
    def second(y: str):
        return {"route": "second", "y": y}

    client = client_for(app)
    assert client.get("/a/1").json() == {"route": "first", "x": "1"}
    assert client.get("/a/2/b").json() == {"route": "second", "y": "2"}


def test_path_params_exposed_on_request():
    app = Tachyon()

    @app.get("/p/{x}/{y}")
    def show(request: Request, x: int):
        return request.path_params

    assert client_for(app).get("/p/5/six").json() == {"x": "5", "y": "six"}


def test_converting_parameter_404_falls_through_to_no_other_route():
    # A typed parameter that does not convert means "route does not exist", not 422.
    app = Tachyon()

    @app.get("/orders/{oid}")
    def order(oid: int):
        return {"oid": oid}

    response = client_for(app).get("/orders/latest")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


# --- 404 / 405 / HEAD ------------------------------------------------------------------------------------
def test_unknown_path_is_404_json():
    app = Tachyon()

    @app.get("/known")
    def known():
        return 1

    client = client_for(app)
    for path in ("/unknown", "/known/extra", "/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "Not Found"}
        assert response.headers["content-type"] == "application/json"


def test_404_for_app_without_routes():
    response = client_for(Tachyon()).post("/anything")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_wrong_method_is_405_with_sorted_allow_header():
    app = Tachyon()

    @app.put("/res")
    def put():
        return 1

    @app.get("/res")
    def get():
        return 2

    @app.delete("/res")
    def delete():
        return 3

    response = client_for(app).post("/res")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == "DELETE, GET, HEAD, PUT"


def test_405_without_get_has_no_head_in_allow():
    app = Tachyon()

    @app.post("/only-post")
    def only_post():
        return 1

    @app.patch("/only-post")
    def only_patch():
        return 1

    response = client_for(app).get("/only-post")
    assert response.status_code == 405
    assert response.headers["allow"] == "PATCH, POST"


def test_405_on_parameterised_path():
    app = Tachyon()

    @app.get("/things/{tid}")
    def thing(tid: int):
        return tid

    response = client_for(app).delete("/things/3")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_head_served_for_every_get_route_without_body():
    app = Tachyon()

    @app.get("/static")
    def static():
        return {"hello": "world"}

    @app.get("/dyn/{n}")
    async def dyn(n: int):
        return {"n": n, "pad": "x" * n}

    client = client_for(app)
    for path in ("/static", "/dyn/10"):
        get = client.get(path)
        head = client.head(path)
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"] == "application/json"
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))


def test_head_for_get_returning_response_object():
    app = Tachyon()

    @app.get("/text")
    def text():
        return PlainTextResponse("hello there", headers={"X-Extra": "1"})

    client = client_for(app)
    head = client.head("/text")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["x-extra"] == "1"
    assert head.headers["content-length"] == "11"
    assert head.headers["content-type"].startswith("text/plain")


def test_trailing_slash_and_empty_segments_tolerated():
    app = Tachyon()

    @app.get("/users")
    def users():
        return "users"

    @app.get("/users/{uid}/posts")
    def posts(uid: int):
        return {"uid": uid}

    client = client_for(app)
    assert client.get("/users/").json() == "users"
    assert client.get("/users/5/posts/").json() == {"uid": 5}
    assert client.get("/users//5//posts").json() == {"uid": 5}


def test_root_route():
    app = Tachyon()

    @app.get("/")
    def root():
        return {"root": True}

    client = client_for(app)
    assert client.get("/").json() == {"root": True}
    assert client.get("/x").status_code == 404


def test_same_node_different_methods_keep_their_own_param_names():
    app = Tachyon()

    @app.get("/n/{x}")
    def read(x: str):
        return {"x": x}

    @app.post("/n/{y}")
    def write(y: int):
        return {"y": y}

    client = client_for(app)
    assert client.get("/n/a").json() == {"x": "a"}
    assert client.post("/n/3").json() == {"y": 3}


def test_backtracking_across_methods():
    # The static node has only POST; GET must fall through to the parameter route.
    app = Tachyon()

    @app.post("/users/me/posts")
    def create_my_post():
        return "created"

    @app.get("/users/{uid}/posts")
    def posts(uid: str):
        return {"uid": uid}

    client = client_for(app)
    assert client.get("/users/me/posts").json() == {"uid": "me"}
    assert client.post("/users/me/posts").json() == "created"
    response = client.put("/users/me/posts")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"

"""Parameter markers, classification at registration, and conversion/validation of query, path, header, cookie
and form values (issue "Parameters, validation, uploads and DI", points 1-3 and 5)."""

import dataclasses
import datetime
import decimal
import enum
import uuid
from typing import Optional, Union

import pytest

import tachyon_api
from tachyon_api import (
    BackgroundTasks,
    Cookie,
    Depends,
    Form,
    Header,
    Path,
    Query,
    Request,
    Struct,
    Tachyon,
    UploadFile,
    params,
)
from tachyon_api.testing import TachyonTestClient

from .conftest import assert_validation_error

# --- 1. markers ------------------------------------------------------------------------------------------
MARKERS = ["Query", "Path", "Body", "Header", "Cookie", "Form", "File"]


@pytest.mark.parametrize("name", MARKERS)
def test_marker_is_exported_from_package_and_params_module(name):
    assert name in tachyon_api.__all__
    assert getattr(tachyon_api, name) is getattr(params, name)


@pytest.mark.parametrize("name", MARKERS)
def test_marker_records_default_alias_description(name):
    cls = getattr(params, name)
    marker = cls(5, alias="the-alias", description="what it is")
    assert marker.default == 5
    assert marker.alias == "the-alias"
    assert marker.description == "what it is"
    bare = cls()
    assert bare.default is ...
    assert bare.alias is None
    assert bare.description is None
    assert cls(default=None).default is None
    assert cls(...).default is ...


def test_ellipsis_means_required_and_value_means_optional():
    app = Tachyon()

    @app.get("/q")
    def handler(a: str = Query(...), b: str = Query("dflt")):
        return {"a": a, "b": b}

    with TachyonTestClient(app) as client:
        assert client.get("/q", params={"a": "x"}).json() == {"a": "x", "b": "dflt"}
        errors = assert_validation_error(client.get("/q"), [["query", "a"]])
        assert errors[0]["type"] == "missing"


# --- 2. classification -----------------------------------------------------------------------------------
class Item(Struct):
    name: str
    price: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


def test_name_in_path_template_is_path_param():
    app = Tachyon()

    @app.get("/users/{user_id}/posts/{slug}")
    def handler(user_id: int, slug: str):
        return {"user_id": user_id, "slug": slug, "type": type(user_id).__name__}

    with TachyonTestClient(app) as client:
        response = client.get("/users/42/posts/hello-world")
    assert response.status_code == 200
    assert response.json() == {"user_id": 42, "slug": "hello-world", "type": "int"}


def test_explicit_path_marker():
    app = Tachyon()

    @app.get("/files/{file_id}")
    def handler(file_id: uuid.UUID = Path(..., description="the file")):
        return {"file_id": str(file_id), "type": type(file_id).__name__}

    value = uuid.uuid4()
    with TachyonTestClient(app) as client:
        response = client.get(f"/files/{value}")
    assert response.status_code == 200
    assert response.json() == {"file_id": str(value), "type": "UUID"}


def test_unmarked_scalars_optionals_and_lists_are_query_params():
    app = Tachyon()
    seen = {}

    @app.get("/search")
    def handler(
        s: str,
        i: int,
        f: float,
        b: bool,
        d: decimal.Decimal,
        u: uuid.UUID,
        c: Color,
        day: datetime.date,
        at: datetime.datetime,
        opt: Optional[int] = None,
        pipe: int | None = None,
        tags: list[str] = [],  # noqa: B006
    ):
        seen.update(locals())
        return {"ok": True}

    value = uuid.uuid4()
    query = [
        ("s", "text"),
        ("i", "3"),
        ("f", "1.5"),
        ("b", "true"),
        ("d", "9.99"),
        ("u", str(value)),
        ("c", "green"),
        ("day", "2024-02-29"),
        ("at", "2024-02-29T10:11:12"),
        ("opt", "7"),
        ("pipe", "8"),
        ("tags", "a"),
        ("tags", "b"),
    ]
    with TachyonTestClient(app) as client:
        response = client.get("/search", params=query)
    assert response.status_code == 200, response.text
    assert seen["s"] == "text"
    assert seen["i"] == 3 and type(seen["i"]) is int
    assert seen["f"] == 1.5
    assert seen["b"] is True
    assert seen["d"] == decimal.Decimal("9.99") and isinstance(seen["d"], decimal.Decimal)
    assert seen["u"] == value
    assert seen["c"] is Color.GREEN
    assert seen["day"] == datetime.date(2024, 2, 29)
    assert seen["at"] == datetime.datetime(2024, 2, 29, 10, 11, 12)
    assert seen["opt"] == 7
    assert seen["pipe"] == 8
    assert seen["tags"] == ["a", "b"]


def test_unmarked_struct_dataclass_and_dict_are_json_body():
    app = Tachyon()

    @app.post("/struct")
    def struct_body(item: Item):
        assert isinstance(item, Item)
        return {"name": item.name, "price": item.price}

    @app.post("/dataclass")
    def dataclass_body(point: Point):
        assert isinstance(point, Point)
        return {"sum": point.x + point.y}

    @app.post("/dict")
    def dict_body(payload: dict):
        return {"keys": sorted(payload)}

    with TachyonTestClient(app) as client:
        assert client.post("/struct", json={"name": "pen", "price": 2.5}).json() == {"name": "pen", "price": 2.5}
        assert client.post("/dataclass", json={"x": 2, "y": 3}).json() == {"sum": 5}
        assert client.post("/dict", json={"b": 1, "a": 2}).json() == {"keys": ["a", "b"]}
        # the body is not read from the query string
        assert_validation_error(client.post("/struct?name=pen&price=2"), [["body"]])


def test_reset_password_reads_email_from_query_with_background_tasks():
    app = Tachyon()
    sent = []

    def send_reset(email: str) -> None:
        sent.append(email)

    @app.post("/reset-password")
    def reset_password(email: str, background_tasks: BackgroundTasks):
        background_tasks.add_task(send_reset, email)
        return {"message": "sent"}

    with TachyonTestClient(app) as client:
        response = client.post("/reset-password", params={"email": "a@b.c"})
        assert response.status_code == 200
        assert response.json() == {"message": "sent"}
        assert sent == ["a@b.c"]
        assert_validation_error(client.post("/reset-password"), [["query", "email"]])
    assert sent == ["a@b.c"]


def test_import_data_takes_multipart_upload_with_background_tasks():
    app = Tachyon()
    imported = []

    def do_import(name: str, data: bytes) -> None:
        imported.append((name, data))

    @app.post("/import")
    async def import_data(file: UploadFile, background_tasks: BackgroundTasks):
        data = await file.read()
        background_tasks.add_task(do_import, file.filename, data)
        return {"filename": file.filename, "size": len(data)}

    with TachyonTestClient(app) as client:
        response = client.post("/import", files={"file": ("rows.csv", b"a,b\n1,2\n", "text/csv")})
    assert response.status_code == 200, response.text
    assert response.json() == {"filename": "rows.csv", "size": 8}
    assert imported == [("rows.csv", b"a,b\n1,2\n")]


def test_request_and_background_tasks_are_classified_by_annotation():
    app = Tachyon()
    seen = {}

    @app.get("/x")
    async def handler(req: Request, tasks: BackgroundTasks, q: int = 0):
        seen["req"] = req
        seen["tasks"] = tasks
        return {"path": req.url.path, "q": q}

    with TachyonTestClient(app) as client:
        assert client.get("/x?q=3").json() == {"path": "/x", "q": 3}
    assert isinstance(seen["req"], Request)
    assert isinstance(seen["tasks"], BackgroundTasks)


class Foo:
    pass


def test_unclassifiable_parameter_raises_type_error_at_registration():
    app = Tachyon()
    called = []

    with pytest.raises(TypeError) as excinfo:

        @app.get("/bad")
        def broken_endpoint(foo: Foo):
            called.append(foo)

    message = str(excinfo.value)
    assert "broken_endpoint" in message
    assert "foo" in message
    # the route was not half-registered
    with TachyonTestClient(app) as client:
        assert client.get("/bad").status_code == 404
    assert called == []


def test_unclassifiable_parameter_of_a_dependency_raises_at_registration():
    app = Tachyon()

    def needs_foo(thing: Foo):
        return thing

    with pytest.raises(TypeError) as excinfo:

        @app.get("/bad")
        def endpoint(value=Depends(needs_foo)):
            return value

    assert "needs_foo" in str(excinfo.value)
    assert "thing" in str(excinfo.value)


def test_unclassifiable_parameter_with_a_default_raises_at_registration():
    app = Tachyon()

    with pytest.raises(TypeError, match="other_endpoint"):

        @app.post("/bad")
        async def other_endpoint(ok: int, weird: Foo = None):
            return None


def test_string_annotations_from_future_import():
    from ._future_app import app

    with TachyonTestClient(app) as client:
        response = client.post(
            "/items/5?limit=3&flag=yes&tag=a&tag=b&maybe=2",
            json={"name": "pen", "price": 1.5},
            headers={"x-api-key": "k"},
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "item_id": 5,
            "limit": 3,
            "flag": True,
            "tags": ["a", "b"],
            "maybe": 2,
            "item": {"name": "pen", "price": 1.5},
            "key": "k",
            "dep": "dep:3:/items/5",
            "method": "POST",
            "tasks": True,
        }
        errors = assert_validation_error(
            client.post("/items/5?limit=x", json={"name": "pen", "price": 1.5}),
            [["query", "limit"], ["header", "x-api-key"]],
        )
        assert errors[1]["type"] == "missing"

        upload = client.post("/upload", files={"file": ("a.txt", b"abc", "text/plain")}, data={"count": "2"})
        assert upload.status_code == 200, upload.text
        assert upload.json() == {"filename": "a.txt", "count": 2, "data": "abc"}


# --- 3. conversion ---------------------------------------------------------------------------------------
def bool_app():
    app = Tachyon()

    @app.get("/q")
    def query(flag: bool):
        return {"flag": flag}

    @app.get("/h")
    def header(x_flag: bool = Header()):
        return {"flag": x_flag}

    @app.get("/c")
    def cookie(flag: bool = Cookie()):
        return {"flag": flag}

    @app.post("/f")
    def form(flag: bool = Form()):
        return {"flag": flag}

    return app


TRUTHY = ["true", "True", "TRUE", "1", "yes", "YES", "on", "On"]
FALSY = ["false", "False", "FALSE", "0", "no", "No", "off", "OFF"]
INVALID_BOOLS = ["maybe", "2", "", "truthy", "-1", "nope"]


@pytest.fixture(scope="module")
def bool_client():
    with TachyonTestClient(bool_app()) as client:
        yield client


@pytest.mark.parametrize("raw", TRUTHY + FALSY)
def test_bool_accepts_common_spellings_case_insensitively(bool_client, raw):
    expected = raw in TRUTHY
    assert bool_client.get("/q", params={"flag": raw}).json() == {"flag": expected}
    assert bool_client.get("/h", headers={"x-flag": raw}).json() == {"flag": expected}
    assert bool_client.get("/c", headers={"cookie": f"flag={raw}"}).json() == {"flag": expected}
    assert bool_client.post("/f", data={"flag": raw}).json() == {"flag": expected}


@pytest.mark.parametrize("raw", INVALID_BOOLS)
def test_bool_rejects_anything_else_with_422(bool_client, raw):
    assert_validation_error(bool_client.get("/q", params={"flag": raw}), [["query", "flag"]])
    assert_validation_error(bool_client.get("/h", headers={"x-flag": raw}), [["header", "x-flag"]])


def test_missing_bool_is_422_not_false(bool_client):
    errors = assert_validation_error(bool_client.get("/q"), [["query", "flag"]])
    assert errors[0]["type"] == "missing"


def test_optional_and_pipe_none_query_params():
    app = Tachyon()

    @app.get("/o")
    def handler(a: Optional[int] = None, b: int | None = None, c: Union[str, None] = None, d: Optional[float] = 2.5):
        return {"a": a, "b": b, "c": c, "d": d}

    with TachyonTestClient(app) as client:
        assert client.get("/o").json() == {"a": None, "b": None, "c": None, "d": 2.5}
        assert client.get("/o?a=1&b=2&c=x&d=0.5").json() == {"a": 1, "b": 2, "c": "x", "d": 0.5}
        assert_validation_error(client.get("/o?a=one&b=two"), [["query", "a"], ["query", "b"]])


def test_list_query_params_from_repeated_keys():
    app = Tachyon()

    @app.get("/l")
    def handler(
        tag: list[str] = Query([]),
        ids: list[int] = Query(None),
        colors: Optional[list[Color]] = None,
    ):
        return {"tag": tag, "ids": ids, "colors": [c.value for c in colors] if colors else colors}

    with TachyonTestClient(app) as client:
        assert client.get("/l?tag=a&tag=b&tag=c").json() == {"tag": ["a", "b", "c"], "ids": None, "colors": None}
        assert client.get("/l?ids=1&ids=22&colors=red&colors=green").json() == {
            "tag": [],
            "ids": [1, 22],
            "colors": ["red", "green"],
        }
        assert client.get("/l?ids=5").json()["ids"] == [5]
        errors = assert_validation_error(client.get("/l?ids=1&ids=x"))
        assert len(errors) == 1
        assert errors[0]["loc"][:2] == ["query", "ids"]


def test_required_list_query_param_missing_is_422():
    app = Tachyon()

    @app.get("/l")
    def handler(ids: list[int]):
        return {"ids": ids}

    with TachyonTestClient(app) as client:
        assert client.get("/l?ids=3&ids=4").json() == {"ids": [3, 4]}
        errors = assert_validation_error(client.get("/l"), [["query", "ids"]])
        assert errors[0]["type"] == "missing"


@pytest.mark.parametrize(
    ("annotation", "raw", "expected"),
    [
        (datetime.date, "2023-12-31", datetime.date(2023, 12, 31)),
        (datetime.datetime, "2023-12-31T23:59:58", datetime.datetime(2023, 12, 31, 23, 59, 58)),
        (uuid.UUID, "12345678-1234-5678-1234-567812345678", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        (decimal.Decimal, "10.50", decimal.Decimal("10.50")),
        (Color, "red", Color.RED),
        (Level, "2", Level.HIGH),
        (int, "-17", -17),
        (float, "2.25", 2.25),
        (str, "  spaced  ", "  spaced  "),
    ],
)
def test_typed_query_conversion(annotation, raw, expected):
    app = Tachyon()
    seen = []

    @app.get("/t")
    def handler(value: annotation):  # type: ignore[valid-type]
        seen.append(value)
        return {"ok": True}

    with TachyonTestClient(app) as client:
        response = client.get("/t", params={"value": raw})
    assert response.status_code == 200, response.text
    assert seen == [expected]
    assert type(seen[0]) is type(expected)


@pytest.mark.parametrize(
    ("annotation", "raw"),
    [
        (datetime.date, "2023-13-01"),
        (datetime.date, "yesterday"),
        (datetime.datetime, "noon"),
        (uuid.UUID, "not-a-uuid"),
        (decimal.Decimal, "ten"),
        (Color, "blue"),
        (Level, "7"),
        (int, "1.5"),
        (int, "abc"),
        (float, "x1"),
    ],
)
def test_invalid_typed_query_is_422(annotation, raw):
    app = Tachyon()
    called = []

    @app.get("/t")
    def handler(value: annotation):  # type: ignore[valid-type]
        called.append(value)

    with TachyonTestClient(app) as client:
        errors = assert_validation_error(client.get("/t", params={"value": raw}), [["query", "value"]])
    assert errors[0]["type"] != "missing"
    assert called == []


def test_path_params_are_converted():
    app = Tachyon()

    @app.get("/d/{day}/{color}/{amount}")
    def handler(day: datetime.date, color: Color, amount: decimal.Decimal):
        return {"day": day.isoformat(), "color": color.value, "amount": str(amount), "weekday": day.weekday()}

    with TachyonTestClient(app) as client:
        response = client.get("/d/2024-01-01/green/3.14")
    assert response.status_code == 200
    assert response.json() == {"day": "2024-01-01", "color": "green", "amount": "3.14", "weekday": 0}


def test_header_names_underscores_become_dashes_and_alias():
    app = Tachyon()

    @app.get("/h")
    def handler(
        x_api_key: str = Header(),
        token: str = Header(alias="X-Auth-Token"),
        x_count: int = Header(0),
        user_agent: str = Header("none"),
    ):
        return {"key": x_api_key, "token": token, "count": x_count, "ua": user_agent}

    with TachyonTestClient(app) as client:
        response = client.get(
            "/h", headers={"X-API-KEY": "secret", "x-auth-token": "t0k", "X-Count": "4", "User-Agent": "agent/1"}
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"key": "secret", "token": "t0k", "count": 4, "ua": "agent/1"}
        # the python name itself is not the header name
        errors = assert_validation_error(
            client.get("/h", headers={"x_api_key": "s", "token": "t"}),
            [["header", "x-api-key"], ["header", "x-auth-token"]],
        )
        assert [e["type"] for e in errors] == ["missing", "missing"]
        assert_validation_error(
            client.get("/h", headers={"x-api-key": "s", "x-auth-token": "t", "x-count": "many"}),
            [["header", "x-count"]],
        )


def test_list_header_from_repeated_headers():
    app = Tachyon()

    @app.get("/h")
    def handler(x_tag: list[str] = Header([])):
        return {"tags": x_tag}

    with TachyonTestClient(app) as client:
        response = client.get("/h", headers=[("x-tag", "a"), ("x-tag", "b")])
        assert response.json() == {"tags": ["a", "b"]}
        assert client.get("/h").json() == {"tags": []}


def test_query_alias():
    app = Tachyon()

    @app.get("/q")
    def handler(page_size: int = Query(10, alias="page-size"), q: Optional[str] = Query(None, alias="search")):
        return {"page_size": page_size, "q": q}

    with TachyonTestClient(app) as client:
        assert client.get("/q?page-size=25&search=hi").json() == {"page_size": 25, "q": "hi"}
        # the python name is not read when an alias is given
        assert client.get("/q?page_size=25&q=hi").json() == {"page_size": 10, "q": None}
        assert_validation_error(client.get("/q?page-size=big"), [["query", "page-size"]])


def test_cookies_with_alias_conversion_and_defaults():
    app = Tachyon()

    @app.get("/c")
    def handler(
        session_id: str = Cookie(alias="session-id"),
        visits: int = Cookie(0),
        theme: Optional[str] = Cookie(None),
    ):
        return {"session": session_id, "visits": visits, "theme": theme}

    with TachyonTestClient(app) as client:
        response = client.get("/c", headers={"cookie": "session-id=abc123; visits=7; theme=dark"})
        assert response.json() == {"session": "abc123", "visits": 7, "theme": "dark"}
        assert client.get("/c", headers={"cookie": "session-id=zz"}).json() == {
            "session": "zz",
            "visits": 0,
            "theme": None,
        }
        errors = assert_validation_error(client.get("/c", headers={"cookie": "visits=lots"}))
        assert [e["loc"] for e in errors] == [["cookie", "session-id"], ["cookie", "visits"]]
        assert errors[0]["type"] == "missing"


def test_form_alias_and_typed_form_field():
    app = Tachyon()

    @app.post("/f")
    def handler(full_name: str = Form(alias="full-name"), age: int = Form(), nick: str = Form("none")):
        return {"name": full_name, "age": age, "nick": nick}

    with TachyonTestClient(app) as client:
        assert client.post("/f", data={"full-name": "Ada", "age": "36"}).json() == {
            "name": "Ada",
            "age": 36,
            "nick": "none",
        }
        errors = assert_validation_error(client.post("/f", data={"full_name": "Ada", "age": "old"}))
        assert len(errors) == 2
        assert errors[0]["loc"][-1] == "full-name" and errors[0]["type"] == "missing"
        assert errors[1]["loc"][-1] == "age" and errors[1]["type"] != "missing"


def test_defaults_used_when_missing():
    app = Tachyon()

    @app.get("/d")
    def handler(
        implicit: int = 5,
        marked: str = Query("m"),
        x_header: str = Header("h"),
        crumb: str = Cookie("c"),
        nothing: Optional[str] = None,
    ):
        return {"implicit": implicit, "marked": marked, "header": x_header, "crumb": crumb, "nothing": nothing}

    with TachyonTestClient(app) as client:
        assert client.get("/d").json() == {"implicit": 5, "marked": "m", "header": "h", "crumb": "c", "nothing": None}
        assert client.get("/d?implicit=6&marked=n", headers={"x-header": "H", "cookie": "crumb=C"}).json() == {
            "implicit": 6,
            "marked": "n",
            "header": "H",
            "crumb": "C",
            "nothing": None,
        }


# --- 5. every failing field is reported -------------------------------------------------------------------
def test_all_failing_non_body_fields_reported_at_once():
    app = Tachyon()
    called = []

    @app.get("/items/{item_id}")
    def handler(item_id: int, limit: int, offset: int = 0, x_api_key: str = Header(), page: int = Query(1)):
        called.append(item_id)
        return {}

    with TachyonTestClient(app) as client:
        response = client.get("/items/1?limit=ten&offset=first")
        errors = assert_validation_error(response, [["query", "limit"], ["query", "offset"], ["header", "x-api-key"]])
        assert errors[0]["type"] != "missing"
        assert errors[1]["type"] != "missing"
        assert errors[2]["type"] == "missing"
        body = response.json()
        assert "limit" in body["error"]
        ok = client.get("/items/1?limit=2", headers={"x-api-key": "k"})
        assert ok.status_code == 200
    assert called == [1]


def test_query_and_body_errors_reported_together():
    app = Tachyon()

    @app.post("/p")
    def handler(item: Item, limit: int):
        return {}

    with TachyonTestClient(app) as client:
        errors = assert_validation_error(client.post("/p?limit=x", json={"name": "a", "price": "free"}))
    locs = [e["loc"] for e in errors]
    assert ["query", "limit"] in locs
    assert ["body", "price"] in locs
    assert len(errors) == 2


def test_enum_and_literal_errors_list_the_choices():
    import enum
    from typing import Literal

    from tachyon_api import Tachyon
    from tachyon_api.testing import TachyonTestClient

    class Color(enum.Enum):
        red = "red"
        green = "green"

    app = Tachyon()

    @app.get("/paint")
    def paint(color: Color, finish: Literal["matte", "gloss"] = "matte"):
        return {"color": color.value, "finish": finish}

    with TachyonTestClient(app) as client:
        assert client.get("/paint?color=red&finish=gloss").json() == {"color": "red", "finish": "gloss"}
        errors = client.get("/paint?color=blue&finish=shiny").json()["errors"]
    assert errors == [
        {"loc": ["query", "color"], "msg": "Input should be one of 'red', 'green'", "type": "enum"},
        {"loc": ["query", "finish"], "msg": "Input should be one of 'matte', 'gloss'", "type": "enum"},
    ]

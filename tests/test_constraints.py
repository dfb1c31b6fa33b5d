"""Constraints on every parameter source (FastAPI's marker keywords and ``Annotated[T, Meta(...)]``), their
422 errors, their place in the compiled parameter's type, and messages written for people."""

from __future__ import annotations

from typing import Annotated, Optional

import msgspec
import pytest
from msgspec import Meta

from tachyon_api import Body, Cookie, Form, Header, Path, Query, Struct, Tachyon
from tachyon_api.compiler import compile_endpoint
from tachyon_api.converters import constraint_check

from .conftest import assert_validation_error, client_for


def error(response, loc):
    errors = assert_validation_error(response, [loc])
    return errors[0]["type"], errors[0]["msg"]


def test_marker_keywords_are_accepted_and_enforced_on_every_source() -> None:
    app = Tachyon()

    @app.get("/q")
    def q(a: Optional[str] = Query(None, max_length=3), ids: list[int] = Query([], min_length=2, max_length=3)):
        return {"a": a, "ids": ids}

    @app.get("/p/{n}")
    def p(n: int = Path(ge=1)):
        return {"n": n}

    @app.get("/h")
    def h(x_size: float = Header(1.0, lt=10), token: str = Cookie("abcd", pattern=r"^[a-z]+$")):
        return {"size": x_size, "token": token}

    @app.post("/f")
    def f(name: str = Form(max_length=2), qty: int = Form(1, gt=0)):
        return {"name": name, "qty": qty}

    @app.post("/b")
    def b(count: int = Body(ge=2), note: str = Body("", max_length=2)):
        return {"count": count}

    client = client_for(app)
    assert client.get("/q?a=abc&ids=1&ids=2").json() == {"a": "abc", "ids": [1, 2]}
    assert client.get("/q").json() == {"a": None, "ids": []}  # defaults are not checked
    assert error(client.get("/q?a=abcd"), ["query", "a"]) == (
        "string_too_long",
        "String should have at most 3 characters",
    )
    assert error(client.get("/q?ids=1"), ["query", "ids"]) == ("too_short", "List should have at least 2 items")
    assert error(client.get("/p/0"), ["path", "n"]) == (
        "greater_than_equal",
        "Input should be greater than or equal to 1",
    )
    assert client.get("/p/x").status_code == 404  # not an int: no such route, as before
    assert client.get("/p/1").json() == {"n": 1}
    assert error(client.get("/h", headers={"x-size": "10"}), ["header", "x-size"]) == (
        "less_than",
        "Input should be less than 10.0",
    )
    client.cookies.set("token", "ABC")
    assert error(client.get("/h"), ["cookie", "token"]) == (
        "string_pattern_mismatch",
        "String should match pattern '^[a-z]+$'",
    )
    client.cookies.clear()
    assert client.get("/h").json() == {"size": 1.0, "token": "abcd"}
    assert error(client.post("/f", data={"name": "abc"}), ["body", "name"]) == (
        "string_too_long",
        "String should have at most 2 characters",
    )
    assert error(client.post("/f", data={"name": "ab", "qty": "0"}), ["body", "qty"])[0] == "greater_than_equal"
    assert error(client.post("/b", json={"count": 1}), ["body", "count"])[0] == "greater_than_equal"
    assert client.post("/b", json={"count": 2}).json() == {"count": 2}


def test_annotated_meta_is_enforced_on_query_path_header_and_list_items() -> None:
    app = Tachyon()

    @app.get("/c/{n}")
    def c(
        n: Annotated[int, Meta(ge=1)],
        page: Annotated[int, Meta(le=100)] = 1,
        tags: list[Annotated[str, Meta(min_length=2)]] = [],  # noqa: B006
        x_n: Optional[Annotated[int, Meta(ge=0)]] = Header(None),
        limit: Annotated[int, Query(le=50)] = 10,
    ):
        return {"n": n, "page": page, "tags": tags, "x_n": x_n, "limit": limit}

    client = client_for(app)
    assert error(client.get("/c/0"), ["path", "n"])[0] == "greater_than_equal"
    assert error(client.get("/c/1?page=101"), ["query", "page"]) == (
        "less_than_equal",
        "Input should be less than or equal to 100",
    )
    assert error(client.get("/c/1?tags=ab&tags=a"), ["query", "tags", 1])[0] == "string_too_short"
    assert error(client.get("/c/1", headers={"x-n": "-1"}), ["header", "x-n"])[0] == "greater_than_equal"
    assert error(client.get("/c/1?limit=51"), ["query", "limit"])[0] == "less_than_equal"
    assert client.get("/c/2?page=3&tags=ab&limit=50", headers={"x-n": "0"}).json() == {
        "n": 2,
        "page": 3,
        "tags": ["ab"],
        "x_n": 0,
        "limit": 50,
    }
    # Every failing field is reported together.
    errors = assert_validation_error(client.get("/c/1?page=0&limit=99&page=200"))
    assert [e["loc"] for e in errors] == [["query", "page"], ["query", "limit"]]


def test_the_compiled_parameter_type_carries_the_constraints_for_the_schema() -> None:
    def endpoint(
        item_id: int = Path(ge=1, title="Item", description="the item's id"),
        q: Optional[str] = Query(None, max_length=3, examples=["abc"], deprecated=True),
        page: Annotated[int, Meta(le=100)] = Query(1, ge=1),
    ):
        return {}

    plan = compile_endpoint(endpoint, frozenset({"item_id"}))
    params = {p.name: p for p in plan.params}
    assert {n: (p.source, p.key, p.required) for n, p in params.items()} == {
        "item_id": ("path", "item_id", True),
        "q": ("query", "q", False),
        "page": ("query", "page", False),
    }
    assert msgspec.json.schema(params["item_id"].type) == {
        "type": "integer",
        "minimum": 1,
        "title": "Item",
        "description": "the item's id",
    }
    assert msgspec.json.schema(params["q"].type) == {
        "anyOf": [{"type": "string", "maxLength": 3, "examples": ["abc"], "deprecated": True}, {"type": "null"}]
    }
    # The annotation's Meta and the marker's keywords are merged.
    assert msgspec.json.schema(params["page"].type) == {"type": "integer", "minimum": 1, "maximum": 100}


def test_parameters_without_constraints_get_no_check() -> None:
    assert constraint_check(int) is None
    assert constraint_check(Annotated[int, Meta(description="documentation only")]) is None
    assert constraint_check(Annotated[int, Meta(ge=1)]) is not None


def test_a_constraint_that_does_not_fit_the_type_fails_at_registration() -> None:
    app = Tachyon()
    with pytest.raises(TypeError, match=r"parameter 'n'.*max_length"):

        @app.get("/bad")
        def bad(n: int = Query(0, max_length=3)):
            return {}

    with pytest.raises(TypeError, match="parameter 'ids'"):

        @app.get("/mixed")
        def mixed(ids: list[int] = Query([], min_length=1, le=9)):  # a list has a length, not a bound
            return {}


EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class Signup(Struct):
    email: Annotated[str, Meta(pattern=EMAIL, max_length=254)]


def test_pattern_messages_show_the_pattern_once_escaped() -> None:
    """The shop's email type: the message names the pattern as written, in words a person reads."""
    email = EMAIL
    app = Tachyon()

    @app.post("/signup")
    def signup(user: Signup):
        return {}

    response = client_for(app).post("/signup", json={"email": "not an email"})
    assert error(response, ["body", "email"]) == ("string_pattern_mismatch", f"String should match pattern '{email}'")
    assert "\\\\" not in response.json()["errors"][0]["msg"]
    assert '"msg":"String should match pattern \'^[^@\\\\s]+@' in response.text  # one JSON escape, no more
    assert error(client_for(app).post("/signup", json={"email": "a@b.c" + "x" * 254}), ["body", "email"]) == (
        "string_too_long",
        "String should have at most 254 characters",
    )

"""List parameters as tachyon-api 1.3 accepts them: CSV, repeated keys or both; Optional items; CSV path
segments; a cap on the number of items."""

import time
from typing import Annotated, List, Optional

import httpx
from msgspec import Meta

from tachyon_api import Path, Query, Tachyon
from tachyon_api.compiler import MAX_LIST_ITEMS

from .conftest import assert_validation_error, client_for, serve


def _app() -> Tachyon:
    app = Tachyon()

    @app.get("/ids")
    def ids(ids: List[int] = Query(...)):
        return ids

    @app.get("/tags")
    def tags(tags: list[str] = Query([])):
        return tags

    @app.get("/opt")
    def optional_items(values: List[Optional[int]] = Query(...)):
        return values

    @app.get("/p/{ids}")
    def path_ids(ids: List[int]):
        return ids

    @app.get("/q/{values}")
    def path_optional(values: List[Optional[int]] = Path()):
        return values

    return app


def test_csv_repeated_and_both_over_http():
    with serve(_app()) as url:
        assert httpx.get(f"{url}/ids?ids=1,2,3").json() == [1, 2, 3]
        assert httpx.get(f"{url}/ids?ids=1&ids=2").json() == [1, 2]
        assert httpx.get(f"{url}/ids?ids=1,2&ids=3").json() == [1, 2, 3]
        assert httpx.get(f"{url}/p/4,5,6").json() == [4, 5, 6]
        assert httpx.get(f"{url}/p/7").json() == [7]


def test_string_lists_keep_commas_when_repeated():
    client = client_for(_app())
    assert client.get("/tags?tags=a,b").json() == ["a", "b"]
    assert client.get("/tags", params=[("tags", "a,b"), ("tags", "c")]).json() == ["a,b", "c"]
    assert client.get("/tags?tags=x").json() == ["x"]
    assert client.get("/tags").json() == []


def test_optional_items_empty_or_null_are_none():
    client = client_for(_app())
    assert client.get("/opt?values=1,,NULL,null,3").json() == [1, None, None, None, 3]
    assert client.get("/opt?values=&values=2").json() == [None, 2]
    assert client.get("/q/1,null,,2").json() == [1, None, None, 2]


def test_bad_items_are_located():
    client = client_for(_app())
    errors = assert_validation_error(client.get("/ids?ids=1,x,3"), [["query", "ids", 1]])
    assert errors[0]["type"] == "integer_parsing"
    assert_validation_error(client.get("/ids?ids=1,,3"), [["query", "ids", 1]])
    assert client.get("/p/1,x").status_code == 404  # like any path value that does not convert


def test_item_cap_is_a_quick_422():
    client = client_for(_app())
    at_cap = ",".join(["1"] * MAX_LIST_ITEMS)
    assert len(client.get(f"/ids?ids={at_cap}").json()) == MAX_LIST_ITEMS

    huge = ",".join(["1"] * 30_000)  # httpx caps URLs at 64 KiB
    start = time.perf_counter()
    response = client.get(f"/ids?ids={huge}")
    elapsed = time.perf_counter() - start
    errors = assert_validation_error(response, [["query", "ids"]])
    assert errors[0]["type"] == "too_long"
    assert str(MAX_LIST_ITEMS) in errors[0]["msg"]
    assert elapsed < 2.0

    repeated = "&".join(["tags=a"] * (MAX_LIST_ITEMS + 1))
    assert_validation_error(client.get(f"/tags?{repeated}"), [["query", "tags"]])
    assert_validation_error(client.get(f"/p/{at_cap},1"), [["path", "ids"]])


def test_constraints_apply_to_csv_lists():
    app = Tachyon()

    @app.get("/few")
    def few(tags: list[str] = Query(max_length=2)):
        return tags

    @app.get("/n/{ids}")
    def positive(ids: list[Annotated[int, Meta(ge=0)]]):
        return ids

    client = client_for(app)
    assert client.get("/few?tags=a,b").json() == ["a", "b"]
    errors = assert_validation_error(client.get("/few?tags=a,b,c"), [["query", "tags"]])
    assert errors[0]["type"] == "too_long"
    assert client.get("/n/1,2").json() == [1, 2]
    assert_validation_error(client.get("/n/1,-2"), [["path", "ids", 1]])  # the route exists: 422, not 404
    assert client.get("/n/1,x").status_code == 404

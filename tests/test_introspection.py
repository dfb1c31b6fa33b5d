"""The type questions registration and the OpenAPI document share (tachyon_api.introspection), and the
one answer they give for ``Optional`` and ``Annotated`` in either order: an item annotated
``Annotated[Optional[T], Meta(...)]`` is treated as ``Optional[Annotated[T, Meta(...)]]`` is."""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Optional

import msgspec
import pytest
from msgspec import Meta

from tachyon_api import File, Query, Tachyon
from tachyon_api.introspection import bare_type, is_model, is_scalar, is_upload, list_item, unwrap_optional

from .conftest import client_for

NOTE = Meta(description="documented")


@pytest.mark.parametrize(
    "annotation",
    [int, Optional[int], Annotated[int, NOTE], Optional[Annotated[int, NOTE]], Annotated[Optional[int], NOTE]],
)
def test_bare_type_sees_through_optional_and_annotated_in_either_order(annotation: Any) -> None:
    assert bare_type(annotation) is int
    assert is_scalar(annotation)
    assert not is_model(annotation)


def test_the_other_questions() -> None:
    class Item(msgspec.Struct):
        name: str

    assert unwrap_optional(Optional[str]) == (str, True)
    assert unwrap_optional(str) == (str, False)
    assert list_item(list[Annotated[int, NOTE]]) == Annotated[int, NOTE]
    assert list_item(list) is str
    assert list_item(int) is None
    assert is_model(Optional[list[Item]]) and is_model(dict[str, int])
    assert not is_scalar(Item)
    assert not is_upload(bytes)


def test_annotated_optional_string_items_keep_their_commas_like_optional_string_items() -> None:
    app = Tachyon()

    @app.get("/plain")
    def plain(q: list[Optional[str]] = Query()) -> Any:
        return q

    @app.get("/annotated")
    def annotated(q: list[Annotated[Optional[str], NOTE]] = Query()) -> Any:
        return q

    client = client_for(app)
    assert client.get("/plain?q=a,b&q=c").json() == ["a,b", "c"]
    assert client.get("/annotated?q=a,b&q=c").json() == ["a,b", "c"]


def test_annotated_optional_bytes_files_are_read_like_optional_bytes_files() -> None:
    app = Tachyon()

    @app.post("/raw")
    def raw(data: list[Annotated[Optional[bytes], NOTE]] = File()) -> Any:
        return [item.decode() for item in data]

    response = client_for(app).post("/raw", files=[("data", ("a.bin", b"one")), ("data", ("b.bin", b"two"))])
    assert response.json() == ["one", "two"]


def test_annotated_optional_datetime_items_are_documented_as_date_times() -> None:
    app = Tachyon()

    @app.get("/when")
    def when(at: list[Annotated[Optional[datetime.datetime], NOTE]] = Query()) -> Any:
        return [str(value) for value in at]

    schema = client_for(app).get("/openapi.json").json()["paths"]["/when"]["get"]["parameters"][0]["schema"]
    items = schema["items"]
    formats = [items.get("format"), *(member.get("format") for member in items.get("anyOf", ()))]
    assert "date-time" in formats

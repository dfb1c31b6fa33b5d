"""Markers that say where a handler parameter comes from: ``q: str = Query("x")``.

A marker only records intent; :mod:`tachyon_api.compiler` turns it into an extractor once, when the route is
registered. ``...`` (the default default) means the value is required.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Param", "Query", "Path", "Body", "Header", "Cookie", "Form", "File"]


class Param:
    """Base of every marker. ``source`` names the part of the request the value is read from."""

    __slots__ = ("default", "alias", "description")
    source = ""

    def __init__(self, default: Any = ..., *, alias: str | None = None, description: str | None = None) -> None:
        self.default = default
        self.alias = alias
        self.description = description

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.default!r})"


class Query(Param):
    """A query-string parameter (``?name=value``; repeated keys for a ``list``)."""

    __slots__ = ()
    source = "query"


class Path(Param):
    """A ``{name}`` segment of the route's path. Always required."""

    __slots__ = ()
    source = "path"


class Header(Param):
    """A request header; ``x_api_key`` reads ``x-api-key`` unless ``alias`` says otherwise."""

    __slots__ = ()
    source = "header"


class Cookie(Param):
    """A request cookie."""

    __slots__ = ()
    source = "cookie"


class Body(Param):
    """The JSON body, decoded and validated by msgspec against the annotation.

    With several body parameters, each is read from the member of the JSON object named after it.
    """

    __slots__ = ()
    source = "body"


class Form(Param):
    """A field of an ``application/x-www-form-urlencoded`` or ``multipart/form-data`` body."""

    __slots__ = ()
    source = "form"


class File(Form):
    """An uploaded file of a ``multipart/form-data`` body (``UploadFile`` or ``list[UploadFile]``)."""

    __slots__ = ()
    source = "file"

"""Markers that say where a handler parameter comes from: ``q: str = Query("x")``.

A marker only records intent; :mod:`tachyon_api.compiler` turns it into an extractor once, when the route is
registered. ``...`` (the default default) means the value is required.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Param", "Query", "Path", "Body", "Header", "Cookie", "Form", "File"]


class Param:
    """Base of every marker. ``source`` names the part of the request the value is read from.

    The keywords are FastAPI's, so a ported signature keeps working and keeps its checks: ``gt``, ``ge``,
    ``lt``, ``le``, ``multiple_of``, ``min_length``, ``max_length`` and ``pattern`` (``regex`` is its old
    name) are enforced like ``Annotated[T, msgspec.Meta(...)]`` (the compiler folds them into the
    parameter's type); ``title``, ``description``, ``examples`` and ``deprecated`` only document it.
    """

    __slots__ = (
        "default", "alias", "title", "description", "examples", "deprecated",
        "gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "pattern",
    )
    source = ""

    def __init__(
        self,
        default: Any = ...,
        *,
        alias: str | None = None,
        title: str | None = None,
        description: str | None = None,
        examples: list[Any] | None = None,
        deprecated: bool | None = None,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
        multiple_of: float | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        pattern: str | None = None,
        regex: str | None = None,
    ) -> None:
        self.default = default
        self.alias = alias
        self.title = title
        self.description = description
        self.examples = examples
        self.deprecated = deprecated
        self.gt = gt
        self.ge = ge
        self.lt = lt
        self.le = le
        self.multiple_of = multiple_of
        self.min_length = min_length
        self.max_length = max_length
        self.pattern = pattern if pattern is not None else regex

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

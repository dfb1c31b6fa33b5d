"""Markers that say where a handler parameter comes from: ``q: str = Query("x")``.

A marker only records intent; :mod:`tachyon_api.compiler` turns it into an extractor once, when the route is
registered. ``...`` (the default default) means the value is required.
"""

from __future__ import annotations

from typing import Any

from ._utils import DefaultMarker

__all__ = ["Param", "Query", "Path", "Body", "Header", "Cookie", "Form", "File"]


class Param(DefaultMarker):  # type: ignore[misc]  # see DefaultMarker
    """Base of every marker. ``source`` names the part of the request the value is read from.

    The keywords are FastAPI's, so a ported signature keeps working and keeps its checks: ``gt``, ``ge``,
    ``lt``, ``le``, ``multiple_of``, ``min_length``, ``max_length`` and ``pattern`` (``regex`` is its old
    name) are enforced like ``Annotated[T, msgspec.Meta(...)]`` (the compiler folds them into the
    parameter's type); ``title``, ``description``, ``examples`` and ``deprecated`` only document it.
    """

    __slots__ = (
        "default",
        "alias",
        "title",
        "description",
        "examples",
        "deprecated",
        "gt",
        "ge",
        "lt",
        "le",
        "multiple_of",
        "min_length",
        "max_length",
        "pattern",
    )
    source = ""
    # What positional arguments after ``default`` meant in tachyon-api 1.3 (``Query(1, "Page")``,
    # ``Header(None, "X-Key", "The key")``); FastAPI takes none, so accepting them changes no FastAPI code.
    _positional: tuple[str, ...] = ()

    def __init__(
        self,
        default: Any = ...,
        *positional: Any,
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
        if len(positional) > len(self._positional):
            raise TypeError(
                f"{type(self).__name__}() takes at most {1 + len(self._positional)} positional arguments "
                f"({', '.join(('default', *self._positional))}); pass the others by keyword"
            )
        for name, value in zip(self._positional, positional, strict=False):  # checked above: not longer
            if getattr(self, name) is not None:
                raise TypeError(f"{type(self).__name__}() got multiple values for argument '{name}'")
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.default!r})"


class Query(Param):
    """A query-string parameter (``?name=value``; repeated keys for a ``list``).

    ``Query(default, description)`` by position works as in tachyon-api 1.3.
    """

    __slots__ = ()
    source = "query"
    _positional = ("description",)


class Path(Param):
    """A ``{name}`` segment of the route's path. Always required.

    A path parameter has no default, so ``Path("The user id")`` keeps tachyon-api 1.3's meaning: the
    description (FastAPI refuses a default there).
    """

    __slots__ = ()
    source = "path"

    def __init__(self, *args: Any, **keywords: Any) -> None:
        """``Path(description)`` by position, or :class:`Param`'s keywords."""
        if args and isinstance(args[0], str):
            if keywords.get("description") is not None:
                raise TypeError("Path() got multiple values for argument 'description'")
            keywords["description"] = args[0]
            args = (..., *args[1:])
        super().__init__(*args, **keywords)


class Header(Param):
    """A request header; ``x_api_key`` reads ``x-api-key`` unless ``alias`` says otherwise.

    ``Header(default, alias, description)`` by position works as in tachyon-api 1.3.
    """

    __slots__ = ()
    source = "header"
    _positional = ("alias", "description")


class Cookie(Param):
    """A request cookie. ``Cookie(default, alias, description)`` by position works as in tachyon-api 1.3."""

    __slots__ = ()
    source = "cookie"
    _positional = ("alias", "description")


class Body(Param):
    """The JSON body, decoded and validated by msgspec against the annotation.

    With several body parameters, each is read from the member of the JSON object named after it.

    ``Body("text")`` alone is refused: tachyon-api 1.3 read that text as the description, FastAPI reads it as
    the default, and guessing would silently change one of them. Write ``Body(description="text")`` or
    ``Body(default="text")``. A text default with other keywords (``Body("", max_length=2)``) is FastAPI's
    (1.3's ``Body`` took no other argument), and so is any default that is not text (``Body(None)``).
    """

    __slots__ = ()
    source = "body"

    def __init__(self, *args: Any, **keywords: Any) -> None:
        """:class:`Param`'s arguments, refusing the one form whose meaning 1.3 and FastAPI disagree on."""
        if len(args) == 1 and isinstance(args[0], str) and all(value is None for value in keywords.values()):
            text = args[0]
            raise TypeError(
                f"Body({text!r}) is ambiguous: tachyon-api 1.3 read a positional argument as the description, "
                f"FastAPI as the default. Write Body(description={text!r}) or Body(default={text!r})"
            )
        super().__init__(*args, **keywords)


class Form(Param):
    """A field of an ``application/x-www-form-urlencoded`` or ``multipart/form-data`` body.

    ``Form(default, alias, description)`` (and ``File(...)``) by position works as in tachyon-api 1.3.
    """

    __slots__ = ()
    source = "form"
    _positional = ("alias", "description")


class File(Form):
    """An uploaded file of a ``multipart/form-data`` body (``UploadFile`` or ``list[UploadFile]``)."""

    __slots__ = ()
    source = "file"

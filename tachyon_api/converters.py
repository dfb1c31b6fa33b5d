"""From a string to a parameter's value: the string converters of query, path, header, cookie and form
values, and the constraints (``msgspec.Meta``: bounds, lengths, patterns) a value is checked against.

Converters are built once per parameter at registration (:func:`converter`); a type without constraints gets
no check, so nothing runs per request for it. :func:`describe_validation_error` words a broken constraint as
pydantic does, for parameters and JSON bodies alike.
"""

from __future__ import annotations

import ast
import decimal
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Optional

import msgspec

from .introspection import EMPTY, list_item, split_annotated, strip_annotated, unwrap_optional
from .params import Param

__all__ = [
    "ConstraintError",
    "describe_validation_error",
    "effective_type",
    "constraint_check",
    "converter",
    "string_converter",
]

_TRUE = frozenset(("true", "1", "yes", "on", "t", "y"))
_FALSE = frozenset(("false", "0", "no", "off", "f", "n"))
# Numbers in a URL, header or form: ASCII digits and an optional sign; for float/Decimal also a fraction and
# an exponent (_NUMBER), and a float must be finite. Python's int()/float() would also take "٣", "1_000", " 1"
# and "nan", so that several URLs name one resource and a NaN slips past every bound (stricter than pydantic,
# which takes "1_000" and spaces: see docs/migration.md).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class ConstraintError(ValueError):
    """A value that converted but breaks a declared constraint (``ge``, ``max_length``, ``pattern``...): a 422
    with its own ``type``, where a value that does not convert at all is a ``*_parsing`` error (or a 404)."""

    def __init__(self, msg: str, type_: str) -> None:
        super().__init__(msg)
        self.msg = msg
        self.type = type_


# msgspec's wording of a broken constraint, and ours (pydantic's types, so FastAPI clients keep matching).
_BOUND_RE = re.compile(r"Expected `\w+` (>=|>|<=|<) (.+)$")
_LENGTH_RE = re.compile(r"Expected `(\w+)` of length (>=|<=) (\d+)$")
_PATTERN_RE = re.compile(r"Expected `str` matching regex (.+)$")
_MULTIPLE_RE = re.compile(r"Expected `\w+` that's a multiple of (.+)$")
_BOUNDS = {
    ">=": ("greater_than_equal", "greater than or equal to"),
    ">": ("greater_than", "greater than"),
    "<=": ("less_than_equal", "less than or equal to"),
    "<": ("less_than", "less than"),
}
_SIZED = {
    "str": ("string_", "String", "character"),
    "bytes": ("bytes_", "Data", "byte"),
    "object": ("", "Object", "item"),
}


def describe_validation_error(message: str) -> tuple[str, str]:
    """``(msg, type)`` for one msgspec validation message (without its `` - at `$...` `` suffix).

    Constraint failures get a sentence for people and a pydantic-style type (``greater_than_equal``,
    ``string_too_long``, ``string_pattern_mismatch``...); the pattern is shown as written, not escaped again.
    Anything else keeps msgspec's message, with the type ``validation_error``.
    """
    if found := _BOUND_RE.match(message):
        type_, words = _BOUNDS[found.group(1)]
        return f"Input should be {words} {found.group(2)}", type_
    if found := _LENGTH_RE.match(message):
        prefix, noun, unit = _SIZED.get(found.group(1), ("", "List", "item"))
        count = int(found.group(3))
        least = found.group(2) == ">="
        plural = "" if count == 1 else "s"
        return (
            f"{noun} should have {'at least' if least else 'at most'} {count} {unit}{plural}",
            f"{prefix}too_{'short' if least else 'long'}",
        )
    if found := _PATTERN_RE.match(message):
        try:
            pattern = ast.literal_eval(found.group(1))  # msgspec shows the pattern's repr
        except (ValueError, SyntaxError):
            pattern = found.group(1)
        return f"String should match pattern '{pattern}'", "string_pattern_mismatch"
    if found := _MULTIPLE_RE.match(message):
        return f"Input should be a multiple of {found.group(1)}", "multiple_of"
    return message, "validation_error"


# --- constraints -----------------------------------------------------------------------------------------
_CHECKS = ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length", "tz")
_MARKER_META = (
    "gt",
    "ge",
    "lt",
    "le",
    "multiple_of",
    "pattern",
    "min_length",
    "max_length",
    "title",
    "description",
    "examples",
)


def _marker_meta(marker: Param) -> msgspec.Meta | None:
    """The marker's FastAPI keywords (``Query(max_length=3)``) as the ``Meta`` msgspec enforces and documents."""
    kwargs = {key: value for key in _MARKER_META if (value := getattr(marker, key)) is not None}
    if marker.deprecated:
        kwargs["extra_json_schema"] = {"deprecated": True}
    return msgspec.Meta(**kwargs) if kwargs else None


def effective_type(tp: Any, marker: Param | None) -> Any:
    """The parameter's type with all its constraints folded in: ``Annotated[T, Meta(...), ...]``, inside
    ``Optional`` when the value may be None (a bound applies to the value, not to the None).

    Meta from the annotation (``Annotated[int, Meta(ge=1)]``, also inside ``Optional``) and from the marker's
    keywords are merged, so validation and whatever describes the API (OpenAPI) read one type.
    """
    tp, extras = split_annotated(tp)
    inner, optional = unwrap_optional(tp)
    inner, inner_extras = split_annotated(inner)
    metas = [m for m in (*extras, *inner_extras) if isinstance(m, msgspec.Meta)]
    meta = _marker_meta(marker) if marker is not None else None
    if meta is not None:
        metas.append(meta)
    if metas:
        inner = Annotated[(inner, *metas)]
    # typing.Optional makes the same typing.Union for any inner type (``X | None`` would make a
    # types.UnionType for a class and a typing.Union for an alias).
    return Optional[inner] if optional else inner  # noqa: UP045


def constraint_check(tp: Any) -> Callable[[Any], Any] | None:
    """For ``Annotated[T, Meta(...)]``: a function that validates a converted value against the constraints
    and raises :class:`ConstraintError`. None when ``tp`` declares no constraint: nothing runs per request."""
    base, extras = split_annotated(tp)
    metas = [m for m in extras if isinstance(m, msgspec.Meta) and any(getattr(m, c) is not None for c in _CHECKS)]
    if not metas:
        return None
    # A list's own constraints are about its length; its items are checked one by one as they convert.
    target = Annotated[(list if list_item(base) is not None else base, *metas)]  # type: ignore[valid-type]
    msgspec.json.Decoder(target)  # an impossible constraint (max_length on an int) fails at registration

    def check(value: Any) -> Any:
        try:
            return msgspec.convert(value, target)
        except msgspec.ValidationError as exc:
            raise ConstraintError(*describe_validation_error(str(exc))) from None

    return check


def converter(tp: Any) -> Callable[[str], Any] | None:
    """:func:`string_converter` for a type that may carry constraints: convert, then check."""
    convert = string_converter(strip_annotated(tp))
    check = constraint_check(tp)
    if check is None:
        return convert
    if convert is None:
        return check
    return lambda value: check(convert(value))


def string_converter(tp: Any) -> Callable[[str], Any] | None:
    """A converter from a query/path/header/cookie/form string to ``tp`` (None: keep the string)."""
    if tp is str or tp is Any or tp is EMPTY:
        return None
    if tp is int:

        def convert(value: str) -> Any:
            # ASCII digits, an optional sign: str methods cost half as much as a regex on this hot path
            if not (value.isascii() and (value.isdigit() or (value[1:].isdigit() and value[0] in "+-"))):
                raise ValueError(value)
            return int(value)
    elif tp is float:

        def convert(value: str) -> Any:
            if _NUMBER.fullmatch(value) is None or not math.isfinite(number := float(value)):  # "1e999": inf
                raise ValueError(value)
            return number
    elif tp is decimal.Decimal:

        def convert(value: str) -> Any:
            if _NUMBER.fullmatch(value) is None:
                raise ValueError(value)
            return decimal.Decimal(value)
    elif tp is bool:

        def convert(value: str) -> Any:
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(value)
    else:

        def convert(value: str) -> Any:
            return msgspec.convert(value, tp, strict=False)

    return convert

"""JSON Schemas of Python types for the OpenAPI document, and their OpenAPI 3.0 form.

msgspec describes the types (``msgspec.json.schema_components``): the library that validates requests also
says what it accepts, constraints included. Its output is JSON Schema 2020-12, which OpenAPI 3.1 uses as it
is; :func:`document_to_30` rewrites a finished document for OpenAPI 3.0 readers.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

import msgspec

from .introspection import bare_type, list_item

__all__ = ["REF_TEMPLATE", "TypeSchemas", "build_param_schema", "build_components_for_struct", "document_to_30"]

REF_TEMPLATE = "#/components/schemas/{name}"


def build_param_schema(python_type: Any, openapi_version: str = "3.1.0") -> dict[str, Any]:
    """The schema of one type as a parameter or property (models as ``$ref``s; see
    :func:`build_components_for_struct` for what they point to)."""
    (schema,), _ = _schemas([python_type])
    converted: dict[str, Any] = for_version(schema, openapi_version)  # a schema dict stays one
    return converted


def build_components_for_struct(struct_class: Any, openapi_version: str = "3.1.0") -> dict[str, dict[str, Any]]:
    """The ``components/schemas`` entries of a Struct (or dataclass, TypedDict, Enum) and of every model
    it refers to, keyed by component name."""
    _, components = _schemas([struct_class])
    return {name: for_version(schema, openapi_version) for name, schema in components.items()}


def _schemas(types: list[Any]) -> tuple[tuple[dict[str, Any], ...], dict[str, dict[str, Any]]]:
    """msgspec's schemas for ``types`` in one pass (so models of the same name get distinct components).

    A type msgspec cannot describe is documented as ``{}`` (any value) rather than failing the whole schema.
    """
    try:
        return msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    except (TypeError, ValueError):
        if len(types) == 1:
            return ({},), {}
    schemas: list[dict[str, Any]] = []
    components: dict[str, dict[str, Any]] = {}
    for tp in types:
        (one,), more = _schemas([tp])
        schemas.append(one)
        components.update(more)
    return tuple(schemas), components


class TypeSchemas:
    """Collects every type of one schema build and describes them all with a single msgspec call.

    :meth:`of` hands out an empty dict that is filled in place by :meth:`resolve`, so the document can be
    assembled in one pass.
    """

    def __init__(self) -> None:
        self._wanted: list[tuple[dict[str, Any], Any, dict[str, Any]]] = []
        self.components: dict[str, dict[str, Any]] = {}

    def of(self, tp: Any, **extra: Any) -> dict[str, Any]:
        slot: dict[str, Any] = {}
        self._wanted.append((slot, tp, extra))
        return slot

    def resolve(self) -> None:
        if not self._wanted:
            return
        schemas, self.components = _schemas([tp for _, tp, _ in self._wanted])
        for (slot, tp, extra), schema in zip(self._wanted, schemas, strict=True):
            slot.update(copy.deepcopy(schema))
            _add_format(slot, tp)
            slot.update(extra)


_STRING_FORMATS = {datetime.datetime: "date-time", datetime.time: "time"}


def _add_format(schema: dict[str, Any], tp: Any) -> None:
    """msgspec leaves naive-or-aware datetimes and times without a ``format``; parameters accept RFC 3339
    values, so say so (the generated clients and the docs pages then offer a date-time input)."""
    inner = bare_type(tp)
    item = list_item(inner)
    fmt = _STRING_FORMATS.get(bare_type(item) if item is not None else inner)
    if fmt is None:
        return
    target = schema.get("items", schema) if item is not None else schema
    for candidate in [target, *target.get("anyOf", ())]:
        if candidate.get("type") == "string":
            candidate.setdefault("format", fmt)


def to_builtin(value: Any) -> Any:
    """A default value as JSON, or ``...`` when it has no JSON form (then it is left out of the schema)."""
    try:
        return msgspec.to_builtins(value)
    except (TypeError, ValueError):
        return ...


# --- OpenAPI 3.0 output ------------------------------------------------------------------------------------
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "not", "additionalProperties")


def for_version(schema: Any, version: str) -> Any:
    return _to_30(schema) if version.startswith("3.0") else schema


def _to_30(schema: Any) -> Any:
    """A JSON Schema 2020-12 schema as an OpenAPI 3.0 Schema Object (a new object; the input is kept)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _to_30(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [_to_30(sub) for sub in value]
        elif key in _SUBSCHEMA_ONE:
            out[key] = _to_30(value)
        else:
            out[key] = value
    for key in ("anyOf", "oneOf"):
        members = out.get(key)
        if members and {"type": "null"} in members:
            rest = [m for m in members if m != {"type": "null"}]
            del out[key]
            out["nullable"] = True
            if len(rest) == 1 and "$ref" in rest[0]:
                out["allOf"] = rest  # 3.0 ignores siblings of a $ref
            elif len(rest) == 1:
                out = {**rest[0], **out}
            elif rest:
                out[key] = rest
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "examples" in out:
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out[bound], bool):
            out[plain] = out[bound]
            out[bound] = True
    if out.pop("contentEncoding", None) == "base64":
        out["format"] = "byte"
    if "prefixItems" in out:  # tuples: 3.0 has no positional items
        out["items"] = {"anyOf": out.pop("prefixItems")}
    if isinstance(out.get("type"), list):
        types = [t for t in out["type"] if t != "null"]
        if len(types) < len(out["type"]):
            out["nullable"] = True
        out["type"] = types[0] if len(types) == 1 else types
    return out


def document_to_30(document: dict[str, Any]) -> None:
    """Convert every Schema Object of an assembled document in place."""
    components = document.get("components", {})
    if "schemas" in components:
        components["schemas"] = {name: _to_30(s) for name, s in components["schemas"].items()}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "schema":
                    node[key] = _to_30(value)
                elif node is not components or key != "schemas":  # component schemas: converted above
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document.get("paths", {}))
    walk(components)

"""``Struct`` and JSON helpers under the import path of the existing framework (``tachyon_api.models``)."""

from typing import Any

import msgspec
from msgspec import Meta, Struct

from .responses import encode_json as _encode

__all__ = ["Struct", "Meta", "encode_json", "decode_json"]


def encode_json(obj: Any) -> bytes:
    """Encode ``obj`` as compact JSON bytes (msgspec; Structs, dataclasses, datetimes, UUIDs...)."""
    return _encode(obj)


def decode_json(data: bytes | str, type_: Any = Any) -> Any:
    """Decode JSON, validating against ``type_`` when given (a Struct, ``list[Struct]``, ...)."""
    return msgspec.json.decode(data, type=type_)

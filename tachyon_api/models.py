"""``Struct`` and JSON helpers under the import path of the existing framework (``tachyon_api.models``)."""

from typing import Any

import msgspec
from msgspec import Meta, Struct

from .responses import enc_hook
from .responses import encode_json as _encode

__all__ = ["Struct", "Meta", "encode_json", "decode_json"]

# tachyon-api 1.3 passed ``option`` to orjson. These orjson flags are honoured (by value, so orjson need not be
# installed): INDENT_2, SORT_KEYS, APPEND_NEWLINE; and these describe what msgspec does anyway: NON_STR_KEYS
# (int keys become strings), UTC_Z (UTC datetimes end in "Z"); SERIALIZE_DATACLASS and SERIALIZE_UUID are 0.
_INDENT_2, _SORT_KEYS, _APPEND_NEWLINE = 1, 32, 1024
_SUPPORTED = _INDENT_2 | _SORT_KEYS | _APPEND_NEWLINE | 4 | 128
_sorted_encoder = msgspec.json.Encoder(enc_hook=enc_hook, decimal_format="number", order="sorted")


def encode_json(obj: Any, option: int | None = None) -> bytes:
    """Encode ``obj`` as compact JSON bytes (msgspec; Structs, dataclasses, datetimes, UUIDs...).

    ``option`` takes tachyon-api 1.3's orjson flags (``orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS``,
    ``OPT_APPEND_NEWLINE``); a flag that would change the output in a way msgspec cannot (``OPT_NAIVE_UTC``,
    ``OPT_OMIT_MICROSECONDS``, ``OPT_STRICT_INTEGER``, numpy, passthrough) is a ``ValueError`` rather than
    being ignored.
    """
    if not option:
        return _encode(obj)
    unsupported = option & ~_SUPPORTED
    if unsupported:
        raise ValueError(f"encode_json: orjson option bits {unsupported:#x} are not supported (see the docstring)")
    data = _sorted_encoder.encode(obj) if option & _SORT_KEYS else _encode(obj)
    if option & _INDENT_2:
        data = msgspec.json.format(data, indent=2)
    if option & _APPEND_NEWLINE:
        data += b"\n"
    return data


def decode_json(data: bytes | str, type_: Any = Any) -> Any:
    """Decode JSON, validating against ``type_`` when given (a Struct, ``list[Struct]``, ...)."""
    return msgspec.json.decode(data, type=type_)

"""JSON parsing that refuses what format v1 forbids (``src/format/json.rs``):
duplicate object keys at any depth (two readers that disagree on which
duplicate wins is how one file means two things), NaN and infinities, lone
surrogates, and nesting deeper than the Rust reader accepts."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

__all__ = ["MAX_JSON_DEPTH", "SURROGATE", "U64_LIMIT", "JsonError", "is_uint", "parse_object"]

# JSON nesting the Rust reader (serde_json's recursion limit) accepts: a
# file nested deeper would mean something to this reader and nothing to it.
MAX_JSON_DEPTH: Final = 127
U64_LIMIT: Final = 1 << 64
SURROGATE: Final = re.compile("[\ud800-\udfff]")


class JsonError(Exception):
    """Why a JSON text was refused; the caller adds where it came from."""


def _reject_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError(f"number {text} is out of range of a binary64 float")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise JsonError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _check_parsed(value: Any) -> None:
    """Limits the JSON parser does not apply: nesting depth, and strings
    that are not Unicode text (a lone surrogate escape such as ``\\ud800``)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                raise JsonError(f"string {item!r} holds a lone surrogate")
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise JsonError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def parse_object(data: bytes) -> dict[str, Any]:
    """Parses UTF-8 JSON whose top level is an object, refusing duplicate
    keys at any depth, NaN and infinities, and lone surrogates. Raises
    :class:`JsonError`; callers turn it into the error of their context."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonError(f"not UTF-8: {e}") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except JsonError:
        raise
    except RecursionError:
        raise JsonError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise JsonError(str(e)) from None
    if not isinstance(value, dict):
        raise JsonError("top level is not a JSON object")
    _check_parsed(value)
    return value


def is_uint(value: Any) -> bool:
    """A JSON non-negative integer that fits 64 bits (``bool`` is not one)."""
    return type(value) is int and 0 <= value < U64_LIMIT

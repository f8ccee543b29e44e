"""Typed values of format v2 (docs/FORMAT.md 11.2): the JSON encoding of
kwargs and extra-state values, in which an object with the key
``"__type__"`` is a tag standing for a value JSON has no form for.

This module owns the encoding, not the Python objects it stands for:
:func:`check_typed` validates a value with the reader's checks (11.6, step
16.14), in document order, and returns the tensor names its ``tensor`` tags
refer to; :func:`kwargs_from_v1` and :func:`kwargs_to_v1` convert kwargs
between version 1's plain JSON and this encoding (11.7, 11.8). Tags are
held as the plain dicts the JSON has (``{"__type__": "tuple", "items":
[0.9, 0.999]}``); turning them into Python objects is the package's
business (``_container.py`` and its helpers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from .._errors import FormatError, InvalidArgumentError

__all__ = [
    "CALLABLE",
    "CLASS",
    "DICT",
    "DTYPE",
    "DTYPE_NAMES",
    "FLOAT",
    "FLOAT_VALUES",
    "MAX_CLASS_NAME_BYTES",
    "OBJECT",
    "SPEC",
    "TAG_KEYS",
    "TENSOR",
    "TUPLE",
    "TYPE_KEY",
    "Where",
    "check_class_name",
    "check_typed",
    "tensor_refs",
    "kwargs_from_v1",
    "kwargs_to_v1",
    "typed_error",
]

TYPE_KEY: Final = "__type__"
"""The key that makes a JSON object a tag."""

CLASS: Final = "class"
TUPLE: Final = "tuple"
DICT: Final = "dict"
DTYPE: Final = "dtype"
FLOAT: Final = "float"
OBJECT: Final = "object"
SPEC: Final = "spec"
CALLABLE: Final = "callable"
TENSOR: Final = "tensor"

TAG_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    CLASS: ("name",),
    TUPLE: ("items",),
    DICT: ("items",),
    DTYPE: ("name",),
    FLOAT: ("value",),
    OBJECT: ("codec", "class", "fields"),
    SPEC: ("class", "kwargs"),
    CALLABLE: ("name",),
    TENSOR: ("name",),
}
"""Each tag type and the keys its object has besides ``__type__``, in the
order of FORMAT.md 11.2's table (the order they are checked in)."""

DTYPE_NAMES: Final = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "complex128",
    "complex64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "bool",
    "float8_e4m3fn",
    "float8_e5m2",
)
"""The ``name`` of a ``dtype`` tag: ``torch.<name>``."""

FLOAT_VALUES: Final = ("inf", "-inf", "nan")
"""The ``value`` of a ``float`` tag."""

MAX_CLASS_NAME_BYTES: Final = 512
_EXTRA_PATH: Final = "__pytorch_saver__.extra"
_CLASS_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")

Where = Literal["model_kwargs", "optim_kwargs", "scheduler_kwargs", "extra"]
"""Which part of a file a typed value is in: it decides where ``tensor``
(extra state only) and ``callable`` (``scheduler_kwargs`` only) tags may
appear."""


def typed_error(path: str, reason: str) -> FormatError:
    """The reader's refusal of a malformed typed value at ``path``."""
    return FormatError(f"metadata.json: typed value at {path}: {reason}", kind="TypedValue")


def check_class_name(name: str) -> str | None:
    """Why ``name`` is not a class name of FORMAT.md 11.2.1 (ASCII
    identifiers joined by single dots, at most 512 bytes), or None."""
    if len(name.encode("utf-8")) > MAX_CLASS_NAME_BYTES:
        return f"class name of {len(name.encode('utf-8'))} bytes, above the limit of 512"
    if not (name.isascii() and _CLASS_NAME.fullmatch(name)):
        return f"{name!r} is not a class name (ASCII identifiers joined by dots)"
    return None


def check_typed(
    value: Any, path: str, *, where: Where, seen: dict[str, str] | None = None
) -> list[str]:
    """Checks one typed value as a reader does (FORMAT.md 11.6, step 16.14),
    depth first in document order, and returns the tensor names of its
    ``tensor`` tags in that order. ``path`` names the value in messages
    (``model_kwargs.block``); ``where`` is the part of the file it is in;
    ``seen`` maps the tensor names already named elsewhere in the same
    file to the path of their tag (two tags never share a tensor), and is
    updated.

    For each tag: its ``__type__``, its keys, its payload's JSON types, a
    class name's form, a dtype name or float value, where the tag may
    appear, a tensor named twice; then its typed payload. Raises
    :class:`FormatError` of kind ``"TypedValue"`` naming the path and the
    reason, in the words of the Rust reader."""
    names: list[str] = []
    _walk(value, path, where, names, {} if seen is None else seen)
    return names


def tensor_refs(value: Any, path: str) -> list[tuple[str, str]]:
    """(tensor name, path of the tag) of each ``tensor`` tag of a value
    that :func:`check_typed` accepted, in its order."""
    seen: dict[str, str] = {}
    _walk(value, path, "extra", [], seen)
    return list(seen.items())


def _walk(value: Any, path: str, where: Where, names: list[str], seen: dict[str, str]) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", where, names, seen)
        return
    if not isinstance(value, dict):
        return
    if TYPE_KEY not in value:
        for key, item in value.items():
            _walk(item, f"{path}.{key}", where, names, seen)
        return
    for child, child_path in _check_tag(value, path, where, names, seen):
        _walk(child, child_path, where, names, seen)


def _quote(text: str) -> str:
    """A string as the Rust reader's messages quote it."""
    return json.dumps(text, ensure_ascii=False)


def _json(value: Any) -> str:
    """A JSON value as the Rust reader's messages print it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _short(name: str) -> str:
    """A name for a message: quoted, cut after 80 characters."""
    if len(name) <= 80:
        return _quote(name)
    return f"{_quote(name[:80])}... ({len(name.encode('utf-8'))} bytes)"


def _check_tag(
    tag: dict[str, Any], path: str, where: Where, names: list[str], seen: dict[str, str]
) -> list[tuple[Any, str]]:
    """The checks of one tag object; returns its typed payload values, with
    their paths, for the walk to descend into."""
    kind = tag[TYPE_KEY]
    if not isinstance(kind, str):
        raise typed_error(path, f'"{TYPE_KEY}" must be a string naming a type, got {_json(kind)}')
    if kind not in TAG_KEYS:
        raise typed_error(path, f"unknown type tag {_quote(kind)} (known: {', '.join(TAG_KEYS)})")
    t = _quote(kind)
    keys = TAG_KEYS[kind]
    for key in keys:
        if key not in tag:
            raise typed_error(path, f"{t} tag: needs the key {_quote(key)}")
    for key in tag:
        if key != TYPE_KEY and key not in keys:
            raise typed_error(path, f"{t} tag: has no key {_quote(key)}")

    def wrong(key: str, what: str) -> FormatError:
        return typed_error(path, f"{t} tag: {_quote(key)} must be {what}, got {_json(tag[key])}")

    def class_form(key: str) -> None:
        if check_class_name(tag[key]) is not None:
            raise typed_error(
                path,
                f"{t} tag: {_quote(key)} {_short(tag[key])} is not a class name (ASCII "
                f"identifiers joined by single dots, at most {MAX_CLASS_NAME_BYTES} bytes)",
            )

    children: list[tuple[Any, str]] = []
    if kind == CLASS:
        if not isinstance(tag["name"], str):
            raise wrong("name", "a string")
        class_form("name")
    elif kind == TUPLE:
        if not isinstance(tag["items"], list):
            raise wrong("items", "a list")
        children = [(item, f"{path}.items[{i}]") for i, item in enumerate(tag["items"])]
    elif kind == DICT:
        if not isinstance(tag["items"], list):
            raise wrong("items", "a list of [key, value] pairs")
        for i, item in enumerate(tag["items"]):
            if not isinstance(item, list) or len(item) != 2:
                raise typed_error(
                    f"{path}.items[{i}]",
                    f'"dict" tag: items must be two-element lists [key, value], got {_json(item)}',
                )
        for i, (key, value) in enumerate(tag["items"]):
            children += [(key, f"{path}.items[{i}][0]"), (value, f"{path}.items[{i}][1]")]
    elif kind == DTYPE:
        name = tag["name"]
        if not isinstance(name, str):
            raise wrong("name", "a string")
        if name not in DTYPE_NAMES:
            raise typed_error(
                path, f'"dtype" tag: name {_quote(name)} is not one of {", ".join(DTYPE_NAMES)}'
            )
    elif kind == FLOAT:
        value = tag["value"]
        if not isinstance(value, str):
            raise wrong("value", 'the string "inf", "-inf" or "nan"')
        if value not in FLOAT_VALUES:
            raise typed_error(
                path, f'"float" tag: value {_quote(value)} is not "inf", "-inf" or "nan"'
            )
    elif kind == OBJECT:
        if not isinstance(tag["codec"], str) or not tag["codec"]:
            raise wrong("codec", "a non-empty string")
        if tag["class"] is not None and not isinstance(tag["class"], str):
            raise wrong("class", "a class name or null")
        if not isinstance(tag["fields"], dict):
            raise wrong("fields", "an object")
        if tag["class"] is not None:
            class_form("class")
        children = [(v, f"{path}.fields.{k}") for k, v in tag["fields"].items()]
    elif kind == SPEC:
        if not isinstance(tag["class"], str):
            raise wrong("class", "a class name")
        if not isinstance(tag["kwargs"], dict):
            raise wrong("kwargs", "an object")
        class_form("class")
        children = [(v, f"{path}.kwargs.{k}") for k, v in tag["kwargs"].items()]
    elif kind == CALLABLE:
        if not isinstance(tag["name"], str) or not tag["name"]:
            raise wrong("name", "a non-empty string")
        if where != "scheduler_kwargs":
            raise typed_error(path, '"callable" tag: may only appear in scheduler_kwargs')
    else:  # TENSOR
        name = tag["name"]
        if not isinstance(name, str):
            raise wrong("name", "a string")
        if where != "extra":
            raise typed_error(
                path,
                f'"tensor" tag: may only appear in extra state ({_EXTRA_PATH}), not in {where}',
            )
        if name in seen:
            raise typed_error(
                path,
                f'"tensor" tag: names tensor {_quote(name)}, which the tag at {seen[name]} '
                "names too",
            )
        seen[name] = path
        names.append(name)
    return children


# ---------------------------------------------------------------------------
# version 1 <-> version 2 (FORMAT.md 11.7, 11.8)


def _from_v1(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_v1(v) for v in value]
    if not isinstance(value, dict):
        return value
    if TYPE_KEY in value:
        return {TYPE_KEY: DICT, "items": [[k, _from_v1(v)] for k, v in value.items()]}
    return {k: _from_v1(v) for k, v in value.items()}


def kwargs_from_v1(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A version 1 kwargs object in the typed encoding (FORMAT.md 11.7):
    every object below it that has the key ``"__type__"``, which means
    nothing in version 1, becomes a ``dict`` tag. The kwargs object itself
    maps kwarg names to values and stays as it is."""
    return {k: _from_v1(v) for k, v in kwargs.items()}


def _needs_v2(path: str, reason: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"cannot write: format version 1 cannot hold {path}: {reason}; write version 2",
        kind="InvalidInput",
    )


def _to_v1(value: Any, path: str) -> Any:
    if isinstance(value, list):
        return [_to_v1(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if TYPE_KEY not in value:
        return {k: _to_v1(v, f"{path}.{k}") for k, v in value.items()}
    kind = value[TYPE_KEY]
    items = value.get("items")
    if kind != DICT or set(value) != {TYPE_KEY, "items"} or not isinstance(items, list):
        raise _needs_v2(path, f"a {kind} tag" if isinstance(kind, str) else "a tag")
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise _needs_v2(f"{path}.items[{i}]", "a dict key that is not a string")
        key, v = item
        if key in out:
            raise _needs_v2(f"{path}.items[{i}]", f"the key {key!r} twice")
        out[key] = _to_v1(v, f"{path}.items[{i}][1]")
    return out


def kwargs_to_v1(kwargs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Typed kwargs as version 1's plain JSON (FORMAT.md 11.7, 11.8):
    ``dict`` tags whose keys are all strings become objects. Any other tag
    needs version 2: :class:`InvalidArgumentError` of kind
    ``"InvalidInput"``, naming where. ``path`` names the kwargs object
    (``model_kwargs``)."""
    return {k: _to_v1(v, f"{path}.{k}") for k, v in kwargs.items()}

"""The non-tensor values of a sharded checkpoint: stored as plain JSON in
the index (docs/FORMAT.md 13.1), never pickled.

DCP's planners hand a value to the storage layer as the bytes of
``torch.save(value)`` and take it back through ``torch.load``. The writer
reads those bytes with this package's restricted reader of ``torch.save``
archives (``_torch_file.py``: it scans the pickle first and refuses any
global that is not a plain container or a tensor, so nothing in it runs
code), then admits only what JSON holds exactly; the reader hands the
planner bytes it made itself with ``torch.save`` from the stored JSON.
"""

from __future__ import annotations

import io
import math
from typing import Any

import torch

from .._errors import FormatError, MetadataError, UnsafePickleError
from .._format.json import is_uint
from .._torch_file import read_torch_bytes

__all__ = ["json_value", "value_stream"]

_INT_MIN = -(1 << 63)


def _why_not_json(value: Any, path: str) -> str | None:
    """Where and why ``value`` is not exactly a JSON value, or None."""
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, int):
        if value >= _INT_MIN and (value < 0 or is_uint(value)):
            return None
        return f"{path}: the integer {value} does not fit 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path}: {value} is not a finite number"
    if isinstance(value, list):
        for i, item in enumerate(value):
            reason = _why_not_json(item, f"{path}[{i}]")
            if reason is not None:
                return reason
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}: the key {key!r} is not a string"
            reason = _why_not_json(item, f"{path}[{key!r}]")
            if reason is not None:
                return reason
        return None
    if isinstance(value, tuple):
        return f"{path}: a tuple (JSON has lists only: store a list)"
    return f"{path}: a {type(value).__name__}"


def json_value(name: str, data: io.BytesIO) -> Any:
    """The value in ``data`` (``torch.save`` bytes), when it is plain JSON;
    :class:`MetadataError` naming ``name`` otherwise."""
    why = (
        f"the value {name!r} of the state dict is not plain JSON, so a sharded checkpoint "
        "cannot hold it"
    )
    try:
        value = read_torch_bytes(data.getvalue(), f"the value {name!r}").obj
    except UnsafePickleError as e:
        raise MetadataError(f"{why} (it would need pickle): {e}") from None
    except FormatError as e:
        raise MetadataError(f"{why}: {e}") from None
    reason = _why_not_json(value, name)
    if reason is not None:
        raise MetadataError(f"{why}: {reason}")
    return value


def value_stream(value: Any) -> io.BytesIO:
    """What DCP's load planner reads a value from: ``torch.save`` bytes of
    the stored JSON value."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer

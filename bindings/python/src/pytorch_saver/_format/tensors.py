"""The safetensors members (``src/format/tensors.rs``): v1's dtypes, header
construction for the writer, and validation of a header before any tensor
byte is handed out."""

from __future__ import annotations

import ctypes
import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import torch

from .._errors import FormatError, InvalidArgumentError
from .json import SURROGATE, U64_LIMIT, JsonError, is_uint, parse_object
from .zip import ALIGNMENT

__all__ = [
    "DTYPES",
    "DTYPES_BY_NAME",
    "DTYPES_BY_TORCH",
    "MAX_TENSOR_HEADER_BYTES",
    "Dtype",
    "PlannedTensor",
    "PlannedTensors",
    "TensorEntry",
    "build_header",
    "check_bool_bytes",
    "parse_header",
    "writable_bytes",
]

MAX_TENSOR_HEADER_BYTES: Final = 100_000_000
"""Largest safetensors header a reader accepts (the safetensors library's own cap)."""


@dataclass(frozen=True)
class Dtype:
    name: str
    torch_dtype: torch.dtype
    size: int
    # Rank in the safetensors library's Dtype enum, which orders tensor data.
    rank: int


DTYPES: Final = (
    Dtype("BOOL", torch.bool, 1, 0),
    Dtype("U8", torch.uint8, 1, 4),
    Dtype("I8", torch.int8, 1, 5),
    Dtype("I16", torch.int16, 2, 11),
    Dtype("F16", torch.float16, 2, 13),
    Dtype("BF16", torch.bfloat16, 2, 14),
    Dtype("I32", torch.int32, 4, 15),
    Dtype("F32", torch.float32, 4, 17),
    Dtype("F64", torch.float64, 8, 19),
    Dtype("I64", torch.int64, 8, 20),
)
"""The dtypes v1 allows."""
DTYPES_BY_NAME: Final = {d.name: d for d in DTYPES}
DTYPES_BY_TORCH: Final = {d.torch_dtype: d for d in DTYPES}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a member, with its data's absolute position in the file."""

    name: str
    dtype: Dtype
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


def _parse_entry(member: str, name: str, info: Any, data_base: int, data_len: int) -> TensorEntry:
    def header_err(reason: str) -> FormatError:
        return FormatError(f"{member}: header: tensor {name!r}: {reason}", kind="TensorHeader")

    if not isinstance(info, dict):
        raise header_err("entry is not an object")
    for key in info:
        if key not in ("dtype", "shape", "data_offsets"):
            raise header_err(f"unknown field {key!r}")
    dtype_name = info.get("dtype")
    if not isinstance(dtype_name, str):
        raise header_err("dtype missing or not a string")
    dtype = DTYPES_BY_NAME.get(dtype_name)
    if dtype is None:
        raise FormatError(
            f"{member}: tensor {name!r} has dtype {dtype_name}, not one of v1's dtypes",
            kind="UnsupportedDtype",
        )
    shape = info.get("shape")
    if not isinstance(shape, list):
        raise header_err("shape missing or not an array")
    if not all(is_uint(d) for d in shape):
        raise header_err("shape has an entry that is not a non-negative integer")
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_uint, offsets))):
        raise header_err("data_offsets must be two non-negative integers")
    s, e = offsets

    def data_err(reason: str) -> FormatError:
        return FormatError(
            f"{member}: tensor {name!r} (data bytes {s}..{e}): {reason}", kind="TensorData"
        )

    if e < s:
        raise data_err("end before start")
    if e > data_len:
        raise data_err(f"out of range: the member has {data_len} bytes of tensor data")
    need = dtype.size
    for d in shape:
        need *= d
        if need >= U64_LIMIT:
            raise data_err(f"shape {shape} overflows")
    if need != e - s:
        raise data_err(
            f"shape {shape} of {dtype_name} needs {need} bytes, the offsets give {e - s}"
        )
    return TensorEntry(name, dtype, tuple(shape), data_base + s, data_base + e)


def parse_header(
    member: str, data_start: int, size: int, read: Callable[[int, int, str], bytes]
) -> tuple[bytes, list[TensorEntry]]:
    """Reads (``read(start, length, what)``) and validates the header of the
    safetensors member ``member`` of ``size`` bytes at absolute offset
    ``data_start``. Returns the header's bytes (length prefix included) and
    the tensors in data order."""

    def header_err(reason: str) -> FormatError:
        return FormatError(f"{member}: header: {reason}", kind="TensorHeader")

    if size < 8:
        raise header_err(f"member is {size} bytes, shorter than the 8-byte header length")
    prefix = read(data_start, 8, f"header of {member}")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_TENSOR_HEADER_BYTES:
        raise FormatError(
            f"{member} header is {n} bytes, above the limit of {MAX_TENSOR_HEADER_BYTES}",
            kind="TooLarge",
        )
    if 8 + n > size:
        raise header_err(f"header length {n} runs past the end of the {size}-byte member")
    raw = read(data_start + 8, n, f"header of {member}")
    try:
        obj = parse_object(raw)
    except JsonError as e:
        raise header_err(str(e)) from None
    data_base = data_start + 8 + n
    data_len = size - 8 - n
    entries: list[TensorEntry] = []
    for name, info in obj.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise header_err("__metadata__ must map strings to strings")
            continue
        entries.append(_parse_entry(member, name, info, data_base, data_len))
    entries.sort(key=lambda t: (t.start, t.end))
    cursor = data_base
    prev: TensorEntry | None = None
    for t in entries:
        where = (
            f"{member}: tensor {t.name!r} (data bytes {t.start - data_base}..{t.end - data_base})"
        )
        if t.start < cursor:
            assert prev is not None
            raise FormatError(
                f"{where}: overlaps tensor {prev.name!r} (bytes {prev.start - data_base}.."
                f"{prev.end - data_base})",
                kind="TensorData",
            )
        if t.start > cursor:
            raise FormatError(
                f"{where}: {t.start - cursor} unclaimed bytes before it", kind="TensorData"
            )
        cursor = t.end
        prev = t
    if cursor != data_base + data_len:
        raise header_err(
            f"{data_base + data_len - cursor} bytes of tensor data are claimed by no tensor"
        )
    # A BOOL byte other than 0 or 1 is no bool (torch would hand the value
    # on as is): checked with the structure, as the Rust reader does.
    for t in entries:
        if t.dtype.name != "BOOL":
            continue
        for at in range(t.start, t.end, _BOOL_CHUNK):
            chunk = read(at, min(_BOOL_CHUNK, t.end - at), f"data of tensor {t.name!r}")
            bad = _NOT_BOOL.search(chunk)
            if bad is not None:
                i = bad.start()
                raise _bad_bool(member, t, data_base, at - t.start + i, chunk[i])
    return prefix + raw, entries


_BOOL_CHUNK: Final = 1 << 20
_NOT_BOOL: Final = re.compile(b"[^\x00\x01]")


def _bad_bool(
    member: str, entry: TensorEntry, data_base: int, index: int, byte: int
) -> FormatError:
    return FormatError(
        f"{member}: tensor {entry.name!r} (data bytes {entry.start - data_base}.."
        f"{entry.end - data_base}): BOOL element {index} is byte {byte}, not 0 or 1",
        kind="TensorData",
    )


def check_bool_bytes(member: str, entry: TensorEntry, data: torch.Tensor, data_base: int) -> None:
    """FormatError unless every byte of the BOOL tensor ``entry`` (``data``,
    its bytes in memory, viewed as uint8) is 0 or 1; ``data_base`` is the
    absolute offset of the member's tensor data."""
    if entry.dtype.name != "BOOL" or not data.numel():
        return
    bytes_ = data.view(torch.uint8).reshape(-1)
    bad = torch.nonzero(bytes_ > 1)
    if bad.numel():
        index = int(bad[0, 0])
        raise _bad_bool(member, entry, data_base, index, int(bytes_[index]))


def writable_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, as a writable view that is valid
    while ``t`` lives (no numpy needed)."""
    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    tensor: torch.Tensor
    dtype: Dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class PlannedTensors:
    """A safetensors member as the writer plans it."""

    name: str
    header: bytes  # length prefix, JSON and padding
    tensors: list[PlannedTensor]  # in data order

    @property
    def size(self) -> int:
        return len(self.header) + sum(t.nbytes for t in self.tensors)


def _invalid(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, kind="InvalidInput")


def build_header(member: str, tensors: Mapping[str, torch.Tensor]) -> PlannedTensors:
    """Checks the tensors of a member and builds its safetensors header:
    data ordered as the safetensors library orders it (by dtype, largest
    element first, then by name), the header padded with spaces so that
    ``8 + N`` is a multiple of 64."""
    if not isinstance(tensors, Mapping):
        raise _invalid(f"{member}: tensors must be a mapping of names to tensors")
    planned: list[PlannedTensor] = []
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise _invalid(f"{member}: tensor name {name!r} is not a string")
        if name == "__metadata__":
            raise _invalid(f"{member}: a tensor may not be named __metadata__")
        if "\0" in name or SURROGATE.search(name):
            raise _invalid(f"{member}: tensor name {name!r} is not valid UTF-8 text")
        if not isinstance(tensor, torch.Tensor):
            raise _invalid(f"{member}: {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta:
            raise _invalid(
                f"{member}: tensor {name!r} is not a dense tensor with data (layout "
                f"{tensor.layout}, device {tensor.device}); convert it first"
            )
        dtype = DTYPES_BY_TORCH.get(tensor.dtype)
        if dtype is None:
            allowed = ", ".join(str(d.torch_dtype) for d in DTYPES)
            raise _invalid(
                f"{member}: tensor {name!r} has dtype {tensor.dtype}, which format v1 does not "
                f"store (allowed: {allowed})"
            )
        shape = tuple(int(d) for d in tensor.shape)
        planned.append(PlannedTensor(name, tensor, dtype, shape, math.prod(shape) * dtype.size))
    planned.sort(key=lambda t: (-t.dtype.rank, t.name))
    header: dict[str, Any] = {}
    offset = 0
    for t in planned:
        header[t.name] = {
            "dtype": t.dtype.name,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    padded = len(text) + (-(8 + len(text)) % ALIGNMENT)
    if padded > MAX_TENSOR_HEADER_BYTES:
        raise _invalid(
            f"{member}: safetensors header of {padded} bytes exceeds {MAX_TENSOR_HEADER_BYTES}"
        )
    body = text + b" " * (padded - len(text))
    return PlannedTensors(member, struct.pack("<Q", padded) + body, planned)

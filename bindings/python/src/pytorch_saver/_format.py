"""Format v1 of pytorch-saver files: the validating reader and the atomic,
durable writer. ``docs/FORMAT.md`` is the normative text; this module follows
the Rust core's ``src/format/`` (a ZIP of 64-byte aligned STORED members:
``metadata.json``, ``model.safetensors`` and, for a training checkpoint,
``optimizer.safetensors``).

Reading validates the whole file before it returns anything: first its
structure (:class:`CheckpointReader`, :class:`Scan`, no tensor data read),
then the tensors, copied out with their CRC-32 (``read_checkpoint``) or
mapped in place (``_mapped.py``). Nothing read from a file is executed,
and no allocation is sized by a length the file states before that length
was checked against the file's size.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import re
import stat
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import torch

from ._crc import crc32
from ._errors import FormatError, MetadataError, UnsupportedVersionError

__all__ = [
    "FORMAT_VERSION",
    "INTERNALS_KEY",
    "RESERVED_KEYS",
    "Checkpoint",
    "CheckpointReader",
    "Scan",
    "TensorEntry",
    "TensorMember",
    "check_bool_bytes",
    "read_checkpoint",
    "write_checkpoint",
]

FORMAT_VERSION: Final[int] = 1
"""The format version this module writes."""
SUPPORTED_VERSIONS: Final[frozenset[int]] = frozenset({1})
"""The format versions this module reads."""
INTERNALS_KEY: Final = "__pytorch_saver__"
"""The top-level metadata key that holds every format internal."""
RESERVED_KEYS: Final[frozenset[str]] = frozenset(
    {"model_kwargs", "optim_kwargs", "scheduler_kwargs", "timestamp", INTERNALS_KEY}
)
"""Top-level metadata keys that user metadata may not use."""

METADATA_MEMBER: Final = "metadata.json"
MODEL_MEMBER: Final = "model.safetensors"
OPTIMIZER_MEMBER: Final = "optimizer.safetensors"
MEMBER_ORDER: Final = (METADATA_MEMBER, MODEL_MEMBER, OPTIMIZER_MEMBER)

MAX_METADATA_BYTES: Final = 16 << 20
MAX_TENSOR_HEADER_BYTES: Final = 100_000_000
ALIGNMENT: Final = 64
# JSON nesting the Rust reader (serde_json's recursion limit) accepts: a
# file nested deeper would mean something to this reader and nothing to it.
MAX_JSON_DEPTH: Final = 127

# --- ZIP constants (APPNOTE 6.3; FORMAT.md section 2) ---
_LOCAL_SIG: Final = 0x04034B50
_CENTRAL_SIG: Final = 0x02014B50
_EOCD_SIG: Final = 0x06054B50
_ZIP64_EOCD_SIG: Final = 0x06064B50
_ZIP64_LOCATOR_SIG: Final = 0x07064B50
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_EOCD = struct.Struct("<IHHHHIIH")  # 22 bytes
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_ZIP64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes
_ZIP64_EXTRA_ID: Final = 0x0001
_PADDING_EXTRA_ID: Final = 0xD935
_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFFFFFF
_VERSION_STORED: Final = 20
_VERSION_ZIP64: Final = 45
_MADE_BY_UNIX: Final = 3 << 8
_UNIX_FILE_0644: Final = 0o100644 << 16
# Encryption (0), data descriptor (3), patched data (5), strong encryption
# (6), masked local header (13).
_FORBIDDEN_FLAGS: Final = (1 << 0) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 13)
_MAX_ENTRIES: Final = 16
# The largest central directory 16 entries can fill (name, extra and
# comment of at most 65535 bytes each).
_MAX_CENTRAL_DIRECTORY: Final = _MAX_ENTRIES * (_CENTRAL.size + 3 * _U16_MAX)
# How far back from the end to look for a misplaced end record, to tell
# trailing bytes from a truncated file.
_TAIL_SEARCH: Final = (1 << 20) + 65_557
_CHUNK: Final = 1 << 20
_COPY_CHUNK: Final = 64 << 20
_U64_LIMIT: Final = 1 << 64


@dataclass(frozen=True)
class _Dtype:
    name: str
    torch_dtype: torch.dtype
    size: int
    # Rank in the safetensors library's Dtype enum, which orders tensor data.
    rank: int


_DTYPE_LIST: Final = (
    _Dtype("BOOL", torch.bool, 1, 0),
    _Dtype("U8", torch.uint8, 1, 4),
    _Dtype("I8", torch.int8, 1, 5),
    _Dtype("I16", torch.int16, 2, 11),
    _Dtype("F16", torch.float16, 2, 13),
    _Dtype("BF16", torch.bfloat16, 2, 14),
    _Dtype("I32", torch.int32, 4, 15),
    _Dtype("F32", torch.float32, 4, 17),
    _Dtype("F64", torch.float64, 8, 19),
    _Dtype("I64", torch.int64, 8, 20),
)
_DTYPES_BY_NAME: Final = {d.name: d for d in _DTYPE_LIST}
_DTYPES_BY_TORCH: Final = {d.torch_dtype: d for d in _DTYPE_LIST}


@dataclass(frozen=True)
class Checkpoint:
    """A validated format-v1 file, read completely into memory."""

    path: str
    metadata: dict[str, Any]
    """The whole ``metadata.json`` object, ``__pytorch_saver__`` included."""
    model: dict[str, torch.Tensor]
    """``model.safetensors``: CPU tensors, in the file's data order."""
    optimizer: dict[str, torch.Tensor]
    """``optimizer.safetensors`` (``state.<index>.<key>``); empty when absent."""


# ---------------------------------------------------------------------------
# JSON


class _JsonError(Exception):
    """Why a JSON text was refused; the caller adds where it came from."""


def _reject_constant(name: str) -> Any:
    raise _JsonError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonError(f"number {text} is out of range of a binary64 float")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _JsonError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_parsed(value: Any) -> None:
    """Limits the JSON parser does not apply: nesting depth, and strings
    that are not Unicode text (a lone surrogate escape such as ``\\ud800``)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise _JsonError(f"string {item!r} holds a lone surrogate")
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _JsonError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def _parse_json_object(data: bytes) -> dict[str, Any]:
    """Parses UTF-8 JSON whose top level is an object, refusing duplicate
    keys at any depth, NaN and infinities, and lone surrogates. Raises
    ``_JsonError``; callers turn it into the error of their context."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _JsonError(f"not UTF-8: {e}") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except _JsonError:
        raise
    except RecursionError:
        raise _JsonError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise _JsonError(str(e)) from None
    if not isinstance(value, dict):
        raise _JsonError("top level is not a JSON object")
    _check_parsed(value)
    return value


def _is_uint(value: Any) -> bool:
    """A JSON non-negative integer that fits 64 bits (``bool`` is not one)."""
    return type(value) is int and 0 <= value < _U64_LIMIT


# ---------------------------------------------------------------------------
# metadata.json schema (FORMAT.md section 3, 5, 6)


@dataclass(frozen=True)
class _OptimizerLayout:
    """What ``optimizer.safetensors`` is checked against."""

    param_count: int
    # Parameter index -> its non-tensor state keys.
    state: dict[int, frozenset[str]]

    def check_tensor_name(self, name: str) -> str | None:
        """Why ``name`` is not ``state.<index>.<key>`` of this layout, or None."""
        if not name.startswith("state."):
            return "optimizer tensors are named state.<index>.<key>"
        index, dot, key = name[len("state.") :].partition(".")
        if not dot or not key or not index or not _ASCII_DIGITS.fullmatch(index):
            return "optimizer tensors are named state.<index>.<key>"
        if str(int(index)) != index:
            return f"{index!r} is not a canonical decimal parameter index"
        plain = self.state.get(int(index))
        if plain is None:
            return f"parameter {index} has no entry in {INTERNALS_KEY}.optimizer.state"
        if key in plain:
            return f"state key {key!r} is both a tensor and a JSON value"
        return None


_ASCII_DIGITS = re.compile("[0-9]+")


@dataclass(frozen=True)
class _Manifest:
    kind: str
    timestamp: int
    optimizer: _OptimizerLayout | None


def _schema(field: str, reason: str) -> FormatError:
    return FormatError(f"metadata.json: field {field}: {reason}")


def _get_str(obj: dict[str, Any], field: str, path: str) -> str:
    value = obj.get(field)
    if field not in obj:
        raise _schema(f"{path}.{field}", "missing")
    if not isinstance(value, str) or not value:
        raise _schema(f"{path}.{field}", "must be a non-empty string")
    return value


def _get_class(internals: dict[str, Any], part: str) -> str | None:
    path = f"{INTERNALS_KEY}.{part}"
    if part not in internals:
        return None
    obj = internals[part]
    if not isinstance(obj, dict):
        raise _schema(path, "must be an object")
    return _get_str(obj, "class", path)


def _require_object(meta: dict[str, Any], key: str, present: bool) -> None:
    if key in meta:
        if not present:
            raise _schema(key, "present although the file has no such part")
        if not isinstance(meta[key], dict):
            raise _schema(key, "must be an object")
    elif present:
        raise _schema(key, "missing")


def _validate_optimizer(opt: dict[str, Any]) -> _OptimizerLayout:
    path = f"{INTERNALS_KEY}.optimizer"
    if "param_names" not in opt:
        raise _schema(f"{path}.param_names", "missing")
    names = opt["param_names"]
    if not isinstance(names, list):
        raise _schema(f"{path}.param_names", "must be a list of parameter names")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise _schema(f"{path}.param_names[{i}]", "must be a non-empty string")
        if name in seen:
            raise _schema(f"{path}.param_names[{i}]", f"{name!r} appears twice")
        seen.add(name)
    count = len(names)
    if "param_groups" not in opt:
        raise _schema(f"{path}.param_groups", "missing")
    groups = opt["param_groups"]
    if not isinstance(groups, list):
        raise _schema(f"{path}.param_groups", "must be a list of objects")
    in_group = [False] * count
    for g, group in enumerate(groups):
        gpath = f"{path}.param_groups[{g}]"
        if not isinstance(group, dict):
            raise _schema(gpath, "must be an object")
        params = group.get("params")
        if not isinstance(params, list):
            raise _schema(f"{gpath}.params", "must be a list of parameter indices")
        for p in params:
            if not (_is_uint(p) and p < count):
                raise _schema(
                    f"{gpath}.params",
                    f"{json.dumps(p)} is not an index into param_names (0..{count})",
                )
            if in_group[p]:
                raise _schema(f"{gpath}.params", f"parameter {p} is in more than one group")
            in_group[p] = True
    if not all(in_group):
        raise _schema(f"{path}.param_groups", f"parameter {in_group.index(False)} is in no group")
    if "state" not in opt:
        raise _schema(f"{path}.state", "missing")
    state_obj = opt["state"]
    if not isinstance(state_obj, dict):
        raise _schema(f"{path}.state", "must be an object")
    state: dict[int, frozenset[str]] = {}
    for key, value in state_obj.items():
        canonical = _ASCII_DIGITS.fullmatch(key) is not None and str(int(key)) == key
        if not canonical or int(key) >= count:
            raise _schema(f"{path}.state", f"key {key!r} is not a parameter index (0..{count})")
        if not isinstance(value, dict):
            raise _schema(f"{path}.state.{key}", "must be an object")
        state[int(key)] = frozenset(value)
    return _OptimizerLayout(count, state)


def _validate_metadata(meta: dict[str, Any]) -> _Manifest:
    """Checks ``metadata.json`` against the v1 schema, the format version
    first so that a newer file is reported as such, not as broken."""
    if INTERNALS_KEY not in meta:
        raise _schema(
            INTERNALS_KEY,
            "missing: not a pytorch-saver format file (a file of the original "
            "pytorch-saver 0.1 package must be upgraded first)",
        )
    internals = meta[INTERNALS_KEY]
    if not isinstance(internals, dict):
        raise _schema(INTERNALS_KEY, "must be an object")
    version_field = f"{INTERNALS_KEY}.format_version"
    if "format_version" not in internals:
        raise _schema(version_field, "missing")
    version = internals["format_version"]
    if isinstance(version, bool) or not isinstance(version, (int, float)):
        raise _schema(version_field, "must be an integer")
    if not (_is_uint(version) and version in SUPPORTED_VERSIONS):
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        raise UnsupportedVersionError(
            f"format version {json.dumps(version)} is not supported (this package reads "
            f"versions {supported}); upgrade pytorch-saver to read this file"
        )
    kind = internals.get("kind")
    if kind not in ("checkpoint", "inference"):
        raise _schema(f"{INTERNALS_KEY}.kind", 'must be "checkpoint" or "inference"')
    if _get_class(internals, "model") is None:
        raise _schema(f"{INTERNALS_KEY}.model", "missing")
    optimizer_class = _get_class(internals, "optimizer")
    scheduler_class = _get_class(internals, "scheduler")
    layout = _validate_optimizer(internals["optimizer"]) if optimizer_class is not None else None
    if scheduler_class is not None and not isinstance(internals["scheduler"].get("state"), dict):
        raise _schema(f"{INTERNALS_KEY}.scheduler.state", "must be an object")
    if kind == "inference" and (optimizer_class is not None or scheduler_class is not None):
        raise _schema(INTERNALS_KEY, "an inference file holds no optimizer or scheduler")
    if scheduler_class is not None and optimizer_class is None:
        raise _schema(INTERNALS_KEY, "a scheduler needs an optimizer")
    producer_path = f"{INTERNALS_KEY}.producer"
    if "producer" not in internals:
        raise _schema(producer_path, "missing")
    producer = internals["producer"]
    if not isinstance(producer, dict):
        raise _schema(producer_path, "must be an object")
    for field in ("library", "version", "language"):
        _get_str(producer, field, producer_path)
    if "torch_version" in producer:
        _get_str(producer, "torch_version", producer_path)
    _require_object(meta, "model_kwargs", True)
    _require_object(meta, "optim_kwargs", optimizer_class is not None)
    _require_object(meta, "scheduler_kwargs", scheduler_class is not None)
    if "timestamp" not in meta:
        raise _schema("timestamp", "missing")
    timestamp = meta["timestamp"]
    if not _is_uint(timestamp):
        raise _schema("timestamp", "must be a non-negative integer (Unix seconds)")
    return _Manifest(kind, timestamp, layout)


# ---------------------------------------------------------------------------
# Reading


class _File:
    """Positioned, bounds-checked reads of an open file."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def check(self, start: int, length: int, what: str) -> None:
        if start < 0 or start + length > self.size:
            raise FormatError(
                f"truncated file: {what} needs bytes {start}..{start + length} "
                f"but the file has {self.size} bytes"
            )

    def read(self, start: int, length: int, what: str) -> bytes:
        self.check(start, length, what)
        parts: list[bytes] = []
        done = 0
        while done < length:
            chunk = os.pread(self.fd, length - done, start + done)
            if not chunk:
                raise FormatError(f"{what}: the file shrank while it was read")
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def read_into(self, buf: memoryview, start: int, what: str) -> None:
        self.check(start, len(buf), what)
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd, [buf[done:]], start + done)
            if n <= 0:
                raise FormatError(f"{what}: the file shrank while it was read")
            done += n

    def crc(self, start: int, length: int, what: str) -> int:
        self.check(start, length, what)
        crc = 0
        done = 0
        while done < length:
            chunk = self.read(start + done, min(_CHUNK, length - done), what)
            crc = crc32(chunk, crc)
            done += len(chunk)
        return crc


@dataclass
class _Member:
    name: str
    flags: int
    method: int
    crc: int
    size: int
    header_offset: int
    data_start: int = -1


def _zip64_fields(member: str, extra: bytes, values: list[int]) -> list[int]:
    """Walks the extra field's blocks (they must fill it exactly) and
    replaces each of ``values`` that holds the 0xffffffff marker with the
    next 64-bit value of the ZIP64 block, in APPNOTE order."""
    p = 0
    block: bytes | None = None
    while p < len(extra):
        if p + 4 > len(extra):
            raise FormatError(f"unsupported ZIP feature in {member}: malformed extra field")
        block_id, n = struct.unpack_from("<HH", extra, p)
        if p + 4 + n > len(extra):
            raise FormatError(
                f"unsupported ZIP feature in {member}: extra field block runs past its header"
            )
        if block_id == _ZIP64_EXTRA_ID:
            block = extra[p + 4 : p + 4 + n]
        p += 4 + n
    markers = sum(1 for v in values if v == _U32_MAX)
    if markers == 0:
        return values
    if block is None:
        raise FormatError(
            f"unsupported ZIP feature in {member}: 0xffffffff size or offset "
            "without a ZIP64 extra field"
        )
    if len(block) < 8 * markers:
        raise FormatError(f"unsupported ZIP feature in {member}: ZIP64 extra field too short")
    out = []
    at = 0
    for v in values:
        if v == _U32_MAX:
            (v,) = struct.unpack_from("<Q", block, at)
            at += 8
        out.append(v)
    return out


def _explain_missing_end(f: _File) -> FormatError:
    """No end record at the very end: something follows it (trailing bytes
    or a comment), or the file is cut short or not a ZIP at all."""
    lo = max(0, f.size - _TAIL_SEARCH)
    tail = f.read(lo, f.size - lo, "end of the file")
    sig = struct.pack("<I", _EOCD_SIG)
    hi = len(tail) - _EOCD.size
    p = tail.rfind(sig, 0, hi + 3)
    while p >= 0:
        (comment_len,) = struct.unpack_from("<H", tail, p + 20)
        end = lo + p + _EOCD.size + comment_len
        if end < f.size:
            return FormatError(
                f"{f.size - end} trailing bytes after the end of the archive at byte {end}"
            )
        if end == f.size:
            return FormatError("unsupported ZIP feature in archive: archive comment")
        p = tail.rfind(sig, 0, p + 3)
    return FormatError(
        f"no end-of-central-directory record at the end of the {f.size}-byte file: "
        "it is truncated or not a ZIP archive"
    )


def _parse_layout(f: _File) -> list[_Member]:
    """Parses and checks the ZIP structure: end records, central directory,
    local headers, and that members tile the file from byte 0 to the
    central directory with nothing in between. Returns the members in file
    order, each with the absolute offset of its data."""
    if f.size < _EOCD.size:
        raise FormatError(
            f"no end-of-central-directory record at the end of the {f.size}-byte file: "
            "it is truncated or not a ZIP archive"
        )
    eocd_at = f.size - _EOCD.size
    eocd = f.read(eocd_at, _EOCD.size, "end-of-central-directory record")
    sig, disk, cd_disk, entries_disk, entries, cd_size, cd_offset, comment_len = _EOCD.unpack(eocd)
    if sig != _EOCD_SIG:
        raise _explain_missing_end(f)
    if disk != 0 or cd_disk != 0:
        raise FormatError("unsupported ZIP feature in archive: multiple disks")
    if comment_len != 0:
        raise FormatError("unsupported ZIP feature in archive: archive comment")
    cd_end = eocd_at
    if entries == _U16_MAX or cd_size == _U32_MAX or cd_offset == _U32_MAX:
        loc_at = eocd_at - _ZIP64_LOCATOR.size
        if loc_at < 0:
            raise FormatError(
                "not a pytorch-saver checkpoint: no ZIP64 end-of-central-directory locator "
                "signature at byte 0"
            )
        loc_sig, loc_disk, rec_at, _total_disks = _ZIP64_LOCATOR.unpack(
            f.read(loc_at, _ZIP64_LOCATOR.size, "ZIP64 end-of-central-directory locator")
        )
        if loc_sig != _ZIP64_LOCATOR_SIG:
            raise FormatError(
                "not a pytorch-saver checkpoint: no ZIP64 end-of-central-directory locator "
                f"signature at byte {loc_at}"
            )
        if rec_at != loc_at - _ZIP64_EOCD.size or rec_at < 0:
            raise FormatError(
                f"inconsistent ZIP layout: ZIP64 end record at byte {rec_at}, expected right "
                f"before its locator at {loc_at}"
            )
        (
            rec_sig,
            rec_size,
            _made_by,
            _needed,
            rec_disk,
            rec_cd_disk,
            entries_disk64,
            entries64,
            cd_size64,
            cd_offset64,
        ) = _ZIP64_EOCD.unpack(
            f.read(rec_at, _ZIP64_EOCD.size, "ZIP64 end-of-central-directory record")
        )
        if rec_sig != _ZIP64_EOCD_SIG:
            raise FormatError(
                "not a pytorch-saver checkpoint: no ZIP64 end-of-central-directory record "
                f"signature at byte {rec_at}"
            )
        if rec_size != _ZIP64_EOCD.size - 12 or rec_disk or rec_cd_disk or loc_disk:
            raise FormatError(
                "unsupported ZIP feature in archive: ZIP64 extensible data or multiple disks"
            )
        if entries_disk64 != entries64:
            raise FormatError("inconsistent ZIP layout: ZIP64 entry counts disagree")
        entries, cd_size, cd_offset = entries64, cd_size64, cd_offset64
        cd_end = rec_at
    elif entries != entries_disk:
        raise FormatError("inconsistent ZIP layout: entry counts disagree")
    if entries > _MAX_ENTRIES:
        raise FormatError(
            f"central directory entry count is {entries}, above the limit of {_MAX_ENTRIES}"
        )
    cd_stop = cd_offset + cd_size
    if cd_stop > cd_end:
        raise FormatError(
            f"inconsistent ZIP layout: central directory at {cd_offset} of {cd_size} bytes "
            f"runs past the end records at {cd_end}"
        )
    if cd_stop != cd_end:
        raise FormatError(
            f"unexpected bytes {cd_stop}..{cd_end}: between the central directory and the "
            "end records"
        )
    if cd_size > _MAX_CENTRAL_DIRECTORY:
        raise FormatError(
            f"unexpected bytes {cd_offset}..{cd_stop}: a central directory of {cd_size} bytes "
            f"is more than {_MAX_ENTRIES} entries can fill"
        )
    cd = f.read(cd_offset, cd_size, "central directory")

    central: list[_Member] = []
    p = 0
    for i in range(entries):
        what = f"central directory entry {i}"
        if p + _CENTRAL.size > cd_size:
            raise FormatError(f"inconsistent ZIP layout: {what} runs past the central directory")
        (
            sig,
            _made_by,
            _needed,
            flags,
            method,
            _time,
            _date,
            crc,
            csize,
            usize,
            nlen,
            xlen,
            clen,
            disk_start,
            _internal,
            _external,
            offset,
        ) = _CENTRAL.unpack_from(cd, p)
        if sig != _CENTRAL_SIG:
            raise FormatError(
                "not a pytorch-saver checkpoint: no central directory entry signature at "
                f"byte {cd_offset + p}"
            )
        var_end = p + _CENTRAL.size + nlen + xlen + clen
        if var_end > cd_size:
            raise FormatError(f"inconsistent ZIP layout: {what} runs past the central directory")
        name_bytes = cd[p + _CENTRAL.size : p + _CENTRAL.size + nlen]
        name = name_bytes.decode("utf-8", errors="replace")
        extra = cd[p + _CENTRAL.size + nlen : p + _CENTRAL.size + nlen + xlen]
        usize, csize, offset = _zip64_fields(name, extra, [usize, csize, offset])
        if disk_start != 0:
            raise FormatError(f"unsupported ZIP feature in {name}: multiple disks")
        if csize != usize:
            raise FormatError(
                f"unsupported ZIP feature in {name}: compressed size {csize} differs from "
                f"size {usize}"
            )
        central.append(_Member(name, flags, method, crc, usize, offset))
        p = var_end
    if p != cd_size:
        raise FormatError(
            f"unexpected bytes {cd_offset + p}..{cd_stop}: in the central directory after its "
            "last entry"
        )

    seen: set[str] = set()
    last_rank = -1
    for position, m in enumerate(central):
        if m.name not in MEMBER_ORDER:
            raise FormatError(f"unexpected member {m.name!r}")
        if m.name in seen:
            raise FormatError(f"duplicate member {m.name}")
        seen.add(m.name)
        if m.method != 0:
            raise FormatError(
                f"member {m.name} is compressed (method {m.method}); format v1 requires STORED "
                "(method 0)"
            )
        if m.flags & _FORBIDDEN_FLAGS:
            raise FormatError(
                f"unsupported ZIP feature in {m.name}: general purpose flags {m.flags:#06x} "
                "(encryption or data descriptor)"
            )
        rank = MEMBER_ORDER.index(m.name)
        if rank <= last_rank or (position == 0 and m.name != METADATA_MEMBER):
            raise FormatError(
                f"member {m.name} at position {position}; v1 orders members as "
                + ", ".join(MEMBER_ORDER)
            )
        last_rank = rank
    if not central:
        raise FormatError(f"missing member {METADATA_MEMBER}")

    cursor = 0
    for m in central:
        at = m.header_offset
        if at > cursor:
            raise FormatError(
                f"unexpected bytes {cursor}..{at}: before member {m.name}, part of no member"
            )
        if at < cursor:
            raise FormatError(
                f"inconsistent ZIP layout: member {m.name} starts at byte {at}, inside the "
                f"previous member (which ends at {cursor})"
            )
        what = f"local header of {m.name}"
        (
            sig,
            _needed,
            flags,
            method,
            _time,
            _date,
            crc,
            csize,
            usize,
            nlen,
            xlen,
        ) = _LOCAL.unpack(f.read(at, _LOCAL.size, what))
        if sig != _LOCAL_SIG:
            raise FormatError(
                f"not a pytorch-saver checkpoint: no local file header signature at byte {at}"
            )
        var = f.read(at + _LOCAL.size, nlen + xlen, what)

        def mismatch(field: str, name: str = m.name) -> FormatError:
            return FormatError(
                f"member {name}: local header and central directory disagree on {field}"
            )

        if var[:nlen] != m.name.encode("utf-8"):
            raise mismatch("name")
        if method != m.method:
            raise mismatch("compression method")
        if flags != m.flags:
            raise mismatch("flags")
        if crc != m.crc:
            raise mismatch("CRC-32")
        usize, csize = _zip64_fields(m.name, var[nlen:], [usize, csize])
        if usize != m.size or csize != m.size:
            raise mismatch("size")
        data_start = at + _LOCAL.size + nlen + xlen
        if data_start % ALIGNMENT != 0:
            raise FormatError(
                f"member {m.name}: data starts at byte {data_start}, not on a "
                f"{ALIGNMENT}-byte boundary"
            )
        data_end = data_start + m.size
        if data_end > cd_offset:
            f.check(data_start, m.size, f"data of {m.name}")
            raise FormatError(
                f"inconsistent ZIP layout: data of {m.name} (bytes {data_start}..{data_end}) "
                f"runs into the central directory at {cd_offset}"
            )
        m.data_start = data_start
        cursor = data_end
    if cursor != cd_offset:
        raise FormatError(
            f"unexpected bytes {cursor}..{cd_offset}: between the last member and the central "
            "directory"
        )
    if central[0].size > MAX_METADATA_BYTES:
        raise FormatError(
            f"{METADATA_MEMBER} is {central[0].size} bytes, above the limit of {MAX_METADATA_BYTES}"
        )
    return central


def _crc_error(m: _Member, computed: int) -> FormatError:
    return FormatError(
        f"CRC-32 mismatch in {m.name} (bytes {m.data_start}..{m.data_start + m.size}): "
        f"stored {m.crc:08x}, computed {computed:08x}"
    )


def _verify_crc(f: _File, m: _Member) -> None:
    computed = f.crc(m.data_start, m.size, f"data of {m.name}")
    if computed != m.crc:
        raise _crc_error(m, computed)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: _Dtype
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


def _parse_tensor_entry(
    member: str, name: str, info: Any, data_base: int, data_len: int
) -> TensorEntry:
    def header_err(reason: str) -> FormatError:
        return FormatError(f"{member}: header: tensor {name!r}: {reason}")

    if not isinstance(info, dict):
        raise header_err("entry is not an object")
    for key in info:
        if key not in ("dtype", "shape", "data_offsets"):
            raise header_err(f"unknown field {key!r}")
    dtype_name = info.get("dtype")
    if not isinstance(dtype_name, str):
        raise header_err("dtype missing or not a string")
    dtype = _DTYPES_BY_NAME.get(dtype_name)
    if dtype is None:
        raise FormatError(
            f"{member}: tensor {name!r} has dtype {dtype_name}, not one of v1's dtypes"
        )
    shape = info.get("shape")
    if not isinstance(shape, list):
        raise header_err("shape missing or not an array")
    if not all(_is_uint(d) for d in shape):
        raise header_err("shape has an entry that is not a non-negative integer")
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_uint, offsets))):
        raise header_err("data_offsets must be two non-negative integers")
    s, e = offsets

    def data_err(reason: str) -> FormatError:
        return FormatError(f"{member}: tensor {name!r} (data bytes {s}..{e}): {reason}")

    if e < s:
        raise data_err("end before start")
    if e > data_len:
        raise data_err(f"out of range: the member has {data_len} bytes of tensor data")
    need = dtype.size
    for d in shape:
        need *= d
        if need >= _U64_LIMIT:
            raise data_err(f"shape {shape} overflows")
    if need != e - s:
        raise data_err(
            f"shape {shape} of {dtype_name} needs {need} bytes, the offsets give {e - s}"
        )
    return TensorEntry(name, dtype, tuple(shape), data_base + s, data_base + e)


def _parse_tensor_header(f: _File, m: _Member) -> tuple[bytes, list[TensorEntry]]:
    """Reads and validates a safetensors member's header. Returns the
    header's bytes (length prefix included) and the tensors in data order."""

    def header_err(reason: str) -> FormatError:
        return FormatError(f"{m.name}: header: {reason}")

    if m.size < 8:
        raise header_err(f"member is {m.size} bytes, shorter than the 8-byte header length")
    prefix = f.read(m.data_start, 8, f"header of {m.name}")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_TENSOR_HEADER_BYTES:
        raise FormatError(
            f"{m.name} header is {n} bytes, above the limit of {MAX_TENSOR_HEADER_BYTES}"
        )
    if 8 + n > m.size:
        raise header_err(f"header length {n} runs past the end of the {m.size}-byte member")
    raw = f.read(m.data_start + 8, n, f"header of {m.name}")
    try:
        obj = _parse_json_object(raw)
    except _JsonError as e:
        raise header_err(str(e)) from None
    data_base = m.data_start + 8 + n
    data_len = m.size - 8 - n
    entries: list[TensorEntry] = []
    for name, info in obj.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise header_err("__metadata__ must map strings to strings")
            continue
        entries.append(_parse_tensor_entry(m.name, name, info, data_base, data_len))
    entries.sort(key=lambda t: (t.start, t.end))
    cursor = data_base
    prev: TensorEntry | None = None
    for t in entries:
        where = (
            f"{m.name}: tensor {t.name!r} (data bytes {t.start - data_base}..{t.end - data_base})"
        )
        if t.start < cursor:
            assert prev is not None
            raise FormatError(
                f"{where}: overlaps tensor {prev.name!r} (bytes {prev.start - data_base}.."
                f"{prev.end - data_base})"
            )
        if t.start > cursor:
            raise FormatError(f"{where}: {t.start - cursor} unclaimed bytes before it")
        cursor = t.end
        prev = t
    if cursor != data_base + data_len:
        raise header_err(
            f"{data_base + data_len - cursor} bytes of tensor data are claimed by no tensor"
        )
    return prefix + raw, entries


def _writable_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, as a writable view that is valid
    while ``t`` lives (no numpy needed)."""
    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


@dataclass(frozen=True)
class TensorMember:
    """A safetensors member whose layout was validated; no tensor data read."""

    name: str
    crc: int  # stored CRC-32 of the member's data
    data_start: int  # absolute file offset of the member's first byte
    size: int
    header: bytes  # length prefix and JSON header, as read
    tensors: list[TensorEntry]  # in data order

    @property
    def tensor_bytes(self) -> int:
        return self.size - len(self.header)


@dataclass(frozen=True)
class Scan:
    """A file whose structure is validated (ZIP layout, alignment,
    ``metadata.json`` and its CRC, the schema, the safetensors headers and
    the optimizer's tensor names); tensor data is neither read nor CRC'd."""

    path: str
    file_size: int
    metadata: dict[str, Any]
    model: TensorMember
    optimizer: TensorMember | None


def _scan_tensor_member(f: _File, m: _Member, layout: _OptimizerLayout | None) -> TensorMember:
    """Validates a safetensors member's header. A header that does not parse
    is reported as a CRC mismatch when the CRC does not match either."""
    try:
        header, entries = _parse_tensor_header(f, m)
        if layout is not None:
            for t in entries:
                reason = layout.check_tensor_name(t.name)
                if reason is not None:
                    raise FormatError(f"{m.name}: header: tensor {t.name!r}: {reason}")
    except FormatError:
        _verify_crc(f, m)
        raise
    return TensorMember(m.name, m.crc, m.data_start, m.size, header, entries)


def _scan(f: _File, path: str) -> Scan:
    members = _parse_layout(f)
    meta_member = members[0]
    raw = f.read(meta_member.data_start, meta_member.size, f"data of {METADATA_MEMBER}")
    computed = zlib.crc32(raw)
    if computed != meta_member.crc:
        raise _crc_error(meta_member, computed)
    try:
        metadata = _parse_json_object(raw)
    except _JsonError as e:
        raise FormatError(f"{METADATA_MEMBER}: {e}") from None
    manifest = _validate_metadata(metadata)
    expected = [METADATA_MEMBER, MODEL_MEMBER]
    if manifest.optimizer is not None:
        expected.append(OPTIMIZER_MEMBER)
    present = [m.name for m in members]
    for name in expected:
        if name not in present:
            raise FormatError(f"missing member {name}")
    for name in present:
        if name not in expected:
            raise FormatError(f"unexpected member {name!r} (the metadata declares no optimizer)")
    model = _scan_tensor_member(f, members[1], None)
    optimizer = None
    if manifest.optimizer is not None:
        optimizer = _scan_tensor_member(f, members[2], manifest.optimizer)
    return Scan(path, f.size, metadata, model, optimizer)


def check_bool_bytes(member: str, entry: TensorEntry, data: torch.Tensor) -> None:
    """FormatError unless every byte of the BOOL tensor ``entry`` (``data``
    viewed as uint8) is 0 or 1."""
    if entry.dtype.name == "BOOL" and data.numel() and bool(data.view(torch.uint8).max() > 1):
        raise FormatError(
            f"{member}: tensor {entry.name!r} (file bytes {entry.start}..{entry.end}): a BOOL "
            "element is neither 0 nor 1"
        )


def _read_tensor_member(f: _File, m: TensorMember) -> dict[str, torch.Tensor]:
    """Copies a scanned member's tensors out, checking its CRC-32 in the same
    pass."""
    crc = zlib.crc32(m.header)
    tensors: dict[str, torch.Tensor] = {}
    for entry in m.tensors:
        try:
            tensor = torch.empty(entry.shape, dtype=entry.dtype.torch_dtype)
        except (RuntimeError, MemoryError) as e:
            raise FormatError(
                f"{m.name}: tensor {entry.name!r}: shape {list(entry.shape)} cannot be "
                f"allocated: {e}"
            ) from None
        if entry.end > entry.start:
            view = _writable_bytes(tensor)
            for at in range(0, len(view), _COPY_CHUNK):
                chunk = view[at : at + _COPY_CHUNK]
                f.read_into(chunk, entry.start + at, f"data of tensor {entry.name!r}")
                crc = crc32(chunk, crc)
        tensors[entry.name] = tensor
    if crc != m.crc:
        raise FormatError(
            f"CRC-32 mismatch in {m.name} (bytes {m.data_start}..{m.data_start + m.size}): "
            f"stored {m.crc:08x}, computed {crc:08x}"
        )
    for entry in m.tensors:
        check_bool_bytes(m.name, entry, tensors[entry.name])
    return tensors


class CheckpointReader:
    """An open format-v1 file whose structure is validated (:class:`Scan`);
    :meth:`read_tensors` copies the tensors out. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path_str = os.fspath(path)
        # O_NONBLOCK: opening a FIFO must not hang; it is refused below.
        self._fd = os.open(path_str, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise FormatError(f"{path_str} is not a regular file")
            self._file = _File(self._fd, st.st_size)
            self.scan = _scan(self._file, path_str)
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's and the optimizer's tensors, copied into memory with
        every CRC-32 and BOOL byte checked."""
        model = _read_tensor_member(self._file, self.scan.model)
        optimizer: dict[str, torch.Tensor] = {}
        if self.scan.optimizer is not None:
            optimizer = _read_tensor_member(self._file, self.scan.optimizer)
        return model, optimizer


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Reads and completely validates a format-v1 file (FORMAT.md section 9):
    ZIP layout, alignment, every CRC-32, ``metadata.json`` against the
    schema, the safetensors headers and the optimizer's tensor names.

    Raises :class:`FormatError` naming the member, tensor or byte range at
    fault (:class:`UnsupportedVersionError` for a format version this
    package does not read), and ``OSError`` when the file cannot be read.
    """
    with CheckpointReader(path) as reader:
        model, optimizer = reader.read_tensors()
        scan = reader.scan
    return Checkpoint(path=scan.path, metadata=scan.metadata, model=model, optimizer=optimizer)


# ---------------------------------------------------------------------------
# Writing


def _json_path(path: str, key: Any) -> str:
    return f"{path}[{key!r}]"


def _check_json_value(value: Any, path: str) -> None:
    """Refuses, naming where, anything ``json.dumps`` would not write as the
    same value: non-JSON types, non-finite floats, keys that are not
    strings (ints are written in decimal, as a Counter's keys are meant to
    be), integers beyond 64 bits and nesting deeper than readers accept."""
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack:
        item, where, depth = stack.pop()
        if item is None or isinstance(item, (bool, str)):
            continue
        if isinstance(item, int):
            if not -(1 << 63) <= item < _U64_LIMIT:
                raise MetadataError(
                    f"{where} is {item}, outside the 64-bit integers other languages read "
                    "exactly; store it as a string"
                )
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise MetadataError(
                    f"{where} is {item!r}, which JSON cannot represent; store it as a string "
                    "or leave it out"
                )
            continue
        if isinstance(item, (dict, list, tuple)):
            if depth > MAX_JSON_DEPTH:
                raise MetadataError(
                    f"{where} is nested deeper than {MAX_JSON_DEPTH} levels, more than "
                    "readers accept"
                )
            if isinstance(item, dict):
                for key, v in item.items():
                    if isinstance(key, bool) or not isinstance(key, (str, int)):
                        raise MetadataError(
                            f"{where} has the key {key!r} of type {type(key).__name__}; JSON "
                            "object keys are strings"
                        )
                    stack.append((v, _json_path(where, key), depth + 1))
            else:
                stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
            continue
        raise MetadataError(
            f"{where} is a {type(item).__module__}.{type(item).__qualname__}, which is not "
            "JSON (allowed: dict, list, tuple, str, int, float, bool, None)"
        )


def _encode_metadata(metadata: Mapping[str, Any]) -> tuple[bytes, _Manifest]:
    """The bytes of ``metadata.json`` and the manifest of what a reader will
    see in them. Raises MetadataError for anything a reader would refuse."""
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"metadata must be a dict, not {type(metadata).__name__}")
    _check_json_value(dict(metadata), "metadata")
    try:
        text = json.dumps(dict(metadata), allow_nan=False, indent=2, ensure_ascii=False)
        data = text.encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        raise MetadataError(f"metadata is not JSON: {e}") from None
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataError(
            f"{METADATA_MEMBER} would be {len(data)} bytes, above the limit of {MAX_METADATA_BYTES}"
        )
    try:
        parsed = _parse_json_object(data)
    except _JsonError as e:
        # Two keys that read the same once written (1 and "1").
        raise MetadataError(f"metadata: {e}") from None
    try:
        manifest = _validate_metadata(parsed)
    except FormatError as e:
        raise MetadataError(str(e)) from None
    return data, manifest


@dataclass(frozen=True)
class _PlannedTensor:
    name: str
    tensor: torch.Tensor
    dtype: _Dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class _PlannedMemberData:
    name: str
    header: bytes  # length prefix, JSON and padding
    tensors: list[_PlannedTensor]  # in data order

    @property
    def size(self) -> int:
        return len(self.header) + sum(t.nbytes for t in self.tensors)


def _plan_tensors(member: str, tensors: Mapping[str, torch.Tensor]) -> _PlannedMemberData:
    """Checks the tensors of a member and builds its safetensors header:
    data ordered as the safetensors library orders it (by dtype, largest
    element first, then by name), the header padded with spaces so that
    ``8 + N`` is a multiple of 64."""
    if not isinstance(tensors, Mapping):
        raise ValueError(f"{member}: tensors must be a mapping of names to tensors")
    planned: list[_PlannedTensor] = []
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise ValueError(f"{member}: tensor name {name!r} is not a string")
        if name == "__metadata__":
            raise ValueError(f"{member}: a tensor may not be named __metadata__")
        if "\0" in name or _SURROGATE.search(name):
            raise ValueError(f"{member}: tensor name {name!r} is not valid UTF-8 text")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{member}: {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta:
            raise ValueError(
                f"{member}: tensor {name!r} is not a dense tensor with data (layout "
                f"{tensor.layout}, device {tensor.device}); convert it first"
            )
        dtype = _DTYPES_BY_TORCH.get(tensor.dtype)
        if dtype is None:
            allowed = ", ".join(str(d.torch_dtype) for d in _DTYPE_LIST)
            raise ValueError(
                f"{member}: tensor {name!r} has dtype {tensor.dtype}, which format v1 does not "
                f"store (allowed: {allowed})"
            )
        shape = tuple(int(d) for d in tensor.shape)
        planned.append(_PlannedTensor(name, tensor, dtype, shape, math.prod(shape) * dtype.size))
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
        raise ValueError(
            f"{member}: safetensors header of {padded} bytes exceeds {MAX_TENSOR_HEADER_BYTES}"
        )
    body = text + b" " * (padded - len(text))
    return _PlannedMemberData(member, struct.pack("<Q", padded) + body, planned)


@dataclass
class _ZipEntry:
    """Where and how large one member is, as the writer plans it."""

    name: str
    header_offset: int
    size: int
    zip64_sizes: bool
    zip64_offset: bool
    padding: int
    crc: int = 0

    @classmethod
    def plan(cls, name: str, header_offset: int, size: int, force_zip64: bool) -> _ZipEntry:
        zip64_sizes = force_zip64 or size >= _U32_MAX
        zip64_offset = force_zip64 or header_offset >= _U32_MAX
        fixed = _LOCAL.size + len(name) + (20 if zip64_sizes else 0)
        padding = -(header_offset + fixed) % ALIGNMENT
        if padding < 6:  # the padding block needs ID, size and alignment
            padding += ALIGNMENT
        return cls(name, header_offset, size, zip64_sizes, zip64_offset, padding)

    @property
    def local_header_len(self) -> int:
        return _LOCAL.size + len(self.name) + (20 if self.zip64_sizes else 0) + self.padding

    @property
    def data_offset(self) -> int:
        return self.header_offset + self.local_header_len

    @property
    def end(self) -> int:
        return self.data_offset + self.size

    @property
    def version_needed(self) -> int:
        return _VERSION_ZIP64 if self.zip64_sizes or self.zip64_offset else _VERSION_STORED

    def local_header(self, dos_time: int, dos_date: int) -> bytes:
        size32 = _U32_MAX if self.zip64_sizes else self.size
        extra = b""
        if self.zip64_sizes:
            extra += struct.pack("<HHQQ", _ZIP64_EXTRA_ID, 16, self.size, self.size)
        extra += struct.pack("<HHH", _PADDING_EXTRA_ID, self.padding - 4, ALIGNMENT)
        extra += bytes(self.padding - 6)
        name = self.name.encode("ascii")
        fixed = _LOCAL.pack(
            _LOCAL_SIG,
            self.version_needed,
            0,  # flags
            0,  # method: STORED
            dos_time,
            dos_date,
            self.crc,
            size32,
            size32,
            len(name),
            len(extra),
        )
        return fixed + name + extra

    def central_header(self, dos_time: int, dos_date: int) -> bytes:
        zip64 = b""
        if self.zip64_sizes:
            zip64 += struct.pack("<QQ", self.size, self.size)
        if self.zip64_offset:
            zip64 += struct.pack("<Q", self.header_offset)
        extra = struct.pack("<HH", _ZIP64_EXTRA_ID, len(zip64)) + zip64 if zip64 else b""
        size32 = _U32_MAX if self.zip64_sizes else self.size
        name = self.name.encode("ascii")
        fixed = _CENTRAL.pack(
            _CENTRAL_SIG,
            _MADE_BY_UNIX | self.version_needed,
            self.version_needed,
            0,  # flags
            0,  # method
            dos_time,
            dos_date,
            self.crc,
            size32,
            size32,
            len(name),
            len(extra),
            0,  # comment length
            0,  # disk number start
            0,  # internal attributes
            _UNIX_FILE_0644,
            _U32_MAX if self.zip64_offset else self.header_offset,
        )
        return fixed + name + extra


def _end_records(entries: int, cd_offset: int, cd_size: int, force_zip64: bool) -> bytes:
    zip64 = force_zip64 or entries >= _U16_MAX or cd_offset >= _U32_MAX or cd_size >= _U32_MAX
    out = b""
    if zip64:
        out += _ZIP64_EOCD.pack(
            _ZIP64_EOCD_SIG,
            _ZIP64_EOCD.size - 12,
            _MADE_BY_UNIX | _VERSION_ZIP64,
            _VERSION_ZIP64,
            0,
            0,
            entries,
            entries,
            cd_size,
            cd_offset,
        )
        out += _ZIP64_LOCATOR.pack(_ZIP64_LOCATOR_SIG, 0, cd_offset + cd_size, 1)
    entries16 = _U16_MAX if zip64 else entries
    out += _EOCD.pack(
        _EOCD_SIG,
        0,
        0,
        entries16,
        entries16,
        _U32_MAX if zip64 else cd_size,
        _U32_MAX if zip64 else cd_offset,
        0,
    )
    return out


def _dos_time_date(unix_seconds: int) -> tuple[int, int]:
    """MS-DOS time and date (UTC) of a Unix timestamp, 1980-01-01 at the
    earliest (as the Rust writer computes them)."""
    secs = max(unix_seconds, 315_532_800)
    days, rem = divmod(secs, 86_400)
    # Howard Hinnant's civil_from_days.
    z = days + 719_468
    era, doe = divmod(z, 146_097)
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    dos_year = min(max(year - 1980, 0), 127)
    time = (rem // 3600) << 11 | ((rem % 3600) // 60) << 5 | (rem % 60) // 2
    return time, (dos_year << 9 | month << 5 | day) & 0xFFFF


def _tensor_bytes(t: _PlannedTensor, member: str) -> Iterator[memoryview]:
    """The tensor's elements in C order, little-endian, in chunks; the
    source is brought to the CPU and made contiguous one tensor at a time."""
    tensor = t.tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    tensor = tensor.resolve_conj().resolve_neg().contiguous()
    if tensor.dtype != t.dtype.torch_dtype or tuple(tensor.shape) != t.shape:
        raise ValueError(f"{member}: tensor {t.name!r} changed while it was being saved")
    if t.nbytes == 0:
        return
    view = _writable_bytes(tensor)
    for at in range(0, len(view), _COPY_CHUNK):
        yield view[at : at + _COPY_CHUNK]


_temp_names = itertools.count(1)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _publish(tmp: str, directory: str, stem: str) -> str:
    """Gives the finished temporary file its final name without ever
    replacing a file: ``link(2)`` fails when the name is taken."""
    for n in range(10_000):
        target = os.path.join(directory, f"{stem}.zip" if n == 0 else f"{stem}-{n}.zip")
        try:
            os.link(tmp, target)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"10000 files named {stem}-N.zip already exist in {directory}")


def _check_prefix(prefix: str | None) -> str:
    if prefix is None or prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, not {type(prefix).__name__}")
    if "/" in prefix or "\0" in prefix:
        raise ValueError(f"prefix {prefix!r} may not contain '/' or NUL")
    if prefix.startswith("."):
        raise ValueError(f"prefix {prefix!r} may not start with '.' (hidden files)")
    if _SURROGATE.search(prefix):
        raise ValueError(f"prefix {prefix!r} is not valid Unicode text")
    return prefix + "_"


def write_checkpoint(
    directory: str | os.PathLike[str],
    prefix: str | None,
    metadata: dict[str, Any],
    model: Mapping[str, torch.Tensor],
    optimizer: Mapping[str, torch.Tensor] | None,
) -> str:
    """Writes a format-v1 file into ``directory`` and returns its path.

    ``metadata`` is the complete ``metadata.json`` object (``model_kwargs``,
    ``timestamp``, ``__pytorch_saver__`` with ``kind``, classes and
    producer, user keys); ``optimizer`` is the ``optimizer.safetensors``
    tensors, given iff the metadata declares an optimizer. The file is named
    ``{prefix}_{kind}_{timestamp}.zip`` (``{kind}_{timestamp}.zip`` without
    a prefix), with ``-1``, ``-2``, ... when the name is taken: no existing
    file is ever replaced.

    Everything is checked before any file is created (MetadataError for the
    metadata, ValueError for the tensors or the prefix). The data goes to a
    temporary file in ``directory`` that is fsynced, published with
    ``link(2)`` and then unlinked, and the directory fsynced; on failure the
    temporary file is removed.
    """
    return _write_checkpoint(directory, prefix, metadata, model, optimizer)


def _write_checkpoint(
    directory: str | os.PathLike[str],
    prefix: str | None,
    metadata: dict[str, Any],
    model: Mapping[str, torch.Tensor],
    optimizer: Mapping[str, torch.Tensor] | None,
    *,
    force_zip64: bool = False,
) -> str:
    """``write_checkpoint`` with a test knob: ``force_zip64`` writes ZIP64
    records where the sizes do not need them."""
    if sys.byteorder != "little":
        raise NotImplementedError("writing format v1 on a big-endian machine is not supported")
    stem_prefix = _check_prefix(prefix)
    metadata_bytes, manifest = _encode_metadata(metadata)
    has_optimizer = manifest.optimizer is not None
    if has_optimizer and optimizer is None:
        raise ValueError(
            "the metadata declares an optimizer but no optimizer tensors were given "
            "(give {} for an optimizer without tensor state)"
        )
    if not has_optimizer and optimizer is not None:
        raise ValueError(
            "optimizer tensors were given but the metadata declares no optimizer "
            f"({INTERNALS_KEY}.optimizer)"
        )
    members = [_plan_tensors(MODEL_MEMBER, model)]
    if optimizer is not None:
        assert manifest.optimizer is not None
        planned = _plan_tensors(OPTIMIZER_MEMBER, optimizer)
        for t in planned.tensors:
            reason = manifest.optimizer.check_tensor_name(t.name)
            if reason is not None:
                raise ValueError(f"{OPTIMIZER_MEMBER}: tensor {t.name!r}: {reason}")
        members.append(planned)

    plan = [_ZipEntry.plan(METADATA_MEMBER, 0, len(metadata_bytes), force_zip64)]
    plan[0].crc = zlib.crc32(metadata_bytes)
    for member in members:
        plan.append(_ZipEntry.plan(member.name, plan[-1].end, member.size, force_zip64))

    dir_str = os.fspath(directory)
    if not os.path.isdir(dir_str):
        if not os.path.exists(dir_str):
            raise FileNotFoundError(f"directory {dir_str!r} does not exist")
        raise NotADirectoryError(f"{dir_str!r} is not a directory")
    stem = f"{stem_prefix}{manifest.kind}_{manifest.timestamp}"
    tmp = os.path.join(dir_str, f".{stem}.zip.{os.getpid()}.{next(_temp_names)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb", buffering=_CHUNK) as out:
            dos_time, dos_date = _dos_time_date(manifest.timestamp)
            out.write(plan[0].local_header(dos_time, dos_date))
            out.write(metadata_bytes)
            for member, entry in zip(members, plan[1:], strict=True):
                out.write(entry.local_header(dos_time, dos_date))
                out.write(member.header)
                crc = zlib.crc32(member.header)
                for t in member.tensors:
                    written = 0
                    for chunk in _tensor_bytes(t, member.name):
                        crc = zlib.crc32(chunk, crc)
                        out.write(chunk)
                        written += len(chunk)
                    if written != t.nbytes:
                        raise ValueError(
                            f"{member.name}: tensor {t.name!r} gave {written} bytes, its dtype "
                            f"and shape need {t.nbytes}"
                        )
                entry.crc = crc
            out.flush()
            # The CRCs of tensor members are known only now: patch them in.
            for entry in plan[1:]:
                _pwrite_all(fd, struct.pack("<I", entry.crc), entry.header_offset + 14)
            cd_offset = plan[-1].end
            central = b"".join(e.central_header(dos_time, dos_date) for e in plan)
            _pwrite_all(
                fd,
                central + _end_records(len(plan), cd_offset, len(central), force_zip64),
                cd_offset,
            )
            os.fsync(fd)
        path = _publish(tmp, dir_str, stem)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    dir_fd = os.open(dir_str, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path

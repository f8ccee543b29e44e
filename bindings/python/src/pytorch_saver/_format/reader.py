"""The validating reader (``src/format/reader.rs``). Reading validates the
whole file before it returns anything: first its structure
(:class:`CheckpointReader`, :class:`Scan`, no tensor data read), then the
tensors, copied out with their CRC-32 (:func:`read_checkpoint`) or mapped
in place (``_mapped.py``). Nothing read from a file is executed, and no
allocation is sized by a length the file states before that length was
checked against the file's size."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import torch

from .._crc import crc32
from .._errors import FormatError
from .._progress import ProgressCallback, Tracker
from .._storage import ObjectURL, RangeReader, fetch
from .._storage import parse as parse_location
from . import EXTRA_MEMBER, MEMBER_ORDER, METADATA_MEMBER, MODEL_MEMBER, OPTIMIZER_MEMBER
from .json import JsonError, parse_object
from .metadata import MAX_METADATA_BYTES, Metadata, OptimizerSection, parse
from .tensors import TensorEntry, parse_header, writable_bytes
from .zip import (
    ALIGNMENT,
    CENTRAL,
    CENTRAL_SIG,
    EOCD,
    EOCD_SIG,
    FORBIDDEN_FLAGS,
    LOCAL,
    LOCAL_SIG,
    U16_MAX,
    U32_MAX,
    ZIP64_EOCD,
    ZIP64_EOCD_SIG,
    ZIP64_EXTRA_ID,
    ZIP64_LOCATOR,
    ZIP64_LOCATOR_SIG,
)

__all__ = [
    "Checkpoint",
    "CheckpointReader",
    "Scan",
    "TensorMember",
    "read_checkpoint",
    "tensor_member_bytes",
]

_MAX_ENTRIES: Final = 16
"""More entries than this is not a valid file; the bound keeps a hostile entry
count from driving the parser."""
_TAIL_SEARCH: Final = (1 << 20) + 65_557
"""How far back from the end to look for a misplaced end record, to tell
trailing bytes from a truncated file."""
_CHUNK: Final = 1 << 20
_COPY_CHUNK: Final = 16 << 20
"""Tensors are read in chunks of at most this, each reported to a progress
callback once read and CRC'd."""

Advance = Callable[[int], object]
"""Hears how many more bytes were read (``Tracker.advance``)."""


@dataclass(frozen=True)
class Checkpoint:
    """A validated file, read completely into memory."""

    path: str
    metadata: dict[str, Any]
    """The whole ``metadata.json`` object, ``__pytorch_saver__`` included."""
    model: dict[str, torch.Tensor]
    """``model.safetensors``: CPU tensors, in the file's data order."""
    optimizer: dict[str, torch.Tensor]
    """``optimizer.safetensors`` (``state.<index>.<key>``); empty when absent."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """``extra.safetensors``, named by the extra state's ``tensor`` tags
    (version 2); empty when absent."""


class _File:
    """Positioned, bounds-checked reads of an open file; the subclasses read
    an object fetched into memory or fetched by ranges (``_storage.py``)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def check(self, start: int, length: int, what: str) -> None:
        if start < 0 or start + length > self.size:
            raise FormatError(
                f"truncated file: {what} needs bytes {start}..{start + length} "
                f"but the file has {self.size} bytes",
                kind="Truncated",
            )

    def read(self, start: int, length: int, what: str) -> bytes:
        self.check(start, length, what)
        parts: list[bytes] = []
        done = 0
        while done < length:
            chunk = os.pread(self.fd, length - done, start + done)
            if not chunk:
                raise FormatError(f"{what}: the file shrank while it was read", kind="Io")
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def read_into(self, buf: memoryview, start: int, what: str) -> None:
        self.check(start, len(buf), what)
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd, [buf[done:]], start + done)
            if n <= 0:
                raise FormatError(f"{what}: the file shrank while it was read", kind="Io")
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


class _BufferFile(_File):
    """A whole object fetched into a uint8 tensor."""

    def __init__(self, buffer: torch.Tensor) -> None:
        super().__init__(-1, buffer.numel())
        self._view = writable_bytes(buffer) if buffer.numel() else memoryview(b"")

    def read(self, start: int, length: int, what: str) -> bytes:
        self.check(start, length, what)
        return bytes(self._view[start : start + length])

    def read_into(self, buf: memoryview, start: int, what: str) -> None:
        self.check(start, len(buf), what)
        buf[:] = self._view[start : start + len(buf)]


class _RangedFile(_File):
    """An object read by ranged requests as the structure check asks for
    its bytes (a metadata-only scan)."""

    def __init__(self, ranges: RangeReader) -> None:
        super().__init__(-1, ranges.size)
        self._ranges = ranges

    def read(self, start: int, length: int, what: str) -> bytes:
        self.check(start, length, what)
        return self._ranges.read(start, length)

    def read_into(self, buf: memoryview, start: int, what: str) -> None:
        buf[:] = self.read(start, len(buf), what)


@dataclass
class _Member:
    """One member as the central directory and local header describe it."""

    name: str
    flags: int
    method: int
    crc: int
    size: int
    header_offset: int
    data_start: int = -1


def _unsupported(member: str, feature: str) -> FormatError:
    return FormatError(f"unsupported ZIP feature in {member}: {feature}", kind="UnsupportedZip")


def _layout(reason: str) -> FormatError:
    return FormatError(f"inconsistent ZIP layout: {reason}", kind="Layout")


def _bad_signature(what: str, offset: int) -> FormatError:
    return FormatError(
        f"not a pytorch-saver checkpoint: no {what} signature at byte {offset}",
        kind="BadSignature",
    )


def _unexpected_bytes(start: int, end: int, what: str) -> FormatError:
    return FormatError(f"unexpected bytes {start}..{end}: {what}", kind="UnexpectedBytes")


def _no_end_record(size: int) -> FormatError:
    return FormatError(
        f"no end-of-central-directory record at the end of the {size}-byte file: "
        "it is truncated or not a ZIP archive",
        kind="NoEndRecord",
    )


def _zip64_fields(member: str, extra: bytes, values: list[int]) -> list[int]:
    """Walks the extra field's blocks (they must fill it exactly) and
    replaces each of ``values`` that holds the 0xffffffff marker with the
    next 64-bit value of the ZIP64 block, in APPNOTE order."""
    p = 0
    block: bytes | None = None
    while p < len(extra):
        if p + 4 > len(extra):
            raise _unsupported(member, "malformed extra field")
        block_id, n = struct.unpack_from("<HH", extra, p)
        if p + 4 + n > len(extra):
            raise _unsupported(member, "extra field block runs past its header")
        if block_id == ZIP64_EXTRA_ID:
            block = extra[p + 4 : p + 4 + n]
        p += 4 + n
    markers = sum(1 for v in values if v == U32_MAX)
    if markers == 0:
        return values
    if block is None:
        raise _unsupported(member, "0xffffffff size or offset without a ZIP64 extra field")
    if len(block) < 8 * markers:
        raise _unsupported(member, "ZIP64 extra field too short")
    out = []
    at = 0
    for v in values:
        if v == U32_MAX:
            (v,) = struct.unpack_from("<Q", block, at)
            at += 8
        out.append(v)
    return out


def _explain_missing_end(f: _File) -> FormatError:
    """No end record at the very end: something follows it (trailing bytes
    or a comment), or the file is cut short or not a ZIP at all."""
    lo = max(0, f.size - _TAIL_SEARCH)
    tail = f.read(lo, f.size - lo, "end of the file")
    sig = struct.pack("<I", EOCD_SIG)
    hi = len(tail) - EOCD.size
    p = tail.rfind(sig, 0, hi + 3)
    while p >= 0:
        (comment_len,) = struct.unpack_from("<H", tail, p + 20)
        end = lo + p + EOCD.size + comment_len
        if end < f.size:
            return FormatError(
                f"{f.size - end} trailing bytes after the end of the archive at byte {end}",
                kind="TrailingBytes",
            )
        if end == f.size:
            return _unsupported("archive", "archive comment")
        p = tail.rfind(sig, 0, p + 3)
    return _no_end_record(f.size)


def _parse_layout(f: _File) -> list[_Member]:
    """Parses and checks the ZIP structure: end records, central directory,
    local headers, and that members tile the file from byte 0 to the
    central directory with nothing in between. Returns the members in file
    order, each with the absolute offset of its data."""
    if f.size < EOCD.size:
        raise _no_end_record(f.size)
    eocd_at = f.size - EOCD.size
    eocd = f.read(eocd_at, EOCD.size, "end-of-central-directory record")
    sig, disk, cd_disk, entries_disk, entries, cd_size, cd_offset, comment_len = EOCD.unpack(eocd)
    if sig != EOCD_SIG:
        raise _explain_missing_end(f)
    if disk != 0 or cd_disk != 0:
        raise _unsupported("archive", "multiple disks")
    if comment_len != 0:
        raise _unsupported("archive", "archive comment")
    cd_end = eocd_at
    if entries == U16_MAX or cd_size == U32_MAX or cd_offset == U32_MAX:
        loc_at = eocd_at - ZIP64_LOCATOR.size
        if loc_at < 0:
            raise _bad_signature("ZIP64 end-of-central-directory locator", 0)
        loc_sig, loc_disk, rec_at, _total_disks = ZIP64_LOCATOR.unpack(
            f.read(loc_at, ZIP64_LOCATOR.size, "ZIP64 end-of-central-directory locator")
        )
        if loc_sig != ZIP64_LOCATOR_SIG:
            raise _bad_signature("ZIP64 end-of-central-directory locator", loc_at)
        if rec_at != loc_at - ZIP64_EOCD.size or rec_at < 0:
            raise _layout(
                f"ZIP64 end record at byte {rec_at}, expected right before its locator at {loc_at}"
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
        ) = ZIP64_EOCD.unpack(
            f.read(rec_at, ZIP64_EOCD.size, "ZIP64 end-of-central-directory record")
        )
        if rec_sig != ZIP64_EOCD_SIG:
            raise _bad_signature("ZIP64 end-of-central-directory record", rec_at)
        if rec_size != ZIP64_EOCD.size - 12 or rec_disk or rec_cd_disk or loc_disk:
            raise _unsupported("archive", "ZIP64 extensible data or multiple disks")
        if entries_disk64 != entries64:
            raise _layout("ZIP64 entry counts disagree")
        entries, cd_size, cd_offset = entries64, cd_size64, cd_offset64
        cd_end = rec_at
    elif entries != entries_disk:
        raise _layout("entry counts disagree")
    if entries > _MAX_ENTRIES:
        raise FormatError(
            f"central directory entry count is {entries}, above the limit of {_MAX_ENTRIES}",
            kind="TooLarge",
        )
    cd_stop = cd_offset + cd_size
    if cd_stop > cd_end:
        raise _layout(
            f"central directory at {cd_offset} of {cd_size} bytes runs past the end records "
            f"at {cd_end}"
        )
    if cd_stop != cd_end:
        raise _unexpected_bytes(
            cd_stop, cd_end, "between the central directory and the end records"
        )

    # Entry by entry, as the Rust reader walks them: a header or name that
    # runs past the file is a truncation, one that starts past the
    # directory's end a layout error, and one that ends past it shows as
    # unexpected bytes once the entries are counted out.
    central: list[_Member] = []
    p = cd_offset
    for i in range(entries):
        what = f"central directory entry {i}"
        header = f.read(p, CENTRAL.size, what)
        if p + CENTRAL.size > cd_stop:
            raise _layout(f"{what} runs past the central directory")
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
        ) = CENTRAL.unpack(header)
        if sig != CENTRAL_SIG:
            raise _bad_signature("central directory entry", p)
        var = f.read(p + CENTRAL.size, nlen + xlen + clen, what)
        name = var[:nlen].decode("utf-8", errors="replace")
        usize, csize, offset = _zip64_fields(name, var[nlen : nlen + xlen], [usize, csize, offset])
        if disk_start != 0:
            raise _unsupported(name, "multiple disks")
        if csize != usize:
            raise _unsupported(name, f"compressed size {csize} differs from size {usize}")
        central.append(_Member(name, flags, method, crc, usize, offset))
        p += CENTRAL.size + nlen + xlen + clen
    if p != cd_stop:
        raise _unexpected_bytes(
            min(p, cd_stop), max(p, cd_stop), "in the central directory after its last entry"
        )

    seen: set[str] = set()
    last_rank = -1
    for position, m in enumerate(central):
        if m.name not in MEMBER_ORDER:
            raise FormatError(f"unexpected member {m.name!r}", kind="UnexpectedMember")
        if m.name in seen:
            raise FormatError(f"duplicate member {m.name}", kind="DuplicateMember")
        seen.add(m.name)
        if m.method != 0:
            raise FormatError(
                f"member {m.name} is compressed (method {m.method}); format v1 requires STORED "
                "(method 0)",
                kind="CompressedMember",
            )
        if m.flags & FORBIDDEN_FLAGS:
            raise _unsupported(
                m.name, f"general purpose flags {m.flags:#06x} (encryption or data descriptor)"
            )
        rank = MEMBER_ORDER.index(m.name)
        if rank <= last_rank or (position == 0 and m.name != METADATA_MEMBER):
            raise FormatError(
                f"member {m.name} at position {position}; v1 orders members as "
                + ", ".join(MEMBER_ORDER),
                kind="MemberOrder",
            )
        last_rank = rank
    if not central:
        raise FormatError(f"missing member {METADATA_MEMBER}", kind="MissingMember")

    cursor = 0
    for m in central:
        at = m.header_offset
        if at > cursor:
            raise _unexpected_bytes(cursor, at, f"before member {m.name}, part of no member")
        if at < cursor:
            raise _layout(
                f"member {m.name} starts at byte {at}, inside the previous member (which ends "
                f"at {cursor})"
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
        ) = LOCAL.unpack(f.read(at, LOCAL.size, what))
        if sig != LOCAL_SIG:
            raise _bad_signature("local file header", at)
        var = f.read(at + LOCAL.size, nlen + xlen, what)

        def mismatch(field: str, name: str = m.name) -> FormatError:
            return FormatError(
                f"member {name}: local header and central directory disagree on {field}",
                kind="HeaderMismatch",
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
        data_start = at + LOCAL.size + nlen + xlen
        if data_start % ALIGNMENT != 0:
            raise FormatError(
                f"member {m.name}: data starts at byte {data_start}, not on a "
                f"{ALIGNMENT}-byte boundary",
                kind="Misaligned",
            )
        data_end = data_start + m.size
        if data_end > cd_offset:
            f.check(data_start, m.size, f"data of {m.name}")
            raise _layout(
                f"data of {m.name} (bytes {data_start}..{data_end}) runs into the central "
                f"directory at {cd_offset}"
            )
        m.data_start = data_start
        cursor = data_end
    if cursor != cd_offset:
        raise _unexpected_bytes(
            cursor, cd_offset, "between the last member and the central directory"
        )
    if central[0].size > MAX_METADATA_BYTES:
        raise FormatError(
            f"{METADATA_MEMBER} is {central[0].size} bytes, above the limit of "
            f"{MAX_METADATA_BYTES}",
            kind="TooLarge",
        )
    return central


def _crc_error(name: str, start: int, size: int, stored: int, computed: int) -> FormatError:
    return FormatError(
        f"CRC-32 mismatch in {name} (bytes {start}..{start + size}): "
        f"stored {stored:08x}, computed {computed:08x}",
        kind="CrcMismatch",
    )


def _verify_crc(f: _File, m: _Member) -> None:
    computed = f.crc(m.data_start, m.size, f"data of {m.name}")
    if computed != m.crc:
        raise _crc_error(m.name, m.data_start, m.size, m.crc, computed)


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
    ``metadata.json`` and its CRC, the schema, the safetensors headers, the
    BOOL tensors' bytes, the optimizer's tensor names and the extra
    tensors against the extra state's tags); no other tensor data is read,
    and none CRC'd."""

    path: str
    file_size: int
    metadata: Metadata
    """``metadata.json``, validated."""
    metadata_json: dict[str, Any]
    """``metadata.json`` as parsed, for :attr:`Checkpoint.metadata`."""
    model: TensorMember
    optimizer: TensorMember | None
    extra: TensorMember | None = None
    """``extra.safetensors`` (version 2), when the file has extra state."""
    buffer: torch.Tensor | None = None
    """The whole file as a CPU uint8 tensor, for an object fetched from
    storage: loads view their tensors into it (``_mapped.py``)."""


def _scan_tensor_member(f: _File, m: _Member, optimizer: OptimizerSection | None) -> TensorMember:
    """Validates a safetensors member: its header, its BOOL bytes and, for
    the optimizer's member, its tensor names."""
    header, entries = parse_header(m.name, m.data_start, m.size, f.read)
    if optimizer is not None:
        for t in entries:
            reason = optimizer.check_tensor_name(t.name)
            if reason is not None:
                raise FormatError(
                    f"{m.name}: header: tensor {t.name!r}: {reason}", kind="TensorHeader"
                )
    return TensorMember(m.name, m.crc, m.data_start, m.size, header, entries)


def _check_extra_tensors(member: TensorMember, metadata: Metadata) -> None:
    """Step 21 (FORMAT.md 11.6): the tensors of ``extra.safetensors`` in data
    order, each named by a ``tensor`` tag; then each tag, in the order of
    step 16.14, naming a tensor of the member."""
    refs = metadata.extra_tensor_refs()
    named = {name for name, _ in refs}
    for t in member.tensors:
        if t.name not in named:
            raise FormatError(
                f"{member.name}: header: tensor {json.dumps(t.name)} is named by no "
                '"tensor" tag of the extra state',
                kind="TensorHeader",
            )
    held = {t.name for t in member.tensors}
    for name, path in refs:
        if name not in held:
            raise FormatError(
                f'{member.name}: header: the "tensor" tag at {path} names tensor '
                f"{json.dumps(name)}, which the member does not hold",
                kind="TensorHeader",
            )


def _scan(f: _File, path: str, verify: bool) -> Scan:
    """The checks of FORMAT.md section 9, in the Rust reader's order, so
    that a file with two faults is refused for the same one (the same
    ``kind``) by both: the ZIP structure, ``metadata.json``'s CRC-32, its
    JSON and schema, the members it declares, then each tensor member in
    file order (header, BOOL bytes, tensor names, the extra tensors against
    their tags). The Rust reader checks
    every member's CRC-32 right after the structure; the tensor members'
    are computed here when their tensors are read, in the same pass, and
    first only when a later check fails, so that the mismatch is what is
    reported (with ``verify``, as the Rust reader's ``verify`` option)."""
    members = _parse_layout(f)
    meta_member = members[0]
    raw = f.read(meta_member.data_start, meta_member.size, f"data of {METADATA_MEMBER}")
    computed = zlib.crc32(raw)
    if computed != meta_member.crc:
        raise _crc_error(
            meta_member.name, meta_member.data_start, meta_member.size, meta_member.crc, computed
        )
    try:
        try:
            metadata_json = parse_object(raw)
        except JsonError as e:
            raise FormatError(f"{METADATA_MEMBER}: {e}", kind="Json") from None
        metadata = parse(metadata_json)
        expected = metadata.members()
        present = [m.name for m in members]
        for name in expected:
            if name not in present:
                raise FormatError(f"missing member {name}", kind="MissingMember")
        tensor_members: dict[str, TensorMember] = {}
        for m in members[1:]:
            if m.name not in expected:
                if m.name != EXTRA_MEMBER:
                    why = "the metadata declares no optimizer"
                elif metadata.internals.format_version == 1:
                    why = "a version 1 file has no extra state"
                else:
                    why = "the metadata declares no extra state"
                # Quoted whole, as the Rust reader's message has it.
                raise FormatError(
                    f"unexpected member {json.dumps(f'{m.name} ({why})')}",
                    kind="UnexpectedMember",
                )
            optimizer = metadata.internals.optimizer if m.name == OPTIMIZER_MEMBER else None
            tensor_members[m.name] = _scan_tensor_member(f, m, optimizer)
            if m.name == EXTRA_MEMBER:
                _check_extra_tensors(tensor_members[m.name], metadata)
    except FormatError:
        if verify:
            for m in members[1:]:
                _verify_crc(f, m)
        raise
    return Scan(
        path,
        f.size,
        metadata,
        metadata_json,
        tensor_members[MODEL_MEMBER],
        tensor_members.get(OPTIMIZER_MEMBER),
        tensor_members.get(EXTRA_MEMBER),
    )


def tensor_member_bytes(scan: Scan, *, extra: bool = True) -> int:
    """The size of the file's tensor members (the extra state's too, with
    ``extra``): the bytes a full read or verification goes through."""
    members = [scan.model, scan.optimizer, scan.extra if extra else None]
    return sum(m.size for m in members if m is not None)


def _read_tensor_member(
    f: _File, m: TensorMember, advance: Advance | None
) -> dict[str, torch.Tensor]:
    """Copies a scanned member's tensors out, checking its CRC-32 in the same
    pass; ``advance`` hears the member's bytes as they are read."""
    crc = zlib.crc32(m.header)
    if advance is not None:
        advance(len(m.header))
    tensors: dict[str, torch.Tensor] = {}
    for entry in m.tensors:
        try:
            tensor = torch.empty(entry.shape, dtype=entry.dtype.torch_dtype)
        except (RuntimeError, MemoryError) as e:
            raise FormatError(
                f"{m.name}: tensor {entry.name!r}: shape {list(entry.shape)} cannot be "
                f"allocated: {e}",
                kind="Torch",
            ) from None
        if entry.end > entry.start:
            view = writable_bytes(tensor)
            for at in range(0, len(view), _COPY_CHUNK):
                chunk = view[at : at + _COPY_CHUNK]
                f.read_into(chunk, entry.start + at, f"data of tensor {entry.name!r}")
                crc = crc32(chunk, crc)
                if advance is not None:
                    advance(len(chunk))
        tensors[entry.name] = tensor
    if crc != m.crc:
        raise _crc_error(m.name, m.data_start, m.size, m.crc, crc)
    return tensors


class CheckpointReader:
    """An open file whose structure is validated (:class:`Scan`);
    :meth:`read_tensors` and :meth:`read_extra_tensors` copy the tensors
    out. Use as a context manager.
    ``verify=False`` (FORMAT.md 9.1) is for a caller that will not check
    the tensor members' CRC-32 either: a structural fault is then reported
    as such even when a CRC mismatch precedes it."""

    def __init__(
        self, path: str | os.PathLike[str], *, verify: bool = True, metadata_only: bool = False
    ) -> None:
        location = parse_location(path)
        if isinstance(location, ObjectURL):
            # An object on storage (_storage.py): fetched whole into one
            # buffer that loads view their tensors into, or, for a scan of
            # the metadata alone (``metadata_only``), by the ranges read.
            self._fd = -1
            if metadata_only:
                self._file: _File = _RangedFile(RangeReader(location))
                self.scan = _scan(self._file, location.url, verify)
            else:
                buffer = fetch(location, writable_bytes)
                self._file = _BufferFile(buffer)
                self.scan = dataclasses.replace(
                    _scan(self._file, location.url, verify), buffer=buffer
                )
            return
        path_str = location
        # O_NONBLOCK: opening a FIFO must not hang; it is refused below.
        self._fd = os.open(path_str, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise FormatError(f"{path_str} is not a regular file", kind="Io")
            self._file = _File(self._fd, st.st_size)
            self.scan = _scan(self._file, path_str, verify)
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

    def read_tensors(
        self, advance: Advance | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's and the optimizer's tensors, copied into memory with
        every CRC-32 checked (the scan checked the BOOL bytes); ``advance``
        hears the bytes of the members as they are read."""
        model = _read_tensor_member(self._file, self.scan.model, advance)
        optimizer: dict[str, torch.Tensor] = {}
        if self.scan.optimizer is not None:
            optimizer = _read_tensor_member(self._file, self.scan.optimizer, advance)
        return model, optimizer

    def read_extra_tensors(self, advance: Advance | None = None) -> dict[str, torch.Tensor]:
        """The extra state's tensors (``extra.safetensors``, version 2),
        copied into memory with the member's CRC-32 checked; empty when the
        file has no extra state. ``advance`` as for :meth:`read_tensors`."""
        if self.scan.extra is None:
            return {}
        return _read_tensor_member(self._file, self.scan.extra, advance)


def read_checkpoint(
    path: str | os.PathLike[str], *, progress: ProgressCallback | None = None
) -> Checkpoint:
    """Reads and completely validates a file of format version 2 or 1
    (FORMAT.md section 9): ZIP layout, alignment, every CRC-32,
    ``metadata.json`` against the schema of its version (typed values
    included), the safetensors headers, the optimizer's tensor names and
    the extra tensors against the extra state's tags.

    Raises :class:`FormatError` naming the member, tensor or byte range at
    fault, with the ``kind`` of the check that failed
    (:class:`UnsupportedVersionError` for a format version this package does
    not read), and ``OSError`` when the file cannot be read.

    ``progress(done, total)`` (``_progress.py``) hears the bytes read and
    CRC-checked out of ``total``, the size of the tensor members: first
    ``(0, total)`` once the structure is checked, then after each chunk of
    at most 16 MiB, and ``(total, total)`` only when the whole file proved
    valid; a file that fails a check never reports its total.
    """
    with CheckpointReader(path) as reader:
        scan = reader.scan
        tracker = Tracker(progress, tensor_member_bytes(scan))
        model, optimizer = reader.read_tensors(tracker.advance)
        extra = reader.read_extra_tensors(tracker.advance)
    tracker.finish()
    return Checkpoint(
        path=scan.path,
        metadata=scan.metadata_json,
        model=model,
        optimizer=optimizer,
        extra=extra,
    )

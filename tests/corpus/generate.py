"""Writes the shared corpus of malformed checkpoints: small files, each
breaking one rule of docs/FORMAT.md (or two, to pin down which check comes
first), that every reader (Rust, C, Go, Python) must refuse with the same
error kind. ``manifest.json`` lists them: ``file``, ``kind`` (the stable
error kind of docs/FORMAT.md section 9), ``message`` (a substring of the
refusal's message) and ``what`` (what is wrong).

The files are built here from scratch, byte by byte (ZIP structures with
``struct``, JSON with ``json``): nothing but the standard library, so that
no reader under test writes the files it is tested on. Run
``python3 tests/corpus/generate.py``. Like the golden files, the corpus is
only ever added to: a file that exists is never rewritten; the script
checks that it is byte-identical to what it would write and fails if not.
A new case gets a new file name.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"

LOCAL_SIG = 0x04034B50
CENTRAL_SIG = 0x02014B50
EOCD_SIG = 0x06054B50
ZIP64_EOCD_SIG = 0x06064B50
ZIP64_LOCATOR_SIG = 0x07064B50
PADDING_ID = 0xD935
ZIP64_ID = 0x0001
U32 = 0xFFFFFFFF
U16 = 0xFFFF
# 2027-01-15T08:00:00Z: the timestamp of every file (MS-DOS time and date).
TIMESTAMP = 1_800_000_000
DOS_TIME, DOS_DATE = 0x4000, 0x5E2F

# ---------------------------------------------------------------------------
# safetensors members

DTYPE_ORDER = ["I64", "F64", "F32", "I32", "BF16", "F16", "I16", "I8", "U8", "BOOL"]


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: list[int]
    data: bytes


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def safetensors(tensors: list[Tensor]) -> bytes:
    """A member as the reference writer lays it out (FORMAT.md section 4):
    data ordered by dtype then name, the header padded with spaces so that
    8 + its length is a multiple of 64."""
    order = sorted(tensors, key=lambda t: (DTYPE_ORDER.index(t.dtype), t.name.encode()))
    header: dict[str, Any] = {}
    data = b""
    for t in order:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": t.shape,
            "data_offsets": [len(data), len(data) + len(t.data)],
        }
        data += t.data
    return raw_safetensors(json.dumps(header, separators=(",", ":")), data)


def raw_safetensors(header: str | bytes, data: bytes) -> bytes:
    """A member from header text as given, padded with spaces so that 8 +
    its length is a multiple of 64, after its length prefix, then data."""
    text = header.encode() if isinstance(header, str) else header
    text += b" " * (-(8 + len(text)) % 64)
    return struct.pack("<Q", len(text)) + text + data


def entry(dtype: Any, shape: list[Any], begin: Any, end: Any, **more: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end], **more}


def header_member(header: dict[str, Any], data: bytes) -> bytes:
    """A member whose header is ``header`` exactly, in the given key order."""
    return raw_safetensors(json.dumps(header, separators=(",", ":")), data)


# ---------------------------------------------------------------------------
# metadata.json

SGD: dict[str, Any] = {
    "class": "torch.optim.SGD",
    "param_groups": [
        {
            "lr": 0.1,
            "momentum": 0.9,
            "dampening": 0,
            "weight_decay": 0,
            "nesterov": False,
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": None,
            "params": [0, 1],
        }
    ],
    "param_names": ["weight", "bias"],
    "state": {"0": {}, "1": {}},
}
STEP_LR: dict[str, Any] = {
    "class": "torch.optim.lr_scheduler.StepLR",
    "state": {
        "step_size": 2,
        "gamma": 0.1,
        "base_lrs": [0.1],
        "last_epoch": 0,
        "_step_count": 1,
        "_is_initial": False,
        "_get_lr_called_within_step": False,
        "_last_lr": [0.1],
    },
}


def metadata(kind: str = "inference", *, optimizer: bool = False, scheduler: bool = False) -> Any:
    """Valid metadata of a torch.nn.Linear(2, 1) file, with SGD (momentum)
    and StepLR when asked; a fresh copy every call, for editing."""
    internals: dict[str, Any] = {
        "format_version": 1,
        "kind": kind,
        "model": {"class": "torch.nn.Linear"},
    }
    meta: dict[str, Any] = {"model_kwargs": {"in_features": 2, "out_features": 1}}
    if optimizer:
        internals["optimizer"] = json.loads(json.dumps(SGD))
        meta["optim_kwargs"] = {"lr": 0.1, "momentum": 0.9}
    if scheduler:
        internals["scheduler"] = json.loads(json.dumps(STEP_LR))
        meta["scheduler_kwargs"] = {"step_size": 2}
    internals["producer"] = {"library": "pytorch-saver", "version": "0.1.0", "language": "python"}
    meta["timestamp"] = TIMESTAMP
    meta["loss"] = 0.25
    meta["__pytorch_saver__"] = internals
    return meta


def meta_bytes(meta: Any) -> bytes:
    return json.dumps(meta, indent=2).encode()


MODEL = safetensors(
    [
        Tensor("weight", "F32", [1, 2], f32(1.0, 2.0)),
        Tensor("bias", "F32", [1], f32(0.5)),
    ]
)
OPTIMIZER = safetensors(
    [
        Tensor("state.0.momentum_buffer", "F32", [1, 2], f32(0.125, 0.25)),
        Tensor("state.1.momentum_buffer", "F32", [1], f32(0.0625)),
    ]
)

# ---------------------------------------------------------------------------
# ZIP


@dataclass
class Member:
    """One member; every field past ``data`` breaks a rule when set."""

    name: str
    data: bytes
    method: int = 0
    flags: int = 0
    crc: int | None = None  # stored in both headers (None: the real CRC-32)
    size: int | None = None  # both sizes in both headers (None: len(data))
    csize: int | None = None  # the central header's compressed size
    local_name: str | None = None
    local_method: int | None = None
    local_flags: int | None = None
    local_crc: int | None = None
    local_size: int | None = None
    extra_pad: int = 0  # bytes added to the padding block: data misaligned
    local_extra: bytes | None = None  # the whole local extra field
    central_extra: bytes = b""  # appended to the central extra field
    disk: int = 0
    gap: bytes = b""  # bytes before the local header, claimed by nothing
    offset_delta: int = 0  # added to the central header's local header offset


@dataclass
class Zip:
    data: bytearray
    local: list[int] = field(default_factory=list)  # local header offsets
    starts: list[int] = field(default_factory=list)  # data offsets
    central: list[int] = field(default_factory=list)  # central header offsets
    cd_offset: int = 0
    eocd: int = 0  # offset of the classic end record


def build(
    members: list[Member],
    *,
    zip64: bool = False,
    before_cd: bytes = b"",
    cd_tail: bytes = b"",
    after_cd: bytes = b"",
) -> Zip:
    """A file laid out as FORMAT.md section 2 says (data 64-byte aligned by
    a 0xd935 padding block, ZIP64 everywhere when ``zip64``), with the
    breaks each member asks for, ``before_cd`` between the last member and
    the central directory, ``cd_tail`` inside the directory after its last
    entry, and ``after_cd`` between the directory and the end records."""
    z = Zip(bytearray())
    out = z.data
    central = bytearray()
    central_at = []
    for m in members:
        out += m.gap
        offset = len(out)
        name = m.name.encode()
        local_name = (m.local_name or m.name).encode()
        size = len(m.data) if m.size is None else m.size
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        needed = 45 if zip64 else 20
        size32 = U32 if zip64 else size
        local_size = size if m.local_size is None else m.local_size
        local_size32 = U32 if zip64 else local_size
        if m.local_extra is None:
            zip64_block = (
                struct.pack("<HHQQ", ZIP64_ID, 16, local_size, local_size) if zip64 else b""
            )
            fixed = 30 + len(local_name) + len(zip64_block)
            pad = -(offset + fixed) % 64
            if pad < 6:
                pad += 64
            pad += m.extra_pad
            extra = zip64_block + struct.pack("<HHH", PADDING_ID, pad - 4, 64) + bytes(pad - 6)
        else:
            extra = m.local_extra
        local = struct.pack(
            "<IHHHHHIIIHH",
            LOCAL_SIG,
            needed,
            m.flags if m.local_flags is None else m.local_flags,
            m.method if m.local_method is None else m.local_method,
            DOS_TIME,
            DOS_DATE,
            crc if m.local_crc is None else m.local_crc,
            local_size32,
            local_size32,
            len(local_name),
            len(extra),
        )
        z.local.append(offset)
        out += local + local_name + extra
        z.starts.append(len(out))
        out += m.data

        central_extra = b""
        if zip64:
            central_extra = struct.pack("<HHQQQ", ZIP64_ID, 24, size, size, offset + m.offset_delta)
        central_extra += m.central_extra
        csize = size32 if m.csize is None else m.csize
        central_at.append(len(central))
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            CENTRAL_SIG,
            0x0300 | needed,
            needed,
            m.flags,
            m.method,
            DOS_TIME,
            DOS_DATE,
            crc,
            csize,
            size32,
            len(name),
            len(central_extra),
            0,
            m.disk,
            0,
            0o100644 << 16,
            U32 if zip64 else offset + m.offset_delta,
        )
        central += name + central_extra
    out += before_cd
    z.cd_offset = len(out)
    z.central = [z.cd_offset + c for c in central_at]
    central += cd_tail
    out += central + after_cd
    n = len(members)
    if zip64:
        record = len(out)
        out += struct.pack(
            "<IQHHIIQQQQ", ZIP64_EOCD_SIG, 44, 0x032D, 45, 0, 0, n, n, len(central), z.cd_offset
        )
        out += struct.pack("<IIQI", ZIP64_LOCATOR_SIG, 0, record, 1)
    z.eocd = len(out)
    if zip64:
        out += struct.pack("<IHHHHIIH", EOCD_SIG, 0, 0, U16, U16, U32, U32, 0)
    else:
        out += struct.pack("<IHHHHIIH", EOCD_SIG, 0, 0, n, n, len(central), z.cd_offset, 0)
    return z


def patch(z: Zip, at: int, fmt: str, *values: int) -> Zip:
    struct.pack_into("<" + fmt, z.data, at, *values)
    return z


def members(meta: Any = None, model: bytes = MODEL, optimizer: bytes | None = None) -> list[Member]:
    """metadata.json (inference metadata by default), model.safetensors
    and, when given, optimizer.safetensors."""
    out = [
        Member("metadata.json", meta_bytes(metadata() if meta is None else meta)),
        Member("model.safetensors", model),
    ]
    if optimizer is not None:
        out.append(Member("optimizer.safetensors", optimizer))
    return out


def inference(**zip_args: Any) -> Zip:
    return build(members(), **zip_args)


def checkpoint_members() -> list[Member]:
    meta = metadata("checkpoint", optimizer=True, scheduler=True)
    return members(meta, MODEL, OPTIMIZER)


def checkpoint(**zip_args: Any) -> Zip:
    return build(checkpoint_members(), **zip_args)


def with_member(i: int, base: list[Member], **changes: Any) -> list[Member]:
    out = list(base)
    out[i] = replace(out[i], **changes)
    return out


def with_metadata(meta: Any, *, optimizer: bool = False) -> bytes:
    """A file whose metadata.json is ``meta`` (bytes as is, else JSON)."""
    data = meta if isinstance(meta, bytes) else meta_bytes(meta)
    ms = [Member("metadata.json", data), Member("model.safetensors", MODEL)]
    if optimizer:
        ms.append(Member("optimizer.safetensors", OPTIMIZER))
    return bytes(build(ms).data)


def edited(edit: Callable[[Any], Any], kind: str = "checkpoint") -> Any:
    """Checkpoint (or inference) metadata after ``edit``."""
    meta = metadata(kind, optimizer=kind == "checkpoint", scheduler=kind == "checkpoint")
    edit(meta)
    return meta


def internals(meta: Any) -> Any:
    return meta["__pytorch_saver__"]


def with_model(model: bytes, meta: Any = None) -> bytes:
    return bytes(build(members(meta, model)).data)


def with_optimizer_member(optimizer: bytes, meta: Any = None) -> bytes:
    if meta is None:
        meta = metadata("checkpoint", optimizer=True, scheduler=True)
    return bytes(build(members(meta, MODEL, optimizer)).data)


def flip(z: Zip, at: int) -> bytes:
    z.data[at] ^= 0x01
    return bytes(z.data)


# ---------------------------------------------------------------------------
# the cases


@dataclass
class Case:
    file: str
    kind: str
    message: str
    what: str
    data: bytes


def zip_cases() -> list[Case]:
    cases = []

    def add(file: str, kind: str, message: str, what: str, data: bytes | Zip) -> None:
        raw = bytes(data.data) if isinstance(data, Zip) else data
        cases.append(Case(file, kind, message, what, raw))

    good = bytes(inference().data)
    no_end = "no end-of-central-directory record at the end of the"
    add("eocd_empty_file.zip", "NoEndRecord", no_end, "an empty file", b"")
    add(
        "eocd_not_a_zip.zip",
        "NoEndRecord",
        no_end,
        "plain text, not a ZIP archive",
        b"hello world, this is not a zip archive at all\n",
    )
    add(
        "eocd_truncated_half.zip",
        "NoEndRecord",
        no_end,
        "a valid file cut to its first half",
        good[: len(good) // 2],
    )
    add(
        "eocd_truncated_last_byte.zip",
        "NoEndRecord",
        no_end,
        "a valid file without its last byte: the end record is cut",
        good[:-1],
    )
    add(
        "eocd_without_end_record.zip",
        "NoEndRecord",
        no_end,
        "a valid file without its last 22 bytes, the whole end record",
        good[:-22],
    )
    add(
        "eocd_shorter_than_end_record.zip",
        "NoEndRecord",
        "at the end of the 10-byte file",
        "the first 10 bytes of a valid file, fewer than an end record has",
        good[:10],
    )
    add(
        "eocd_trailing_bytes.zip",
        "TrailingBytes",
        f"5 trailing bytes after the end of the archive at byte {len(good)}",
        "5 bytes after the end-of-central-directory record",
        good + b"junk!",
    )
    with_comment = bytearray(good + b"hi")
    struct.pack_into("<H", with_comment, len(good) - 2, 2)
    add(
        "eocd_archive_comment.zip",
        "UnsupportedZip",
        "unsupported ZIP feature in archive: archive comment",
        "an archive comment of 2 bytes after the end record",
        bytes(with_comment),
    )
    z = inference()
    add(
        "eocd_comment_length_without_comment.zip",
        "UnsupportedZip",
        "unsupported ZIP feature in archive: archive comment",
        "the end record ends the file but its comment length says 5",
        patch(z, z.eocd + 20, "H", 5),
    )
    z = inference()
    add(
        "eocd_multiple_disks.zip",
        "UnsupportedZip",
        "unsupported ZIP feature in archive: multiple disks",
        "the end record's disk number is 1",
        patch(z, z.eocd + 4, "H", 1),
    )
    z = inference()
    add(
        "eocd_entry_counts_disagree.zip",
        "Layout",
        "inconsistent ZIP layout: entry counts disagree",
        "the end record says 2 entries on this disk and 3 in total",
        patch(z, z.eocd + 10, "H", 3),
    )
    z = inference()
    add(
        "eocd_17_entries.zip",
        "TooLarge",
        "central directory entry count is 17",
        "the end record counts 17 entries, more than v1's 16",
        patch(z, z.eocd + 8, "HH", 17, 17),
    )
    z = inference()
    cd_size = z.eocd - z.cd_offset
    add(
        "cd_runs_past_end_records.zip",
        "Layout",
        "runs past the end records",
        "the central directory size is 1 byte more than there is before the end record",
        patch(z, z.eocd + 12, "I", cd_size + 1),
    )
    z = inference()
    add(
        "cd_bytes_before_end_records.zip",
        "UnexpectedBytes",
        "between the central directory and the end records",
        "4 bytes between the central directory and the end record",
        inference(after_cd=b"\0\0\0\0"),
    )
    prefixed = b"\0" * 64 + good
    add(
        "layout_prepended_bytes_offsets_unchanged.zip",
        "UnexpectedBytes",
        "between the central directory and the end records",
        "64 bytes prepended to a valid file, no offset adjusted",
        prefixed,
    )
    z = inference()
    add(
        "cd_bad_signature.zip",
        "BadSignature",
        f"no central directory entry signature at byte {z.cd_offset}",
        "the first central directory header's signature is wrong",
        patch(z, z.cd_offset, "I", 0x02014B51),
    )
    z = inference()
    add(
        "cd_entry_count_too_high.zip",
        "Truncated",
        "central directory entry 2",
        "the end record counts 3 entries, the directory holds 2: the third runs into the "
        "end record and past the end of the file",
        patch(z, z.eocd + 8, "HH", 3, 3),
    )
    z = checkpoint(zip64=True)
    record = z.eocd - 76
    add(
        "zip64_entry_count_too_high.zip",
        "Layout",
        "central directory entry 3 runs past the central directory",
        "ZIP64: the end record counts 4 entries, the directory holds 3",
        patch(z, record + 24, "QQ", 4, 4),
    )
    z = inference()
    add(
        "cd_name_runs_past_file_end.zip",
        "Truncated",
        "central directory entry 1",
        "the second central header's name length is 65535",
        patch(z, z.central[1] + 28, "H", 0xFFFF),
    )
    z = inference(cd_tail=b"\0" * 8)
    add(
        "cd_bytes_after_last_entry.zip",
        "UnexpectedBytes",
        "in the central directory after its last entry",
        "8 bytes inside the central directory after its last header",
        z,
    )
    ms = with_member(1, members(), central_extra=b"\x35\xd9\x00")
    add(
        "cd_extra_field_malformed.zip",
        "UnsupportedZip",
        "unsupported ZIP feature in model.safetensors: malformed extra field",
        "model.safetensors' central extra field is 3 bytes, too short for a block header",
        build(ms),
    )
    ms = with_member(1, members(), central_extra=struct.pack("<HH", 0xCAFE, 8) + b"\0\0\0\0")
    add(
        "cd_extra_block_overruns.zip",
        "UnsupportedZip",
        "unsupported ZIP feature in model.safetensors: extra field block runs past its header",
        "a central extra block of model.safetensors claims 8 bytes, the field holds 4",
        build(ms),
    )
    add(
        "cd_disk_number_start.zip",
        "UnsupportedZip",
        "unsupported ZIP feature in model.safetensors: multiple disks",
        "model.safetensors' central header says it starts on disk 1",
        build(with_member(1, members(), disk=1)),
    )
    add(
        "cd_compressed_size_differs.zip",
        "UnsupportedZip",
        f"compressed size {len(MODEL) - 1} differs from size {len(MODEL)}",
        "model.safetensors' central header has a compressed size 1 less than its size",
        build(with_member(1, members(), csize=len(MODEL) - 1)),
    )

    # ZIP64 end records and extra fields.
    def zip64_file() -> Zip:
        return checkpoint(zip64=True)

    z = zip64_file()
    add(
        "zip64_locator_bad_signature.zip",
        "BadSignature",
        "no ZIP64 end-of-central-directory locator signature",
        "ZIP64: the locator's signature is wrong",
        patch(z, z.eocd - 20, "I", 0x07064B51),
    )
    z = zip64_file()
    add(
        "zip64_record_misplaced.zip",
        "Layout",
        f"ZIP64 end record at byte {z.eocd - 77}, expected right before its locator",
        "ZIP64: the locator points one byte before the ZIP64 end record",
        patch(z, z.eocd - 12, "Q", z.eocd - 77),
    )
    z = zip64_file()
    add(
        "zip64_record_bad_signature.zip",
        "BadSignature",
        "no ZIP64 end-of-central-directory record signature",
        "ZIP64: the end record's signature is wrong",
        patch(z, z.eocd - 76, "I", 0x06064B51),
    )
    z = zip64_file()
    add(
        "zip64_extensible_data.zip",
        "UnsupportedZip",
        "ZIP64 extensible data or multiple disks",
        "ZIP64: the end record's size field says 45, one byte of extensible data",
        patch(z, z.eocd - 72, "Q", 45),
    )
    z = zip64_file()
    add(
        "zip64_locator_disk.zip",
        "UnsupportedZip",
        "ZIP64 extensible data or multiple disks",
        "ZIP64: the locator says the end record is on disk 1",
        patch(z, z.eocd - 16, "I", 1),
    )
    z = zip64_file()
    add(
        "zip64_entry_counts_disagree.zip",
        "Layout",
        "ZIP64 entry counts disagree",
        "ZIP64: the end record counts 2 entries on this disk and 3 in total",
        patch(z, z.eocd - 76 + 24, "Q", 2),
    )
    z = zip64_file()
    add(
        "zip64_entry_count_2_pow_40.zip",
        "TooLarge",
        "central directory entry count is 1099511627776",
        "ZIP64: the end record counts 2**40 entries (a reader must not allocate for them)",
        patch(z, z.eocd - 76 + 24, "QQ", 1 << 40, 1 << 40),
    )
    z = inference()
    add(
        "zip64_marker_without_records.zip",
        "BadSignature",
        "no ZIP64 end-of-central-directory locator signature",
        "the classic end record's entry counts are 0xffff, but there are no ZIP64 records",
        patch(z, z.eocd + 8, "HH", U16, U16),
    )
    z = zip64_file()
    # The central header of model.safetensors: drop its ZIP64 block's
    # meaning by renaming its ID; sizes and offset stay 0xffffffff.
    patch(z, z.central[1] + 46 + len("model.safetensors"), "H", 0xCAFE)
    add(
        "zip64_sizes_without_extra_block.zip",
        "UnsupportedZip",
        "0xffffffff size or offset without a ZIP64 extra field",
        "ZIP64: model.safetensors' central sizes are 0xffffffff and its extra field has no "
        "ZIP64 block",
        z,
    )
    z = zip64_file()
    patch(z, z.central[1] + 46 + len("model.safetensors") + 2, "H", 16)
    patch(z, z.central[1] + 46 + len("model.safetensors") + 2 + 2 + 16, "HH", 0xCAFE, 4)
    add(
        "zip64_extra_block_too_short.zip",
        "UnsupportedZip",
        "ZIP64 extra field too short",
        "ZIP64: model.safetensors' central ZIP64 block holds 2 values where 3 fields are "
        "0xffffffff",
        z,
    )
    z = zip64_file()
    at = z.local[1] + 30 + len("model.safetensors") + 4
    add(
        "zip64_local_size_differs.zip",
        "HeaderMismatch",
        "member model.safetensors: local header and central directory disagree on size",
        "ZIP64: model.safetensors' local ZIP64 block gives a size 1 larger than the central one",
        patch(z, at, "QQ", len(MODEL) + 1, len(MODEL) + 1),
    )

    # Member names, duplicates, order, presence.
    base = members()
    add(
        "member_unknown_name.zip",
        "UnexpectedMember",
        "state_dicts.pkl",
        "a third member named state_dicts.pkl",
        build([*base, Member("state_dicts.pkl", b"\x80\x04evil")]),
    )
    add(
        "member_duplicate_model.zip",
        "DuplicateMember",
        "duplicate member model.safetensors",
        "model.safetensors twice",
        build([*base, base[1]]),
    )
    add(
        "member_duplicate_metadata.zip",
        "DuplicateMember",
        "duplicate member metadata.json",
        "metadata.json twice, before model.safetensors",
        build([base[0], base[0], base[1]]),
    )
    add(
        "member_order_model_first.zip",
        "MemberOrder",
        "member model.safetensors at position 0",
        "model.safetensors before metadata.json",
        build([base[1], base[0]]),
    )
    cm = checkpoint_members()
    add(
        "member_order_optimizer_before_model.zip",
        "MemberOrder",
        "member model.safetensors at position 2",
        "optimizer.safetensors before model.safetensors",
        build([cm[0], cm[2], cm[1]]),
    )
    add(
        "member_none.zip",
        "MissingMember",
        "missing member metadata.json",
        "an empty archive: an end record and nothing else",
        struct.pack("<IHHHHIIH", EOCD_SIG, 0, 0, 0, 0, 0, 0, 0),
    )
    add(
        "member_missing_model.zip",
        "MissingMember",
        "missing member model.safetensors",
        "metadata.json alone",
        build([base[0]]),
    )
    add(
        "member_missing_model_with_optimizer.zip",
        "MissingMember",
        "missing member model.safetensors",
        "a checkpoint of metadata.json and optimizer.safetensors, no model.safetensors",
        build([cm[0], cm[2]]),
    )
    add(
        "member_missing_optimizer.zip",
        "MissingMember",
        "missing member optimizer.safetensors",
        "the metadata declares an optimizer, the file has no optimizer.safetensors",
        build(cm[:2]),
    )
    add(
        "member_undeclared_optimizer.zip",
        "UnexpectedMember",
        "the metadata declares no optimizer",
        "an inference file with an optimizer.safetensors member",
        build([*base, Member("optimizer.safetensors", OPTIMIZER)]),
    )

    # Compression, flags, local headers.
    add(
        "zip_compressed_model.zip",
        "CompressedMember",
        "member model.safetensors is compressed (method 8)",
        "model.safetensors has method 8 (deflate) in both headers",
        build(with_member(1, base, method=8)),
    )
    add(
        "zip_compressed_metadata.zip",
        "CompressedMember",
        "member metadata.json is compressed (method 12)",
        "metadata.json has method 12 (bzip2) in both headers",
        build(with_member(0, base, method=12)),
    )
    for bit, name in [
        (0, "encrypted"),
        (3, "data_descriptor"),
        (5, "patched_data"),
        (6, "strong_encryption"),
        (13, "masked_header"),
    ]:
        add(
            f"zip_flag_{name}.zip",
            "UnsupportedZip",
            f"general purpose flags {1 << bit:#06x}",
            f"model.safetensors has flag bit {bit} ({name.replace('_', ' ')}) in both headers",
            build(with_member(1, base, flags=1 << bit)),
        )
    mismatch = "member model.safetensors: local header and central directory disagree on"
    add(
        "local_name_differs.zip",
        "HeaderMismatch",
        f"{mismatch} name",
        "model.safetensors' local header names model.safetensorz",
        build(with_member(1, base, local_name="model.safetensorz")),
    )
    add(
        "local_method_differs.zip",
        "HeaderMismatch",
        f"{mismatch} compression method",
        "model.safetensors' local header says method 8, the central one 0",
        build(with_member(1, base, local_method=8)),
    )
    add(
        "local_flags_differ.zip",
        "HeaderMismatch",
        f"{mismatch} flags",
        "model.safetensors' local header has flag bit 11 (UTF-8), the central one none",
        build(with_member(1, base, local_flags=0x0800)),
    )
    add(
        "local_crc_differs.zip",
        "HeaderMismatch",
        f"{mismatch} CRC-32",
        "model.safetensors' local CRC-32 differs from the central one",
        build(with_member(1, base, local_crc=0x12345678)),
    )
    add(
        "local_size_differs.zip",
        "HeaderMismatch",
        f"{mismatch} size",
        "model.safetensors' local sizes are 1 less than the central ones",
        build(with_member(1, base, local_size=len(MODEL) - 1)),
    )
    z = inference()
    add(
        "local_bad_signature.zip",
        "BadSignature",
        f"no local file header signature at byte {z.local[1]}",
        "model.safetensors' local header signature is wrong",
        patch(z, z.local[1], "I", 0x04034B51),
    )
    z = inference()
    at = z.local[1] + 30 + len("model.safetensors")
    (pad,) = struct.unpack_from("<H", z.data, at + 2)
    add(
        "local_extra_block_overruns.zip",
        "UnsupportedZip",
        "unsupported ZIP feature in model.safetensors: extra field block runs past its header",
        "model.safetensors' padding block claims 2 bytes more than the extra field holds",
        patch(z, at + 2, "H", pad + 2),
    )
    z = inference()
    add(
        "local_extra_leftover_bytes.zip",
        "UnsupportedZip",
        "unsupported ZIP feature in model.safetensors: malformed extra field",
        "model.safetensors' padding block is 2 bytes shorter than the extra field: 2 bytes "
        "are no block",
        patch(z, at + 2, "H", pad - 2),
    )
    z = build(with_member(1, base, extra_pad=1))
    add(
        "align_model_off_by_one.zip",
        "Misaligned",
        f"member model.safetensors: data starts at byte {z.starts[1]}, not on a 64-byte boundary",
        "model.safetensors' data starts 1 byte after a multiple of 64",
        z,
    )
    z = build(with_member(0, base, local_extra=b""))
    add(
        "align_metadata_no_padding.zip",
        "Misaligned",
        "member metadata.json: data starts at byte 43, not on a 64-byte boundary",
        "metadata.json has no padding block: its data starts at byte 43",
        z,
    )

    # Bytes that belong to no structure, members that overlap.
    z = build([replace(base[0], gap=b"\0" * 64), base[1]])
    add(
        "layout_bytes_before_first_member.zip",
        "UnexpectedBytes",
        "unexpected bytes 0..64: before member metadata.json, part of no member",
        "64 zero bytes before the first local header",
        z,
    )
    z = build(with_member(1, base, gap=b"\xab" * 64))
    add(
        "layout_bytes_between_members.zip",
        "UnexpectedBytes",
        "before member model.safetensors, part of no member",
        "64 bytes between metadata.json's data and model.safetensors' local header",
        z,
    )
    add(
        "layout_bytes_after_last_member.zip",
        "UnexpectedBytes",
        "between the last member and the central directory",
        "64 bytes between the last member's data and the central directory",
        inference(before_cd=b"\xab" * 64),
    )
    z = build(with_member(1, base, offset_delta=-64))
    add(
        "layout_member_inside_previous.zip",
        "Layout",
        "member model.safetensors starts at byte",
        "model.safetensors' central header points 64 bytes into metadata.json's data",
        z,
    )
    z = build(with_member(1, base, size=len(MODEL) + 16))
    add(
        "layout_data_runs_into_cd.zip",
        "Layout",
        "data of model.safetensors",
        "model.safetensors' sizes (both headers) are 16 bytes more than its data: it runs "
        "into the central directory",
        z,
    )
    z = build(with_member(1, base, size=0x7FFFFFFF))
    add(
        "layout_data_past_file_end.zip",
        "Truncated",
        "data of model.safetensors",
        "model.safetensors' sizes (both headers) are 2 GiB: it runs past the end of the file",
        z,
    )

    # CRC-32.
    z = inference()
    add(
        "crc_metadata.zip",
        "CrcMismatch",
        f"CRC-32 mismatch in metadata.json (bytes {z.starts[0]}..",
        "one bit of metadata.json flipped inside a string (still valid JSON)",
        flip(z, z.data.index(b"pytorch-saver", z.starts[0])),
    )
    z = inference()
    add(
        "crc_model_header.zip",
        "CrcMismatch",
        f"CRC-32 mismatch in model.safetensors (bytes {z.starts[1]}..",
        "one bit flipped in model.safetensors' header (a space of its padding)",
        flip(z, z.starts[1] + len(MODEL) - 13),
    )
    z = inference()
    add(
        "crc_model_data.zip",
        "CrcMismatch",
        "CRC-32 mismatch in model.safetensors",
        "one bit flipped in the last tensor byte of model.safetensors",
        flip(z, z.starts[1] + len(MODEL) - 1),
    )
    z = checkpoint()
    add(
        "crc_optimizer_data.zip",
        "CrcMismatch",
        "CRC-32 mismatch in optimizer.safetensors",
        "one bit flipped in the last tensor byte of optimizer.safetensors",
        flip(z, z.starts[2] + len(OPTIMIZER) - 1),
    )
    z = inference()
    add(
        "crc_stored_value_wrong.zip",
        "CrcMismatch",
        "CRC-32 mismatch in model.safetensors",
        "model.safetensors' stored CRC-32 (both headers) is 0",
        build(with_member(1, base, crc=0)),
    )
    return cases


def metadata_cases() -> list[Case]:
    cases = []

    def add(file: str, kind: str, message: str, what: str, meta: Any, **kw: Any) -> None:
        cases.append(Case(file, kind, message, what, with_metadata(meta, **kw)))

    def schema(
        file: str, message: str, what: str, edit: Callable[[Any], Any], kind: str = "checkpoint"
    ) -> None:
        meta = edited(edit, kind)
        inner = meta.get("__pytorch_saver__")
        has_optimizer = isinstance(inner, dict) and "optimizer" in inner and kind == "checkpoint"
        add(file, "Schema", message, what, meta, optimizer=has_optimizer)

    # Not JSON, not an object.
    add(
        "json_not_json.zip",
        "Json",
        "metadata.json: ",
        "metadata.json is the text 'not json'",
        b"not json",
    )
    add("json_syntax_error.zip", "Json", "metadata.json: ", "metadata.json is a lone '{'", b"{")
    add(
        "json_not_utf8.zip",
        "Json",
        "metadata.json: not UTF-8",
        "metadata.json starts with the bytes ff fe",
        b"\xff\xfe{}",
    )
    add(
        "json_top_level_array.zip",
        "Json",
        "metadata.json: top level is not a JSON object",
        "metadata.json is a JSON array",
        b"[1, 2]",
    )
    add(
        "json_top_level_string.zip",
        "Json",
        "metadata.json: top level is not a JSON object",
        "metadata.json is a JSON string",
        b'"text"',
    )
    text = meta_bytes(metadata())
    add(
        "json_duplicate_key.zip",
        "Json",
        "duplicate key",
        "metadata.json has the top-level key model_kwargs twice",
        text[:-2] + b',\n  "model_kwargs": {}\n}',
    )
    add(
        "json_duplicate_nested_key.zip",
        "Json",
        "duplicate key",
        "a user metadata object holds the key a twice",
        text[:-2] + b',\n  "notes": {"a": 1, "a": 2}\n}',
    )
    add(
        "json_nan.zip",
        "Json",
        "metadata.json: ",
        "user metadata holds NaN, which JSON does not have",
        text[:-2] + b',\n  "x": NaN\n}',
    )
    add(
        "json_number_out_of_range.zip",
        "Json",
        "out of range",
        "user metadata holds 1e400, beyond binary64",
        text[:-2] + b',\n  "x": 1e400\n}',
    )
    add(
        "json_lone_surrogate.zip",
        "Json",
        "metadata.json: ",
        "user metadata holds the string \\ud800, a lone surrogate",
        text[:-2] + b',\n  "x": "\\ud800"\n}',
    )
    deep = b"[" * 127 + b"1" + b"]" * 127
    add(
        "json_nested_128_levels.zip",
        "Json",
        "metadata.json: ",
        "user metadata nested 128 levels deep (127 lists in the top-level object)",
        text[:-2] + b',\n  "deep": ' + deep + b"\n}",
    )

    # The internals object and its format version (checked first).
    def drop(key: str) -> Callable[[Any], Any]:
        return lambda m: internals(m).pop(key)

    def put(key: str, value: Any) -> Callable[[Any], Any]:
        return lambda m: internals(m).__setitem__(key, value)

    schema(
        "schema_internals_missing.zip",
        "field __pytorch_saver__: missing",
        "no __pytorch_saver__ key (a file of the original package)",
        lambda m: m.pop("__pytorch_saver__"),
    )
    schema(
        "schema_internals_not_object.zip",
        "field __pytorch_saver__: must be an object",
        "__pytorch_saver__ is a list",
        lambda m: m.__setitem__("__pytorch_saver__", [1]),
    )
    version = "field __pytorch_saver__.format_version:"
    schema(
        "version_missing.zip",
        f"{version} missing",
        "no format_version",
        drop("format_version"),
    )
    schema(
        "version_string.zip",
        f"{version} must be an integer",
        'format_version is the string "1"',
        put("format_version", "1"),
    )
    schema(
        "version_bool.zip",
        f"{version} must be an integer",
        "format_version is true",
        put("format_version", True),
    )
    for file, value, found in [
        ("version_3.zip", 3, "3"),
        ("version_0.zip", 0, "0"),
        ("version_negative.zip", -1, "-1"),
    ]:
        add(
            file,
            "UnsupportedVersion",
            f"format version {found} is not supported",
            f"format_version is {value}",
            edited(put("format_version", value), "inference"),
        )
    add(
        "version_float.zip",
        "UnsupportedVersion",
        "format version 1.0 is not supported",
        "format_version is 1.0, a number that is not an integer",
        edited(put("format_version", 1.0), "inference"),
    )
    add(
        "version_10_pow_30.zip",
        "UnsupportedVersion",
        "is not supported",
        "format_version is 10**30, beyond 64 bits",
        meta_bytes(metadata()).replace(
            b'"format_version": 1', b'"format_version": ' + str(10**30).encode()
        ),
    )

    # The rest of the internals, in the order the reader checks them.
    schema(
        "schema_kind_invalid.zip",
        "field __pytorch_saver__.kind:",
        'kind is "training"',
        put("kind", "training"),
    )
    schema("schema_kind_missing.zip", "field __pytorch_saver__.kind:", "no kind", drop("kind"))
    schema(
        "schema_model_missing.zip",
        "field __pytorch_saver__.model: missing",
        "no model",
        drop("model"),
    )
    schema(
        "schema_model_not_object.zip",
        "field __pytorch_saver__.model: must be an object",
        'model is the string "torch.nn.Linear"',
        put("model", "torch.nn.Linear"),
    )
    schema(
        "schema_model_class_missing.zip",
        "field __pytorch_saver__.model.class: missing",
        "model has no class",
        put("model", {}),
    )
    schema(
        "schema_model_class_empty.zip",
        "field __pytorch_saver__.model.class: must be a non-empty string",
        "model.class is empty",
        put("model", {"class": ""}),
    )
    schema(
        "schema_optimizer_not_object.zip",
        "field __pytorch_saver__.optimizer: must be an object",
        "optimizer is a list",
        put("optimizer", []),
    )
    schema(
        "schema_optimizer_class_missing.zip",
        "field __pytorch_saver__.optimizer.class: missing",
        "optimizer has no class",
        lambda m: internals(m)["optimizer"].pop("class"),
    )
    schema(
        "schema_scheduler_class_not_string.zip",
        "field __pytorch_saver__.scheduler.class: must be a non-empty string",
        "scheduler.class is 3",
        lambda m: internals(m)["scheduler"].__setitem__("class", 3),
    )

    # The optimizer's internals (section 5).
    def opt(edit: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return lambda m: edit(internals(m)["optimizer"])

    o = "field __pytorch_saver__.optimizer."
    optimizer_cases: list[tuple[str, str, str, Callable[[Any], Any]]] = [
        (
            "param_names_missing",
            "param_names: missing",
            "no param_names",
            lambda o: o.pop("param_names"),
        ),
        (
            "param_names_not_list",
            "param_names: must be a list",
            "param_names is a string",
            lambda o: o.__setitem__("param_names", "weight"),
        ),
        (
            "param_names_not_string",
            "param_names[1]: must be a non-empty string",
            "param_names[1] is 3",
            lambda o: o.__setitem__("param_names", ["weight", 3]),
        ),
        (
            "param_names_twice",
            "param_names[1]:",
            "param_names names weight twice",
            lambda o: o.__setitem__("param_names", ["weight", "weight"]),
        ),
        (
            "param_groups_missing",
            "param_groups: missing",
            "no param_groups",
            lambda o: o.pop("param_groups"),
        ),
        (
            "param_groups_not_list",
            "param_groups: must be a list of objects",
            "param_groups is an object",
            lambda o: o.__setitem__("param_groups", {}),
        ),
        (
            "param_group_not_object",
            "param_groups[0]: must be an object",
            "param_groups[0] is a list",
            lambda o: o.__setitem__("param_groups", [[0, 1]]),
        ),
        (
            "param_group_no_params",
            "param_groups[0].params: must be a list of parameter indices",
            "param_groups[0] has no params",
            lambda o: o["param_groups"][0].pop("params"),
        ),
        (
            "param_index_out_of_range",
            "param_groups[0].params: 2 is not an index into param_names",
            "params holds 2, param_names has 2 entries",
            lambda o: o["param_groups"][0].__setitem__("params", [0, 2]),
        ),
        (
            "param_index_negative",
            "param_groups[0].params: -1 is not an index into param_names",
            "params holds -1",
            lambda o: o["param_groups"][0].__setitem__("params", [-1, 1]),
        ),
        (
            "param_index_in_two_groups",
            "param_groups[1].params: parameter 1 is in more than one group",
            "parameter 1 is in two groups",
            lambda o: o["param_groups"].append({"lr": 0.2, "params": [1]}),
        ),
        (
            "param_index_in_no_group",
            "param_groups: parameter 1 is in no group",
            "parameter 1 is in no group",
            lambda o: o["param_groups"][0].__setitem__("params", [0]),
        ),
        ("state_missing", "state: missing", "no state", lambda o: o.pop("state")),
        (
            "state_not_object",
            "state: must be an object",
            "state is a list",
            lambda o: o.__setitem__("state", []),
        ),
        (
            "state_key_leading_zero",
            "state: key",
            'state has the key "01"',
            lambda o: o.__setitem__("state", {"01": {}}),
        ),
        (
            "state_key_out_of_range",
            "state: key",
            'state has the key "2", param_names has 2 entries',
            lambda o: o.__setitem__("state", {"2": {}}),
        ),
        (
            "state_value_not_object",
            "state.0: must be an object",
            'state["0"] is 1',
            lambda o: o.__setitem__("state", {"0": 1, "1": {}}),
        ),
    ]
    for name, message, what, edit in optimizer_cases:
        schema(f"optim_{name}.zip", o + message, what, opt(edit))

    s = "field __pytorch_saver__.scheduler.state: must be an object"
    schema(
        "sched_state_missing.zip",
        s,
        "the scheduler has no state",
        lambda m: internals(m)["scheduler"].pop("state"),
    )
    schema(
        "sched_state_not_object.zip",
        s,
        "the scheduler's state is a list",
        lambda m: internals(m)["scheduler"].__setitem__("state", []),
    )

    def inference_with_optimizer(m: Any) -> None:
        internals(m)["kind"] = "inference"

    schema(
        "schema_inference_with_optimizer.zip",
        "an inference file holds no optimizer or scheduler",
        "kind is inference, the internals declare an optimizer and a scheduler",
        inference_with_optimizer,
    )

    def scheduler_without_optimizer(m: Any) -> None:
        internals(m).pop("optimizer")
        m.pop("optim_kwargs")

    schema(
        "schema_scheduler_without_optimizer.zip",
        "a scheduler needs an optimizer",
        "a scheduler and no optimizer",
        scheduler_without_optimizer,
    )
    p = "field __pytorch_saver__.producer"
    schema("schema_producer_missing.zip", f"{p}: missing", "no producer", drop("producer"))
    schema(
        "schema_producer_not_object.zip",
        f"{p}: must be an object",
        'producer is "me"',
        put("producer", "me"),
    )
    schema(
        "schema_producer_library_missing.zip",
        f"{p}.library: missing",
        "producer has no library",
        lambda m: internals(m)["producer"].pop("library"),
    )
    schema(
        "schema_producer_version_empty.zip",
        f"{p}.version: must be a non-empty string",
        "producer.version is empty",
        lambda m: internals(m)["producer"].__setitem__("version", ""),
    )
    schema(
        "schema_producer_language_not_string.zip",
        f"{p}.language: must be a non-empty string",
        "producer.language is null",
        lambda m: internals(m)["producer"].__setitem__("language", None),
    )
    schema(
        "schema_producer_torch_version_empty.zip",
        f"{p}.torch_version: must be a non-empty string",
        "producer.torch_version is empty (it is optional, but a string when present)",
        lambda m: internals(m)["producer"].__setitem__("torch_version", ""),
    )
    schema(
        "schema_model_kwargs_missing.zip",
        "field model_kwargs: missing",
        "no model_kwargs",
        lambda m: m.pop("model_kwargs"),
    )
    schema(
        "schema_model_kwargs_not_object.zip",
        "field model_kwargs: must be an object",
        "model_kwargs is a list",
        lambda m: m.__setitem__("model_kwargs", [2, 1]),
    )
    schema(
        "schema_optim_kwargs_missing.zip",
        "field optim_kwargs: missing",
        "an optimizer without optim_kwargs",
        lambda m: m.pop("optim_kwargs"),
    )
    schema(
        "schema_optim_kwargs_stray.zip",
        "field optim_kwargs: present although the file has no such part",
        "an inference file with optim_kwargs",
        lambda m: m.__setitem__("optim_kwargs", {"lr": 0.1}),
        kind="inference",
    )
    schema(
        "schema_scheduler_kwargs_missing.zip",
        "field scheduler_kwargs: missing",
        "a scheduler without scheduler_kwargs",
        lambda m: m.pop("scheduler_kwargs"),
    )
    schema(
        "schema_scheduler_kwargs_not_object.zip",
        "field scheduler_kwargs: must be an object",
        "scheduler_kwargs is a number",
        lambda m: m.__setitem__("scheduler_kwargs", 2),
    )
    ts = "field timestamp:"
    schema(
        "schema_timestamp_missing.zip",
        f"{ts} missing",
        "no timestamp",
        lambda m: m.pop("timestamp"),
    )
    schema(
        "schema_timestamp_negative.zip",
        f"{ts} must be a non-negative integer",
        "timestamp is -1",
        lambda m: m.__setitem__("timestamp", -1),
    )
    schema(
        "schema_timestamp_float.zip",
        f"{ts} must be a non-negative integer",
        "timestamp is 1.5",
        lambda m: m.__setitem__("timestamp", 1.5),
    )
    schema(
        "schema_timestamp_bool.zip",
        f"{ts} must be a non-negative integer",
        "timestamp is true",
        lambda m: m.__setitem__("timestamp", True),
    )
    return cases


def tensor_cases() -> list[Case]:
    cases = []

    def add(file: str, kind: str, message: str, what: str, model: bytes) -> None:
        cases.append(Case(file, kind, message, what, with_model(model)))

    h = "model.safetensors: header:"
    add(
        "st_member_empty.zip",
        "TensorHeader",
        f"{h} member is 0 bytes",
        "model.safetensors is empty",
        b"",
    )
    add(
        "st_member_4_bytes.zip",
        "TensorHeader",
        f"{h} member is 4 bytes",
        "model.safetensors is 4 bytes",
        b"\x02\0\0\0",
    )
    add(
        "st_header_length_2_pow_60.zip",
        "TooLarge",
        "model.safetensors header is 1152921504606846976 bytes",
        "the header length is 2**60",
        struct.pack("<Q", 1 << 60) + MODEL[8:],
    )
    add(
        "st_header_length_above_limit.zip",
        "TooLarge",
        "model.safetensors header is 100000001 bytes",
        "the header length is 100000001, one above the limit",
        struct.pack("<Q", 100_000_001) + MODEL[8:],
    )
    add(
        "st_header_length_past_member.zip",
        "TensorHeader",
        f"{h} header length 4096 runs past the end",
        "the header length is 4096, the member is smaller",
        struct.pack("<Q", 4096) + MODEL[8:],
    )
    add(
        "st_header_not_json.zip",
        "TensorHeader",
        h,
        "the header is the text 'not json'",
        raw_safetensors("not json", b""),
    )
    add(
        "st_header_not_utf8.zip",
        "TensorHeader",
        f"{h} not UTF-8",
        "the header starts with ff fe",
        raw_safetensors(b"\xff\xfe{}", b""),
    )
    add(
        "st_header_array.zip",
        "TensorHeader",
        f"{h} top level is not a JSON object",
        "the header is a JSON array",
        raw_safetensors("[]", b""),
    )
    add(
        "st_header_duplicate_tensor.zip",
        "TensorHeader",
        "duplicate key",
        "the header names tensor a twice",
        raw_safetensors(
            '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
            b"\x01\x02",
        ),
    )
    add(
        "st_metadata_not_strings.zip",
        "TensorHeader",
        f"{h} __metadata__ must map strings to strings",
        "__metadata__ maps a key to the number 1",
        header_member({"__metadata__": {"k": 1}}, b""),
    )
    add(
        "st_entry_not_object.zip",
        "TensorHeader",
        "entry is not an object",
        "tensor a's entry is a list",
        header_member({"a": [1]}, b""),
    )
    add(
        "st_entry_unknown_field.zip",
        "TensorHeader",
        "unknown field",
        "tensor a's entry has a field x",
        header_member({"a": entry("F32", [2], 0, 8, x=1)}, bytes(8)),
    )
    add(
        "st_dtype_missing.zip",
        "TensorHeader",
        "dtype missing or not a string",
        "tensor a has no dtype",
        header_member({"a": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
    )
    add(
        "st_dtype_f8_e4m3.zip",
        "UnsupportedDtype",
        "has dtype F8_E4M3, not one of v1's dtypes",
        "tensor a is F8_E4M3, a safetensors dtype v1 does not allow",
        header_member({"a": entry("F8_E4M3", [1], 0, 1)}, bytes(1)),
    )
    add(
        "st_dtype_c64.zip",
        "UnsupportedDtype",
        "has dtype C64, not one of v1's dtypes",
        "tensor a is C64 (complex64)",
        header_member({"a": entry("C64", [1], 0, 8)}, bytes(8)),
    )
    add(
        "st_dtype_lowercase.zip",
        "UnsupportedDtype",
        "has dtype f32, not one of v1's dtypes",
        'tensor a\'s dtype is "f32" (names are upper case)',
        header_member({"a": entry("f32", [2], 0, 8)}, bytes(8)),
    )
    add(
        "st_shape_missing.zip",
        "TensorHeader",
        "shape missing or not an array",
        "tensor a has no shape",
        header_member({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8)),
    )
    add(
        "st_shape_negative.zip",
        "TensorHeader",
        "shape has an entry that is not a non-negative integer",
        "tensor a's shape is [-2]",
        header_member({"a": entry("F32", [-2], 0, 8)}, bytes(8)),
    )
    add(
        "st_offsets_missing.zip",
        "TensorHeader",
        "data_offsets must be two non-negative integers",
        "tensor a has no data_offsets",
        header_member({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)),
    )
    add(
        "st_offsets_negative.zip",
        "TensorHeader",
        "data_offsets must be two non-negative integers",
        "tensor a's data_offsets are [-8, 0]",
        header_member({"a": entry("F32", [2], -8, 0)}, bytes(8)),
    )
    add(
        "st_offsets_reversed.zip",
        "TensorData",
        "(data bytes 8..0): end before start",
        "tensor a's data_offsets are [8, 0]",
        header_member({"a": entry("F32", [2], 8, 0)}, bytes(8)),
    )
    add(
        "st_offsets_out_of_range.zip",
        "TensorData",
        "(data bytes 0..16): out of range: the member has 8 bytes of tensor data",
        "tensor a's data ends at 16, the member has 8 bytes of data",
        header_member({"a": entry("F32", [4], 0, 16)}, bytes(8)),
    )
    add(
        "st_offsets_huge.zip",
        "TensorData",
        "out of range",
        "tensor a's data_offsets are [2**64 - 4, 2**64 - 1]",
        header_member({"a": entry("U8", [3], 2**64 - 4, 2**64 - 1)}, bytes(3)),
    )
    add(
        "st_shape_overflows.zip",
        "TensorData",
        "overflows",
        "tensor a's shape [2**40, 2**40] of F32 is more than 2**64 bytes",
        header_member({"a": entry("F32", [2**40, 2**40], 0, 8)}, bytes(8)),
    )
    add(
        "st_shape_overflows_before_zero.zip",
        "TensorData",
        "overflows",
        "tensor a's shape [2**62, 2**62, 0]: the product overflows before the 0 (sizes are "
        "multiplied left to right, starting from the element size)",
        header_member({"a": entry("F32", [2**62, 2**62, 0], 0, 0)}, b""),
    )
    add(
        "st_shape_disagrees_with_offsets.zip",
        "TensorData",
        "needs 12 bytes, the offsets give 8",
        "tensor a is F32 [3] (12 bytes), its data_offsets span 8",
        header_member({"a": entry("F32", [3], 0, 8)}, bytes(8)),
    )
    add(
        "st_f64_disagrees_with_offsets.zip",
        "TensorData",
        "needs 16 bytes, the offsets give 8",
        "tensor a is F64 [2] (16 bytes), its data_offsets span 8",
        header_member({"a": entry("F64", [2], 0, 8)}, bytes(8)),
    )
    add(
        "st_tensors_overlap.zip",
        "TensorData",
        "(data bytes 4..12): overlaps tensor",
        "tensor b (bytes 4..12) overlaps tensor a (bytes 0..8)",
        header_member({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, bytes(12)),
    )
    add(
        "st_hole_between_tensors.zip",
        "TensorData",
        "(data bytes 12..20): 4 unclaimed bytes before it",
        "4 bytes between tensor a's data and tensor b's",
        header_member({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}, bytes(20)),
    )
    add(
        "st_hole_before_first_tensor.zip",
        "TensorData",
        "(data bytes 4..12): 4 unclaimed bytes before it",
        "the only tensor's data starts at 4, not 0",
        header_member({"a": entry("F32", [2], 4, 12)}, bytes(12)),
    )
    add(
        "st_unclaimed_tail.zip",
        "TensorHeader",
        f"{h} 2 bytes of tensor data are claimed by no tensor",
        "2 bytes after the last tensor's data",
        header_member({"a": entry("F32", [2], 0, 8)}, bytes(10)),
    )
    add(
        "st_bool_byte_2.zip",
        "TensorData",
        "BOOL element",
        "BOOL tensor flags holds the byte 2",
        header_member({"flags": entry("BOOL", [4], 0, 4)}, b"\x01\x00\x02\x01"),
    )

    # optimizer.safetensors' tensor names (section 5).
    def opt_add(file: str, message: str, what: str, name: str, state: Any = None) -> None:
        meta = metadata("checkpoint", optimizer=True, scheduler=True)
        if state is not None:
            internals(meta)["optimizer"]["state"] = state
        member = header_member({name: entry("F32", [], 0, 4)}, bytes(4))
        cases.append(Case(file, "TensorHeader", message, what, with_optimizer_member(member, meta)))

    opt_add(
        "optst_name_no_prefix.zip",
        "optimizer tensors are named state.<index>.<key>",
        "an optimizer tensor named exp_avg",
        "exp_avg",
    )
    opt_add(
        "optst_name_no_key.zip",
        "optimizer tensors are named state.<index>.<key>",
        "an optimizer tensor named state.0.",
        "state.0.",
    )
    opt_add(
        "optst_name_index_not_digits.zip",
        "optimizer tensors are named state.<index>.<key>",
        "an optimizer tensor named state.x.exp_avg",
        "state.x.exp_avg",
    )
    opt_add(
        "optst_name_index_leading_zero.zip",
        "is not a canonical decimal parameter index",
        "an optimizer tensor named state.01.momentum_buffer",
        "state.01.momentum_buffer",
    )
    opt_add(
        "optst_index_without_state_entry.zip",
        "parameter 7 has no entry in __pytorch_saver__.optimizer.state",
        "an optimizer tensor for parameter 7, which has no state entry",
        "state.7.momentum_buffer",
    )
    opt_add(
        "optst_index_state_entry_missing.zip",
        "parameter 1 has no entry in __pytorch_saver__.optimizer.state",
        "an optimizer tensor for parameter 1 (an index in range) without a state entry",
        "state.1.momentum_buffer",
        state={"0": {}},
    )
    opt_add(
        "optst_key_also_json.zip",
        "is both a tensor and a JSON value",
        "state.1.lr is a tensor and state[1] also holds the JSON value lr",
        "state.1.lr",
        state={"0": {}, "1": {"lr": 0.5}},
    )
    cases.append(
        Case(
            "optst_tensors_overlap.zip",
            "TensorData",
            "optimizer.safetensors: tensor",
            "two optimizer tensors claim the same bytes",
            with_optimizer_member(
                header_member(
                    {
                        "state.0.momentum_buffer": entry("F32", [1, 2], 0, 8),
                        "state.1.momentum_buffer": entry("F32", [1], 4, 8),
                    },
                    bytes(8),
                )
            ),
        )
    )
    return cases


def two_defect_cases() -> list[Case]:
    """Files with two defects each: the kind pins down which check runs first."""
    cases = []

    def add(file: str, kind: str, message: str, what: str, data: bytes | Zip) -> None:
        raw = bytes(data.data) if isinstance(data, Zip) else data
        cases.append(Case(file, kind, message, what, raw))

    base = members()
    # CRC-32 before metadata.json is parsed.
    bad = metadata()
    bad.pop("timestamp")
    add(
        "two_crc_and_schema_in_metadata.zip",
        "CrcMismatch",
        "CRC-32 mismatch in metadata.json",
        "metadata.json has no timestamp (schema) and a wrong stored CRC-32",
        build([Member("metadata.json", meta_bytes(bad), crc=0x1234), base[1]]),
    )
    add(
        "two_crc_and_not_json.zip",
        "CrcMismatch",
        "CRC-32 mismatch in metadata.json",
        "metadata.json is not JSON and its stored CRC-32 is wrong",
        build([Member("metadata.json", b"not json", crc=0x1234), base[1]]),
    )
    bad = metadata()
    internals(bad)["kind"] = "training"
    z = build(members(bad))
    add(
        "two_crc_in_model_and_schema.zip",
        "CrcMismatch",
        "CRC-32 mismatch in model.safetensors",
        "a bad kind in metadata.json, and a flipped bit in model.safetensors' data: every "
        "CRC-32 is checked before metadata.json is parsed",
        flip(z, z.starts[1] + len(MODEL) - 1),
    )
    overlap = header_member(
        {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, bytes(12)
    )
    add(
        "two_crc_and_tensor_header.zip",
        "CrcMismatch",
        "CRC-32 mismatch in model.safetensors",
        "overlapping tensors in model.safetensors, whose stored CRC-32 is also wrong",
        build([base[0], Member("model.safetensors", overlap, crc=0x1234)]),
    )
    # Central directory checks before local headers; per entry, in order.
    add(
        "two_misaligned_and_compressed.zip",
        "CompressedMember",
        "member model.safetensors is compressed",
        "model.safetensors is compressed (method 8) and its data is misaligned",
        build(with_member(1, base, method=8, extra_pad=1)),
    )
    add(
        "two_local_crc_and_misaligned.zip",
        "HeaderMismatch",
        "disagree on CRC-32",
        "model.safetensors' local CRC-32 differs from the central one and its data is misaligned",
        build(with_member(1, base, local_crc=0x1234, extra_pad=1)),
    )
    add(
        "two_compressed_first_unknown_second.zip",
        "CompressedMember",
        "member metadata.json is compressed",
        "metadata.json is compressed and the second member is named notes.txt: entries are "
        "checked one at a time, every check of an entry before the next entry",
        build([replace(base[0], method=8), Member("notes.txt", b"hi"), base[1]]),
    )
    add(
        "two_duplicate_and_compressed.zip",
        "DuplicateMember",
        "duplicate member model.safetensors",
        "the second model.safetensors is also compressed: duplicate names before methods",
        build([*base, replace(base[1], method=8)]),
    )
    add(
        "two_unknown_name_and_order.zip",
        "UnexpectedMember",
        "notes.txt",
        "the first member is named notes.txt (and is therefore also out of order)",
        build([Member("notes.txt", b"hi"), base[0], base[1]]),
    )
    add(
        "two_flags_and_order.zip",
        "UnsupportedZip",
        "general purpose flags 0x0001",
        "model.safetensors comes first and is encrypted (flag bit 0): flags before order",
        build([replace(base[1], flags=1), base[0]]),
    )
    z = inference()
    add(
        "two_too_many_entries_and_cd_past_end.zip",
        "TooLarge",
        "central directory entry count is 17",
        "17 entries, and a central directory that runs past the end records",
        patch(patch(z, z.eocd + 8, "HH", 17, 17), z.eocd + 12, "I", 4096),
    )
    z = build(with_member(1, base, gap=b"\xab" * 64))
    add(
        "two_gap_and_bad_local_signature.zip",
        "UnexpectedBytes",
        "before member model.safetensors, part of no member",
        "64 bytes before model.safetensors' local header, whose signature is also wrong",
        patch(z, z.local[1], "I", 0),
    )
    z = inference()
    z.data[z.starts[1] + len(MODEL) - 1] ^= 1
    add(
        "two_trailing_bytes_and_crc.zip",
        "TrailingBytes",
        "3 trailing bytes",
        "3 bytes after the end record, and a CRC-32 mismatch in model.safetensors",
        bytes(z.data) + b"xyz",
    )
    # metadata.json: format_version first, then the internals in order.
    bad = metadata()
    internals(bad)["format_version"] = 2
    internals(bad).pop("model")
    bad.pop("timestamp")
    add(
        "two_version_2_and_no_model.zip",
        "Schema",
        "field __pytorch_saver__.model: missing",
        "a version 2 inference file without a model class and without a timestamp: the "
        "model before the timestamp (written when version 2 was unknown, and refused then "
        "as UnsupportedVersion)",
        with_metadata(bad),
    )
    bad = metadata()
    internals(bad)["format_version"] = "1"
    internals(bad)["kind"] = "training"
    add(
        "two_version_string_and_bad_kind.zip",
        "Schema",
        "field __pytorch_saver__.format_version: must be an integer",
        'format_version is the string "1" and kind is "training"',
        with_metadata(bad),
    )
    bad = metadata("checkpoint", optimizer=True)
    internals(bad)["format_version"] = 3
    internals(bad)["optimizer"]["param_names"] = ["weight", "weight"]
    add(
        "two_version_3_and_bad_optimizer.zip",
        "UnsupportedVersion",
        "format version 3 is not supported",
        "format_version 3 and param_names naming weight twice",
        with_metadata(bad, optimizer=True),
    )
    bad = metadata("checkpoint", optimizer=True)
    internals(bad)["kind"] = "training"
    internals(bad)["optimizer"]["param_names"] = ["weight", "weight"]
    add(
        "two_bad_kind_and_bad_optimizer.zip",
        "Schema",
        "field __pytorch_saver__.kind:",
        'kind is "training" and param_names names weight twice: kind before the optimizer',
        with_metadata(bad, optimizer=True),
    )
    bad = metadata("checkpoint", optimizer=True)
    internals(bad)["model"] = {"class": ""}
    internals(bad)["optimizer"].pop("state")
    add(
        "two_model_class_and_optimizer_state.zip",
        "Schema",
        "field __pytorch_saver__.model.class",
        "model.class is empty and the optimizer has no state: the model before the optimizer",
        with_metadata(bad, optimizer=True),
    )
    bad = metadata("checkpoint", optimizer=True, scheduler=True)
    internals(bad)["kind"] = "inference"
    internals(bad).pop("producer")
    add(
        "two_inference_optimizer_and_no_producer.zip",
        "Schema",
        "an inference file holds no optimizer or scheduler",
        "an inference file with an optimizer, and no producer",
        with_metadata(bad, optimizer=True),
    )
    bad = metadata("checkpoint", optimizer=True, scheduler=True)
    internals(bad)["optimizer"]["param_groups"][0]["params"] = [0]
    internals(bad)["scheduler"].pop("state")
    add(
        "two_optimizer_and_scheduler_state.zip",
        "Schema",
        "parameter 1 is in no group",
        "parameter 1 in no group, and a scheduler without state: the optimizer before the "
        "scheduler",
        with_metadata(bad, optimizer=True),
    )
    bad = metadata("checkpoint", scheduler=True)
    internals(bad)["scheduler"].pop("state")
    add(
        "two_scheduler_no_state_no_optimizer.zip",
        "Schema",
        "field __pytorch_saver__.scheduler.state: must be an object",
        "a scheduler without state and without an optimizer: the state is checked first",
        with_metadata(bad),
    )
    bad = metadata()
    bad.pop("model_kwargs")
    bad.pop("timestamp")
    add(
        "two_no_model_kwargs_no_timestamp.zip",
        "Schema",
        "field model_kwargs: missing",
        "neither model_kwargs nor timestamp",
        with_metadata(bad),
    )
    bad = metadata("checkpoint", optimizer=True)
    internals(bad)["producer"]["library"] = ""
    add(
        "two_producer_and_missing_optimizer_member.zip",
        "Schema",
        "field __pytorch_saver__.producer.library",
        "producer.library is empty and optimizer.safetensors is missing: the schema before "
        "the members",
        build(members(bad)),
    )
    # Members against the metadata, then each member's header.
    meta = metadata("checkpoint", optimizer=True, scheduler=True)
    add(
        "two_missing_optimizer_and_bad_model_header.zip",
        "MissingMember",
        "missing member optimizer.safetensors",
        "no optimizer.safetensors, and model.safetensors' tensors overlap",
        build(members(meta, overlap)),
    )
    add(
        "two_undeclared_optimizer_and_bad_model_header.zip",
        "TensorHeader",
        "model.safetensors: header: header length 4096 runs past the end",
        "an inference file with an optimizer.safetensors member and a model.safetensors whose "
        "header length runs past it: members are taken in file order, each checked against "
        "the metadata and then validated",
        build(
            [
                base[0],
                Member("model.safetensors", struct.pack("<Q", 4096) + MODEL[8:]),
                Member("optimizer.safetensors", OPTIMIZER),
            ]
        ),
    )
    bad_optimizer = header_member(
        {
            "state.0.momentum_buffer": entry("F32", [1, 2], 0, 8),
            "state.1.momentum_buffer": entry("F32", [1], 4, 8),
        },
        bytes(8),
    )
    meta = metadata("checkpoint", optimizer=True, scheduler=True)
    add(
        "two_model_and_optimizer_headers.zip",
        "TensorData",
        "model.safetensors: tensor",
        "both model.safetensors and optimizer.safetensors have overlapping tensors: "
        "model.safetensors (first in the file) is reported",
        build(members(meta, overlap, bad_optimizer)),
    )
    # Inside a safetensors header.
    add(
        "two_unknown_dtype_and_out_of_range.zip",
        "UnsupportedDtype",
        "has dtype X9",
        "tensor a has dtype X9 and offsets past the data: the dtype is checked first",
        with_model(header_member({"a": entry("X9", [2], 0, 800)}, bytes(8))),
    )
    add(
        "two_entries_header_order.zip",
        "UnsupportedDtype",
        "has dtype X9",
        "tensor b (listed first, data second) has dtype X9, tensor a (listed second, data "
        "first) has a size mismatch: entries are checked in the order the header lists them",
        with_model(
            header_member({"b": entry("X9", [1], 8, 9), "a": entry("F32", [3], 0, 8)}, bytes(9))
        ),
    )
    add(
        "two_entry_field_and_dtype.zip",
        "TensorHeader",
        "unknown field",
        "tensor a has an unknown field and dtype X9: fields before the dtype",
        with_model(header_member({"a": entry("X9", [2], 0, 8, extra=1)}, bytes(8))),
    )
    add(
        "two_overlap_and_bool.zip",
        "TensorData",
        "overlaps tensor",
        "BOOL tensor b overlaps tensor a and holds the byte 7: the tiling before BOOL bytes",
        with_model(
            header_member(
                {"a": entry("U8", [2], 0, 2), "b": entry("BOOL", [2], 1, 3)}, b"\x00\x01\x07"
            )
        ),
    )
    add(
        "two_unclaimed_tail_and_bool.zip",
        "TensorHeader",
        "1 bytes of tensor data are claimed by no tensor",
        "a BOOL tensor holding the byte 9, and 1 unclaimed byte after it",
        with_model(header_member({"flags": entry("BOOL", [2], 0, 2)}, b"\x09\x00\x00")),
    )
    meta = metadata("checkpoint", optimizer=True, scheduler=True)
    add(
        "two_optimizer_name_and_bool.zip",
        "TensorData",
        "BOOL element",
        "an optimizer tensor named exp_avg (bad name) that is BOOL holding the byte 5: a "
        "member's own checks before its tensor names",
        with_optimizer_member(header_member({"exp_avg": entry("BOOL", [1], 0, 1)}, b"\x05"), meta),
    )
    add(
        "two_schema_and_tensor_header.zip",
        "Schema",
        "field timestamp",
        "no timestamp, and model.safetensors' tensors overlap: the schema before the members",
        build(members(edited(lambda m: m.pop("timestamp")), overlap, OPTIMIZER)),
    )
    return cases


# ---------------------------------------------------------------------------
# Version 2 (FORMAT.md section 11)

EXTRA = safetensors([Tensor("rng.torch.cpu", "U8", [4], bytes([1, 2, 3, 4]))])


def tag(type_: str, **payload: Any) -> dict[str, Any]:
    return {"__type__": type_, **payload}


def v2_metadata(kind: str = "checkpoint") -> Any:
    """Valid version 2 metadata: a checkpoint (SGD, StepLR) whose kwargs
    hold class, tuple, dtype, dict, float and spec tags and a callable,
    with extra state (an RNG whose CPU state is a tensor of
    extra.safetensors, and counters) and a manager block; an inference or
    weights file has the model part alone (a weights file no class)."""
    part = kind == "checkpoint"
    meta = metadata(kind, optimizer=part, scheduler=part)
    meta["model_kwargs"].update(
        {
            "act": tag("class", name="torch.nn.ReLU"),
            "shape": tag("tuple", items=[2, tag("tuple", items=[])]),
            "dtype": tag("dtype", name="float32"),
            "table": tag("dict", items=[[1, "one"], ["__type__", tag("float", value="nan")]]),
            "cfg": tag(
                "object",
                **{
                    "codec": "dataclass",
                    "class": "mypkg.Config",
                    "fields": {"width": 4, "scale": tag("float", value="-inf")},
                },
            ),
        }
    )
    if part:
        meta["optim_kwargs"]["betas"] = tag("tuple", items=[0.9, 0.999])
        meta["scheduler_kwargs"]["lr_lambda"] = tag("callable", name="train.warmup")
        meta["scheduler_kwargs"]["then"] = tag(
            "spec", **{"class": "torch.optim.lr_scheduler.ConstantLR", "kwargs": {"factor": 0.5}}
        )
    inner = internals(meta)
    inner["format_version"] = 2
    producer = inner.pop("producer")
    if part:
        inner["extra"] = {
            "rng": {
                "class": "pytorch_saver.RNG",
                "state": {"torch": {"cpu": tag("tensor", name="rng.torch.cpu"), "cuda": []}},
            },
            "counters": {"class": "pytorch_saver.Counters", "state": {"step": 3, "epoch": 1}},
        }
    inner["manager"] = {"id": "run-1", "step": 3, "metrics": {"loss": 0.25}}
    inner["producer"] = producer
    if kind == "weights":
        inner.pop("model")
        meta.pop("model_kwargs")
    return meta


def v2_file(
    meta: Any = None,
    *,
    optimizer: bytes | None = OPTIMIZER,
    extra: bytes | None = EXTRA,
) -> bytes:
    """A file of ``meta`` (the version 2 checkpoint by default) with the
    given optimizer and extra members (None: absent)."""
    ms = [Member("metadata.json", meta_bytes(v2_metadata() if meta is None else meta))]
    ms.append(Member("model.safetensors", MODEL))
    if optimizer is not None:
        ms.append(Member("optimizer.safetensors", optimizer))
    if extra is not None:
        ms.append(Member("extra.safetensors", extra))
    return bytes(build(ms).data)


def valid_v2_files() -> dict[str, bytes]:
    """Valid version 2 files the cases below break (tests/corpus.rs opens
    them, to show that each case's defects are the only ones)."""
    return {
        "v2_checkpoint.zip": v2_file(),
        "v2_inference.zip": v2_file(v2_metadata("inference"), optimizer=None, extra=None),
        "v2_weights.zip": v2_file(v2_metadata("weights"), optimizer=None, extra=None),
    }


def v2_edited(edit: Callable[[Any], Any], kind: str = "checkpoint") -> Any:
    meta = v2_metadata(kind)
    edit(meta)
    return meta


def v2_cases() -> list[Case]:
    cases = []

    def add(file: str, kind: str, message: str, what: str, data: bytes) -> None:
        cases.append(Case(file, kind, message, what, data))

    def model_kwarg(key: str, value: Any) -> Callable[[Any], Any]:
        return lambda m: m["model_kwargs"].__setitem__(key, value)

    def typed(file: str, message: str, what: str, edit: Callable[[Any], Any]) -> None:
        add(file, "TypedValue", message, what, v2_file(v2_edited(edit)))

    def schema(file: str, message: str, what: str, meta: Any, **members: Any) -> None:
        add(file, "Schema", message, what, v2_file(meta, **members))

    at = "metadata.json: typed value at "
    # Step 16.14: the typed values.
    typed(
        "typed_unknown_tag.zip",
        at + 'model_kwargs.block: unknown type tag "set"',
        'model_kwargs.block is {"__type__": "set", "items": []}',
        model_kwarg("block", tag("set", items=[])),
    )
    typed(
        "typed_type_not_a_string.zip",
        at + 'model_kwargs.block: "__type__" must be a string naming a type',
        'model_kwargs.block is {"__type__": 1, "name": "torch.nn.ReLU"}',
        model_kwarg("block", {"__type__": 1, "name": "torch.nn.ReLU"}),
    )
    typed(
        "typed_tag_missing_key.zip",
        at + 'model_kwargs.block: "class" tag: needs the key "name"',
        'model_kwargs.block is a class tag without "name"',
        model_kwarg("block", tag("class")),
    )
    typed(
        "typed_tag_extra_key.zip",
        at + 'model_kwargs.block: "class" tag: has no key "module"',
        'model_kwargs.block is a class tag with an extra key "module"',
        model_kwarg("block", tag("class", name="torch.nn.ReLU", module="torch.nn")),
    )
    typed(
        "typed_tuple_items_not_a_list.zip",
        at + 'model_kwargs.shape: "tuple" tag: "items" must be a list',
        "model_kwargs.shape is a tuple tag whose items are an object",
        model_kwarg("shape", tag("tuple", items={"0": 2})),
    )
    typed(
        "typed_dict_item_not_a_pair.zip",
        at + 'model_kwargs.table.items[1]: "dict" tag: items must be two-element lists',
        "the second item of model_kwargs.table's dict tag is a three-element list",
        model_kwarg("table", tag("dict", items=[[1, "one"], [2, "two", 3]])),
    )
    for file, name, what in [
        ("typed_class_name_call.zip", "os.system('x')", "is os.system('x')"),
        ("typed_class_name_double_dot.zip", "a..b", "is a..b (an empty identifier)"),
        ("typed_class_name_leading_dot.zip", ".a", "is .a"),
        ("typed_class_name_empty.zip", "", "is empty"),
        (
            "typed_class_name_digit_first.zip",
            "torch.1nn.ReLU",
            "has an identifier starting with a digit",
        ),
        ("typed_class_name_non_ascii.zip", "torch.nn.Relü", "has a non-ASCII letter"),
        ("typed_class_name_600_bytes.zip", "a" * 600, "is 600 bytes (the limit is 512)"),
    ]:
        typed(
            file,
            at + 'model_kwargs.act: "class" tag: "name"',
            "model_kwargs.act is a class tag whose name " + what,
            model_kwarg("act", tag("class", name=name)),
        )
    typed(
        "typed_class_name_513_bytes.zip",
        "is not a class name",
        "model_kwargs.act is a class tag whose name is 513 bytes: identifiers of 256 and "
        "256 bytes joined by a dot",
        model_kwarg("act", tag("class", name="a" * 256 + "." + "b" * 256)),
    )
    typed(
        "typed_dtype_unknown.zip",
        at + 'model_kwargs.dtype: "dtype" tag: name "float128" is not one of',
        'model_kwargs.dtype is the dtype "float128"',
        model_kwarg("dtype", tag("dtype", name="float128")),
    )
    typed(
        "typed_dtype_torch_prefix.zip",
        '"dtype" tag: name "torch.float32" is not one of',
        'model_kwargs.dtype is the dtype "torch.float32" (names carry no torch. prefix)',
        model_kwarg("dtype", tag("dtype", name="torch.float32")),
    )
    typed(
        "typed_float_infinity.zip",
        '"float" tag: value "infinity" is not "inf", "-inf" or "nan"',
        'a float tag in model_kwargs.cfg\'s fields has the value "infinity"',
        lambda m: m["model_kwargs"]["cfg"]["fields"].__setitem__(
            "scale", tag("float", value="infinity")
        ),
    )
    typed(
        "typed_float_value_number.zip",
        '"float" tag: "value" must be the string',
        "a float tag whose value is the number 1.5",
        model_kwarg("x", tag("float", value=1.5)),
    )
    typed(
        "typed_object_fields_not_an_object.zip",
        at + 'model_kwargs.cfg: "object" tag: "fields" must be an object',
        "model_kwargs.cfg is an object tag whose fields are a list",
        lambda m: m["model_kwargs"]["cfg"].__setitem__("fields", [4]),
    )
    typed(
        "typed_object_class_a_number.zip",
        '"object" tag: "class" must be a class name or null',
        "model_kwargs.cfg is an object tag whose class is the number 5",
        lambda m: m["model_kwargs"]["cfg"].__setitem__("class", 5),
    )
    typed(
        "typed_object_codec_empty.zip",
        '"object" tag: "codec" must be a non-empty string',
        "model_kwargs.cfg is an object tag whose codec is empty",
        lambda m: m["model_kwargs"]["cfg"].__setitem__("codec", ""),
    )
    typed(
        "typed_spec_without_kwargs.zip",
        at + 'scheduler_kwargs.then: "spec" tag: needs the key "kwargs"',
        "scheduler_kwargs.then is a spec tag without kwargs",
        lambda m: m["scheduler_kwargs"]["then"].pop("kwargs"),
    )
    typed(
        "typed_spec_class_null.zip",
        at + 'scheduler_kwargs.then: "spec" tag: "class" must be a class name, got null',
        "scheduler_kwargs.then is a spec tag whose class is null",
        lambda m: m["scheduler_kwargs"]["then"].__setitem__("class", None),
    )
    typed(
        "typed_callable_in_model_kwargs.zip",
        at + 'model_kwargs.init: "callable" tag: may only appear in scheduler_kwargs',
        "model_kwargs.init is a callable tag",
        model_kwarg("init", tag("callable", name="mypkg.init")),
    )
    typed(
        "typed_callable_in_extra_state.zip",
        at + '__pytorch_saver__.extra.counters.state.hook: "callable" tag: may only appear',
        "the counters' extra state holds a callable tag",
        lambda m: internals(m)["extra"]["counters"]["state"].__setitem__(
            "hook", tag("callable", name="f")
        ),
    )
    typed(
        "typed_tensor_in_kwargs.zip",
        at + 'optim_kwargs.buf: "tensor" tag: may only appear in extra state',
        "optim_kwargs.buf is a tensor tag naming rng.torch.cpu",
        lambda m: m["optim_kwargs"].__setitem__("buf", tag("tensor", name="rng.torch.cpu")),
    )
    typed(
        "typed_tensor_named_twice.zip",
        at + '__pytorch_saver__.extra.counters.state.copy: "tensor" tag: names tensor '
        '"rng.torch.cpu", which the tag at __pytorch_saver__.extra.rng.state.torch.cpu names too',
        "two tensor tags of the extra state name rng.torch.cpu",
        lambda m: internals(m)["extra"]["counters"]["state"].__setitem__(
            "copy", tag("tensor", name="rng.torch.cpu")
        ),
    )
    typed(
        "typed_nested_in_tuple.zip",
        at + 'model_kwargs.shape.items[1].items[0]: unknown type tag "complex"',
        "an unknown tag two tuples deep in model_kwargs.shape",
        model_kwarg("shape", tag("tuple", items=[2, tag("tuple", items=[tag("complex", re=1)])])),
    )
    # Step 21: the extra state's tensors against its tags.
    meta = v2_metadata()
    internals(meta)["extra"]["counters"]["state"]["t"] = tag("tensor", name="counters.t")
    add(
        "extra_tag_names_missing_tensor.zip",
        "TensorHeader",
        'extra.safetensors: header: the "tensor" tag at __pytorch_saver__.extra.counters.state.t '
        'names tensor "counters.t", which the member does not hold',
        "a tensor tag of the extra state names a tensor extra.safetensors does not hold",
        v2_file(meta),
    )
    stray = safetensors(
        [
            Tensor("rng.torch.cpu", "U8", [4], bytes([1, 2, 3, 4])),
            Tensor("stray", "F32", [1], f32(1.0)),
        ]
    )
    add(
        "extra_tensor_not_referenced.zip",
        "TensorHeader",
        'extra.safetensors: header: tensor "stray" is named by no "tensor" tag of the extra state',
        "extra.safetensors holds a tensor stray that no tensor tag names",
        v2_file(extra=stray),
    )
    # Steps 17 and 18: the extra member.
    add(
        "extra_member_missing.zip",
        "MissingMember",
        "missing member extra.safetensors",
        "the metadata declares extra state and the file has no extra.safetensors",
        v2_file(extra=None),
    )
    meta = v2_metadata()
    internals(meta).pop("extra")
    add(
        "extra_member_without_extra.zip",
        "UnexpectedMember",
        "extra.safetensors (the metadata declares no extra state)",
        "extra.safetensors in a version 2 checkpoint without extra state",
        v2_file(meta),
    )
    meta = metadata("checkpoint", optimizer=True, scheduler=True)
    internals(meta)["extra"] = v2_metadata()["__pytorch_saver__"]["extra"]
    add(
        "extra_member_in_version_1.zip",
        "UnexpectedMember",
        "extra.safetensors (a version 1 file has no extra state)",
        "a version 1 checkpoint with extra.safetensors (its internals' extra key, unknown to "
        "version 1, is ignored)",
        v2_file(meta),
    )
    # Step 16: kinds, model, extra entries, manager.
    meta = v2_metadata("inference")
    internals(meta)["extra"] = v2_metadata()["__pytorch_saver__"]["extra"]
    schema(
        "extra_in_inference_file.zip",
        "an inference file holds no optimizer, scheduler or extra state",
        "a version 2 inference file with extra state (and extra.safetensors)",
        meta,
        optimizer=None,
    )
    meta = v2_metadata("weights")
    internals(meta)["model"] = {"class": "torch.nn.Linear"}
    schema(
        "kind_weights_with_model.zip",
        "field __pytorch_saver__.model: a weights file names no model class",
        "a weights file with __pytorch_saver__.model",
        meta,
        optimizer=None,
        extra=None,
    )
    meta = v2_metadata("weights")
    meta["model_kwargs"] = {"in_features": 2}
    schema(
        "kind_weights_with_model_kwargs.zip",
        "field model_kwargs: present in a weights file",
        "a weights file with model_kwargs",
        meta,
        optimizer=None,
        extra=None,
    )
    meta = v2_metadata()
    internals(meta).pop("model")
    schema(
        "kind_checkpoint_without_model.zip",
        "field __pytorch_saver__.model: missing",
        "a version 2 checkpoint without __pytorch_saver__.model",
        meta,
    )
    meta = metadata("inference")
    internals(meta)["kind"] = "weights"
    internals(meta).pop("model")
    meta.pop("model_kwargs")
    schema(
        "kind_weights_in_version_1.zip",
        '"weights" needs format version 2',
        "a version 1 file of kind weights (otherwise a valid weights file)",
        meta,
        optimizer=None,
        extra=None,
    )
    for file, message, what, edit in [
        (
            "extra_not_an_object.zip",
            "field __pytorch_saver__.extra: must be an object",
            "__pytorch_saver__.extra is a list",
            lambda m: internals(m).__setitem__("extra", []),
        ),
        (
            "extra_entry_without_class.zip",
            "field __pytorch_saver__.extra.rng.class: missing",
            "the extra entry rng has no class",
            lambda m: internals(m)["extra"]["rng"].pop("class"),
        ),
        (
            "extra_entry_without_state.zip",
            "field __pytorch_saver__.extra.counters.state: missing",
            "the extra entry counters has no state",
            lambda m: internals(m)["extra"]["counters"].pop("state"),
        ),
        (
            "extra_entry_name_empty.zip",
            "field __pytorch_saver__.extra: an entry name is empty",
            'an extra entry named ""',
            lambda m: internals(m)["extra"].__setitem__("", {"class": "x", "state": {}}),
        ),
        (
            "manager_not_an_object.zip",
            "field __pytorch_saver__.manager: must be an object",
            "__pytorch_saver__.manager is a string",
            lambda m: internals(m).__setitem__("manager", "run-1"),
        ),
        (
            "manager_step_negative.zip",
            "field __pytorch_saver__.manager.step: must be an integer >= 0",
            "manager.step is -1",
            lambda m: internals(m)["manager"].__setitem__("step", -1),
        ),
        (
            "manager_metric_a_string.zip",
            "field __pytorch_saver__.manager.metrics.loss: must be a finite number",
            'manager.metrics.loss is the string "0.25"',
            lambda m: internals(m)["manager"]["metrics"].__setitem__("loss", "0.25"),
        ),
        (
            "manager_id_empty.zip",
            "field __pytorch_saver__.manager.id: must be a non-empty string",
            "manager.id is empty",
            lambda m: internals(m)["manager"].__setitem__("id", ""),
        ),
    ]:
        schema(file, message, what, v2_edited(edit))
    # Two defects: the order of section 9 and 11.6.
    meta = v2_metadata()
    meta["model_kwargs"]["block"] = tag("set", items=[])
    add(
        "two_typed_and_extra_tensor_not_referenced.zip",
        "TypedValue",
        at + 'model_kwargs.block: unknown type tag "set"',
        "an unknown tag in model_kwargs, and a tensor of extra.safetensors no tag names: the "
        "typed values (step 16) before the extra tensors (step 21)",
        v2_file(meta, extra=stray),
    )
    meta = v2_metadata()
    meta["model_kwargs"]["block"] = tag("set", items=[])
    add(
        "two_typed_and_extra_member_missing.zip",
        "TypedValue",
        at + "model_kwargs.block",
        "an unknown tag in model_kwargs, and no extra.safetensors: the schema before the members",
        v2_file(meta, extra=None),
    )
    meta = v2_metadata()
    internals(meta)["manager"]["step"] = -1
    meta["model_kwargs"]["block"] = tag("set", items=[])
    schema(
        "two_manager_and_typed.zip",
        "field __pytorch_saver__.manager.step",
        "manager.step is -1 and model_kwargs holds an unknown tag: the manager (16.13) before "
        "the typed values (16.14)",
        meta,
    )
    meta = v2_metadata()
    internals(meta)["extra"]["rng"].pop("class")
    internals(meta)["manager"]["step"] = -1
    schema(
        "two_extra_entry_and_manager.zip",
        "field __pytorch_saver__.extra.rng.class: missing",
        "the extra entry rng has no class and manager.step is -1: extra (16.12) before the "
        "manager (16.13)",
        meta,
    )
    meta = v2_metadata()
    meta.pop("timestamp")
    internals(meta).__setitem__("extra", [])
    schema(
        "two_timestamp_and_extra.zip",
        "field timestamp: missing",
        "no timestamp and __pytorch_saver__.extra is a list: the timestamp (16.11) before "
        "extra (16.12)",
        meta,
    )
    meta = v2_metadata()
    meta["model_kwargs"]["block"] = tag("class", name="a..b")
    meta["optim_kwargs"]["block"] = tag("set")
    add(
        "two_tags_in_model_and_optim_kwargs.zip",
        "TypedValue",
        at + "model_kwargs.block",
        "a bad class name in model_kwargs and an unknown tag in optim_kwargs: model_kwargs first",
        v2_file(meta),
    )
    meta = v2_metadata()
    meta["scheduler_kwargs"]["x"] = tag("dtype", name="float128")
    internals(meta)["extra"]["counters"]["state"]["x"] = tag("set")
    add(
        "two_tags_in_scheduler_kwargs_and_extra_state.zip",
        "TypedValue",
        at + "scheduler_kwargs.x",
        "an unknown dtype in scheduler_kwargs and an unknown tag in the extra state: the kwargs "
        "before the extra state",
        v2_file(meta),
    )
    meta = v2_metadata()
    meta["model_kwargs"]["x"] = [tag("class", name=""), tag("set")]
    add(
        "two_tags_in_one_list.zip",
        "TypedValue",
        at + "model_kwargs.x[0]",
        "a list whose first item is a class tag with an empty name and whose second is an "
        "unknown tag: document order",
        v2_file(meta),
    )
    meta = v2_metadata()
    internals(meta)["extra"]["counters"]["state"]["t"] = tag("tensor", name="counters.t")
    add(
        "two_extra_tensor_not_referenced_and_tag_missing.zip",
        "TensorHeader",
        'tensor "stray" is named by no "tensor" tag',
        "extra.safetensors holds a tensor no tag names, and a tag names a tensor it does not "
        "hold: the member's tensors first",
        v2_file(meta, extra=stray),
    )
    meta = v2_metadata("weights")
    internals(meta)["model"] = {"class": "torch.nn.Linear"}
    internals(meta)["extra"] = v2_metadata()["__pytorch_saver__"]["extra"]
    schema(
        "two_weights_model_and_extra.zip",
        "field __pytorch_saver__.model: a weights file names no model class",
        "a weights file with a model class and extra state: the model (16.4) before the parts "
        "(16.7)",
        meta,
        optimizer=None,
    )
    meta = v2_metadata()
    meta["model_kwargs"]["block"] = tag("set")
    extra_bad = header_member({"rng.torch.cpu": entry("U8", [4], 0, 8)}, bytes(8))
    add(
        "two_typed_and_extra_header.zip",
        "TypedValue",
        at + "model_kwargs.block",
        "an unknown tag in model_kwargs, and an extra.safetensors tensor whose size does not "
        "match its shape: the metadata before the members",
        v2_file(meta, extra=extra_bad),
    )
    return cases


# ---------------------------------------------------------------------------
# Sharded checkpoints (FORMAT.md section 13): directories under sharded/,
# each an index.json and shard files, with their own manifest.

SHARDED = HERE / "sharded"
SHARDED_MANIFEST = SHARDED / "manifest.json"
CHECKPOINT_ID = "0123456789abcdef0123456789abcdef"
OTHER_CHECKPOINT_ID = "fedcba9876543210fedcba9876543210"
PYTHON_PRODUCER = {"library": "pytorch-saver", "version": "0.2.0", "language": "python"}
PACK = {"F32": "f", "F64": "d", "I64": "q", "I32": "i"}


@dataclass
class GlobalTensor:
    """A tensor of a sharded checkpoint: element i is ``base + i``, and each
    chunk is ``(rank, offsets, sizes)``."""

    name: str
    dtype: str
    shape: list[int]
    base: int
    chunks: list[tuple[int, list[int], list[int]]]
    requires_grad: bool = False


def numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def element_values(t: GlobalTensor, offsets: list[int], sizes: list[int]) -> list[int]:
    """The values of the box ``offsets``/``sizes`` of ``t``, in C order."""
    out = []
    for k in range(numel(sizes)):
        flat, rest = 0, k
        pos = []
        for d in reversed(range(len(sizes))):
            pos.append(offsets[d] + rest % sizes[d])
            rest //= sizes[d]
        pos.reverse()
        for d, p in enumerate(pos):
            flat = flat * t.shape[d] + p
        out.append(t.base + flat)
    return out


def pack(dtype: str, values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}{PACK[dtype]}", *values)


def chunk_name(t: GlobalTensor, i: int) -> str:
    return f"{t.name}@{i}"


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:05}-of-{world:05}_weights_{TIMESTAMP}.zip"


def shard_metadata(checkpoint_id: str, rank: int) -> Any:
    return {
        "timestamp": TIMESTAMP,
        "__pytorch_saver__": {
            "format_version": 2,
            "kind": "weights",
            "shard": {"checkpoint_id": checkpoint_id, "rank": rank},
            "producer": dict(PYTHON_PRODUCER),
        },
    }


@dataclass
class Sharded:
    """A sharded checkpoint being built: its tensors and values, then
    edits of the shards' metadata, their tensors and the index."""

    tensors: list[GlobalTensor]
    world: int = 2
    values: dict[str, Any] = field(default_factory=dict)
    container: Any = None
    planner: Callable[[str], list[Any]] = lambda name: [name]
    shard_meta: dict[int, Callable[[Any], Any]] = field(default_factory=dict)
    shard_tensors: dict[int, Callable[[list[Tensor]], Any]] = field(default_factory=dict)

    def files(self, edit_index: Callable[[Any], Any] | None = None) -> dict[str, bytes]:
        """Every file: the shards, then index.json (edited by
        ``edit_index`` after the shard sizes are in it)."""
        files: dict[str, bytes] = {}
        shards = []
        for rank in range(self.world):
            tensors = []
            for t in self.tensors:
                for i, (r, offsets, sizes) in enumerate(t.chunks):
                    if r == rank:
                        data = pack(t.dtype, element_values(t, offsets, sizes))
                        tensors.append(Tensor(chunk_name(t, i), t.dtype, sizes, data))
            if not tensors:
                continue
            if rank in self.shard_tensors:
                self.shard_tensors[rank](tensors)
            meta = shard_metadata(CHECKPOINT_ID, rank)
            if rank in self.shard_meta:
                self.shard_meta[rank](meta)
            data = bytes(
                build(
                    [
                        Member("metadata.json", meta_bytes(meta)),
                        Member("model.safetensors", safetensors(tensors)),
                    ]
                ).data
            )
            name = shard_name(rank, self.world)
            files[name] = data
            shards.append({"file": name, "rank": rank, "size": len(data)})
        position = {s["rank"]: i for i, s in enumerate(shards)}
        index: dict[str, Any] = {
            "format": "pytorch-saver-sharded",
            "format_version": 1,
            "checkpoint_id": CHECKPOINT_ID,
            "timestamp": TIMESTAMP,
            "producer": dict(PYTHON_PRODUCER),
            "world_size": self.world,
            "shards": shards,
            "tensors": {
                t.name: {
                    "dtype": t.dtype,
                    "shape": t.shape,
                    "requires_grad": t.requires_grad,
                    "chunks": [
                        {"offsets": o, "sizes": z, "shard": position[r], "tensor": chunk_name(t, i)}
                        for i, (r, o, z) in enumerate(t.chunks)
                    ],
                }
                for t in self.tensors
            },
            "values": self.values,
            "planner_data": {
                n: self.planner(n) for n in [t.name for t in self.tensors] + list(self.values)
            },
        }
        if self.container is not None:
            index["container"] = self.container
        if edit_index is not None:
            edit_index(index)
        files["index.json"] = json.dumps(index, indent=2).encode()
        return files


def sharded_weights() -> Sharded:
    """Two ranks: ``w`` split by rows, ``emb`` by columns, ``b`` whole on
    rank 0, the scalar ``scale`` on rank 1, and two values."""
    return Sharded(
        [
            GlobalTensor("w", "F32", [4, 3], 0, [(0, [0, 0], [2, 3]), (1, [2, 0], [2, 3])], True),
            GlobalTensor("b", "F32", [3], 100, [(0, [0], [3])], True),
            GlobalTensor("emb", "I64", [2, 4], 1000, [(0, [0, 0], [2, 2]), (1, [0, 2], [2, 2])]),
            GlobalTensor("scale", "F64", [], 7, [(1, [], [])]),
        ],
        values={"epoch": 3, "note": "two ranks"},
    )


ADAM_GROUP = {
    "lr": 0.01,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "weight_decay": 0,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": False,
}
MLP_PARAMS = [
    ("fc1.weight", [4, 4]),
    ("fc1.bias", [4]),
    ("hidden_layers.0.weight", [2, 4]),
    ("hidden_layers.0.bias", [2]),
]


def sharded_container() -> Sharded:
    """A model container's checkpoint saved by two ranks:
    pytorch_saver.models.MLP(in_dim=4, hidden_dim=4, n_classes=2,
    n_layers=1) with torch.optim.Adam; matrices and their moments split by
    rows, vectors and steps whole on rank 0."""
    tensors = []
    base = 0

    def add(name: str, shape: list[int], grad: bool) -> None:
        nonlocal base
        if len(shape) == 2:
            half = shape[0] // 2
            chunks = [(0, [0, 0], [half, shape[1]]), (1, [half, 0], [shape[0] - half, shape[1]])]
        else:
            chunks = [(0, [0] * len(shape), list(shape))]
        tensors.append(GlobalTensor(name, "F32", shape, base, chunks, grad))
        base += 100

    for name, shape in MLP_PARAMS:
        add(f"model.{name}", shape, True)
    for i, (_, shape) in enumerate(MLP_PARAMS):
        add(f"optimizer.state.{i}.exp_avg", shape, False)
        add(f"optimizer.state.{i}.exp_avg_sq", shape, False)
        add(f"optimizer.state.{i}.step", [], False)
    metadata = {
        "model_kwargs": {"in_dim": 4, "hidden_dim": 4, "n_classes": 2, "n_layers": 1},
        "optim_kwargs": {"lr": 0.01},
        "timestamp": TIMESTAMP,
        "__pytorch_saver__": {
            "format_version": 2,
            "kind": "checkpoint",
            "model": {"class": "pytorch_saver.models.MLP"},
            "optimizer": {
                "class": "torch.optim.Adam",
                "param_groups": [dict(ADAM_GROUP, params=[0, 1, 2, 3])],
                "param_names": [n for n, _ in MLP_PARAMS],
                "state": {str(i): {} for i in range(len(MLP_PARAMS))},
            },
            "producer": dict(PYTHON_PRODUCER),
        },
    }

    def planner(name: str) -> list[Any]:
        head, rest = name.split(".", 1)
        return [head, rest]

    return Sharded(
        tensors,
        container={
            "metadata": metadata,
            "placements": {"fc1.weight": {"mesh_shape": [2], "placements": ["S(0)"]}},
        },
        planner=planner,
    )


def expected_values(sharded: Sharded) -> Any:
    """What the tensors of a valid sharded checkpoint hold, assembled."""
    return {
        "values": sharded.values,
        "tensors": {
            t.name: {
                "dtype": t.dtype,
                "shape": t.shape,
                "data": element_values(t, [0] * len(t.shape), t.shape),
            }
            for t in sharded.tensors
        },
    }


@dataclass
class ShardedCase:
    directory: str
    kind: str
    message: str
    what: str
    files: dict[str, bytes]


def sharded_cases() -> list[ShardedCase]:
    cases = []
    row0 = shard_name(0, 2)
    row1 = shard_name(1, 2)

    def add(directory: str, kind: str, message: str, what: str, files: dict[str, bytes]) -> None:
        cases.append(ShardedCase(directory, kind, message, what, files))

    def with_w_chunks(chunks: list[tuple[int, list[int], list[int]]]) -> Sharded:
        s = sharded_weights()
        s.tensors[0] = replace(s.tensors[0], chunks=chunks)
        return s

    files = sharded_weights().files()
    del files["index.json"]
    add(
        "no_index",
        "NotCommitted",
        "no_index: no index.json: no sharded checkpoint was committed there",
        "both shards of a valid checkpoint, without index.json "
        "(a save interrupted before its commit)",
        files,
    )
    files = sharded_weights().files()
    del files[row1]
    add(
        "missing_shard",
        "MissingShard",
        f"{row1} named by index.json does not exist",
        "the index names two shards; the second file is not there",
        files,
    )
    add(
        "chunks_overlap",
        "ChunkTiling",
        'index.json: tensor "w": chunks 0 (offsets [0, 0], sizes [3, 3]) '
        "and 1 (offsets [2, 0], sizes [2, 3]) overlap",
        "w [4, 3]: rank 0 holds rows 0..3 and rank 1 rows 2..4 (row 2 twice)",
        with_w_chunks([(0, [0, 0], [3, 3]), (1, [2, 0], [2, 3])]).files(),
    )
    add(
        "chunks_gap",
        "ChunkTiling",
        'index.json: tensor "w": its chunks cover 9 of its 12 elements: 3 elements are in no chunk',
        "w [4, 3]: rank 0 holds row 0 and rank 1 rows 2..4 (row 1 in no chunk)",
        with_w_chunks([(0, [0, 0], [1, 3]), (1, [2, 0], [2, 3])]).files(),
    )
    s = sharded_weights()
    s.shard_meta[1] = lambda m: m["__pytorch_saver__"]["shard"].__setitem__(
        "checkpoint_id", OTHER_CHECKPOINT_ID
    )
    add(
        "shard_other_checkpoint",
        "ShardMismatch",
        f"{row1}: belongs to checkpoint {OTHER_CHECKPOINT_ID}; "
        f"index.json is checkpoint {CHECKPOINT_ID}",
        "the second shard's shard block names another checkpoint_id (a shard of another save)",
        s.files(),
    )
    s = sharded_weights()
    s.shard_meta[1] = lambda m: m["__pytorch_saver__"]["shard"].__setitem__("rank", 0)
    add(
        "shard_rank_differs",
        "ShardMismatch",
        f"{row1}: was written by rank 0; index.json says rank 1",
        "the second shard's shard block says rank 0, the index rank 1",
        s.files(),
    )
    files = sharded_weights().files()
    size = len(files[row0])
    add(
        "shard_size_differs",
        "ShardMismatch",
        f"{row0}: is {size} bytes; index.json says {size + 1}",
        "the index gives the first shard's size 1 byte more than the file has",
        sharded_weights().files(lambda i: i["shards"][0].__setitem__("size", size + 1)),
    )
    add(
        "index_version_2",
        "UnsupportedVersion",
        "format version 2 of index.json is not supported",
        "index.json has format_version 2",
        sharded_weights().files(lambda i: i.__setitem__("format_version", 2)),
    )
    s = with_w_chunks([(0, [0, 0], [2, 3]), (1, [3, 0], [1, 3])])

    def outside(index: Any) -> None:
        index["tensors"]["w"]["chunks"][1]["sizes"] = [2, 3]

    s.shard_tensors[1] = lambda ts: ts.__setitem__(
        0, Tensor("w@1", "F32", [2, 3], pack("F32", [9, 10, 11, 12, 13, 14]))
    )
    add(
        "chunk_outside_tensor",
        "Schema",
        "index.json: field tensors.w.chunks[1]: lies outside the tensor: "
        "along dimension 0 it covers 3..3+2, the tensor 0..4",
        "w [4, 3]: its second chunk holds rows 3..5",
        s.files(outside),
    )
    files = sharded_weights().files()
    files["index.json"] = files["index.json"][:-2]
    add(
        "index_not_json",
        "Json",
        "index.json: ",
        "index.json ends before its closing brace",
        files,
    )
    s = sharded_weights()
    s.shard_tensors[0] = lambda ts: ts.__setitem__(0, replace(ts[0], name="w@0-renamed"))
    add(
        "chunk_tensor_missing",
        "TensorNotFound",
        f'{row0}: model.safetensors: no tensor named "w@0"',
        "the first shard holds w's chunk under another name than the index's",
        s.files(),
    )
    s = sharded_weights()
    s.shard_tensors[1] = lambda ts: ts.append(Tensor("stray", "F32", [1], f32(1.0)))
    add(
        "shard_unnamed_tensor",
        "ShardMismatch",
        f'{row1}: holds tensor "stray", which no chunk of index.json names',
        "the second shard holds a tensor no chunk names",
        s.files(),
    )
    return cases


def write_sharded_corpus() -> tuple[int, list[str]]:
    """Writes the sharded cases that are not there yet, checking those that
    are, and their manifest; returns the files added and the problems."""
    problems = []
    added = 0
    cases = sharded_cases()
    names = [c.directory for c in cases]
    assert len(set(names)) == len(names), "a sharded case directory is used twice"
    for case in cases:
        directory = SHARDED / case.directory
        if directory.exists():
            present = sorted(p.name for p in directory.iterdir())
            if present != sorted(case.files):
                problems.append(
                    f"{directory} holds {present}, this script writes {sorted(case.files)}"
                )
            for name, data in case.files.items():
                path = directory / name
                if path.exists() and path.read_bytes() != data:
                    problems.append(
                        f"{path} exists and differs from what this script writes: corpus files are "
                        "never rewritten; give the changed case a new directory name"
                    )
            continue
        directory.mkdir(parents=True)
        for name, data in case.files.items():
            (directory / name).write_bytes(data)
            added += 1
    if not problems:
        old: dict[str, Any] = {}
        if SHARDED_MANIFEST.exists():
            old = {c["file"]: c for c in json.loads(SHARDED_MANIFEST.read_text())["cases"]}
        entries = {
            c.directory: {"file": c.directory, "kind": c.kind, "message": c.message, "what": c.what}
            for c in cases
        }
        for name, entry_ in old.items():
            if name not in entries and (SHARDED / name).exists():
                entries[name] = entry_
        manifest = {"cases": [entries[name] for name in sorted(entries)]}
        SHARDED_MANIFEST.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return added, problems


def write_valid_sharded(directory: Path) -> None:
    """The valid sharded checkpoints the cases break, each a directory,
    with what their tensors hold assembled (``<name>.expected.json``)."""
    for name, sharded in [
        ("sharded_weights", sharded_weights()),
        ("sharded_container", sharded_container()),
    ]:
        target = directory / name
        target.mkdir()
        for file, data in sharded.files().items():
            (target / file).write_bytes(data)
        (directory / f"{name}.expected.json").write_text(
            json.dumps(expected_values(sharded), indent=2)
        )


def all_cases() -> list[Case]:
    cases = zip_cases() + metadata_cases() + tensor_cases() + two_defect_cases() + v2_cases()
    names = [c.file for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"file names used twice: {sorted(duplicates)}"
    return cases


def main() -> int:
    cases = all_cases()
    old: dict[str, dict[str, str]] = {}
    if MANIFEST.exists():
        old = {c["file"]: c for c in json.loads(MANIFEST.read_text())["cases"]}
    problems = []
    added = 0
    for case in cases:
        path = HERE / case.file
        if path.exists():
            if path.read_bytes() != case.data:
                problems.append(
                    f"{path} exists and differs from what this script writes: corpus files are "
                    "never rewritten; give the changed case a new file name"
                )
            continue
        path.write_bytes(case.data)
        added += 1
    sharded_added, sharded_problems = write_sharded_corpus()
    problems += sharded_problems
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    added += sharded_added
    entries = {
        c.file: {"file": c.file, "kind": c.kind, "message": c.message, "what": c.what}
        for c in cases
    }
    for name, entry_ in old.items():
        if name not in entries and (HERE / name).exists():
            entries[name] = entry_  # a case this script no longer knows keeps its entry
    manifest = {"cases": [entries[name] for name in sorted(entries)]}
    MANIFEST.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"{added} files added; {len(entries)} cases in {MANIFEST}")
    return 0


def write_valid(directory: str) -> int:
    """Writes the valid version 2 files the cases break into ``directory``
    (for tests/corpus.rs; not part of the corpus), and the valid sharded
    checkpoints the sharded cases break (for tests/sharded.rs)."""
    for name, data in valid_v2_files().items():
        (Path(directory) / name).write_bytes(data)
    write_valid_sharded(Path(directory))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-valid":
        sys.exit(write_valid(sys.argv[2]))
    sys.exit(main())

"""The streaming, atomic writer (``src/format/writer.rs``): tensor bytes go
from their source to the file one tensor at a time (never a whole-file
buffer), into a temporary file in the target directory that is fsynced and
then published under a name that no existing file has. A progress callback
(``_progress.py``) hears the bytes written out of the file's size, which is
planned before the first byte is written."""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Final, Protocol

import torch

from .._errors import FormatError, InvalidArgumentError, MetadataError
from .._progress import ProgressCallback, Tracker
from .._storage import parse as parse_location
from . import EXTRA_MEMBER, INTERNALS_KEY, METADATA_MEMBER, MODEL_MEMBER, OPTIMIZER_MEMBER
from .json import MAX_JSON_DEPTH, SURROGATE, U64_LIMIT, JsonError, parse_object
from .metadata import MAX_METADATA_BYTES, Metadata, parse, to_json
from .multipart import MultipartSink
from .publish import fsync_directory, publish_numbered
from .tensors import PlannedTensor, build_header, writable_bytes
from .zip import PlannedMember, dos_time_date, end_records

__all__ = ["write_checkpoint"]

_CHUNK: Final = 1 << 20
_COPY_CHUNK: Final = 16 << 20
"""A tensor's bytes go out in chunks of at most this, each reported to the
progress callback once written."""


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
            if not -(1 << 63) <= item < U64_LIMIT:
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


def _encode_metadata(metadata: Metadata | Mapping[str, Any]) -> tuple[bytes, Metadata]:
    """The bytes of ``metadata.json`` and what a reader will see in them,
    parsed back from those bytes as a reader parses them. Raises
    MetadataError for anything a reader would refuse."""
    if isinstance(metadata, Metadata):
        metadata = to_json(metadata)
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
        parsed = parse_object(data)
    except JsonError as e:
        # Two keys that read the same once written (1 and "1").
        raise MetadataError(f"metadata: {e}") from None
    try:
        return data, parse(parsed)
    except FormatError as e:
        # A malformed typed value keeps the reader's kind, as in Rust.
        kind = "TypedValue" if e.kind == "TypedValue" else None
        raise MetadataError(str(e), kind=kind) from None


def _invalid(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, kind="InvalidInput")


def _tensor_bytes(t: PlannedTensor, member: str) -> Iterator[memoryview]:
    """The tensor's elements in C order, little-endian, in chunks; the
    source is brought to the CPU and made contiguous one tensor at a time."""
    tensor = t.tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    tensor = tensor.resolve_conj().resolve_neg().contiguous()
    if tensor.dtype != t.dtype.torch_dtype or tuple(tensor.shape) != t.shape:
        raise _invalid(f"{member}: tensor {t.name!r} changed while it was being saved")
    if t.nbytes == 0:
        return
    view = writable_bytes(tensor)
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
    replacing a file (``link(2)``, or ``renameat2(RENAME_NOREPLACE)`` where
    the filesystem has no hard links): :mod:`.publish`."""
    return publish_numbered(tmp, directory, stem)


def _check_prefix(prefix: str | None) -> str:
    if prefix is None or prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise _invalid(f"prefix must be a string, not {type(prefix).__name__}")
    if "/" in prefix or "\0" in prefix:
        raise _invalid(f"prefix {prefix!r} may not contain '/' or NUL")
    if prefix.startswith("."):
        raise _invalid(f"prefix {prefix!r} may not start with '.' (hidden files)")
    if SURROGATE.search(prefix):
        raise _invalid(f"prefix {prefix!r} is not valid Unicode text")
    return prefix + "_"


def write_checkpoint(
    directory: str | os.PathLike[str],
    prefix: str | None,
    metadata: Metadata | Mapping[str, Any],
    model_tensors: Mapping[str, torch.Tensor],
    optimizer_tensors: Mapping[str, torch.Tensor] | None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> str:
    """Writes a file into ``directory`` and returns its path.

    ``metadata`` is the complete ``metadata.json``: a :class:`Metadata`, or
    the JSON object (``model_kwargs``, ``timestamp``, ``__pytorch_saver__``
    with ``kind``, classes and producer, user keys). Its
    ``format_version`` decides what is written: version 2 (the default of
    :class:`Metadata`), or version 1 for readers that know only that,
    refused (:class:`InvalidArgumentError` of kind ``"InvalidInput"``) when
    the file needs version 2 (FORMAT.md 11.8). ``optimizer_tensors`` is the
    ``optimizer.safetensors`` tensors, given iff the metadata declares an
    optimizer; ``extra_tensors`` the ``extra.safetensors`` tensors, given
    iff it declares extra state, each named by exactly one ``tensor`` tag
    of that state. The file is named
    ``{prefix}_{kind}_{timestamp}.zip`` (``{kind}_{timestamp}.zip`` without
    a prefix), with ``-1``, ``-2``, ... when the name is taken: no existing
    file is ever replaced.

    Everything is checked before any file is created (MetadataError for the
    metadata, of kind ``"TypedValue"`` for a malformed typed value;
    InvalidArgumentError, a ValueError, for the tensors, the prefix or a
    version that cannot hold the file). The data goes to a temporary file in ``directory`` that is
    fsynced, published with ``link(2)`` and then unlinked, and the
    directory fsynced; on failure the temporary file is removed.

    ``directory`` may be an ``s3://bucket/prefix`` URL (``_storage.py``;
    the ``s3`` extra): the file is streamed as a multipart upload with
    bounded memory, named as on disk (the first free name by HEAD) and
    completed create-only, and the URL returned; on any failure the
    upload is aborted and no object appears (``multipart.py``).
    :class:`StorageError` when the storage fails or another writer
    published the same name first.

    ``progress(done, total)`` (``_progress.py``) hears the bytes written,
    ``total`` being the size the file will have: ``(0, total)`` once
    everything is checked, before the file is created, then after each
    header and each chunk of at most 16 MiB of a tensor, and
    ``(total, total)`` once the file is published. An exception it raises
    ends the save with nothing published: no file, no temporary file (one
    raised by the last call takes back the name just published).
    """
    return _write_checkpoint(
        directory,
        prefix,
        metadata,
        model_tensors,
        optimizer_tensors,
        extra_tensors,
        progress=progress,
    )


def _check_extra_tensors(document: Metadata, extra: Mapping[str, torch.Tensor]) -> None:
    """The tensors of ``extra.safetensors`` against the ``tensor`` tags of
    the extra state, as a reader checks them (FORMAT.md 11.6, step 21)."""
    tagged = document.extra_tensor_names()
    named = set(tagged)
    for name in extra:
        if name not in named:
            raise _invalid(f"{EXTRA_MEMBER}: tensor {name!r} is named by no tensor tag")
    for name in tagged:
        if name not in extra:
            raise _invalid(
                f"{EXTRA_MEMBER}: a tensor tag of the extra state names {name!r}, which is not "
                "among the extra tensors given"
            )


def _write_checkpoint(
    directory: str | os.PathLike[str],
    prefix: str | None,
    metadata: Metadata | Mapping[str, Any],
    model: Mapping[str, torch.Tensor],
    optimizer: Mapping[str, torch.Tensor] | None,
    extra: Mapping[str, torch.Tensor] | None = None,
    *,
    force_zip64: bool = False,
    progress: ProgressCallback | None = None,
) -> str:
    """``write_checkpoint`` with a test knob: ``force_zip64`` writes ZIP64
    records where the sizes do not need them."""
    if sys.byteorder != "little":
        raise NotImplementedError("writing the format on a big-endian machine is not supported")
    stem_prefix = _check_prefix(prefix)
    metadata_bytes, document = _encode_metadata(metadata)
    optimizer_section = document.internals.optimizer
    has_optimizer = optimizer_section is not None
    if has_optimizer and optimizer is None:
        raise _invalid(
            "the metadata declares an optimizer but no optimizer tensors were given "
            "(give {} for an optimizer without tensor state)"
        )
    if not has_optimizer and optimizer is not None:
        raise _invalid(
            "optimizer tensors were given but the metadata declares no optimizer "
            f"({INTERNALS_KEY}.optimizer)"
        )
    members = [build_header(MODEL_MEMBER, model)]
    if optimizer is not None:
        assert optimizer_section is not None
        planned = build_header(OPTIMIZER_MEMBER, optimizer)
        for t in planned.tensors:
            reason = optimizer_section.check_tensor_name(t.name)
            if reason is not None:
                raise _invalid(f"{OPTIMIZER_MEMBER}: tensor {t.name!r}: {reason}")
        members.append(planned)
    has_extra = document.internals.extra is not None
    if has_extra and extra is None:
        raise _invalid(
            "the metadata declares extra state but no extra tensors were given "
            "(give {} for extra state without tensors)"
        )
    if not has_extra and extra is not None:
        raise _invalid(
            "extra tensors were given but the metadata declares no extra state "
            f"({INTERNALS_KEY}.extra)"
        )
    if extra is not None:
        planned = build_header(EXTRA_MEMBER, extra)
        _check_extra_tensors(document, extra)
        members.append(planned)

    plan = [PlannedMember.plan(METADATA_MEMBER, 0, len(metadata_bytes), force_zip64)]
    plan[0].crc = zlib.crc32(metadata_bytes)
    for member in members:
        plan.append(PlannedMember.plan(member.name, plan[-1].end, member.size, force_zip64))

    location = parse_location(directory)
    if isinstance(location, str) and not os.path.isdir(location):
        if not os.path.exists(location):
            raise FileNotFoundError(f"directory {location!r} does not exist")
        raise NotADirectoryError(f"{location!r} is not a directory")
    stem = f"{stem_prefix}{document.internals.kind}_{document.timestamp}"
    dos_time, dos_date = dos_time_date(document.timestamp)
    cd_offset = plan[-1].end
    # The central directory's length does not depend on the CRCs, which are
    # known only once the data is written: the file's size is known now.
    cd_size = sum(len(e.central_header(dos_time, dos_date)) for e in plan)
    file_size = cd_offset + cd_size + len(end_records(len(plan), cd_offset, cd_size, force_zip64))
    tracker = Tracker(progress, file_size)
    sink: _Sink
    if isinstance(location, str):
        sink = _LocalSink(location, stem)
    else:
        sink = MultipartSink(location, stem, file_size)
    try:
        tracker.advance(sink.write(plan[0].local_header(dos_time, dos_date)))
        tracker.advance(sink.write(metadata_bytes))
        for member, entry in zip(members, plan[1:], strict=True):
            # The CRC is known only once the member is written: patched in.
            sink.expect_patch(entry.crc_field_offset, 4)
            tracker.advance(sink.write(entry.local_header(dos_time, dos_date)))
            tracker.advance(sink.write(member.header))
            crc = zlib.crc32(member.header)
            for t in member.tensors:
                written = 0
                for chunk in _tensor_bytes(t, member.name):
                    crc = zlib.crc32(chunk, crc)
                    sink.write(chunk)
                    written += len(chunk)
                    tracker.advance(len(chunk))
                if written != t.nbytes:
                    raise _invalid(
                        f"{member.name}: tensor {t.name!r} gave {written} bytes, its dtype "
                        f"and shape need {t.nbytes}"
                    )
            entry.crc = crc
            sink.patch(entry.crc_field_offset, struct.pack("<I", crc))
        central = b"".join(e.central_header(dos_time, dos_date) for e in plan)
        tail = central + end_records(len(plan), cd_offset, len(central), force_zip64)
        assert cd_offset + len(tail) == file_size, "the file's size was planned wrong"
        sink.write(tail)
        tracker.advance(len(tail))
        path = sink.publish()
    except BaseException:
        sink.discard()
        raise
    try:
        # Reported once the file is published, as the contract wants of
        # the last call; a callback that raises takes the file back.
        tracker.finish()
    except BaseException:
        sink.withdraw()
        raise
    finally:
        sink.settle()
    return path


class _Sink(Protocol):
    """Where the writer's bytes go, in order: a temporary file published
    under a free name (:class:`_LocalSink`) or a multipart upload to object
    storage (``multipart.py``). ``expect_patch`` announces a range that
    ``patch`` will overwrite once known (a member's CRC-32), before the
    bytes are written."""

    def write(self, data: bytes | memoryview) -> int: ...

    def expect_patch(self, offset: int, length: int) -> None: ...

    def patch(self, offset: int, data: bytes) -> None: ...

    def publish(self) -> str: ...

    def discard(self) -> None: ...

    def withdraw(self) -> None: ...

    def settle(self) -> None: ...


class _LocalSink:
    """A temporary file in the target directory, fsynced and published with
    ``link(2)`` under a name no file has (:func:`_publish`); removed on
    failure. ``settle`` fsyncs the directory."""

    def __init__(self, directory: str, stem: str) -> None:
        self._directory = directory
        self._stem = stem
        self._tmp = os.path.join(directory, f".{stem}.zip.{os.getpid()}.{next(_temp_names)}.tmp")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            self._out = open(self._fd, "wb", buffering=_CHUNK)  # noqa: SIM115 (closed by publish)
        except BaseException:
            os.close(self._fd)
            os.unlink(self._tmp)
            raise
        self._path: str | None = None

    def write(self, data: bytes | memoryview) -> int:
        return self._out.write(data)

    def expect_patch(self, offset: int, length: int) -> None:
        pass

    def patch(self, offset: int, data: bytes) -> None:
        self._out.flush()
        _pwrite_all(self._fd, data, offset)

    def publish(self) -> str:
        self._out.flush()
        os.fsync(self._fd)
        self._out.close()
        self._path = _publish(self._tmp, self._directory, self._stem)
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:  # published by renaming it
            pass
        return self._path

    def discard(self) -> None:
        try:
            self._out.close()  # flushes: may fail as the write did (a full disk)
        except OSError:
            pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def withdraw(self) -> None:
        if self._path is not None:
            os.unlink(self._path)
            self._path = None

    def settle(self) -> None:
        fsync_directory(self._directory)

"""Reading ``torch.save`` archives without executing anything from them.

A ``torch.save`` file (PyTorch's zip serialization) is a ZIP archive whose
members share one top-level folder: ``<name>/data.pkl``, the pickle of the
saved object, ``<name>/byteorder``, ``<name>/version`` and, for each
storage, ``<name>/data/<key>``, its raw bytes. In the pickle a tensor is
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
(``_rebuild_tensor_v3`` with a dtype for the dtypes that have no typed
storage class), a storage is a persistent id ``("storage",
torch.FloatStorage, key, location, numel)`` and a parameter
``torch._utils._rebuild_parameter(tensor, ...)``.

The pickle is scanned and loaded by the restricted machinery of
``_legacy.py``: the globals it may name are those of a state dict (tensors,
parameters, storage classes, ``OrderedDict``, ``Counter``), each mapped to
this package's own constructors; anything else raises
:class:`UnsafePickleError` before anything from the file ran. A storage's
bytes are read from its member only once the whole pickle was scanned, and
only as many as the member really holds.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import torch

from . import _legacy
from ._errors import FormatError, UnsafePickleError
from ._format.tensors import writable_bytes

__all__ = ["TorchFile", "is_torch_zip", "read_torch_bytes", "read_torch_file"]

KIND: Final = "InvalidForeign"
"""The kind of the FormatError a malformed input raises (as Rust's
``Error::InvalidForeign``)."""

_MAX_PICKLE_BYTES: Final = 1 << 30
"""Largest ``data.pkl`` read: a state dict's pickle holds no tensor data."""
_MAX_DEFLATE_RATIO: Final = 1032
"""Deflate's largest expansion: a member that claims more was not paid for."""
_CHUNK: Final = 16 << 20


def _error(path: str, reason: str) -> FormatError:
    return FormatError(f"{path}: {reason}", kind=KIND)


@dataclass(frozen=True)
class TorchFile:
    """What a ``torch.save`` archive holds: the object, made only of plain
    containers, plain values and CPU tensors."""

    obj: Any
    tensor_bytes: int
    """The bytes of its storages."""


@dataclass(frozen=True)
class _Dtype:
    """Stands for a dtype global (``torch.uint16``) of ``_rebuild_tensor_v3``."""

    qualname: str
    dtype: torch.dtype

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to change the state of {self.qualname}")


_V3_DTYPES: Final = ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2")
"""The dtypes torch.save pickles by name (no typed storage class)."""


def _archive_prefix(zf: zipfile.ZipFile, path: str) -> str:
    """The archive's top-level folder: the one holding ``data.pkl``."""
    names = zf.namelist()
    if len(set(names)) != len(names):
        raise _error(path, "a member appears twice in the torch.save archive")
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise _error(path, f"not a torch.save archive: {len(pickles)} top-level data.pkl members")
    prefix = pickles[0][: -len("data.pkl")]
    for name in names:
        if not name.startswith(prefix):
            raise _error(path, f"member {name!r} is outside the archive's folder {prefix!r}")
    return prefix


def _check_paid(info: zipfile.ZipInfo, size: int, path: str) -> None:
    """Refuses a member whose stated size the file does not back."""
    if info.header_offset + info.compress_size > size:
        raise _error(path, f"member {info.filename!r} runs past the end of the file")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise _error(path, f"stored member {info.filename!r} has two sizes")
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > max(info.compress_size, 1) * _MAX_DEFLATE_RATIO:
            raise _error(
                path,
                f"member {info.filename!r} claims {info.file_size} bytes from "
                f"{info.compress_size} compressed",
            )
    else:
        raise _error(path, f"member {info.filename!r} uses compression {info.compress_type}")


class _Reader(_legacy._Loader):
    """One archive's loading: storages read from their members on first use."""

    def __init__(
        self, path: str, zf: zipfile.ZipFile, prefix: str, size: int, advance: Callable[[int], None]
    ) -> None:
        super().__init__(path, member=f"{prefix}data.pkl", kind=KIND)
        self._zf = zf
        self._prefix = prefix
        self._size = size
        self._advance = advance
        self._storages: dict[str, _legacy._Storage] = {}

    def persistent_load(self, pid: Any) -> _legacy._Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise self.error(f"persistent id {pid!r} is not a storage")
        typename, storage_type, key, location, numel = pid
        if (
            typename != "storage"
            or not isinstance(storage_type, _legacy._StorageType)
            or not isinstance(key, str)
            or not isinstance(location, str)
            or not _legacy._is_index(numel)
        ):
            raise self.error(f"persistent id {pid!r} is not a storage")
        storage = self._storages.get(key)
        if storage is not None:
            if storage.dtype != storage_type.dtype or storage.numel != numel:
                raise self.error(f"storage {key!r} declared twice, differently")
            return storage
        storage = _legacy._Storage(key, storage_type.dtype, numel)
        storage.data = self._read_storage(key, storage_type.dtype, numel)
        self._storages[key] = storage
        return storage

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        name = f"{self._prefix}data/{key}"
        try:
            info = self._zf.getinfo(name)
        except KeyError:
            raise self.error(f"storage {key!r} has no member {name}") from None
        nbytes = numel * dtype.itemsize
        if info.file_size != nbytes:
            raise self.error(
                f"storage {key!r} of {numel} {dtype} elements needs {nbytes} bytes, its member "
                f"{name} holds {info.file_size}"
            )
        _check_paid(info, self._size, self.path)
        tensor = torch.empty(numel, dtype=dtype)
        if nbytes:
            view = writable_bytes(tensor)
            with self._zf.open(info) as f:
                at = 0
                while at < nbytes:
                    n = f.readinto(view[at : at + _CHUNK])  # type: ignore[attr-defined]
                    if not n:
                        raise self.error(f"member {name} is truncated")
                    at += n
                    self._advance(n)
                if f.read(1):
                    raise self.error(f"member {name} holds more than {nbytes} bytes")
        return tensor

    # --- torch._utils._rebuild_tensor_v3 ---
    def rebuild_tensor_v3(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any,
        dtype: Any,
        metadata: Any = None,
    ) -> torch.Tensor:
        if not isinstance(storage, _legacy._Storage) or storage.data is None:
            raise self.error("a tensor whose storage is not one of the pickle's storages")
        if not isinstance(dtype, _Dtype):
            raise self.error(f"a tensor of dtype {dtype!r}")
        raise self.error(
            f"a tensor of dtype {dtype.dtype}: this format stores F64, F32, F16, BF16, I64, I32, "
            "I16, I8, U8 and BOOL tensors"
        )

    def allowed(self) -> dict[tuple[str, str], Any]:
        """What ``data.pkl`` may name, each mapped to a constructor or a marker."""
        allowed: dict[tuple[str, str], Any] = {
            name: value
            for name, value in self.outer_globals().items()
            if name != ("torch.storage", "_load_from_bytes")
        }
        allowed[("torch._utils", "_rebuild_tensor_v3")] = _legacy._Allowed(
            "torch._utils._rebuild_tensor_v3", self.rebuild_tensor_v3
        )
        for name, dtype in _legacy._STORAGE_TYPES.items():
            allowed[name] = _legacy._StorageType(f"{name[0]}.{name[1]}", dtype)
        for dtype_name in _V3_DTYPES:
            v3_dtype = getattr(torch, dtype_name, None)
            if isinstance(v3_dtype, torch.dtype):
                allowed[("torch", dtype_name)] = _Dtype(f"torch.{dtype_name}", v3_dtype)
        return allowed


def is_torch_zip(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a ZIP archive with a top-level ``*/data.pkl``
    (what ``torch.save`` writes). Never unpickles."""
    try:
        with zipfile.ZipFile(os.fspath(path)) as zf:
            return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in zf.namelist())
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        return False


def storage_bytes(path: str | os.PathLike[str]) -> int:
    """The bytes of the storage members of a ``torch.save`` archive, from
    its directory (what :func:`read_torch_file` reads)."""
    with zipfile.ZipFile(os.fspath(path)) as zf:
        return sum(i.file_size for i in zf.infolist() if "/data/" in i.filename)


def read_torch_file(
    path: str | os.PathLike[str], advance: Callable[[int], None] = lambda n: None
) -> TorchFile:
    """Reads a ``torch.save`` archive (zip serialization) of a state dict
    or a dict of state dicts, without running its pickle.

    Raises :class:`UnsafePickleError` naming the first global that is not
    allowed (before anything from the pickle ran), :class:`FormatError` of
    kind ``"InvalidForeign"`` for a malformed archive, ``OSError`` when it
    cannot be read. ``advance(n)`` hears each chunk of storage bytes read.
    """
    path_str = os.fspath(path)
    return _read(path_str, os.stat(path_str).st_size, path_str, advance)


def read_torch_bytes(data: bytes, what: str) -> TorchFile:
    """:func:`read_torch_file` of a ``torch.save`` archive held in memory
    (``what`` names it in errors), with the same restrictions."""
    return _read(io.BytesIO(data), len(data), what, lambda n: None)


def _read(
    source: str | io.BytesIO, size: int, path_str: str, advance: Callable[[int], None]
) -> TorchFile:
    try:
        with zipfile.ZipFile(source) as zf:
            prefix = _archive_prefix(zf, path_str)
            if f"{prefix}byteorder" in zf.namelist():
                info = zf.getinfo(f"{prefix}byteorder")
                _check_paid(info, size, path_str)
                if info.file_size > 16 or zf.read(info) != b"little":
                    raise _error(path_str, "the archive was written on a big-endian machine")
            info = zf.getinfo(f"{prefix}data.pkl")
            _check_paid(info, size, path_str)
            if info.file_size > _MAX_PICKLE_BYTES:
                raise _error(path_str, f"{info.filename} is {info.file_size} bytes")
            pickled = zf.read(info)
            reader = _Reader(path_str, zf, prefix, size, advance)
            what = f"{path_str}: {info.filename}"
            allowed = reader.allowed()
            stream = io.BytesIO(pickled)
            _legacy._scan(stream, allowed, what, persistent=True, kind=KIND)
            if stream.read(1):
                raise _error(path_str, f"{info.filename}: bytes after the pickle")
            stream.seek(0)
            unpickler = _legacy._RestrictedUnpickler(stream, allowed, what, reader.persistent_load)
            raw = _legacy._unpickle(unpickler, what, KIND)
            tensor_bytes = sum(s.numel * s.dtype.itemsize for s in reader._storages.values())
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise _error(path_str, f"not a valid ZIP archive: {e}") from None
    return TorchFile(_legacy._clean(raw, reader, "the object"), tensor_bytes)

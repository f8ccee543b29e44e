"""Reading files of the original pytorch-saver 0.1 package, without
executing anything from them.

Those files are ZIP archives (deflated) of ``metadata.json`` and
``state_dicts.pkl``, the ``pickle.dumps`` of ``{"model_state_dict": ...,
"optim_state_dict": ..., "scheduler_state_dict": ...}``. A pickle can call
any importable function, so this module never hands one to ``pickle.loads``
or ``torch.load``. Instead:

1. every pickle is first scanned opcode by opcode (``pickletools.genops``,
   which only parses): each global it names must be on a short allow-list,
   and every length it states must be backed by bytes that are really there,
   so nothing runs and nothing is allocated for a hostile file;
2. it is then loaded by an ``Unpickler`` whose ``find_class`` maps the
   allowed names to this module's own constructors (never to torch's) and
   refuses everything else;
3. the result is checked to hold only plain containers, numbers, strings
   and the tensors those constructors built.

A tensor pickles as ``torch._utils._rebuild_tensor_v2(storage, ...)`` whose
storage pickles as ``torch.storage._load_from_bytes(b)``; torch would call
``torch.load`` on ``b``. Here ``b`` (torch's legacy, non-zip serialization:
five pickles, then the raw storage bytes) is parsed by the same restricted
machinery, its storage classes (``torch.FloatStorage``, ...) mapped to
dtypes.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final

import torch

from ._errors import FormatError, UnsafePickleError
from ._format import INTERNALS_KEY, MAX_METADATA_BYTES
from ._format.tensors import writable_bytes

__all__ = ["LegacyCheckpoint", "is_legacy", "read_legacy"]

METADATA_MEMBER: Final = "metadata.json"
PICKLE_MEMBER: Final = "state_dicts.pkl"
STATE_DICT_KEYS: Final = ("model_state_dict", "optim_state_dict", "scheduler_state_dict")

# torch.serialization's legacy format (what a storage's __reduce__ writes).
_TORCH_MAGIC_NUMBER: Final = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL_VERSION: Final = 1001
# Nesting of containers in a state dict; PyTorch's are a few levels deep.
_MAX_DEPTH: Final = 64


@dataclass(frozen=True)
class LegacyCheckpoint:
    """What a file of the original package holds."""

    metadata: dict[str, Any]
    """``metadata.json`` as the original package wrote it."""
    model_state_dict: dict[str, torch.Tensor]
    optim_state_dict: dict[str, Any] | None
    scheduler_state_dict: dict[str, Any] | None


# ---------------------------------------------------------------------------
# The objects the allowed names stand for


@dataclass(frozen=True)
class _StorageType:
    """Stands for a storage class (``torch.FloatStorage``): its dtype only."""

    qualname: str
    dtype: torch.dtype

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to change the state of {self.qualname}")


_STORAGE_TYPES: Final = {
    ("torch", "DoubleStorage"): torch.float64,
    ("torch", "FloatStorage"): torch.float32,
    ("torch", "HalfStorage"): torch.float16,
    ("torch", "BFloat16Storage"): torch.bfloat16,
    ("torch", "LongStorage"): torch.int64,
    ("torch", "IntStorage"): torch.int32,
    ("torch", "ShortStorage"): torch.int16,
    ("torch", "CharStorage"): torch.int8,
    ("torch", "ByteStorage"): torch.uint8,
    ("torch", "BoolStorage"): torch.bool,
    ("torch.storage", "UntypedStorage"): torch.uint8,
    ("torch", "UntypedStorage"): torch.uint8,
}


@dataclass(eq=False)
class _Storage:
    """A storage of the legacy format: declared by a persistent id, filled
    from the bytes after the pickles."""

    key: str
    dtype: torch.dtype
    numel: int
    data: torch.Tensor | None = None

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("the pickle tries to change the state of a storage")


@dataclass
class _Loader:
    """One file's loading: the tensors this module built, so that the final
    check can tell them from anything else."""

    path: str
    member: str = PICKLE_MEMBER
    """The pickle's member, for messages."""
    kind: str = "InvalidLegacy"
    """The kind of the FormatError a malformed pickle raises."""
    built: dict[int, tuple[torch.Tensor, tuple[int, ...], tuple[int, ...], int, int]] = field(
        default_factory=dict
    )

    def error(self, reason: str) -> FormatError:
        return FormatError(f"{self.path}: {self.member}: {reason}", kind=self.kind)

    # --- torch.storage._load_from_bytes ---
    def load_from_bytes(self, data: Any) -> _Storage:
        if not isinstance(data, bytes):
            raise self.error("_load_from_bytes of something that is not bytes")
        return _parse_torch_legacy(data, self)

    # --- torch._utils._rebuild_tensor_v2 ---
    def rebuild_tensor_v2(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any,
        metadata: Any = None,
    ) -> torch.Tensor:
        if not isinstance(storage, _Storage) or storage.data is None:
            raise self.error("a tensor whose storage is not one of the pickle's storages")
        return self.view(
            storage.data, storage_offset, size, stride, requires_grad, backward_hooks, metadata
        )

    def view(
        self,
        data: torch.Tensor,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any,
        metadata: Any,
    ) -> torch.Tensor:
        """The tensor ``(size, stride, storage_offset)`` over a storage's
        elements ``data`` (1-D), each argument checked first."""
        if not (_is_index(storage_offset) and _is_shape(size) and _is_shape(stride)):
            raise self.error(
                f"a tensor with offset {storage_offset!r}, size {size!r} and stride {stride!r}"
            )
        if len(size) != len(stride):
            raise self.error(f"a tensor with size {size!r} but stride {stride!r}")
        if not isinstance(requires_grad, bool):
            raise self.error(f"requires_grad is {requires_grad!r}")
        if not isinstance(backward_hooks, dict) or backward_hooks:
            raise self.error("a tensor with backward hooks")
        if metadata is not None and (
            not isinstance(metadata, dict) or any(v is not False for v in metadata.values())
        ):
            raise self.error(f"a tensor with metadata {metadata!r} (conjugate or negative bit)")
        numel = math.prod(size)
        available = data.numel()
        if numel:
            last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            if last >= available:
                raise self.error(
                    f"a tensor of size {list(size)}, stride {list(stride)} at offset "
                    f"{storage_offset} reads element {last} of a storage of {available}"
                )
        elif storage_offset > available:
            raise self.error(f"offset {storage_offset} past a storage of {available}")
        if numel > available:
            # Only an overlapping (expanded) view has more elements than its
            # storage; copying it would allocate what the file declares.
            raise self.error(
                f"a tensor of size {list(size)} (stride {list(stride)}) has more elements than "
                f"its storage of {available}: expanded tensors are not supported"
            )
        try:
            tensor = data.as_strided(size, stride, storage_offset)
        except RuntimeError as e:
            raise self.error(f"a tensor torch cannot build: {e}") from None
        self.built[id(tensor)] = (
            tensor,
            tuple(size),
            tuple(stride),
            storage_offset,
            tensor.data_ptr(),
        )
        return tensor

    # --- torch._utils._rebuild_parameter ---
    def rebuild_parameter(self, data: Any, requires_grad: Any, backward_hooks: Any) -> torch.Tensor:
        # A state dict holds plain tensors: the Parameter wrapper is dropped.
        if not isinstance(data, torch.Tensor) or id(data) not in self.built:
            raise self.error("a parameter whose data is not a tensor of the pickle")
        if not isinstance(requires_grad, bool):
            raise self.error(f"requires_grad is {requires_grad!r}")
        if not isinstance(backward_hooks, dict) or backward_hooks:
            raise self.error("a parameter with backward hooks")
        return data

    def outer_globals(self) -> dict[tuple[str, str], _Allowed]:
        """What ``state_dicts.pkl`` may name, each mapped to a constructor."""
        constructors: dict[tuple[str, str], Callable[..., Any]] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("collections", "Counter"): collections.Counter,
            ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): self.rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): self.load_from_bytes,
        }
        return {name: _Allowed(".".join(name), fn) for name, fn in constructors.items()}


class _Allowed:
    """What an allowed global resolves to: a callable that only calls its
    constructor. The real class or function is never on the unpickler's
    stack, so a BUILD opcode cannot set attributes on it (such as
    ``collections.Counter.update``) for the whole process."""

    __slots__ = ("_name", "_fn")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self._name = name
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to change the state of {self._name}")

    def __repr__(self) -> str:
        return f"<allowed {self._name}>"


def _is_index(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 62


def _is_shape(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) <= 64 and all(map(_is_index, value))


# ---------------------------------------------------------------------------
# Scanning and unpickling


_STRING_OPS: Final = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
    }
)
# Opcodes that leave the stack as it is.
_NEUTRAL_OPS: Final = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO"})
_FORBIDDEN_OPS: Final = {
    "EXT1": "an extension-registry global",
    "EXT2": "an extension-registry global",
    "EXT4": "an extension-registry global",
    "NEXT_BUFFER": "an out-of-band buffer",
    "READONLY_BUFFER": "an out-of-band buffer",
}


_BYTES_OPS: Final = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8"})


def _scan(
    stream: IO[bytes],
    allowed: Mapping[tuple[str, str], Any],
    what: str,
    persistent: bool,
    nested: bool = False,
    kind: str = "InvalidLegacy",
) -> None:
    """Parses one pickle from ``stream`` without running it, and refuses any
    global not in ``allowed`` (and any way of naming a global that is not
    two literal strings), any persistent id unless ``persistent``, any
    length that runs past the data (pickletools reads what it states) and
    memo indices out of sequence (the unpickler sizes its memo by them).
    With ``nested``, bytes that hold a storage's pickles are scanned too,
    so that a payload hidden in them is refused before anything runs.
    A malformed pickle is a FormatError of ``kind``."""
    memo: dict[int, str | None] = {}
    recent: list[str | None] = []  # what the last stack-changing opcodes pushed
    try:
        for opcode, raw_arg, pos in pickletools.genops(stream):
            name = opcode.name
            arg: Any = raw_arg
            where = f"{what}, byte {pos}"
            module: Any
            qualname: Any
            if name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                _check_global(module, qualname, allowed, where)
            elif name == "STACK_GLOBAL":
                module, qualname = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
                if not (isinstance(module, str) and isinstance(qualname, str)):
                    raise UnsafePickleError(
                        f"{where}: a global whose name is computed, not two literal strings; "
                        "refused before anything ran"
                    )
                _check_global(module, qualname, allowed, where)
            elif name in _FORBIDDEN_OPS:
                raise UnsafePickleError(
                    f"{where}: {_FORBIDDEN_OPS[name]} ({name}) is not allowed; refused before "
                    "anything ran"
                )
            elif name in ("PERSID", "BINPERSID") and not persistent:
                raise UnsafePickleError(f"{where}: a persistent id, which this pickle may not hold")
            if name in _STRING_OPS:
                recent.append(arg if isinstance(arg, str) else None)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(int(arg)))
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if int(arg) > len(memo):
                    raise FormatError(f"{where}: memo index {arg} out of sequence", kind=kind)
                memo[int(arg)] = recent[-1] if recent else None
            elif nested and name in _BYTES_OPS:
                _scan_storage_bytes(arg, f"{where}: storage bytes")
                recent.append(None)
            elif name not in _NEUTRAL_OPS:
                recent.append(None)
            del recent[:-2]
    except UnsafePickleError:
        raise
    except (ValueError, EOFError, struct.error, zipfile.BadZipFile, zlib.error) as e:
        raise FormatError(f"{what}: not a valid pickle: {e}", kind=kind) from None


def _scan_storage_bytes(data: bytes, what: str) -> None:
    """Scans bytes that may be a storage's pickle form (torch's legacy
    serialization) and refuses any global its pickles name beyond the
    storage classes. Bytes that are no such thing are left to fail, before
    anything runs, if they are ever loaded as a storage."""
    stream = io.BytesIO(data)
    storage_names = dict.fromkeys(_STORAGE_TYPES)
    try:
        for allowed, persistent in (({}, False),) * 3 + ((storage_names, True), ({}, False)):
            _scan(stream, allowed, what, persistent)
    except FormatError:
        return


def _check_global(
    module: str, qualname: str, allowed: Mapping[tuple[str, str], Any], where: str
) -> None:
    if (module, qualname) not in allowed:
        names = ", ".join(sorted(f"{m}.{n}" for m, n in allowed)) or "none"
        raise UnsafePickleError(
            f"{where}: the pickle asks for {module}.{qualname}, which is not allowed (allowed: "
            f"{names}); refused before anything ran"
        )


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals, to objects this
    module chose, and only the persistent ids its owner handles."""

    def __init__(
        self,
        stream: IO[bytes],
        allowed: Mapping[tuple[str, str], Any],
        what: str,
        persistent: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(stream)
        self._allowed = allowed
        self._what = what
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"{self._what}: the pickle asks for {module}.{name}, which is not allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError(
                f"{self._what}: a persistent id, which this pickle may not hold"
            )
        return self._persistent(pid)


def _load_one(
    stream: IO[bytes],
    allowed: Mapping[tuple[str, str], Any],
    what: str,
    persistent: Callable[[Any], Any] | None = None,
) -> Any:
    """Scans, then loads, the pickle at the stream's position (a seekable
    in-memory stream); leaves the stream after it."""
    start = stream.tell()
    _scan(stream, allowed, what, persistent is not None)
    end = stream.tell()
    stream.seek(start)
    value = _unpickle(_RestrictedUnpickler(stream, allowed, what, persistent), what)
    if stream.tell() != end:
        raise FormatError(
            f"{what}: the pickle ends at byte {stream.tell()}, its scan at {end}",
            kind="InvalidLegacy",
        )
    return value


def _unpickle(unpickler: _RestrictedUnpickler, what: str, kind: str = "InvalidLegacy") -> Any:
    try:
        return unpickler.load()
    except (UnsafePickleError, FormatError):
        raise
    except RecursionError:
        raise FormatError(f"{what}: nested too deeply", kind=kind) from None
    except MemoryError:
        raise
    except Exception as e:  # whatever a malformed pickle makes the unpickler raise
        raise FormatError(
            f"{what}: cannot be unpickled: {type(e).__name__}: {e}", kind=kind
        ) from None


def _parse_torch_legacy(data: bytes, loader: _Loader) -> _Storage:
    """Parses what ``torch.save(storage, _use_new_zipfile_serialization=False)``
    wrote (a storage's pickle form): magic number, protocol version and
    system info pickles, the object's pickle (a persistent id naming the
    storage), the list of storage keys, then each storage's element count
    (int64) and bytes."""
    what = f"{loader.path}: {PICKLE_MEMBER}: storage bytes"
    if data[:4] == b"PK\x03\x04":
        raise FormatError(
            f"{what}: a torch.save zip archive; storages pickle in torch's legacy format, "
            "which is all this reader parses",
            kind="InvalidLegacy",
        )
    stream = io.BytesIO(data)
    if _load_one(stream, {}, f"{what} (magic number)") != _TORCH_MAGIC_NUMBER:
        raise FormatError(
            f"{what}: not torch's legacy serialization (bad magic number)", kind="InvalidLegacy"
        )
    if _load_one(stream, {}, f"{what} (protocol version)") != _TORCH_PROTOCOL_VERSION:
        raise FormatError(
            f"{what}: unknown protocol version of torch's legacy serialization",
            kind="InvalidLegacy",
        )
    sys_info = _load_one(stream, {}, f"{what} (system info)")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise FormatError(
            f"{what}: system info {sys_info!r} is not that of a little-endian machine",
            kind="InvalidLegacy",
        )

    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6):
            raise FormatError(
                f"{what}: persistent id {pid!r} is not a storage", kind="InvalidLegacy"
            )
        typename, storage_type, key, location, numel, view_metadata = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii", errors="replace")
        if (
            typename != "storage"
            or not isinstance(storage_type, _StorageType)
            or not isinstance(key, str)
            or not isinstance(location, str)
            or not _is_index(numel)
        ):
            raise FormatError(
                f"{what}: persistent id {pid!r} is not a storage", kind="InvalidLegacy"
            )
        if view_metadata is not None:
            raise FormatError(f"{what}: storage views are not supported", kind="InvalidLegacy")
        storage = storages.get(key)
        if storage is None:
            storage = storages[key] = _Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise FormatError(
                f"{what}: storage {key!r} declared twice, differently", kind="InvalidLegacy"
            )
        return storage

    storage_globals = {
        name: _StorageType(f"{name[0]}.{name[1]}", dtype) for name, dtype in _STORAGE_TYPES.items()
    }
    result = _load_one(stream, storage_globals, what, persistent_load)
    keys = _load_one(stream, {}, f"{what} (storage keys)")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise FormatError(f"{what}: the storage key list is {keys!r}", kind="InvalidLegacy")
    if sorted(keys) != sorted(storages):
        raise FormatError(
            f"{what}: storage keys {keys} do not match the storages the pickle names",
            kind="InvalidLegacy",
        )
    view = memoryview(data)
    at = stream.tell()
    for key in keys:
        storage = storages[key]
        if storage.data is not None:
            raise FormatError(f"{what}: storage {key!r} listed twice", kind="InvalidLegacy")
        if at + 8 > len(data):
            raise FormatError(
                f"{what}: storage {key!r}: the data is truncated", kind="InvalidLegacy"
            )
        (numel,) = struct.unpack_from("<q", data, at)
        nbytes = storage.numel * storage.dtype.itemsize
        if numel != storage.numel or at + 8 + nbytes > len(data):
            raise FormatError(
                f"{what}: storage {key!r} has {numel} elements at byte {at}, declared "
                f"{storage.numel}, with {len(data) - at - 8} bytes left",
                kind="InvalidLegacy",
            )
        tensor = torch.empty(storage.numel, dtype=storage.dtype)
        if nbytes:
            writable_bytes(tensor)[:] = view[at + 8 : at + 8 + nbytes]
        storage.data = tensor
        at += 8 + nbytes
    if at != len(data):
        raise FormatError(
            f"{what}: {len(data) - at} bytes after the last storage", kind="InvalidLegacy"
        )
    if not isinstance(result, _Storage):
        raise FormatError(
            f"{what}: holds a {type(result).__name__}, not a storage", kind="InvalidLegacy"
        )
    return result


# ---------------------------------------------------------------------------
# The final check: only plain data and the tensors built above


_PLAIN: Final = (type(None), bool, int, float, complex, str, bytes)


def _clean(value: Any, loader: _Loader, where: str, depth: int = 0) -> Any:
    """Returns ``value`` if it consists only of plain containers, plain
    values and tensors this loader built, unmodified since; raises otherwise.
    Containers are rebuilt, so no attribute a pickle set on one survives
    (except a state dict's ``_metadata``, which PyTorch uses and which is
    checked like the rest)."""
    if depth > _MAX_DEPTH:
        raise loader.error(f"{where} is nested deeper than {_MAX_DEPTH} levels")
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is torch.Tensor:
        record = loader.built.get(id(value))
        if record is None or record[0] is not value:
            raise loader.error(f"{where} is a tensor the pickle did not build from a storage")
        _, size, stride, offset, ptr = record
        if (
            tuple(value.shape) != size
            or value.stride() != stride
            or value.storage_offset() != offset
            or value.data_ptr() != ptr
            or value.requires_grad
            or value._backward_hooks is not None
            or value.__dict__
        ):
            raise loader.error(f"{where} is a tensor the pickle modified after building it")
        return value
    if kind in (list, tuple, set, frozenset):
        items = [_clean(v, loader, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return kind(items)
    if kind in (dict, collections.OrderedDict, collections.Counter):
        out: dict[Any, Any] = kind()
        for k, v in value.items():
            if type(k) not in _PLAIN and type(k) is not tuple:
                raise loader.error(f"{where} has a key of type {type(k).__name__}")
            key = _clean(k, loader, f"{where} key", depth + 1)
            out[key] = _clean(v, loader, f"{where}[{k!r}]", depth + 1)
        extra = getattr(value, "__dict__", {})
        if set(extra) - {"_metadata"}:
            raise loader.error(f"{where} carries attributes {sorted(extra)}")
        if "_metadata" in extra:
            meta = _clean(extra["_metadata"], loader, f"{where}._metadata", depth + 1)
            if not isinstance(meta, dict):
                raise loader.error(f"{where}._metadata is not a dict")
            vars(out)["_metadata"] = meta
        return out
    raise loader.error(f"{where} is a {kind.__module__}.{kind.__qualname__}, not plain data")


# ---------------------------------------------------------------------------
# The archive


def _read_metadata(zf: zipfile.ZipFile, path: str) -> dict[str, Any]:
    info = zf.getinfo(METADATA_MEMBER)
    if info.file_size > MAX_METADATA_BYTES:
        raise FormatError(
            f"{path}: {METADATA_MEMBER} is {info.file_size} bytes, above the limit of "
            f"{MAX_METADATA_BYTES}",
            kind="TooLarge",
        )
    with zf.open(info) as f:
        raw = f.read(MAX_METADATA_BYTES + 1)
    if len(raw) > MAX_METADATA_BYTES:
        raise FormatError(
            f"{path}: {METADATA_MEMBER} is larger than {MAX_METADATA_BYTES} bytes", kind="TooLarge"
        )

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise FormatError(f"{path}: {METADATA_MEMBER}: duplicate keys", kind="Json")
        return obj

    try:
        # The original package wrote json.dumps' defaults: NaN and
        # Infinity may appear, and are read as Python reads them.
        metadata = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except FormatError:
        raise
    except (ValueError, RecursionError) as e:
        raise FormatError(f"{path}: {METADATA_MEMBER}: not JSON: {e}", kind="Json") from None
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: {METADATA_MEMBER}: top level is not a JSON object", kind="Json")
    return metadata


def _check_members(zf: zipfile.ZipFile, path: str) -> None:
    names = [info.filename for info in zf.infolist()]
    for name in names:
        if name not in (METADATA_MEMBER, PICKLE_MEMBER):
            raise FormatError(
                f"{path}: unexpected member {name!r} in a pytorch-saver 0.1 file",
                kind="UnexpectedMember",
            )
    if len(set(names)) != len(names):
        raise FormatError(f"{path}: a member appears twice", kind="DuplicateMember")
    for name in (METADATA_MEMBER, PICKLE_MEMBER):
        if name not in names:
            raise FormatError(f"{path}: missing member {name}", kind="MissingMember")


def read_legacy(path: str | os.PathLike[str]) -> LegacyCheckpoint:
    """Reads a file of the original pytorch-saver 0.1 package.

    Its pickle is never run as such: only tensors (from their storage
    bytes), ``OrderedDict``, ``Counter`` and plain values are rebuilt.
    Raises :class:`UnsafePickleError` naming the first global that is not
    allowed (before anything from the pickle ran), :class:`FormatError` for
    a malformed file, ``OSError`` when it cannot be read.
    """
    path_str = os.fspath(path)
    what = f"{path_str}: {PICKLE_MEMBER}"
    loader = _Loader(path_str)
    try:
        with zipfile.ZipFile(path_str) as zf:
            _check_members(zf, path_str)
            metadata = _read_metadata(zf, path_str)
            allowed = loader.outer_globals()
            with zf.open(PICKLE_MEMBER) as stream:
                _scan(stream, allowed, what, persistent=False, nested=True)
                if stream.read(1):
                    raise FormatError(f"{what}: bytes after the pickle", kind="InvalidLegacy")
            with zf.open(PICKLE_MEMBER) as stream:
                raw = _unpickle(_RestrictedUnpickler(stream, allowed, what), what)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise FormatError(
            f"{path_str}: not a valid ZIP archive: {e}", kind="InvalidLegacy"
        ) from None
    if not isinstance(raw, dict):
        raise loader.error(f"holds a {type(raw).__name__}, not a dict of state dicts")
    for key in raw:
        if key not in STATE_DICT_KEYS:
            raise loader.error(
                f"unexpected key {key!r} (a pytorch-saver 0.1 file holds "
                f"{', '.join(STATE_DICT_KEYS)})"
            )
    if "model_state_dict" not in raw:
        raise loader.error("no model_state_dict")
    state = {key: _clean(value, loader, key) for key, value in raw.items()}
    model = state["model_state_dict"]
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise loader.error("model_state_dict is not a dict of names to tensors")
    for key in ("optim_state_dict", "scheduler_state_dict"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise loader.error(f"{key} is a {type(state[key]).__name__}, not a dict")
    return LegacyCheckpoint(
        metadata=metadata,
        model_state_dict=model,
        optim_state_dict=state.get("optim_state_dict"),
        scheduler_state_dict=state.get("scheduler_state_dict"),
    )


def is_legacy(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a file of the original package: a ZIP
    with ``state_dicts.pkl`` and a ``metadata.json`` without
    ``__pytorch_saver__``. Reads only the metadata; never unpickles.
    ``OSError`` (a missing file) propagates."""
    try:
        with zipfile.ZipFile(os.fspath(path)) as zf:
            names = zf.namelist()
            if PICKLE_MEMBER not in names or METADATA_MEMBER not in names:
                return False
            metadata = _read_metadata(zf, os.fspath(path))
    except (zipfile.BadZipFile, zlib.error, FormatError, EOFError, ValueError):
        return False
    return INTERNALS_KEY not in metadata

"""The index of a sharded checkpoint, ``index.json`` (docs/FORMAT.md 13.1):
its schema, parsed and checked (13.5, steps 2 and 3), and written. The one
owner of the index schema in Python."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .._errors import FormatError, UnsupportedVersionError
from .._format.json import JsonError, is_uint, parse_object
from .._format.metadata import MAX_METADATA_BYTES, Producer, producer_json
from .._format.tensors import DTYPES_BY_NAME, Dtype

__all__ = [
    "FORMAT_NAME",
    "INDEX_NAME",
    "INDEX_VERSION",
    "Chunk",
    "Index",
    "ShardEntry",
    "TensorEntry",
    "encode_index",
    "parse_index",
]

INDEX_NAME: Final = "index.json"
"""The index's name at the top of a sharded checkpoint's location."""
FORMAT_NAME: Final = "pytorch-saver-sharded"
INDEX_VERSION: Final = 1
_KEYS: Final = (
    "format",
    "format_version",
    "checkpoint_id",
    "timestamp",
    "producer",
    "world_size",
    "shards",
    "tensors",
    "values",
    "planner_data",
)
_OPTIONAL_KEYS: Final = ("container",)
_CHECKPOINT_ID: Final = re.compile(r"[0-9a-f]{32}")
_SHARD: Final = re.compile(r"S\((\d+)\)")


@dataclass(frozen=True)
class Chunk:
    """A block of a tensor: ``sizes`` elements from ``offsets`` along each
    dimension, stored as the tensor ``tensor`` of shard ``shard``."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    shard: int
    tensor: str

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


@dataclass(frozen=True)
class TensorEntry:
    dtype: Dtype
    shape: tuple[int, ...]
    requires_grad: bool
    chunks: tuple[Chunk, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ShardEntry:
    file: str
    rank: int
    size: int


@dataclass(frozen=True)
class Index:
    checkpoint_id: str
    timestamp: int
    producer: Producer
    world_size: int
    shards: tuple[ShardEntry, ...]
    tensors: Mapping[str, TensorEntry]
    values: Mapping[str, Any]
    planner_data: Mapping[str, tuple[str | int, ...]]
    container: Mapping[str, Any] | None = None


def _schema(path: str, reason: str) -> FormatError:
    return FormatError(f"{INDEX_NAME}: field {path}: {reason}", kind="Schema")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _only_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _schema(path, f"has the unknown key {key!r}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        raise _schema(path, "missing")
    if not isinstance(value, dict):
        raise _schema(path, "must be an object")
    return value


def _uint(value: Any, path: str, what: str = "an integer >= 0") -> int:
    if value is None:
        raise _schema(path, "missing")
    if not is_uint(value):
        raise _schema(path, f"must be {what}, got {_json(value)}")
    return int(value)


def _str(value: Any, path: str) -> str:
    if value is None:
        raise _schema(path, "missing")
    if not isinstance(value, str) or not value:
        raise _schema(path, "must be a non-empty string")
    return value


def _producer(value: Any) -> Producer:
    obj = _object(value, "producer")
    torch_version = obj.get("torch_version")
    return Producer(
        library=_str(obj.get("library"), "producer.library"),
        version=_str(obj.get("version"), "producer.version"),
        language=_str(obj.get("language"), "producer.language"),
        torch_version=None
        if torch_version is None
        else _str(torch_version, "producer.torch_version"),
    )


def _shards(value: Any, world_size: int) -> tuple[ShardEntry, ...]:
    if value is None:
        raise _schema("shards", "missing")
    if not isinstance(value, list):
        raise _schema("shards", "must be a list of objects")
    shards: list[ShardEntry] = []
    ranks: set[int] = set()
    files: set[str] = set()
    for i, item in enumerate(value):
        path = f"shards[{i}]"
        obj = _object(item, path)
        _only_keys(obj, ("file", "rank", "size"), path)
        name = _str(obj.get("file"), f"{path}.file")
        if "/" in name or name in (".", "..") or "\0" in name:
            raise _schema(f"{path}.file", f"{name!r} is not a file name in the location")
        if name in files:
            raise _schema(f"{path}.file", f"{name!r} is another shard's file too")
        files.add(name)
        rank = _uint(obj.get("rank"), f"{path}.rank")
        if rank >= world_size:
            raise _schema(f"{path}.rank", f"{rank} is not below world_size {world_size}")
        if rank in ranks:
            raise _schema(f"{path}.rank", f"rank {rank} has two shards")
        ranks.add(rank)
        shards.append(ShardEntry(name, rank, _uint(obj.get("size"), f"{path}.size")))
    return tuple(shards)


def _sizes(value: Any, path: str) -> tuple[int, ...]:
    if value is None:
        raise _schema(path, "missing")
    if not isinstance(value, list) or not all(is_uint(v) for v in value):
        raise _schema(path, "must be a list of integers >= 0")
    return tuple(int(v) for v in value)


def _tensor(name: str, value: Any) -> TensorEntry:
    path = f"tensors.{name}"
    obj = _object(value, path)
    _only_keys(obj, ("dtype", "shape", "requires_grad", "chunks"), path)
    dtype_name = obj.get("dtype")
    if dtype_name is None:
        raise _schema(f"{path}.dtype", "missing")
    if dtype_name not in DTYPES_BY_NAME:
        raise _schema(f"{path}.dtype", f"{_json(dtype_name)} is not a dtype of FORMAT.md section 4")
    shape = _sizes(obj.get("shape"), f"{path}.shape")
    requires_grad = obj.get("requires_grad")
    if requires_grad is None:
        raise _schema(f"{path}.requires_grad", "missing")
    if not isinstance(requires_grad, bool):
        raise _schema(f"{path}.requires_grad", "must be true or false")
    items = obj.get("chunks")
    if items is None:
        raise _schema(f"{path}.chunks", "missing")
    if not isinstance(items, list) or not items:
        raise _schema(f"{path}.chunks", "must be a non-empty list of objects")
    chunks: list[Chunk] = []
    for i, item in enumerate(items):
        cpath = f"{path}.chunks[{i}]"
        c = _object(item, cpath)
        _only_keys(c, ("offsets", "sizes", "shard", "tensor"), cpath)
        offsets = _sizes(c.get("offsets"), f"{cpath}.offsets")
        sizes = _sizes(c.get("sizes"), f"{cpath}.sizes")
        shard = _uint(c.get("shard"), f"{cpath}.shard")
        chunks.append(Chunk(offsets, sizes, shard, _str(c.get("tensor"), f"{cpath}.tensor")))
    return TensorEntry(DTYPES_BY_NAME[dtype_name], shape, requires_grad, tuple(chunks))


def _describe(i: int, c: Chunk) -> str:
    return f"{i} (offsets {list(c.offsets)}, sizes {list(c.sizes)})"


def _overlap(a: Chunk, b: Chunk) -> bool:
    return all(
        max(ao, bo) < min(ao + as_, bo + bs)
        for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
    )


def _check_tiling(name: str, entry: TensorEntry) -> None:
    """13.1: no two chunks share an element, and together they hold every
    element (each lies inside the tensor: checked before)."""
    chunks = entry.chunks
    order = [i for i, c in enumerate(chunks) if c.numel > 0]
    # Sweep along the dimension where the offsets differ most, comparing a
    # chunk only with those that start before it ends there.
    sweep = None
    if entry.shape:
        sweep = max(
            range(len(entry.shape)), key=lambda d: (len({c.offsets[d] for c in chunks}), -d)
        )
        order.sort(key=lambda i: chunks[i].offsets[sweep])
    for k, i in enumerate(order):
        for j in order[k + 1 :]:
            if sweep is not None and (
                chunks[j].offsets[sweep] >= chunks[i].offsets[sweep] + chunks[i].sizes[sweep]
            ):
                break
            if _overlap(chunks[i], chunks[j]):
                a, b = min(i, j), max(i, j)
                raise FormatError(
                    f"{INDEX_NAME}: tensor {_json(name)}: chunks {_describe(a, chunks[a])} and "
                    f"{_describe(b, chunks[b])} overlap",
                    kind="ChunkTiling",
                )
    covered = sum(c.numel for c in chunks)
    if covered != entry.numel:
        raise FormatError(
            f"{INDEX_NAME}: tensor {_json(name)}: its chunks cover {covered} of its "
            f"{entry.numel} elements: {entry.numel - covered} elements are in no chunk",
            kind="ChunkTiling",
        )


def _check_chunks(tensors: Mapping[str, TensorEntry], shard_count: int) -> None:
    """Step 3, tensor by tensor in name order."""
    named: dict[tuple[int, str], tuple[str, int]] = {}
    for name in sorted(tensors, key=lambda n: n.encode()):
        entry = tensors[name]
        for i, c in enumerate(entry.chunks):
            path = f"tensors.{name}.chunks[{i}]"
            ndim = len(entry.shape)
            if len(c.offsets) != ndim or len(c.sizes) != ndim:
                raise _schema(
                    path,
                    f"has {len(c.offsets)} offsets and {len(c.sizes)} sizes; the tensor has "
                    f"{ndim} dimensions",
                )
            for d, dim in enumerate(entry.shape):
                if c.offsets[d] + c.sizes[d] > dim:
                    raise _schema(
                        path,
                        f"lies outside the tensor: along dimension {d} it covers "
                        f"{c.offsets[d]}..{c.offsets[d]}+{c.sizes[d]}, the tensor 0..{dim}",
                    )
            if c.shard >= shard_count:
                raise _schema(
                    path, f"points at shard {c.shard}; the index has {shard_count} shards"
                )
            other = named.get((c.shard, c.tensor))
            if other is not None:
                raise _schema(
                    path,
                    f"names tensor {_json(c.tensor)} of shard {c.shard}, as chunk {other[1]} of "
                    f"tensor {_json(other[0])} does",
                )
            named[(c.shard, c.tensor)] = (name, i)
        _check_tiling(name, entry)


def _planner_data(
    value: Any, tensors: Mapping[str, TensorEntry], values: Mapping[str, Any]
) -> dict[str, tuple[str | int, ...]]:
    data = _object(value, "planner_data")
    out: dict[str, tuple[str | int, ...]] = {}
    for name, path in data.items():
        if name not in tensors and name not in values:
            raise _schema(f"planner_data.{name}", "names neither a tensor nor a value of the index")
        ok = (
            isinstance(path, list)
            and bool(path)
            and all(
                isinstance(p, str) or (isinstance(p, int) and not isinstance(p, bool)) for p in path
            )
        )
        if not ok:
            raise _schema(
                f"planner_data.{name}", "must be a non-empty list of strings and integers"
            )
        out[name] = tuple(path)
    for name in [*tensors, *values]:
        if name not in data:
            raise _schema("planner_data", f"has no entry for {_json(name)}")
    return out


def _container(
    value: Any, tensors: Mapping[str, TensorEntry], values: Mapping[str, Any]
) -> dict[str, Any]:
    """``container`` (13.3): a valid checkpoint or inference metadata
    without extra state, ``model.`` and ``optimizer.`` tensors only, no
    values, and placements of model tensors."""
    from .._format.metadata import parse as parse_metadata

    obj = _object(value, "container")
    _only_keys(obj, ("metadata", "placements"), "container")
    meta = _object(obj.get("metadata"), "container.metadata")
    try:
        metadata = parse_metadata(meta)
    except FormatError as e:
        raise FormatError(f"{INDEX_NAME}: container.metadata: {e}", kind=e.kind) from None
    if metadata.internals.kind == "weights":
        raise _schema("container.metadata", "must be of kind checkpoint or inference, not weights")
    if metadata.internals.extra is not None:
        raise _schema(
            "container.metadata", "holds extra state, which a sharded checkpoint does not carry"
        )
    for name in values:
        raise _schema(
            f"values.{name}",
            "a container checkpoint has no values (its state is in container.metadata)",
        )
    optimizer = metadata.internals.optimizer
    for name in tensors:
        path = f"tensors.{name}"
        if name.startswith("model.") and len(name) > len("model."):
            continue
        if name.startswith("optimizer."):
            if optimizer is None:
                raise _schema(
                    path, "an optimizer tensor, but container.metadata holds no optimizer"
                )
            reason = optimizer.check_tensor_name(name[len("optimizer.") :])
            if reason is not None:
                raise _schema(path, reason)
            continue
        raise _schema(
            path,
            "a container checkpoint's tensors are named model.<name> or "
            "optimizer.state.<index>.<key>",
        )
    placements = obj.get("placements")
    if placements is not None:
        for name, record in _object(placements, "container.placements").items():
            path = f"container.placements.{name}"
            entry = tensors.get(f"model.{name}")
            if entry is None:
                raise _schema(path, f"names no tensor (no model.{name} in tensors)")
            record = _object(record, path)
            _only_keys(record, ("mesh_shape", "placements"), path)
            mesh = _sizes(record.get("mesh_shape"), f"{path}.mesh_shape")
            if not mesh or 0 in mesh:
                raise _schema(f"{path}.mesh_shape", "must be a non-empty list of integers >= 1")
            places = record.get("placements")
            if not isinstance(places, list):
                raise _schema(f"{path}.placements", "must be a list of strings")
            if len(places) != len(mesh):
                raise _schema(
                    f"{path}.placements",
                    f"has {len(places)} entries; the mesh has {len(mesh)} dimensions",
                )
            for i, p in enumerate(places):
                match = _SHARD.fullmatch(p) if isinstance(p, str) else None
                if not (p in ("R", "P") or (match and int(match[1]) < len(entry.shape))):
                    raise _schema(
                        f"{path}.placements[{i}]",
                        f'must be "R", "P" or "S(d)" with d below the tensor\'s '
                        f"{len(entry.shape)} dimensions, got {_json(p)}",
                    )
    return obj


def parse_index(raw: bytes) -> Index:
    """The index in ``raw``, checked as FORMAT.md 13.5 steps 2 and 3 say,
    in the order the reference reader checks (:class:`FormatError` of kind
    ``Json``, ``Schema``, ``ChunkTiling``; :class:`UnsupportedVersionError`)."""
    if len(raw) > MAX_METADATA_BYTES:
        raise FormatError(
            f"{INDEX_NAME} has {len(raw)} bytes, more than {MAX_METADATA_BYTES}", kind="TooLarge"
        )
    try:
        obj = parse_object(raw)
    except JsonError as e:
        raise FormatError(f"{INDEX_NAME}: {e}", kind="Json") from None
    fmt = obj.get("format")
    if fmt is None:
        raise _schema("format", "missing: not a sharded checkpoint's index")
    if fmt != FORMAT_NAME:
        raise _schema("format", f"must be {_json(FORMAT_NAME)}, got {_json(fmt)}")
    version = obj.get("format_version")
    if version is None:
        raise _schema("format_version", "missing")
    if isinstance(version, bool) or not isinstance(version, (int, float)):
        raise _schema("format_version", "must be an integer")
    if version != INDEX_VERSION or not is_uint(version):
        raise UnsupportedVersionError(
            f"format version {_json(version)} of {INDEX_NAME} is not supported (this package "
            f"reads version {INDEX_VERSION}); upgrade pytorch-saver to read this checkpoint"
        )
    _only_keys(obj, _KEYS + _OPTIONAL_KEYS, "(top level)")
    checkpoint_id = obj.get("checkpoint_id")
    if checkpoint_id is None:
        raise _schema("checkpoint_id", "missing")
    if not isinstance(checkpoint_id, str) or not _CHECKPOINT_ID.fullmatch(checkpoint_id):
        raise _schema(
            "checkpoint_id", f"must be 32 lowercase hexadecimal digits, got {_json(checkpoint_id)}"
        )
    timestamp = _uint(obj.get("timestamp"), "timestamp", "an integer >= 0 (Unix seconds)")
    producer = _producer(obj.get("producer"))
    world_size = _uint(obj.get("world_size"), "world_size", "an integer >= 1")
    if world_size < 1:
        raise _schema("world_size", "must be an integer >= 1, got 0")
    shards = _shards(obj.get("shards"), world_size)
    raw_tensors = _object(obj.get("tensors"), "tensors")
    for name in raw_tensors:
        if not name:
            raise _schema("tensors", "a name is empty")
    tensors = {name: _tensor(name, v) for name, v in raw_tensors.items()}
    values = _object(obj.get("values"), "values")
    for name in values:
        if not name:
            raise _schema("values", f"a name is empty ({_json(name)})")
        if name in tensors:
            raise _schema(
                f"values.{name}",
                "the name is a tensor's too (a name is in tensors or in values, not both)",
            )
    planner_data = _planner_data(obj.get("planner_data"), tensors, values)
    container = None
    if "container" in obj:
        container = _container(obj["container"], tensors, values)
    _check_chunks(tensors, len(shards))
    return Index(
        checkpoint_id=checkpoint_id,
        timestamp=timestamp,
        producer=producer,
        world_size=world_size,
        shards=shards,
        tensors=tensors,
        values=values,
        planner_data=planner_data,
        container=container,
    )


def _chunk_json(chunk: Chunk) -> dict[str, Any]:
    return {
        "offsets": list(chunk.offsets),
        "sizes": list(chunk.sizes),
        "shard": chunk.shard,
        "tensor": chunk.tensor,
    }


def encode_index(index: Index) -> bytes:
    """``index.json``'s bytes: UTF-8, two-space indentation, tensors and
    values sorted by name."""
    obj: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": INDEX_VERSION,
        "checkpoint_id": index.checkpoint_id,
        "timestamp": index.timestamp,
        "producer": producer_json(index.producer),
        "world_size": index.world_size,
        "shards": [{"file": s.file, "rank": s.rank, "size": s.size} for s in index.shards],
        "tensors": {
            name: {
                "dtype": e.dtype.name,
                "shape": list(e.shape),
                "requires_grad": e.requires_grad,
                "chunks": [_chunk_json(c) for c in e.chunks],
            }
            for name, e in sorted(index.tensors.items())
        },
        "values": dict(sorted(index.values.items())),
        "planner_data": {name: list(p) for name, p in sorted(index.planner_data.items())},
    }
    if index.container is not None:
        obj["container"] = index.container
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()

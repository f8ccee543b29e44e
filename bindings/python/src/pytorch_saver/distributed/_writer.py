"""DCP's storage writer for sharded checkpoints (docs/FORMAT.md 13.4):
each rank writes its tensor chunks as one shard file, and the coordinator
commits ``index.json`` create-only once every rank reported its shard
durable."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from .._errors import InvalidArgumentError, UsageError
from .._format import write_checkpoint
from .._format.metadata import Internals, Producer, ShardRecord
from .._format.metadata import Metadata as FileMetadata
from .._format.tensors import DTYPES
from ._index import Chunk, Index, ShardEntry, TensorEntry, encode_index
from ._location import Location
from ._values import json_value

__all__ = ["Writer"]

_DTYPE_BY_TORCH = {d.torch_dtype: d for d in DTYPES}


@dataclasses.dataclass(frozen=True)
class _SaveData:
    """What the coordinator tells every rank (``SavePlan.storage_data``)."""

    checkpoint_id: str
    timestamp: int
    rank: int
    world_size: int


@dataclasses.dataclass(frozen=True)
class _Stored:
    """Where a rank put one item (``WriteResult.storage_data``): a chunk's
    shard file, its size and the chunk's tensor name; or a value."""

    rank: int
    file: str = ""
    size: int = 0
    tensor: str = ""
    value: Any = None


def _shard_prefix(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}"


def _chunk_names(plan: SavePlan) -> dict[MetadataIndex, str]:
    """Each tensor item's name in the shard: its fully qualified name, with
    its offsets when the rank holds several chunks of one tensor."""
    tensor_items = [i for i in plan.items if i.type != WriteItemType.BYTE_IO]
    per_fqn = Counter(i.index.fqn for i in tensor_items)
    names: dict[MetadataIndex, str] = {}
    for item in tensor_items:
        fqn = item.index.fqn
        if per_fqn[fqn] == 1:
            names[item.index] = fqn
        else:
            offsets = item.index.offset or ()
            names[item.index] = f"{fqn}@{','.join(str(o) for o in offsets)}"
    return names


class Writer(StorageWriter):
    """Writes what ``torch.distributed.checkpoint.save`` hands it as a
    sharded pytorch-saver checkpoint at ``location`` (a directory, created
    when missing, or an ``s3://bucket/prefix`` URL)::

        dcp.save(state_dict, storage_writer=Writer("ckpt/step-100"))

    Each rank that holds tensor data writes one shard file (a format
    version 2 weights file of its chunks), fsynced and published without
    replacing anything; rank 0 then commits ``index.json``, create-only,
    holding every tensor's global shape, dtype and chunks, and the
    non-tensor values as JSON. A location holds one checkpoint: saving to
    one that has an index fails. A value that is not plain JSON (DCP hands
    values over as ``torch.save`` bytes, read back here by the package's
    restricted reader, never ``torch.load``) is refused, naming its key
    (:class:`MetadataError`, inside DCP's ``CheckpointException``), and no
    index is written. Tensors of dtypes the format has no name for
    (complex, float8) are refused the same way.
    """

    def __init__(
        self, location: str | os.PathLike[str], *, _container: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        self._location = Location(location)
        self._container = None if _container is None else dict(_container)
        self._is_coordinator = True
        self._coordinated: _SaveData | None = None

    @property
    def location(self) -> str:
        return str(self._location)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self._location = Location(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self._is_coordinator = is_coordinator

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=str(self._location), save_id=None)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return True

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        self._location.check_uncommitted()
        self._location.prepare()
        self._coordinated = _SaveData(uuid.uuid4().hex, int(time.time()), 0, len(plans))
        return [
            dataclasses.replace(
                plan, storage_data=dataclasses.replace(self._coordinated, rank=rank)
            )
            for rank, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        data = plan.storage_data
        if not isinstance(data, _SaveData):
            raise UsageError(
                "the save plan carries no storage data from this Writer's global planning "
                "(a planner with plan caching is not supported)",
                kind="Usage",
            )
        results: list[WriteResult] = []
        # Values first: a value that cannot be stored fails the rank before
        # it writes anything.
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                buffer = planner.resolve_data(item)
                value = json_value(item.index.fqn, buffer)  # type: ignore[arg-type]
                size = len(buffer.getbuffer())  # type: ignore[union-attr]
                results.append(WriteResult(item.index, size, _Stored(data.rank, value=value)))
        names = _chunk_names(plan)
        tensors: dict[str, torch.Tensor] = {}
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                continue
            resolved = planner.resolve_data(item)
            assert isinstance(resolved, torch.Tensor)
            tensor = resolved.detach()
            if tensor.dtype not in _DTYPE_BY_TORCH:
                raise InvalidArgumentError(
                    f"tensor {item.index.fqn!r} is {tensor.dtype}, which the format cannot store",
                    kind="InvalidInput",
                )
            if tensor.device.type != "cpu":
                tensor = tensor.to("cpu")
            tensors[names[item.index]] = tensor.contiguous()
        if tensors:
            total = [0]

            def heard(done: int, size: int) -> None:
                total[0] = size

            metadata = FileMetadata(
                model_kwargs=None,
                timestamp=data.timestamp,
                internals=Internals(
                    kind="weights",
                    model_class=None,
                    producer=Producer.this_package(),
                    shard=ShardRecord(data.checkpoint_id, data.rank),
                ),
            )
            written = write_checkpoint(
                self._location.directory,
                _shard_prefix(data.rank, data.world_size),
                metadata,
                tensors,
                None,
                progress=heard,
            )
            file = os.path.basename(written.rstrip("/"))
            for item in plan.items:
                if item.type == WriteItemType.BYTE_IO:
                    continue
                name = names[item.index]
                stored = _Stored(data.rank, file=file, size=total[0], tensor=name)
                results.append(WriteResult(item.index, tensors[name].nbytes, stored))
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        stored: dict[tuple[str, tuple[int, ...] | None], _Stored] = {}
        shards: dict[int, ShardEntry] = {}
        for rank_results in results:
            for result in rank_results:
                s = result.storage_data
                assert isinstance(s, _Stored)
                offset = None if result.index.offset is None else tuple(result.index.offset)
                stored[(result.index.fqn, offset)] = s
                if s.file:
                    shards[s.rank] = ShardEntry(s.file, s.rank, s.size)
        ranks = sorted(shards)
        position = {rank: i for i, rank in enumerate(ranks)}
        tensors: dict[str, TensorEntry] = {}
        values: dict[str, Any] = {}
        for fqn, md in metadata.state_dict_metadata.items():
            if isinstance(md, BytesStorageMetadata):
                values[fqn] = stored[(fqn, None)].value
                continue
            assert isinstance(md, TensorStorageMetadata)
            chunks = []
            for c in md.chunks:
                s = stored[(fqn, tuple(c.offsets))]
                chunks.append(Chunk(tuple(c.offsets), tuple(c.sizes), position[s.rank], s.tensor))
            tensors[fqn] = TensorEntry(
                _DTYPE_BY_TORCH[md.properties.dtype],
                tuple(md.size),
                bool(md.properties.requires_grad),
                tuple(chunks),
            )
        planner_data = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
        paths = {name: tuple(planner_data.get(name, (name,))) for name in [*tensors, *values]}
        coordinated = self._coordinated
        if coordinated is None:
            raise UsageError("finish() without prepare_global_plan() on this rank", kind="Usage")
        index = Index(
            checkpoint_id=coordinated.checkpoint_id,
            timestamp=coordinated.timestamp,
            producer=Producer.this_package(),
            world_size=coordinated.world_size,
            shards=tuple(shards[r] for r in ranks),
            tensors=tensors,
            values=values,
            planner_data=paths,
            container=self._container,
        )
        self._location.commit_index(encode_index(index))

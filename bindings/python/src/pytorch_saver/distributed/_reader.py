"""DCP's storage reader for sharded checkpoints (docs/FORMAT.md 13.5): the
index becomes DCP's ``Metadata``, and each read item is copied out of the
mapped chunk of a verified shard, so any number of ranks load what any
number saved."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from ._index import Chunk, Index, parse_index
from ._location import Location
from ._shards import ShardSet
from ._values import value_stream

__all__ = ["Reader", "torch_metadata"]


def torch_metadata(index: Index, location: str) -> Metadata:
    """DCP's view of ``index``: global shapes, dtypes and chunks, with each
    chunk's place in ``storage_data``."""
    state: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    storage: dict[MetadataIndex, Chunk | str] = {}
    for name, entry in index.tensors.items():
        chunks = []
        for chunk in entry.chunks:
            chunks.append(
                ChunkStorageMetadata(
                    offsets=torch.Size(chunk.offsets), sizes=torch.Size(chunk.sizes)
                )
            )
            storage[MetadataIndex(name, torch.Size(chunk.offsets))] = chunk
        properties = TensorProperties(
            dtype=entry.dtype.torch_dtype, requires_grad=entry.requires_grad
        )
        state[name] = TensorStorageMetadata(properties, torch.Size(entry.shape), chunks)
    for name in index.values:
        state[name] = BytesStorageMetadata()
        storage[MetadataIndex(name)] = name
    return Metadata(
        state_dict_metadata=state,
        planner_data={name: path for name, path in index.planner_data.items()},
        storage_data=storage,
        storage_meta=StorageMeta(checkpoint_id=location),
    )


class Reader(StorageReader):
    """Reads a sharded pytorch-saver checkpoint for
    ``torch.distributed.checkpoint.load``::

        dcp.load(state_dict, storage_reader=Reader("ckpt/step-100"))

    ``location`` is the checkpoint's directory or ``s3://`` prefix, or its
    ``index.json``. The index is read and checked (its schema, and that the
    chunks tile every tensor exactly) before anything is loaded; each rank
    opens only the shards its part of the state dict needs, checking that
    each is this checkpoint's (its id, rank and size) and, unless
    ``verify=False``, its CRC-32s, then copies the chunks' overlap with its
    tensors out of the mapped file. The world size may differ from the
    save's: DCP's planner reshards. Errors are :class:`FormatError` with
    the kinds of docs/FORMAT.md 13.5 (``NotCommitted`` for a location
    without an index, ``MissingShard``, ``ShardMismatch``, ``ChunkTiling``).
    """

    def __init__(self, location: str | os.PathLike[str], *, verify: bool = True) -> None:
        super().__init__()
        self._location = Location(location)
        self._verify = verify
        self._index: Index | None = None

    @property
    def location(self) -> str:
        return str(self._location)

    @property
    def index(self) -> Index:
        """The checkpoint's index (read by the first call that needs it)."""
        if self._index is None:
            self._index = parse_index(self._location.read_index())
        return self._index

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self._location = Location(checkpoint_id)
        self._index = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return torch_metadata(self.index, str(self._location))

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self.index  # noqa: B018 (read now: every rank checks the index before planning)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return True

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        index = self.index
        shards = ShardSet(self._location, index, verify=self._verify)
        # Every shard this rank reads from is checked before any tensor of
        # the state dict is written to.
        needed = sorted(
            {
                self._chunk(item.storage_index).shard
                for item in plan.items
                if item.type != LoadItemType.BYTE_IO
            }
        )
        for i in needed:
            shards.tensors(i)
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                planner.load_bytes(item, value_stream(index.values[item.storage_index.fqn]))
                continue
            source = shards.chunk(self._chunk(item.storage_index))
            for d, (offset, length) in enumerate(
                zip(item.storage_offsets, item.lengths, strict=True)
            ):
                source = source.narrow(d, offset, length)
            target = planner.resolve_tensor(item).detach()
            if target.shape != source.shape:
                raise AssertionError(
                    f"{item.dest_index.fqn}: the planner asked for {list(target.shape)}, "
                    f"the chunk gives {list(source.shape)}"
                )
            target.copy_(source)
            planner.commit_tensor(item, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def _chunk(self, storage_index: MetadataIndex) -> Chunk:
        entry = self.index.tensors[storage_index.fqn]
        offsets = tuple(storage_index.offset or ())
        for chunk in entry.chunks:
            if chunk.offsets == offsets:
                return chunk
        raise KeyError(f"{storage_index.fqn}: no chunk at offsets {list(offsets)}")

"""Opening the shard files of a sharded checkpoint with the checks of
docs/FORMAT.md 13.5 step 4, and assembling tensors from their chunks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .._errors import FormatError
from .._format import CheckpointReader
from .._mapped import map_tensors
from ._index import INDEX_NAME, Chunk, Index, TensorEntry
from ._location import Location

__all__ = ["ShardSet", "assemble_into"]


def _mismatch(file: str, reason: str) -> FormatError:
    return FormatError(f"shard file {file}: {reason}", kind="ShardMismatch")


def _quoted(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


@dataclass(frozen=True)
class _Named:
    tensor: str
    entry: TensorEntry
    chunk: Chunk


class ShardSet:
    """The shards of one index, each opened (and verified, with
    ``verify``) at its first use, and kept open."""

    def __init__(self, location: Location, index: Index, *, verify: bool = True) -> None:
        self.location = location
        self.index = index
        self.verify = verify
        self._open: dict[int, dict[str, torch.Tensor]] = {}
        self._named: dict[int, dict[str, _Named]] = {i: {} for i in range(len(index.shards))}
        for name, entry in index.tensors.items():
            for chunk in entry.chunks:
                self._named[chunk.shard][chunk.tensor] = _Named(name, entry, chunk)

    def check_present(self, shards: Iterable[int]) -> None:
        """Step 4's first checks for ``shards``: each file exists and has
        the index's size."""
        for i in shards:
            shard = self.index.shards[i]
            size = self.location.size(shard.file)
            if size is None:
                raise FormatError(
                    f"shard file {shard.file} named by {INDEX_NAME} does not exist in "
                    f"{self.location}",
                    kind="MissingShard",
                )
            if size != shard.size:
                raise _mismatch(shard.file, f"is {size} bytes; {INDEX_NAME} says {shard.size}")

    def tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Shard ``i``'s tensors, mapped, after every check of step 4."""
        found = self._open.get(i)
        if found is not None:
            return found
        self.check_present([i])
        shard = self.index.shards[i]
        path = self.location.join(shard.file)
        try:
            return self._open_checked(i, path)
        except FormatError as e:
            if str(e).startswith(f"shard file {shard.file}: "):
                raise
            raise FormatError(f"shard file {shard.file}: {e}", kind=e.kind) from e

    def _open_checked(self, i: int, path: str) -> dict[str, torch.Tensor]:
        shard = self.index.shards[i]
        with CheckpointReader(path, verify=self.verify) as reader:
            scan = reader.scan
            internals = scan.metadata.internals
            if internals.kind != "weights":
                raise _mismatch(shard.file, f"is a {internals.kind} file, not a weights file")
            if internals.shard is None:
                raise _mismatch(shard.file, "has no shard block (__pytorch_saver__.shard)")
            if internals.shard.checkpoint_id != self.index.checkpoint_id:
                raise _mismatch(
                    shard.file,
                    f"belongs to checkpoint {internals.shard.checkpoint_id}; {INDEX_NAME} is "
                    f"checkpoint {self.index.checkpoint_id}",
                )
            if internals.shard.rank != shard.rank:
                raise _mismatch(
                    shard.file,
                    f"was written by rank {internals.shard.rank}; {INDEX_NAME} says rank "
                    f"{shard.rank}",
                )
            named = self._named[i]
            stored = {t.name: t for t in scan.model.tensors}
            for tensor, item in sorted(named.items()):
                entry = stored.get(tensor)
                if entry is None:
                    raise FormatError(
                        f"shard file {shard.file}: model.safetensors: no tensor named "
                        f"{_quoted(tensor)} (a chunk of {_quoted(item.tensor)})",
                        kind="TensorNotFound",
                    )
                if entry.dtype.name != item.entry.dtype.name:
                    raise _mismatch(
                        shard.file,
                        f"tensor {tensor!r} is {entry.dtype.name}, the index says "
                        f"{item.entry.dtype.name}",
                    )
                if tuple(entry.shape) != item.chunk.sizes:
                    raise _mismatch(
                        shard.file,
                        f"tensor {tensor!r} has shape {list(entry.shape)}, its chunk "
                        f"{list(item.chunk.sizes)}",
                    )
            unnamed = sorted(set(stored) - set(named))
            if unnamed:
                raise _mismatch(
                    shard.file,
                    f"holds tensor {_quoted(unnamed[0])}, which no chunk of {INDEX_NAME} names",
                )
            model, _ = map_tensors(scan, verify=self.verify)
        self._open[i] = model
        return model

    def chunk(self, chunk: Chunk) -> torch.Tensor:
        return self.tensors(chunk.shard)[chunk.tensor]


def assemble_into(shards: ShardSet, entry: TensorEntry, out: torch.Tensor) -> None:
    """Copies every chunk of ``entry`` into its place in ``out`` (the
    whole tensor)."""
    for chunk in entry.chunks:
        view = out
        for d, (o, s) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
            view = view.narrow(d, o, s)
        view.copy_(shards.chunk(chunk))

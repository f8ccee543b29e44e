"""Sharded checkpoints of distributed training (docs/FORMAT.md 13).

:class:`Writer` and :class:`Reader` are ``torch.distributed.checkpoint``
storage backends that write and read the sharded form of the format: one
shard file per rank (an ordinary format version 2 weights file) and a
JSON index that rank 0 commits last, create-only. No file holds a pickle,
so Rust, C, C++ and Go read the result (and ``pytorch-saver consolidate``
turns it into one ordinary file)::

    import torch.distributed.checkpoint as dcp
    from pytorch_saver.distributed import Reader, Writer

    dcp.save(state_dict, storage_writer=Writer("ckpt/step-100"))
    dcp.load(state_dict, storage_reader=Reader("ckpt/step-100"))

A :class:`pytorch_saver.ModelContainer` whose model has distributed
parameters saves and loads this form itself (``save_sharded``, and
``load`` of an index). :func:`verify` checks a sharded checkpoint
completely; :func:`read_tensors` assembles its tensors whole in one
process.
"""

from __future__ import annotations

import os

import torch

from ._index import INDEX_NAME, Index, parse_index
from ._location import Location
from ._reader import Reader
from ._shards import ShardSet, assemble_into
from ._writer import Writer

__all__ = ["INDEX_NAME", "Index", "Reader", "Writer", "read_index", "read_tensors", "verify"]


def read_index(location: str | os.PathLike[str]) -> Index:
    """The index of the sharded checkpoint at ``location`` (its directory,
    ``s3://`` prefix or ``index.json``), checked as FORMAT.md 13.5 steps 1
    to 3 say."""
    return parse_index(Location(location).read_index())


def verify(location: str | os.PathLike[str]) -> Index:
    """Checks the sharded checkpoint at ``location`` completely (FORMAT.md
    13.5: the index, the tiling of every tensor, and every shard, every
    CRC-32 included) and returns its index; :class:`FormatError` naming
    the first problem."""
    where = Location(location)
    index = parse_index(where.read_index())
    shards = ShardSet(where, index, verify=True)
    for i in range(len(index.shards)):
        shards.tensors(i)
    return index


def read_tensors(location: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of the sharded checkpoint at ``location``, assembled
    whole from its chunks in this process, after :func:`verify`'s checks."""
    where = Location(location)
    index = parse_index(where.read_index())
    shards = ShardSet(where, index, verify=True)
    for i in range(len(index.shards)):
        shards.tensors(i)
    out: dict[str, torch.Tensor] = {}
    for name, entry in sorted(index.tensors.items()):
        tensor = torch.empty(entry.shape, dtype=entry.dtype.torch_dtype)
        assemble_into(shards, entry, tensor)
        out[name] = tensor
    return out

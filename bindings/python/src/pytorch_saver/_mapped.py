"""Tensors that point into a private, copy-on-write mapping of a checkpoint.

``torch.UntypedStorage.from_file(path, shared=False)`` maps the file
``MAP_PRIVATE``: pages are read from the page cache on first touch and
shared with every other process mapping the same file, and a write to a
tensor copies just that page into the process's own memory; the file never
changes. A tensor's bytes are a slice of the mapping at their absolute file
offset, viewed as the tensor's dtype and shape (a tensor whose offset is not
a multiple of its element size, which only other writers produce, is copied).

Before a tensor is handed out, the file's header bytes are compared with
those the structure check read (the file was not replaced in between) and,
when ``verify``, every tensor member's CRC-32 is checked over the mapping.
A file truncated while mapped makes the next touch of a missing page raise
SIGBUS: load with ``copy=True`` when another process may truncate it.

An object on storage is not mapped: it was fetched whole into one buffer
(``Scan.buffer``), and the tensors are views into that buffer in the same way.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import cast

import torch

from ._crc import crc32_parallel
from ._errors import FormatError
from ._format import Scan, TensorMember, check_bool_bytes

__all__ = ["map_tensors"]


def _bytes_at(base: torch.Tensor, start: int, length: int) -> memoryview:
    """``length`` bytes of the uint8 tensor ``base`` from ``start``, as a
    read-only view valid while ``base`` lives."""
    if length == 0:
        return memoryview(b"")
    array = (ctypes.c_ubyte * length).from_address(base.data_ptr() + start)
    return memoryview(array).cast("B").toreadonly()


def _member_tensors(
    base: torch.Tensor, m: TensorMember, verify: bool, advance: Callable[[int], object] | None
) -> dict[str, torch.Tensor]:
    if _bytes_at(base, m.data_start, len(m.header)) != m.header:
        raise FormatError(
            f"{m.name}: the header changed while the file was loaded (the file was replaced or "
            "written to); load it again",
            kind="Io",
        )
    if verify:
        computed = crc32_parallel(_bytes_at(base, m.data_start, m.size), advance=advance)
        if computed != m.crc:
            raise FormatError(
                f"CRC-32 mismatch in {m.name} (bytes {m.data_start}..{m.data_start + m.size}): "
                f"stored {m.crc:08x}, computed {computed:08x}",
                kind="CrcMismatch",
            )
    tensors: dict[str, torch.Tensor] = {}
    storage = base.untyped_storage()
    data_base = m.data_start + len(m.header)
    for entry in m.tensors:
        data = base[entry.start : entry.end]
        # Checked by the scan too; again here, over the bytes handed out.
        check_bool_bytes(m.name, entry, data, data_base)
        dtype = entry.dtype.torch_dtype
        if entry.start % entry.dtype.size:
            # Not aligned to its element size: cannot be viewed, copied.
            tensors[entry.name] = data.clone().view(dtype).view(entry.shape)
            continue
        # A tensor of its own on the mapping's storage, not a view of
        # `base`: views share one autograd version counter, so an in-place
        # update of one (a BatchNorm's running mean) would look like a
        # change of every other.
        tensor = torch.empty(0, dtype=dtype)
        tensor.set_(storage, entry.start // entry.dtype.size, entry.shape, _strides(entry.shape))
        tensors[entry.name] = tensor
    return tensors


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """C-order strides of ``shape``."""
    strides: list[int] = []
    step = 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def map_tensors(
    scan: Scan, verify: bool = True, advance: Callable[[int], object] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's and the optimizer's tensors of a scanned file, as views of
    a private mapping of it (module docstring). ``verify``: check the CRC-32
    of the tensor members, telling ``advance`` the bytes checked as the
    check goes; the structure was checked by the scan."""
    if scan.buffer is not None:
        # An object fetched from storage: the tensors are views into the
        # one buffer it was read into, not a second copy.
        base = scan.buffer
    else:
        try:
            storage = cast(
                "torch.UntypedStorage",
                torch.UntypedStorage.from_file(scan.path, shared=False, nbytes=scan.file_size),
            )
        except RuntimeError as exc:
            raise FormatError(f"{scan.path}: cannot map the file: {exc}", kind="Io") from exc
        base = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (scan.file_size,), (1,))
    model = _member_tensors(base, scan.model, verify, advance)
    optimizer: dict[str, torch.Tensor] = {}
    if scan.optimizer is not None:
        optimizer = _member_tensors(base, scan.optimizer, verify, advance)
    return model, optimizer

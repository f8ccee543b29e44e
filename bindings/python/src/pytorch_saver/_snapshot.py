"""Copies of a save's tensors for a write in the background: training goes
on changing the held tensors while a thread writes the copies. The copies
live in buffers kept from one save to the next, reused when a tensor keeps
its shape and dtype, so that a save after the first touches no fresh
memory (a fresh buffer of 1 GiB costs about a second of page faults)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["Snapshots"]


class Snapshots:
    """CPU buffers, one per (group, tensor name), reused between saves."""

    def __init__(self) -> None:
        self._buffers: dict[str, dict[str, torch.Tensor]] = {}

    def copy(
        self, group: str, tensors: Mapping[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor] | None:
        """Copies of ``tensors`` (same names, shapes, dtypes, contiguous, on
        the CPU) in this group's buffers; buffers of names no longer given
        are dropped. The previous copies of the group must no longer be in
        use."""
        if tensors is None:
            self._buffers.pop(group, None)
            return None
        old = self._buffers.get(group, {})
        new: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, tensor in tensors.items():
                source = tensor.detach()
                buffer = old.get(name)
                if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
                    buffer = torch.empty(source.shape, dtype=source.dtype, device="cpu")
                buffer.copy_(source)
                new[name] = buffer
        self._buffers[group] = new
        return dict(new)

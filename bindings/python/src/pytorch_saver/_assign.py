"""Building a model around tensors it is given, without initialising
parameters that are about to be replaced.

The model is built with every parameter on the meta device (no memory, no
random init) and its buffers real (so that non-persistent buffers keep the
values ``__init__`` computed); then ``load_state_dict(..., assign=True)``
makes the given tensors the model's parameters and buffers, running the
modules' load hooks, and parameters that were one object before (tied
weights) are made one object again. A class that cannot be built that way
(its ``__init__`` computes a buffer from a parameter, or reads a parameter's
values) is built normally and then assigned the same way.

The meta build patches ``nn.Module.register_parameter`` for the duration of
the constructor call (loads are serialised by a lock): a module another
thread constructs at that moment gets meta parameters too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

__all__ = ["build_assigned"]

_patch_lock = threading.Lock()


class _MetaBuildFailed(Exception):
    pass


def _to_meta(param: nn.Parameter) -> nn.Parameter:
    """A meta Parameter of the same class and ``requires_grad``."""
    data = param.detach().to("meta")
    if type(param) is nn.Parameter:
        return nn.Parameter(data, requires_grad=param.requires_grad)
    try:
        meta = type(param)(data, requires_grad=param.requires_grad)
    except Exception as exc:
        raise _MetaBuildFailed(f"cannot rebuild {type(param).__name__} on meta: {exc}") from exc
    meta.__dict__.update(param.__dict__)
    return meta


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """While active, ``register_parameter`` (also ``module.x = Parameter``)
    registers a meta copy of each parameter; one already meta is kept as
    is, so that a parameter assigned to two modules stays one object."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and isinstance(param, nn.Parameter) and not param.is_meta:
            param = _to_meta(param)
        original(self, name, param)

    with _patch_lock:
        nn.Module.register_parameter = register  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]


def _set_parameter(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._parameters[leaf] = param


def _assign(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    model.load_state_dict(state, strict=True, assign=True)
    for names in groups.values():
        if len(names) > 1:
            first = model.get_parameter(names[0])
            for name in names[1:]:
                _set_parameter(model, name, first)


def _has_meta(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return any(t.is_meta for t in tensors)


def build_assigned(
    construct: Callable[[], nn.Module], state: Mapping[str, torch.Tensor]
) -> tuple[nn.Module, bool]:
    """``construct()`` with parameters on meta, then ``state`` assigned;
    ``(model, True)``. If that fails or leaves a meta tensor behind, an
    ordinary ``construct()`` is assigned ``state``: ``(model, False)``.
    Exceptions of ``construct`` and of the assignment propagate."""
    try:
        with _parameters_on_meta():
            model = construct()
        _assign(model, state)
        if not _has_meta(model):
            return model, True
    except Exception:
        pass
    model = construct()
    _assign(model, state)
    return model, False

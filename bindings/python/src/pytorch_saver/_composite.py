"""Composite LR schedulers (``SequentialLR``, ``ChainedScheduler``): the
child schedulers of their ``schedulers`` kwarg built over the optimizer
before the composite, as a user of torch builds them, and their state,
whose ``_schedulers`` holds each child's ``state_dict()``, read back from
JSON child by child.

Which kwargs hold children is :data:`pytorch_saver._typed_kwargs.SPEC_KWARGS`;
how a child is given (a :class:`Spec` or ``{"class": cls, "kwargs":
{...}}``) and written (a ``spec`` tag, FORMAT.md 11.2) is
``_typed_kwargs``'s business.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ._errors import ClassResolutionError, InitializationError, StateMismatchError
from ._resolve import check_kind, class_name
from ._state import scheduler_state_from_json
from ._typed_kwargs import SPEC_KWARGS, spec_parts

__all__ = ["composite_state", "scheduler_call"]

_CHILDREN_KEY = "_schedulers"
"""Where a composite's ``state_dict()`` holds its children's states."""


def scheduler_call(
    scheduler_class: object,
    optimizer: torch.optim.Optimizer,
    kwargs: Mapping[str, Any],
    where: str = "scheduler_kwargs",
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) to call ``scheduler_class`` with over ``optimizer``:
    ``(optimizer,), kwargs`` for a plain scheduler; for a composite, every
    child of its ``schedulers`` kwarg built first, in order, over the same
    optimizer, and the optimizer passed by keyword (``ChainedScheduler``
    takes it second). A child's class is checked to be an LR scheduler
    before it is called (:class:`ClassResolutionError`); a child that fails
    to build raises :class:`InitializationError` naming its path
    (``scheduler_kwargs['schedulers'][1]``)."""
    name = class_name(scheduler_class) if isinstance(scheduler_class, type) else ""
    keys = SPEC_KWARGS.get(name)
    if not keys:
        return (optimizer,), dict(kwargs)
    call = dict(kwargs)
    for key in keys:
        children = call.get(key)
        if isinstance(children, (list, tuple)):
            call[key] = [
                _child(child, optimizer, f"{where}[{key!r}][{i}]")
                for i, child in enumerate(children)
            ]
    call["optimizer"] = optimizer
    return (), call


def _child(child: object, optimizer: torch.optim.Optimizer, where: str) -> LRScheduler:
    cls, kwargs = spec_parts(child, where)
    label = class_name(cls)
    check_kind(cls, "scheduler", f"{where}: {label}")
    args, call = scheduler_call(cls, optimizer, kwargs, f"{where}['kwargs']")
    try:
        built = cls(*args, **call)
    except Exception as exc:
        raise InitializationError(
            f"building the child scheduler {label}(...) at {where} with kwargs {dict(kwargs)!r} "
            f"failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(built, LRScheduler):
        kind = "ReduceLROnPlateau" if isinstance(built, ReduceLROnPlateau) else type(built).__name__
        raise ClassResolutionError(
            f"{label} at {where} built a {kind}, not an LRScheduler a composite can hold"
        )
    return built


def composite_state(scheduler: object, state: Mapping[str, Any]) -> dict[str, Any]:
    """The saved JSON ``state`` of ``scheduler`` (FORMAT.md 6) in the types
    its ``load_state_dict`` expects: for a composite, each child's state in
    ``_schedulers`` decoded as a scheduler's own (MultiStepLR's Counter,
    non-finite floats), recursively, after checking that the file holds
    one state per child (:class:`StateMismatchError` otherwise, before
    anything is loaded)."""
    children = getattr(scheduler, _CHILDREN_KEY, None)
    saved = state.get(_CHILDREN_KEY)
    if not isinstance(children, list):
        return scheduler_state_from_json(state)
    if not isinstance(saved, list) or len(saved) != len(children):
        count = len(saved) if isinstance(saved, list) else "no"
        raise StateMismatchError(
            f"the saved {class_name(type(scheduler))} state holds {count} child scheduler "
            f"states, the scheduler {len(children)} children"
        )
    out = scheduler_state_from_json({k: v for k, v in state.items() if k != _CHILDREN_KEY})
    decoded: list[dict[str, Any]] = []
    for i, (child, child_state) in enumerate(zip(children, saved, strict=True)):
        if not isinstance(child_state, Mapping):
            raise StateMismatchError(
                f"the saved state of child scheduler {i} ({class_name(type(child))}) is not an "
                f"object: {child_state!r:.200}"
            )
        decoded.append(composite_state(child, child_state))
    out[_CHILDREN_KEY] = decoded
    return out

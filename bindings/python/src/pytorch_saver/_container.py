"""``ModelContainer``: build a model, optimizer and LR scheduler from classes
and kwargs, save them (with any extra training state the container tracks)
to a checkpoint of format version 2 (or 1 when asked), and rebuild them from
one (the README's Python section; docs/FORMAT.md).

Loading is all-or-nothing: every class is resolved and checked, every object
built and every piece of saved state checked against it before any state is
loaded, and the container adopts the new objects only when all of that
succeeded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar, cast

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from . import _storage as storage
from . import extra_state
from ._assign import build_assigned
from ._composite import composite_state, scheduler_call
from ._errors import (
    ArgumentTypeError,
    ClassResolutionError,
    FormatError,
    InitializationError,
    InvalidArgumentError,
    MetadataError,
    PytorchSaverError,
    StateMismatchError,
    UsageError,
)
from ._expect import check_model, compare_state
from ._format import RESERVED_KEYS, CheckpointReader, Scan, write_checkpoint
from ._format.metadata import (
    ExtraEntry,
    Internals,
    ManagerRecord,
    Metadata,
    OptimizerSection,
    Producer,
    SchedulerSection,
    check_user_keys,
)
from ._format.reader import Advance, tensor_member_bytes
from ._format.writer import _check_prefix as check_prefix
from ._legacy import is_legacy, read_legacy
from ._mapped import map_tensors
from ._progress import ProgressCallback, Tracker
from ._resolve import Kind, check_kind, class_name, resolve
from ._state import (
    build_params,
    check_positional_state,
    kwargs_from_json,
    kwargs_to_json,
    optimizer_layout,
    optimizer_state_dict,
    scheduler_state_to_json,
)
from ._typed_kwargs import Decoder, encode_kwargs, encode_scheduler_kwargs, encode_state

__all__ = ["ModelContainer", "ModelObjects", "Scheduler", "upgrade"]

Scheduler = LRScheduler | ReduceLROnPlateau
"""What the container accepts as an LR scheduler."""

StrPath = str | os.PathLike[str]

_T = TypeVar("_T")

_SCHEDULER_WITHOUT_OPTIMIZER: Final = (
    "a scheduler needs an optimizer: scheduler_class given without optim_class"
)

_WRITE_VERSIONS: Final = (1, 2)
"""The format versions a container writes; 2 by default."""


class ModelObjects(NamedTuple):
    """The objects a container built: the model and, if any, the optimizer and
    the LR scheduler."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Scheduler | None = None


@dataclass
class _Built:
    """Objects built but not yet adopted by a container, with their kwargs
    as they will be saved (typed values, or plain JSON for version 1)."""

    model: nn.Module
    model_kwargs: dict[str, Any]
    optimizer: torch.optim.Optimizer | None = None
    optim_kwargs: dict[str, Any] | None = None
    scheduler: Scheduler | None = None
    scheduler_kwargs: dict[str, Any] | None = None


def _encoded(
    kwargs: dict[str, Any], where: str, version: int, scheduler_class: object = None
) -> dict[str, Any]:
    """The kwargs as a file of ``version`` records them, encoded now, when
    the constructor receives them: a value with no typed form is refused
    before anything is built (never at save, after training), and a list
    the caller changes later (a Sequential's layers) does not change what
    ``save`` writes. A scheduler's kwargs (``scheduler_class`` given) may
    hold functions (``lr_lambda``) and child specs (``schedulers``)."""
    if version == 1:
        try:
            return kwargs_to_json(kwargs, where)
        except MetadataError as exc:
            raise MetadataError(
                f"{exc}; the container writes format version 1 (format_version=1), whose kwargs "
                "are plain JSON: use version 2 for typed kwargs"
            ) from None
    if scheduler_class is not None:
        encoded: dict[str, Any] = encode_scheduler_kwargs(scheduler_class, kwargs, where)
        return encoded
    return encode_kwargs(kwargs, where)


def _kwargs(kwargs: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ArgumentTypeError(f"{what} must be a mapping with str keys, not {kwargs!r}")
    return dict(kwargs)


def _construct(
    factory: Callable[..., _T], label: str, what: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _T:
    try:
        return factory(*args, **kwargs)
    except Exception as exc:
        raise InitializationError(
            f"building the {what} {label}(...) with {what}_kwargs {kwargs!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _sharded_location(path: str) -> bool:
    """Whether ``path`` names a sharded checkpoint (its ``index.json``, or a
    directory holding one)."""
    parsed = storage.parse(path)
    if isinstance(parsed, storage.ObjectURL):
        return parsed.key.rstrip("/").rsplit("/", 1)[-1] == "index.json"
    return os.path.basename(parsed) == "index.json" or os.path.isfile(
        os.path.join(parsed, "index.json")
    )


def _distributed_model(model: nn.Module) -> bool:
    """Whether ``model`` has a distributed parameter (a DTensor)."""
    if not torch.distributed.is_available():
        return False
    from .distributed._container import is_distributed

    return is_distributed(model)


def _model_class(model: nn.Module) -> type:
    """The class ``model`` was built as: FSDP2's ``fully_shard`` gives the
    model a class of its own (``FSDP<Name>``, whose bases are FSDP's module
    and the model's class), which no loader could build."""
    cls = type(model)
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        if issubclass(cls, FSDPModule):
            return next(b for b in cls.__bases__ if not issubclass(b, FSDPModule))
    return cls


def _label(cls: object) -> str:
    return class_name(cls) if isinstance(cls, type) else repr(cls)


def _model_type(model_class: object) -> type[nn.Module]:
    if model_class is None:
        raise ArgumentTypeError("model_class is required: the nn.Module subclass to build")
    if not isinstance(model_class, type):
        raise ArgumentTypeError(f"model_class must be a class, not {model_class!r}")
    return cast("type[nn.Module]", check_kind(model_class, "model", _label(model_class)))


def _construct_assigned(
    model_type: type[nn.Module], kwargs: dict[str, Any], state: Mapping[str, torch.Tensor]
) -> nn.Module:
    """``model_type(**kwargs)`` built around ``state`` (``_assign.py``);
    a constructor's failure is an InitializationError, the assignment's a
    StateMismatchError."""
    label = _label(model_type)
    try:
        model, _ = build_assigned(lambda: _construct(model_type, label, "model", (), kwargs), state)
    except PytorchSaverError:
        raise
    except Exception as exc:
        raise StateMismatchError(
            f"loading the saved model state into {label} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return model


def _build(
    model_class: object,
    model_kwargs: Mapping[str, Any] | None,
    optim_class: Callable[..., torch.optim.Optimizer] | None,
    optim_kwargs: Mapping[str, Any] | None,
    scheduler_class: Callable[..., Scheduler] | None,
    scheduler_kwargs: Mapping[str, Any] | None,
    device: torch.device | str | None = None,
    assign: Mapping[str, torch.Tensor] | None = None,
    version: int = 2,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
) -> _Built:
    """Build the objects; the model class is checked before it is called,
    and every kwarg is encoded for a file of ``version`` before anything
    is built (:class:`MetadataError` naming the kwarg otherwise).
    With ``assign``, the model is built around those tensors (its state
    dict) without initialising its parameters (``_assign.py``).

    ``prepare`` (a sharded load distributing the model on a device mesh)
    takes the built model, before the optimizer is built over its
    parameters.

    Optimizer and scheduler classes given by the caller are called as given
    (the caller chose them) and what they return is checked; the container's
    load checks classes resolved from a file's names before this is called.
    """
    model_type = _model_type(model_class)
    if scheduler_class is not None and optim_class is None:
        raise InvalidArgumentError(_SCHEDULER_WITHOUT_OPTIMIZER, kind="Usage")
    m_kwargs = _kwargs(model_kwargs, "model_kwargs")
    m_saved = _encoded(m_kwargs, "model_kwargs", version)
    o_kwargs = s_kwargs = o_saved = s_saved = None
    if optim_class is not None:
        o_kwargs = _kwargs(optim_kwargs, "optim_kwargs")
        o_saved = _encoded(o_kwargs, "optim_kwargs", version)
    if scheduler_class is not None:
        s_kwargs = _kwargs(scheduler_kwargs, "scheduler_kwargs")
        s_saved = _encoded(s_kwargs, "scheduler_kwargs", version, scheduler_class)
    if assign is None:
        model = _construct(model_type, _label(model_type), "model", (), m_kwargs)
    else:
        model = _construct_assigned(model_type, m_kwargs, assign)
    if device is not None:
        # Before the optimizer exists, so that its state lands on the
        # parameters' device when it is loaded.
        model = model.to(device)
    if prepare is not None:
        model = prepare(model)
    built = _Built(model=model, model_kwargs=m_saved)
    if optim_class is None or o_kwargs is None:
        return built
    params, rest = build_params(model, o_kwargs)
    optimizer = _construct(optim_class, _label(optim_class), "optim", (params,), rest)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ClassResolutionError(
            f"{_label(optim_class)} built a {type(optimizer).__name__}, not a torch.optim.Optimizer"
        )
    built.optimizer, built.optim_kwargs = optimizer, o_saved
    if scheduler_class is None or s_kwargs is None:
        return built
    # A composite's children are built first, over the same optimizer.
    s_args, s_call = scheduler_call(scheduler_class, optimizer, s_kwargs)
    scheduler = _construct(scheduler_class, _label(scheduler_class), "scheduler", s_args, s_call)
    if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
        raise ClassResolutionError(
            f"{_label(scheduler_class)} built a {type(scheduler).__name__}, not an LR scheduler"
        )
    built.scheduler, built.scheduler_kwargs = scheduler, s_saved
    return built


def _model_state_checked(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    """:class:`StateMismatchError` unless ``saved`` has exactly the keys and
    shapes of ``model.state_dict()``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        raise StateMismatchError(
            f"the saved model state does not fit {type(model).__name__}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    for key, tensor in expected.items():
        if saved[key].shape != tensor.shape:
            raise StateMismatchError(
                f"model tensor {key!r} is saved with shape {list(saved[key].shape)}, "
                f"the model has {list(tensor.shape)}"
            )


def _optimizer_copies(
    optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For ``restore``: (held tensor, saved tensor) for each saved state
    tensor that fits the optimizer's tensor of the same parameter and key,
    which replaces the saved one in ``state_dict`` (so that loading it keeps
    the held storage); the others are replaced by copies in ordinary memory.
    Shapes, dtypes and devices are those ``Optimizer.load_state_dict`` gives."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []
    for index, entry in state_dict["state"].items():
        param = params[index]
        held_state = optimizer.state.get(param, {})
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            if key == "step":
                dtype, device = value.dtype, value.device
            else:
                dtype = param.dtype if param.is_floating_point() else value.dtype
                device = param.device
            held = held_state.get(key)
            if (
                isinstance(held, torch.Tensor)
                and held.shape == value.shape
                and held.dtype == dtype
                and held.device == device
            ):
                copies.append((held, value))
                entry[key] = held
            else:
                entry[key] = value.to(dtype=dtype, device=device, copy=True)
    return copies


def _load_into(obj: Any, state: Any, what: str) -> None:
    """``obj.load_state_dict(state)``, whose failures are state mismatches."""
    try:
        obj.load_state_dict(state)
    except Exception as exc:
        raise StateMismatchError(
            f"loading the saved {what} state failed: {type(exc).__name__}: {exc}"
        ) from exc


def _pick_class(
    given: object,
    section: OptimizerSection | SchedulerSection | None,
    kind: Kind,
    by_name: bool,
    path: str,
    allow: Iterable[str],
) -> Any:
    """The class to build for ``kind``: by name from the file when no class
    was given at all, else exactly the given one (or none)."""
    if by_name:
        return None if section is None else resolve(section.class_name, kind, allow=allow)
    if given is not None and section is None:
        raise StateMismatchError(
            f"{path} holds no {kind} state to load into the given {_label(given)}; "
            f"load it without a {kind} class"
        )
    return given


def _class_of(section: OptimizerSection | SchedulerSection | None) -> str | None:
    return None if section is None else section.class_name


def _decoded_metadata(saved: Metadata, decoder: Decoder) -> dict[str, Any]:
    """The flat metadata with the kwargs decoded into the objects they stand
    for (FORMAT.md 11.2)."""
    metadata = saved.flat()
    internals = saved.internals
    owners = {
        "model_kwargs": internals.model_class,
        "optim_kwargs": _class_of(internals.optimizer),
        "scheduler_kwargs": _class_of(internals.scheduler),
    }
    for key, owner in owners.items():
        if key in metadata:
            metadata[key] = decoder.kwargs(metadata[key], key, owner)
    return metadata


def _constructor_kwargs(saved: Metadata, decoded: Any) -> dict[str, Any]:
    """Decoded optimizer or scheduler kwargs to call the constructor with;
    a version 1 file's pairs (``betas``) become tuples, as version 1 wrote
    them as lists."""
    if decoded is None:
        return {}
    if saved.internals.format_version == 1:
        return kwargs_from_json(decoded)
    return dict(decoded)


def _extra_to_restore(
    path: str,
    entries: tuple[ExtraEntry, ...] | None,
    track: Mapping[str, Any] | None,
    decoder: Decoder,
    reader: CheckpointReader,
    advance: Advance | None = None,
) -> list[tuple[str, Any, Any]]:
    """``(name, object, decoded state)`` for each object of ``track``,
    checked against the file's entry of that name (present, same class
    name) before anything is read; the states are decoded with the file's
    extra tensors, whose bytes ``advance`` hears as they are read."""
    if not track:
        return []
    if not isinstance(track, Mapping):
        raise ArgumentTypeError(f"track must be a mapping from names to objects, not {track!r}")
    saved = {e.name: e for e in entries or ()}
    for name, obj in track.items():
        recorded = extra_state.recorded_class(obj)
        entry = saved.get(name)
        if entry is None:
            held = ", ".join(repr(n) for n in saved) or "none"
            raise StateMismatchError(
                f"{path} holds no extra state {name!r} to restore into {recorded} (it holds {held})"
            )
        if entry.class_name != recorded:
            raise StateMismatchError(
                f"{path} holds the extra state {name!r} of class {entry.class_name}, which "
                f"cannot be restored into a {recorded}"
            )
    tensors = reader.read_extra_tensors(advance)
    states = decoder.with_tensors(tensors)
    return [
        (name, obj, states.state(saved[name].state, f"extra state {name!r}"))
        for name, obj in track.items()
    ]


def _check_progress(progress: object) -> ProgressCallback | None:
    if progress is not None and not callable(progress):
        raise ArgumentTypeError(
            f"progress must be a callable progress(done, total) or None, not {progress!r}"
        )
    return cast("ProgressCallback | None", progress)


class _LoadProgress:
    """What a load or restore reports: the bytes it processes. The model's
    and the optimizer's members count once for their CRC-32 check
    (``verify``) and once for their copy into memory (``copy``), reported
    as each pass goes (one pass does both); a load that maps them
    unchecked counts them once, reported when it ends. The extra state's
    member, read only when extra state is restored, is always copied, and
    checked with ``verify``."""

    def __init__(
        self,
        progress: ProgressCallback | None,
        scan: Scan,
        *,
        verify: bool,
        copy: bool,
        extra: bool,
    ) -> None:
        self._passes = int(verify) + int(copy)
        self._extra_passes = 1 + int(verify)
        main = tensor_member_bytes(scan, extra=False)
        extra_bytes = scan.extra.size if extra and scan.extra is not None else 0
        self._tracker = Tracker(
            progress, main * max(self._passes, 1) + extra_bytes * self._extra_passes
        )

    def _scaled(self, passes: int) -> Advance | None:
        if passes == 0:
            return None
        advance = self._tracker.advance
        return advance if passes == 1 else lambda n: advance(n * passes)

    @property
    def tensors(self) -> Advance | None:
        """Hears the bytes of the model's and the optimizer's members."""
        return self._scaled(self._passes)

    @property
    def extra(self) -> Advance:
        """Hears the bytes of the extra state's member."""
        return lambda n: self._tracker.advance(n * self._extra_passes)

    def finish(self) -> None:
        self._tracker.finish()


@dataclass(frozen=True)
class _Gathered:
    """A save's metadata and tensors (``ModelContainer._gathered``), and the
    progress callback its write reports to."""

    metadata: Metadata
    model: Mapping[str, torch.Tensor]
    optimizer: Mapping[str, torch.Tensor] | None
    extra: Mapping[str, torch.Tensor] | None
    progress: ProgressCallback | None = None

    def write(self, folder_path: StrPath, prefix: str | None) -> str:
        return write_checkpoint(
            os.fspath(folder_path),
            prefix,
            self.metadata,
            self.model,
            self.optimizer,
            self.extra,
            progress=self.progress,
        )


class ModelContainer:
    """Builds, saves and loads a model with its optimizer and LR scheduler,
    and any extra training state it tracks (:meth:`track`).

    The objects it holds are ``model``, ``optim`` and ``scheduler`` (``None``
    until built). Example::

        container = ModelContainer()
        objs = container.initialize(Model, {"in_dim": 4}, torch.optim.Adam, {"lr": 1e-3})
        rng = container.track("rng", pytorch_saver.RNG())
        path = container.save("./", "tutorial", loss=0.55, epoch=5)
        metadata, objs = ModelContainer().load(path, track={"rng": rng})

    ``format_version`` is the format version the container writes: 2 (the
    default), or 1 for readers that know only version 1. A version 1
    container records kwargs as plain JSON (tuples as lists, as version 1
    always did) and refuses, at :meth:`initialize` and :meth:`track`, what
    version 1 cannot hold: typed kwargs (classes, dtypes, codec objects,
    non-finite floats) and extra state.

    ``progress`` is the container's progress callback (also the
    :attr:`progress` attribute, settable at any time): ``progress(done,
    total)`` in bytes, called by every save of the container
    (:meth:`save`, :meth:`save_inference` and a
    :class:`CheckpointManager`'s saves, whose ``save_async`` calls it from
    its writing thread) and by :meth:`load` and :meth:`restore` unless
    they are given their own. The first call is ``(0, total)``, each later
    one has a larger ``done``, and the last, ``(total, total)``, comes only
    when the operation succeeded; an exception it raises ends the operation
    (a save then leaves no file).
    """

    def __init__(
        self, *, format_version: int = 2, progress: ProgressCallback | None = None
    ) -> None:
        if format_version not in _WRITE_VERSIONS:
            raise InvalidArgumentError(
                f"format_version must be 1 or 2, not {format_version!r}", kind="InvalidArgument"
            )
        self.model: nn.Module | None = None
        self.optim: torch.optim.Optimizer | None = None
        self.scheduler: Scheduler | None = None
        self._format_version = format_version
        self._model_kwargs: dict[str, Any] = {}
        self._optim_kwargs: dict[str, Any] | None = None
        self._scheduler_kwargs: dict[str, Any] | None = None
        self._tracked: dict[str, Any] = {}
        self._progress = _check_progress(progress)

    @property
    def progress(self) -> ProgressCallback | None:
        """The progress callback of the container's saves, and of its loads
        and restores given none (class docstring); None for none. A save of
        total ``T`` bytes, the size of the file it writes, reports after
        each header and each chunk of at most 16 MiB of a tensor."""
        return self._progress

    @progress.setter
    def progress(self, progress: ProgressCallback | None) -> None:
        self._progress = _check_progress(progress)

    @property
    def format_version(self) -> int:
        """The format version :meth:`save` writes (1 or 2)."""
        return self._format_version

    @property
    def tracked(self) -> dict[str, Any]:
        """The extra state saved with every checkpoint: name -> object (a
        copy of the container's mapping)."""
        return dict(self._tracked)

    def __repr__(self) -> str:
        parts = [
            "None" if obj is None else class_name(type(obj))
            for obj in (self.model, self.optim, self.scheduler)
        ]
        return f"ModelContainer(model={parts[0]}, optim={parts[1]}, scheduler={parts[2]})"

    def _adopt(self, built: _Built, tracked: Mapping[str, Any] | None = None) -> ModelObjects:
        self.model, self._model_kwargs = built.model, built.model_kwargs
        self.optim, self._optim_kwargs = built.optimizer, built.optim_kwargs
        self.scheduler, self._scheduler_kwargs = built.scheduler, built.scheduler_kwargs
        if tracked is not None:
            self._tracked = dict(tracked)
        return ModelObjects(self.model, self.optim, self.scheduler)

    def track(self, name: str, obj: _T) -> _T:
        """Save ``obj``'s state with every checkpoint under ``name``, and
        return ``obj``::

            rng = container.track("rng", pytorch_saver.RNG())
            scaler = container.track("scaler", torch.amp.GradScaler("cpu"))
            counters = container.track("counters", pytorch_saver.Counters(step=0))

        ``obj`` is a :class:`pytorch_saver.RNG`, a
        :class:`pytorch_saver.Counters`, a ``torch.Generator``, a
        ``torch.amp.GradScaler`` or any object with ``state_dict()`` and
        ``load_state_dict()`` (``pytorch_saver.extra_state``). Its state is
        encoded now, so that a state that cannot be saved (a value with no
        typed form) is refused here, not after training
        (:class:`MetadataError`). Tracking a name again replaces the
        object. :meth:`save` writes the state of every tracked object
        (:meth:`save_inference` none); ``load(path, track=...)`` and
        :meth:`restore` put it back. :class:`ArgumentTypeError` for a name
        that is not a non-empty str or an object that cannot be tracked;
        :class:`InvalidArgumentError` in a container that writes format
        version 1, which has no extra state.
        """
        if not isinstance(name, str) or not name:
            raise ArgumentTypeError(f"an extra-state name must be a non-empty str, not {name!r}")
        if self._format_version == 1:
            raise InvalidArgumentError(
                f"cannot track {name!r}: format version 1 has no extra state; use a container "
                "that writes version 2",
                kind="InvalidInput",
            )
        extra_state.recorded_class(obj)
        encode_state(name, extra_state.state_of(obj))
        self._tracked[name] = obj
        return obj

    def _extra_entries(self) -> tuple[tuple[ExtraEntry, ...], dict[str, torch.Tensor]]:
        entries: list[ExtraEntry] = []
        tensors: dict[str, torch.Tensor] = {}
        for name, obj in self._tracked.items():
            state, entry_tensors = encode_state(name, extra_state.state_of(obj))
            clash = set(tensors) & set(entry_tensors)
            if clash:
                raise MetadataError(
                    f"extra state {name!r} names tensors another entry names: {sorted(clash)}"
                )
            entries.append(ExtraEntry(name, extra_state.recorded_class(obj), state))
            tensors.update(entry_tensors)
        return tuple(entries), tensors

    def initialize(
        self,
        model_class: type[nn.Module],
        model_kwargs: Mapping[str, Any] | None,
        optim_class: Callable[..., torch.optim.Optimizer] | None = None,
        optim_kwargs: Mapping[str, Any] | None = None,
        scheduler_class: Callable[..., Scheduler] | None = None,
        scheduler_kwargs: Mapping[str, Any] | None = None,
        *,
        distribute: Callable[[nn.Module], nn.Module] | None = None,
    ) -> ModelObjects:
        """Build ``model_class(**model_kwargs)``, then, if given,
        ``optim_class(model.parameters(), **optim_kwargs)`` and
        ``scheduler_class(optimizer, **scheduler_kwargs)``, and hold them.

        ``distribute`` is called with the built model before the optimizer
        is built over its parameters, and returns the model to hold: the
        place to distribute it on a device mesh
        (FSDP2's ``fully_shard(model, mesh=mesh)``, ``distribute_module``),
        whereupon :meth:`save` writes sharded checkpoints.

        ``optim_kwargs`` may describe several parameter groups with
        ``param_groups=[{"params": ["fc1.weight", ...], "lr": ...}, ...]``,
        naming every parameter of the model exactly once.

        Kwargs may hold what format version 2 records as typed values
        (docs/FORMAT.md 11.2): JSON values, tuples, classes
        (``block=BasicBlock``), ``torch.dtype``, non-finite floats, dicts with
        keys of any of these, dataclasses, ``argparse.Namespace``, Hugging
        Face configs and objects of codecs registered with
        :func:`pytorch_saver.register_codec`, nested in lists, dicts, tuples
        and those objects; and the ``lr_lambda`` function of ``LambdaLR`` or
        ``MultiplicativeLR`` (saved as a placeholder: pass the function to
        :meth:`load` again, ``callables={"lr_lambda": fn}``).

        ``SequentialLR`` and ``ChainedScheduler`` take their children as
        specs: ``{"schedulers": [{"class": LinearLR, "kwargs": {...}},
        Spec(CosineAnnealingLR, {...})], "milestones": [5]}``. Each child is
        built over the optimizer, in order, then the composite (the
        optimizer passed by keyword); the file records the children as
        ``spec`` tags. A ``LambdaLR`` child's function is supplied to
        :meth:`load` under its position, ``callables={"schedulers[0].lr_lambda":
        fn}``. A child that is not a spec raises :class:`MetadataError`
        naming it (``scheduler_kwargs['schedulers'][1]``). Every kwarg is
        encoded before anything is built: one that cannot be saved (a
        lambda, an open file, a tensor) raises :class:`MetadataError` (a
        ``ValueError``) naming it (``model_kwargs['act']``) and the codecs
        there are.

        Raises :class:`ArgumentTypeError` (a ``TypeError``) without a model
        class, :class:`InvalidArgumentError` (a ``ValueError``) for a
        scheduler without an optimizer, :class:`ClassResolutionError` for a
        model class that is not an ``nn.Module``, and
        :class:`InitializationError` (the constructor's exception as
        ``__cause__``) when a constructor fails. On error the container keeps
        what it held.
        """
        built = _build(
            model_class,
            model_kwargs,
            optim_class,
            optim_kwargs,
            scheduler_class,
            scheduler_kwargs,
            version=self._format_version,
            prepare=distribute,
        )
        return self._adopt(built)

    def save(self, folder_path: StrPath, prefix: str | None = None, **kwargs: Any) -> str:
        """Save the model, optimizer and scheduler, and the state of every
        tracked object (:meth:`track`), to
        ``{folder_path}/{prefix}_checkpoint_{unix seconds}.zip`` and return the
        path, in the container's format version (2 unless the container was
        made with ``format_version=1``). Extra keyword arguments are stored
        as metadata; they must be plain JSON
        (no NaN or infinity) and not use a reserved key (``model_kwargs``,
        ``optim_kwargs``, ``scheduler_kwargs``, ``timestamp``,
        ``__pytorch_saver__``), else :class:`MetadataError` and nothing is
        written. An existing file is never replaced. :class:`UsageError` (a
        ``RuntimeError``) if nothing was initialized or loaded.

        A model with distributed parameters (DTensors, under an initialized
        process group) is saved sharded: every rank calls ``save``, and
        together they write ``{folder_path}/{prefix}_checkpoint_{ts}/`` with
        one shard per rank and ``index.json`` (docs/FORMAT.md 13), whose path
        is returned; :meth:`load` reads it back on any number of ranks.
        Tracked extra state is refused there (it differs between ranks)."""
        return self._save("checkpoint", folder_path, prefix, kwargs)

    def save_inference(self, folder_path: StrPath, prefix: str | None = None, **kwargs: Any) -> str:
        """Save the model alone to ``{folder_path}/{prefix}_inference_{ts}.zip``
        and return the path; metadata as for :meth:`save`."""
        return self._save("inference", folder_path, prefix, kwargs)

    def _save(
        self,
        kind: str,
        folder_path: StrPath,
        prefix: str | None,
        user_metadata: Mapping[str, Any],
        timestamp: int | None = None,
    ) -> str:
        if self.model is not None and _distributed_model(self.model):
            return self._save_sharded(kind, folder_path, prefix, user_metadata, timestamp)
        return self._gathered(kind, user_metadata, timestamp).write(folder_path, prefix)

    def _save_sharded(
        self,
        kind: str,
        folder_path: StrPath,
        prefix: str | None,
        user_metadata: Mapping[str, Any],
        timestamp: int | None,
    ) -> str:
        """A model with distributed parameters: every rank calls this, and
        together they write one sharded checkpoint (FORMAT.md 13.3)."""
        from .distributed._container import agreed, save_sharded

        if self._tracked and kind == "checkpoint":
            raise UsageError(
                "a sharded checkpoint carries no extra state (each rank's RNG and counters "
                f"differ): stop tracking {sorted(self._tracked)} or save them separately",
                kind="Usage",
            )
        ts = agreed(int(time.time()) if timestamp is None else timestamp)
        gathered = self._gathered(kind, user_metadata, ts)
        stem = f"{check_prefix(prefix)}{kind}_{ts}"
        return save_sharded(
            gathered.metadata, gathered.model, gathered.optimizer, os.fspath(folder_path), stem
        )

    def _gathered(
        self,
        kind: str,
        user_metadata: Mapping[str, Any],
        timestamp: int | None = None,
        manager: ManagerRecord | None = None,
    ) -> _Gathered:
        """Everything a save writes, checked: the metadata (with
        ``manager``, the checkpoint manager's block, FORMAT.md 11.4) and the
        tensors, which are the held objects' own (the checkpoint manager
        copies them for a save in the background)."""
        if self.model is None:
            raise UsageError(
                "Model must be initialized or loaded before saving: call initialize() or load()",
                kind="NotInitialized",
            )
        check_user_keys(user_metadata)
        user = kwargs_to_json(user_metadata, "metadata")
        model_kwargs = self._model_kwargs
        optim_kwargs = scheduler_kwargs = None
        optimizer = scheduler = None
        optimizer_tensors: dict[str, torch.Tensor] | None = None
        extra: tuple[ExtraEntry, ...] | None = None
        extra_tensors: dict[str, torch.Tensor] | None = None
        if kind == "checkpoint" and self._tracked:
            extra, extra_tensors = self._extra_entries()
        if kind == "checkpoint" and self.optim is not None:
            optim_kwargs = self._optim_kwargs or {}
            optimizer, optimizer_tensors = optimizer_layout(
                self.optim, self.model, class_name(type(self.optim))
            )
            if self.scheduler is not None:
                scheduler_kwargs = self._scheduler_kwargs or {}
                scheduler = SchedulerSection(
                    class_name(type(self.scheduler)),
                    scheduler_state_to_json(self.scheduler.state_dict()),
                )
        metadata = Metadata(
            model_kwargs=model_kwargs,
            timestamp=int(time.time()) if timestamp is None else timestamp,
            internals=Internals(
                kind="checkpoint" if kind == "checkpoint" else "inference",
                model_class=class_name(_model_class(self.model)),
                producer=Producer.this_package(),
                optimizer=optimizer,
                scheduler=scheduler,
                format_version=self._format_version,
                extra=extra,
                manager=manager,
            ),
            optim_kwargs=optim_kwargs,
            scheduler_kwargs=scheduler_kwargs,
            user=user,
        )
        return _Gathered(
            metadata, self.model.state_dict(), optimizer_tensors, extra_tensors, self._progress
        )

    def load(
        self,
        file_path: StrPath,
        model_class: type[nn.Module] | None = None,
        optim_class: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler_class: Callable[..., Scheduler] | None = None,
        *,
        allow: Iterable[str] = (),
        classes: Iterable[type] = (),
        callables: Mapping[str, Any] | None = None,
        track: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        copy: bool = False,
        verify: bool = True,
        progress: ProgressCallback | None = None,
        distribute: Callable[[nn.Module], nn.Module] | None = None,
    ) -> tuple[dict[str, Any], ModelObjects]:
        """Rebuild the objects saved in ``file_path`` and load their state.

        By default the model's and the optimizer's tensors point into a
        private, copy-on-write mapping of the file: nothing is copied or
        randomly initialised, pages are read on first touch and shared with
        other processes loading the same file, and training writes only
        private pages (the file never changes). ``copy=True`` reads them into
        ordinary memory instead: use it when another process may truncate or
        rewrite the file while it is loaded (a mapping then faults, SIGBUS).
        ``verify=False`` skips the CRC-32 of the tensor members (for a file
        verified when it was deployed); the structure is always checked.
        Before any tensor is allocated, the model the file's kwargs describe
        is checked against its tensors (names, shapes, dtypes).

        With no class given, the model, optimizer and scheduler the file holds
        are all rebuilt, their classes resolved by the names the file records
        (see the README: registered classes, torch built-ins, the built-in
        models MLP and Sequential, classes of modules already imported, and
        the modules in ``allow``, which may be imported). With classes given,
        exactly those are built: the model (resolved by name if
        ``model_class`` is None), and the optimizer and scheduler only if
        their classes are given.

        Typed kwargs (classes, tuples, dtypes, dataclasses, configs, ...) are
        rebuilt as the objects :meth:`initialize` was given; every class they
        name resolves by the same rules as the model's, with ``classes``
        (classes the kwargs may name, as you would pass a model class) and
        the classes given as arguments first, and is checked to be what its
        tag needs before anything is called. ``callables`` supplies the
        functions a file cannot hold (``{"lr_lambda": warmup}`` for a
        ``LambdaLR``; ``{"schedulers[0].lr_lambda": warmup}`` for one that
        is the first child of a ``SequentialLR``). A composite scheduler's
        children are rebuilt from their specs (their classes resolved like
        the others) over the loaded optimizer, then the composite, whose
        saved state must hold one state per child.

        ``track`` restores extra state (:meth:`track`) into the objects
        given, ``{"rng": pytorch_saver.RNG(), "scaler": scaler}``: each name
        must be in the file with the same class name, and the container
        tracks them afterwards. Every entry is checked before any object is
        changed, and a failing ``load_state_dict`` puts back the state of
        the objects loaded before it. Entries of the file not named are
        left alone.

        ``device`` moves the model there before the optimizer is built, so
        that the model and the optimizer state live on it (files always hold
        CPU tensors). The optimizer state is matched to parameters by name.
        Returns the
        flat metadata (``model_kwargs``, ``optim_kwargs``,
        ``scheduler_kwargs`` as the objects they stand for, ``timestamp`` and
        the user's keys) and the objects. Raises :class:`FormatError`,
        :class:`ClassResolutionError`, :class:`TypedValueError`,
        :class:`InitializationError` or :class:`StateMismatchError`; on any
        error the container and the objects in ``track`` keep what they
        held.

        A file of the original package (0.1.x) loads too when the classes are
        given; its state is matched by position.

        ``file_path`` may name a sharded checkpoint (its ``index.json``, or
        its directory), as :meth:`save` writes for a model with distributed
        parameters (docs/FORMAT.md 13.3). Every rank of the process group
        calls ``load``: the model is built, handed to ``distribute`` (as
        :meth:`initialize` takes it; by default FSDP2's ``fully_shard`` on a
        1-D CPU mesh over the default process group, and nothing in a
        single process) before the optimizer is built over it, and
        ``torch.distributed.checkpoint`` loads each rank's part, whatever
        the number of ranks that saved. ``copy``, ``device`` and ``track``
        are refused there (:class:`UsageError`), and ``progress`` does not
        apply.

        ``progress(done, total)`` (the container's :attr:`progress` when
        None) hears the bytes processed once the file's structure is
        checked: the tensor bytes CRC-checked (``verify``) plus those
        copied into memory (``copy=True``; the extra state's tensors of
        ``track`` always), in chunks of at most 16 MiB. A mapped load
        without ``verify`` reports ``(0, T)`` and, when it succeeded,
        ``(T, T)``, ``T`` the mapped bytes; so does a file of the original
        package, ``T`` its size. ``(T, T)`` comes once everything is checked
        and loaded into the new objects, before the container or the
        objects of ``track`` change: an exception it raises leaves them as
        they were.
        """
        if scheduler_class is not None and optim_class is None:
            raise InvalidArgumentError(_SCHEDULER_WITHOUT_OPTIMIZER, kind="Usage")
        progress = self._progress if progress is None else _check_progress(progress)
        path = storage.normalize(file_path)
        if _sharded_location(path):
            from .distributed._container import load_sharded

            if track or device is not None or copy:
                raise UsageError(
                    f"{path} is a sharded checkpoint: it carries no extra state to track, "
                    "and its tensors land where distribute() puts the model (no device or "
                    "copy option)",
                    kind="Usage",
                )

            metadata, built = load_sharded(
                path,
                model_class,
                optim_class,
                scheduler_class,
                allow=allow,
                classes=classes,
                callables=callables,
                distribute=distribute,
                verify=verify,
                version=self._format_version,
            )
            return metadata, self._adopt(built)
        try:
            reader = CheckpointReader(path, verify=verify)
        except FormatError:
            # A file of the original package is a local file.
            if not isinstance(storage.parse(path), str) or not is_legacy(path):
                raise
            return self._load_legacy(
                path,
                model_class,
                optim_class,
                scheduler_class,
                complete=False,
                device=device,
                report=Tracker(progress, os.path.getsize(path)),
            )
        given = [c for c in (model_class, optim_class, scheduler_class) if isinstance(c, type)]
        decoder = Decoder(allow=allow, classes=[*classes, *given], callables=callables)
        with reader:
            scan = reader.scan
            saved = scan.metadata
            internals = saved.internals
            if internals.model_class is None or saved.model_kwargs is None:
                raise ClassResolutionError(
                    f"{path} is a weights file: it names no class to build; read its tensors "
                    "with pytorch_saver.read_checkpoint"
                )
            report = _LoadProgress(progress, scan, verify=verify, copy=copy, extra=bool(track))
            extras = _extra_to_restore(path, internals.extra, track, decoder, reader, report.extra)
            by_name = model_class is None and optim_class is None and scheduler_class is None
            model_cls: object = model_class
            if model_cls is None:
                model_cls = resolve(internals.model_class, "model", allow=allow)
            optim_cls = _pick_class(
                optim_class, internals.optimizer, "optimizer", by_name, path, allow
            )
            scheduler_cls = _pick_class(
                scheduler_class, internals.scheduler, "scheduler", by_name, path, allow
            )
            metadata = _decoded_metadata(saved, decoder)
            # Before any tensor exists: the model the kwargs describe must
            # hold exactly the file's tensors (_expect.py).
            model_type = _model_type(model_cls)
            m_kwargs = _kwargs(metadata["model_kwargs"], "model_kwargs")
            check_model(model_type, _label(model_type), m_kwargs, scan.model.tensors)
            if copy:
                model_state, optim_tensors = reader.read_tensors(report.tensors)
            else:
                model_state, optim_tensors = map_tensors(scan, verify, report.tensors)
        built = _build(
            model_type,
            m_kwargs,
            optim_cls,
            _constructor_kwargs(saved, metadata.get("optim_kwargs")),
            scheduler_cls,
            _constructor_kwargs(saved, metadata.get("scheduler_kwargs")),
            device,
            assign=model_state,
            version=self._format_version,
        )
        # Check every part before loading any: the scheduler was built first
        # (its constructor sets the optimizer's lr, which the loaded
        # param_groups then overwrite), then the optimizer and the scheduler
        # state are loaded, as PyTorch's documentation prescribes.
        # A class is built only for a part the file holds (_pick_class).
        optimizer_state = None
        if built.optimizer is not None:
            assert internals.optimizer is not None
            optimizer_state = optimizer_state_dict(
                built.optimizer, built.model, internals.optimizer, optim_tensors
            )
        scheduler_state = None
        if built.scheduler is not None:
            assert internals.scheduler is not None
            scheduler_state = composite_state(built.scheduler, internals.scheduler.state)
        if optimizer_state is not None:
            _load_into(built.optimizer, optimizer_state, "optimizer")
        if scheduler_state is not None:
            _load_into(built.scheduler, scheduler_state, "scheduler")
        # Everything is checked: the end is reported before anything outside
        # the new objects changes, so that a callback that raises leaves the
        # container and the objects of `track` as they were.
        report.finish()
        # Last: the objects of `track` live outside the container (the RNG is
        # global), so they change only when nothing else can fail.
        extra_state.restore_all(extras)
        return metadata, self._adopt(built, tracked=track)

    def restore(
        self,
        file_path: StrPath,
        *,
        verify: bool = True,
        allow: Iterable[str] = (),
        classes: Iterable[type] = (),
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Load the state saved in ``file_path`` into the objects the
        container holds, keeping their tensors' storage: the file must name
        the classes of the held model, optimizer and scheduler (and hold
        none that the container does not); their kwargs are not compared.
        Every tracked object (:meth:`track`) is restored too: each name must
        be in the file with the same class name (entries the container does
        not track are left alone).

        All or nothing: the file is verified (``verify``: the CRC-32 of its
        tensor members) and every tensor's name, shape and dtype and the
        optimizer and scheduler state are checked before any byte is copied,
        straight from a private mapping of the file into the held tensors.
        Returns the flat metadata, as :meth:`load` does (``allow`` and
        ``classes`` resolve the classes its kwargs name; a function the file
        cannot hold stays its ``callable`` placeholder). Raises
        :class:`FormatError` or :class:`StateMismatchError`, having changed
        nothing, and :class:`UsageError` (a ``RuntimeError``) when the
        container holds no model.

        ``progress(done, total)`` (the container's :attr:`progress` when
        None) hears the bytes processed, as for :meth:`load`: the tensor
        bytes CRC-checked as the check goes, ``(0, T)`` and ``(T, T)``
        alone without ``verify``. ``(T, T)`` comes once everything is
        checked, before anything changes: an exception it raises leaves
        everything as it was.
        """
        if self.model is None:
            raise UsageError(
                "restore() loads into the objects the container holds: call initialize() or "
                "load() first",
                kind="NotInitialized",
            )
        progress = self._progress if progress is None else _check_progress(progress)
        path = storage.normalize(file_path)
        decoder = Decoder(allow=allow, classes=classes, keep_callables=True)
        with CheckpointReader(path, verify=verify) as reader:
            scan = reader.scan
            report = _LoadProgress(
                progress, scan, verify=verify, copy=False, extra=bool(self._tracked)
            )
            extras = _extra_to_restore(
                path, scan.metadata.internals.extra, self._tracked, decoder, reader, report.extra
            )
        internals = scan.metadata.internals
        metadata = _decoded_metadata(scan.metadata, decoder)
        for kind, held, saved_name in (
            ("model", self.model, internals.model_class),
            ("optimizer", self.optim, _class_of(internals.optimizer)),
            ("scheduler", self.scheduler, _class_of(internals.scheduler)),
        ):
            held_name = None if held is None else class_name(type(held))
            if held_name != saved_name:
                raise StateMismatchError(
                    f"{path} holds the {kind} {saved_name or 'none'}, the container "
                    f"{held_name or 'none'}: restore() needs the same classes; use load() to "
                    "rebuild from the file"
                )
        model = self.model
        compare_state(_label(type(model)), model.state_dict(), scan.model.tensors)
        model_state, optim_tensors = map_tensors(scan, verify, report.tensors)
        copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        optimizer_state = None
        # The held classes are those the file names (checked above).
        if self.optim is not None:
            assert internals.optimizer is not None
            optimizer_state = optimizer_state_dict(
                self.optim, model, internals.optimizer, optim_tensors
            )
            copies = _optimizer_copies(self.optim, optimizer_state)
        scheduler_state = None
        if self.scheduler is not None:
            assert internals.scheduler is not None
            scheduler_state = composite_state(self.scheduler, internals.scheduler.state)
        # Everything is checked: the end is reported before anything changes,
        # so that a callback that raises leaves everything as it was.
        report.finish()
        # The extra state first: restore_all puts it back if one of its
        # objects refuses its state; then copy.
        extra_state.restore_all(extras)
        _load_into(model, model_state, "model")
        with torch.no_grad():
            for dst, src in copies:
                dst.copy_(src)
        if optimizer_state is not None:
            _load_into(self.optim, optimizer_state, "optimizer")
        if scheduler_state is not None:
            _load_into(self.scheduler, scheduler_state, "scheduler")
        return metadata

    def _load_legacy(
        self,
        path: str,
        model_class: type[nn.Module] | None,
        optim_class: Callable[..., torch.optim.Optimizer] | None,
        scheduler_class: Callable[..., Scheduler] | None,
        *,
        complete: bool,
        device: torch.device | str | None = None,
        report: Tracker | None = None,
    ) -> tuple[dict[str, Any], ModelObjects]:
        """Load a file of the original package, whose state PyTorch matched by
        position. ``complete``: refuse to leave any of its state behind.
        ``report`` is finished before the container adopts the objects."""
        if model_class is None:
            raise ClassResolutionError(
                f"{path} is a file of the original pytorch-saver (0.1), which records no class "
                "names: pass the classes to load(), or convert it with "
                "`python -m pytorch_saver upgrade`"
            )
        legacy = read_legacy(path)
        metadata = dict(legacy.metadata)
        for what, given, saved in (
            ("optimizer", optim_class, legacy.optim_state_dict),
            ("scheduler", scheduler_class, legacy.scheduler_state_dict),
        ):
            if given is not None and saved is None:
                raise StateMismatchError(
                    f"{path} holds no {what} state to load into the given {_label(given)}"
                )
            if complete and given is None and saved is not None:
                raise StateMismatchError(
                    f"{path} holds {what} state: give the {what} class to convert it too"
                )
        built = _build(
            model_class,
            metadata.get("model_kwargs"),
            optim_class,
            kwargs_from_json(metadata.get("optim_kwargs") or {}),
            scheduler_class,
            kwargs_from_json(metadata.get("scheduler_kwargs") or {}),
            device,
            version=self._format_version,
        )
        _model_state_checked(built.model, legacy.model_state_dict)
        optimizer_state = None
        if built.optimizer is not None:
            optimizer_state = check_positional_state(
                built.optimizer, built.model, legacy.optim_state_dict or {}
            )
        _load_into(built.model, legacy.model_state_dict, "model")
        if optimizer_state is not None:
            _load_into(built.optimizer, optimizer_state, "optimizer")
        if built.scheduler is not None:
            _load_into(built.scheduler, legacy.scheduler_state_dict, "scheduler")
        if report is not None:
            report.finish()
        return metadata, self._adopt(built)


def upgrade(
    old_path: StrPath,
    directory: StrPath,
    model_class: type[nn.Module],
    optim_class: Callable[..., torch.optim.Optimizer] | None = None,
    scheduler_class: Callable[..., Scheduler] | None = None,
    *,
    prefix: str | None = None,
) -> str:
    """Convert a file of the original package (0.1.x: a pickle inside a zip)
    into a format-v1 file in ``directory``, and return its path.

    The objects are built from the given classes and the file's kwargs, and
    the old state dicts are loaded into them by position, as the original
    package did. The old file's pickle is read with an unpickler that allows
    only tensors and plain containers. The file must be loaded completely:
    if it holds optimizer or scheduler state, their classes are required.
    The new file keeps the old timestamp and user metadata; it is a
    checkpoint if it holds an optimizer, an inference file otherwise.
    """
    # Version 1: the old file's kwargs are JSON, and version 1 records them
    # as they were (pairs such as betas as lists).
    container = ModelContainer(format_version=1)
    metadata, _ = container._load_legacy(
        os.fspath(old_path), model_class, optim_class, scheduler_class, complete=True
    )
    user = {k: v for k, v in metadata.items() if k not in RESERVED_KEYS}
    timestamp = metadata.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0:
        timestamp = None
    kind = "checkpoint" if container.optim is not None else "inference"
    return container._save(kind, directory, prefix, user, timestamp)

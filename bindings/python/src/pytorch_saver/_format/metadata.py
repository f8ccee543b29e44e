"""The ``metadata.json`` schema of formats v2 and v1
(``src/format/metadata/``; docs/FORMAT.md sections 3, 5, 6 and 11): the
original package's flat top-level keys, plus the format internals under one
reserved key.

This module is the one owner of that schema. :func:`parse` validates a
parsed JSON object into the frozen dataclasses below (:class:`Metadata` and
its parts) in one pass, with the checks and messages of the Rust reader;
:func:`to_json` turns them back into the JSON object the writer stores.
Nothing else reads or assembles the raw document. JSON values that the
schema leaves open (kwargs, user metadata, optimizer hyperparameters and
non-tensor state, scheduler state) are kept as parsed, non-finite floats of
the internals encoded as FORMAT.md 3.4 says. Kwargs and extra state are
typed values (FORMAT.md 11.2, ``typed.py``) in the version 2 encoding
whatever the file's version: a version 1 file's kwargs are converted on
reading and back on writing (11.7).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import torch

from .._errors import FormatError, InvalidArgumentError, MetadataError, UnsupportedVersionError
from .._version import __version__
from . import EXTRA_MEMBER, METADATA_MEMBER, MODEL_MEMBER, OPTIMIZER_MEMBER
from .json import is_uint
from .typed import Where, check_typed, kwargs_from_v1, kwargs_to_v1, tensor_refs

__all__ = [
    "EXTRA_MEMBER",
    "FORMAT_VERSION",
    "INTERNALS_KEY",
    "MAX_METADATA_BYTES",
    "RESERVED_KEYS",
    "SUPPORTED_VERSIONS",
    "ExtraEntry",
    "FileKind",
    "Internals",
    "ManagerRecord",
    "Metadata",
    "OptimizerSection",
    "ParamGroup",
    "Producer",
    "SchedulerSection",
    "check_user_keys",
    "parse",
    "to_json",
]

FORMAT_VERSION: Final[int] = 2
"""The format version this module writes unless asked for another."""
SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (1, 2)
"""The format versions this module reads."""
INTERNALS_KEY: Final = "__pytorch_saver__"
"""The top-level metadata key that holds every format internal."""
RESERVED_KEYS: Final[frozenset[str]] = frozenset(
    {"model_kwargs", "optim_kwargs", "scheduler_kwargs", "timestamp", INTERNALS_KEY}
)
"""Top-level metadata keys that user metadata may not use."""
MAX_METADATA_BYTES: Final = 16 << 20
"""Largest ``metadata.json`` a reader accepts."""

FileKind = Literal["checkpoint", "inference", "weights"]
"""Whether a file resumes training (model, and optionally optimizer,
scheduler and extra state), only serves a model, or (version 2) holds
tensors without a class (FORMAT.md 11.1)."""

_ASCII_DIGITS: Final = re.compile("[0-9]+")


@dataclass(frozen=True)
class Producer:
    """Who wrote a file: ``__pytorch_saver__.producer``."""

    library: str
    version: str
    language: str
    torch_version: str | None = None

    @classmethod
    def this_package(cls) -> Producer:
        """This package, as the producer of what it writes."""
        return cls("pytorch-saver", __version__, "python", torch.__version__)


@dataclass(frozen=True)
class ParamGroup:
    """One of PyTorch's optimizer ``param_groups`` (FORMAT.md 5)."""

    params: tuple[int, ...]
    """The group's parameter indices."""
    options: Mapping[str, Any]
    """Every other key (the hyperparameters), as JSON, in their order."""


@dataclass(frozen=True)
class OptimizerSection:
    """``__pytorch_saver__.optimizer`` (FORMAT.md 5)."""

    class_name: str
    param_groups: tuple[ParamGroup, ...]
    param_names: tuple[str, ...]
    """The model state-dict name of each parameter index."""
    state: Mapping[int, Mapping[str, Any]]
    """Parameter index -> its non-tensor state values, as JSON."""

    def check_tensor_name(self, name: str) -> str | None:
        """Why ``name`` is not ``state.<index>.<key>`` of this optimizer (an
        index with a ``state`` entry, a key that is not also a JSON value of
        that entry), or None."""
        if not name.startswith("state."):
            return "optimizer tensors are named state.<index>.<key>"
        index, dot, key = name[len("state.") :].partition(".")
        if not dot or not key or not index or not _ASCII_DIGITS.fullmatch(index):
            return "optimizer tensors are named state.<index>.<key>"
        if str(int(index)) != index:
            return f"{index!r} is not a canonical decimal parameter index"
        plain = self.state.get(int(index))
        if plain is None:
            return f"parameter {index} has no entry in {INTERNALS_KEY}.optimizer.state"
        if key in plain:
            return f"state key {key!r} is both a tensor and a JSON value"
        return None


@dataclass(frozen=True)
class SchedulerSection:
    """``__pytorch_saver__.scheduler`` (FORMAT.md 6)."""

    class_name: str
    state: Mapping[str, Any]
    """The scheduler's ``state_dict()`` as JSON."""


@dataclass(frozen=True)
class ExtraEntry:
    """One entry of ``__pytorch_saver__.extra`` (FORMAT.md 11.3)."""

    name: str
    """The entry's name (``rng``, ``scaler``)."""
    class_name: str
    """The kind of object whose state this is (``pytorch_saver.RNG``)."""
    state: Any
    """The object's state: a typed value (FORMAT.md 11.2) whose ``tensor``
    tags name tensors of ``extra.safetensors``."""


@dataclass(frozen=True)
class ManagerRecord:
    """``__pytorch_saver__.manager`` (FORMAT.md 11.4)."""

    id: str
    step: int
    metrics: Mapping[str, float]
    """Names to finite numbers."""


@dataclass(frozen=True)
class ShardRecord:
    """``__pytorch_saver__.shard`` (FORMAT.md 13.2): the sharded checkpoint
    a weights file is a shard of, and the rank that wrote it."""

    checkpoint_id: str
    rank: int


@dataclass(frozen=True)
class Internals:
    """``__pytorch_saver__`` (FORMAT.md 3.2); keys it does not define are
    not kept."""

    kind: FileKind
    model_class: str | None
    """None in a weights file only."""
    producer: Producer
    optimizer: OptimizerSection | None = None
    scheduler: SchedulerSection | None = None
    format_version: int = FORMAT_VERSION
    extra: tuple[ExtraEntry, ...] | None = None
    """In file order; None when the file has none (a present but empty
    object is an empty tuple)."""
    manager: ManagerRecord | None = None
    shard: ShardRecord | None = None
    """Version 2 weights files only (FORMAT.md 13.2)."""


@dataclass(frozen=True)
class Metadata:
    """The whole ``metadata.json`` (FORMAT.md 3.1)."""

    model_kwargs: Mapping[str, Any] | None
    """Typed values (FORMAT.md 11.2); None in a weights file only."""
    timestamp: int
    """Save time, Unix seconds."""
    internals: Internals
    optim_kwargs: Mapping[str, Any] | None = None
    """Present iff there is an optimizer; typed values."""
    scheduler_kwargs: Mapping[str, Any] | None = None
    """Present iff there is a scheduler; typed values."""
    user: Mapping[str, Any] = field(default_factory=dict)
    """Every other top-level key, in its order."""

    def __post_init__(self) -> None:
        check_user_keys(self.user)

    def flat(self) -> dict[str, Any]:
        """What a loading API returns as "the metadata": the top level
        without ``__pytorch_saver__``, kwargs in the typed encoding of
        version 2 whatever the file's version."""
        return _top_level(self, self.model_kwargs, self.optim_kwargs, self.scheduler_kwargs)

    def members(self) -> list[str]:
        """The members a file with this metadata has, in their order."""
        members = [METADATA_MEMBER, MODEL_MEMBER]
        if self.internals.optimizer is not None:
            members.append(OPTIMIZER_MEMBER)
        if self.internals.extra is not None:
            members.append(EXTRA_MEMBER)
        return members

    def extra_tensor_names(self) -> list[str]:
        """The tensor names of the extra state's ``tensor`` tags, in the
        order of FORMAT.md 11.6 (step 16.14): entry by entry, depth first."""
        return [name for name, _ in self.extra_tensor_refs()]

    def extra_tensor_refs(self) -> list[tuple[str, str]]:
        """(tensor name, path of its tag) of each ``tensor`` tag of the extra
        state, in the order of :meth:`extra_tensor_names`."""
        refs: list[tuple[str, str]] = []
        for entry in self.internals.extra or ():
            refs += tensor_refs(entry.state, _extra_path(entry.name))
        return refs


def check_user_keys(user: Mapping[str, Any]) -> None:
    """:class:`MetadataError` if user metadata uses a reserved key."""
    reserved = sorted(set(user) & RESERVED_KEYS)
    if reserved:
        raise MetadataError(
            f"metadata keys {reserved} are reserved by the format; use other names",
            kind="ReservedMetadataKey",
        )


# ---------------------------------------------------------------------------
# JSON -> dataclasses


def _schema(field: str, reason: str) -> FormatError:
    return FormatError(f"metadata.json: field {field}: {reason}", kind="Schema")


def _get_str(obj: Mapping[str, Any], field: str, path: str) -> str:
    value = obj.get(field)
    if field not in obj:
        raise _schema(f"{path}.{field}", "missing")
    if not isinstance(value, str) or not value:
        raise _schema(f"{path}.{field}", "must be a non-empty string")
    return value


def _get_class(internals: Mapping[str, Any], part: str) -> str | None:
    path = f"{INTERNALS_KEY}.{part}"
    if part not in internals:
        return None
    obj = internals[part]
    if not isinstance(obj, dict):
        raise _schema(path, "must be an object")
    return _get_str(obj, "class", path)


def _require_object(meta: Mapping[str, Any], key: str, present: bool) -> dict[str, Any] | None:
    if key in meta:
        if not present:
            raise _schema(key, "present although the file has no such part")
        value = meta[key]
        if not isinstance(value, dict):
            raise _schema(key, "must be an object")
        return value
    if present:
        raise _schema(key, "missing")
    return None


def _parse_optimizer(opt: Mapping[str, Any], class_name: str) -> OptimizerSection:
    path = f"{INTERNALS_KEY}.optimizer"
    if "param_names" not in opt:
        raise _schema(f"{path}.param_names", "missing")
    names = opt["param_names"]
    if not isinstance(names, list):
        raise _schema(f"{path}.param_names", "must be a list of parameter names")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise _schema(f"{path}.param_names[{i}]", "must be a non-empty string")
        if name in seen:
            raise _schema(f"{path}.param_names[{i}]", f"{name!r} appears twice")
        seen.add(name)
    count = len(names)
    if "param_groups" not in opt:
        raise _schema(f"{path}.param_groups", "missing")
    groups = opt["param_groups"]
    if not isinstance(groups, list):
        raise _schema(f"{path}.param_groups", "must be a list of objects")
    in_group = [False] * count
    param_groups: list[ParamGroup] = []
    for g, group in enumerate(groups):
        gpath = f"{path}.param_groups[{g}]"
        if not isinstance(group, dict):
            raise _schema(gpath, "must be an object")
        params = group.get("params")
        if not isinstance(params, list):
            raise _schema(f"{gpath}.params", "must be a list of parameter indices")
        for p in params:
            if not (is_uint(p) and p < count):
                raise _schema(
                    f"{gpath}.params",
                    f"{json.dumps(p)} is not an index into param_names (0..{count})",
                )
            if in_group[p]:
                raise _schema(f"{gpath}.params", f"parameter {p} is in more than one group")
            in_group[p] = True
        options = {k: v for k, v in group.items() if k != "params"}
        param_groups.append(ParamGroup(tuple(params), options))
    if not all(in_group):
        raise _schema(f"{path}.param_groups", f"parameter {in_group.index(False)} is in no group")
    if "state" not in opt:
        raise _schema(f"{path}.state", "missing")
    state_obj = opt["state"]
    if not isinstance(state_obj, dict):
        raise _schema(f"{path}.state", "must be an object")
    state: dict[int, Mapping[str, Any]] = {}
    for key, value in state_obj.items():
        canonical = _ASCII_DIGITS.fullmatch(key) is not None and str(int(key)) == key
        if not canonical or int(key) >= count:
            raise _schema(f"{path}.state", f"key {key!r} is not a parameter index (0..{count})")
        if not isinstance(value, dict):
            raise _schema(f"{path}.state.{key}", "must be an object")
        state[int(key)] = value
    return OptimizerSection(class_name, tuple(param_groups), tuple(names), state)


def _extra_path(name: str) -> str:
    return f"{INTERNALS_KEY}.extra.{name}.state"


def _parse_extra(value: Any) -> tuple[ExtraEntry, ...]:
    """``__pytorch_saver__.extra`` (FORMAT.md 11.3, step 16.12): names to
    ``{"class": NAME, "state": VALUE}``; the states are checked as typed
    values later (step 16.14)."""
    path = f"{INTERNALS_KEY}.extra"
    if not isinstance(value, dict):
        raise _schema(path, "must be an object")
    entries: list[ExtraEntry] = []
    for name, entry in value.items():
        epath = f"{path}.{name}"
        if not name:
            raise _schema(path, "an entry name is empty")
        if not isinstance(entry, dict):
            raise _schema(epath, "must be an object")
        class_name = _get_str(entry, "class", epath)
        if "state" not in entry:
            raise _schema(f"{epath}.state", "missing")
        entries.append(ExtraEntry(name, class_name, entry["state"]))
    return tuple(entries)


def _parse_manager(value: Any) -> ManagerRecord:
    """``__pytorch_saver__.manager`` (FORMAT.md 11.4, step 16.13)."""
    path = f"{INTERNALS_KEY}.manager"
    if not isinstance(value, dict):
        raise _schema(path, "must be an object")
    manager_id = _get_str(value, "id", path)
    if "step" not in value:
        raise _schema(f"{path}.step", "missing")
    step = value["step"]
    if not is_uint(step):
        got = json.dumps(step, ensure_ascii=False, separators=(",", ":"))
        raise _schema(f"{path}.step", f"must be an integer >= 0, got {got}")
    if "metrics" not in value:
        raise _schema(f"{path}.metrics", "missing")
    metrics = value["metrics"]
    if not isinstance(metrics, dict):
        raise _schema(f"{path}.metrics", "must be an object of numbers")
    for key, number in metrics.items():
        # A parsed JSON number is finite: the parser refuses the others.
        finite = isinstance(number, (int, float)) and math.isfinite(number)
        if isinstance(number, bool) or not finite:
            raise _schema(f"{path}.metrics.{key}", "must be a finite number (a metric's value)")
    return ManagerRecord(manager_id, step, metrics)


def _parse_shard(value: Any) -> ShardRecord:
    """``__pytorch_saver__.shard`` (FORMAT.md 13.2)."""
    path = f"{INTERNALS_KEY}.shard"
    if not isinstance(value, dict):
        raise _schema(path, "must be an object")
    checkpoint_id = _get_str(value, "checkpoint_id", path)
    if "rank" not in value:
        raise _schema(f"{path}.rank", "missing")
    rank = value["rank"]
    if not is_uint(rank):
        raise _schema(f"{path}.rank", "must be an integer >= 0")
    return ShardRecord(checkpoint_id, int(rank))


def _check_typed_values(
    model_kwargs: Mapping[str, Any] | None,
    optim_kwargs: Mapping[str, Any] | None,
    scheduler_kwargs: Mapping[str, Any] | None,
    extra: tuple[ExtraEntry, ...] | None,
) -> None:
    """Step 16.14 (FORMAT.md 11.6): the kwargs, then each extra entry's
    state in file order, each depth first in document order."""
    seen: dict[str, str] = {}
    parts: tuple[tuple[Where, Mapping[str, Any] | None], ...] = (
        ("model_kwargs", model_kwargs),
        ("optim_kwargs", optim_kwargs),
        ("scheduler_kwargs", scheduler_kwargs),
    )
    for where, kwargs in parts:
        for key, value in (kwargs or {}).items():
            check_typed(value, f"{where}.{key}", where=where)
    for entry in extra or ():
        check_typed(entry.state, _extra_path(entry.name), where="extra", seen=seen)


def parse(meta: Mapping[str, Any]) -> Metadata:
    """Validates a parsed ``metadata.json`` against the schema of its format
    version into a :class:`Metadata`, with the checks of FORMAT.md section
    9, step 16, in their order (11.6 for version 2). The format version is
    checked first, so that a newer file is reported as such
    (:class:`UnsupportedVersionError`) and not as a schema violation
    (:class:`FormatError` of kind ``"Schema"``). A version 1 file's kwargs
    are converted to the typed encoding (11.7); its ``extra`` and
    ``manager`` keys, which version 1 does not define, are ignored."""
    if INTERNALS_KEY not in meta:
        raise _schema(
            INTERNALS_KEY,
            "missing: not a pytorch-saver format file (a file of the original "
            "pytorch-saver 0.1 package must be upgraded first)",
        )
    internals = meta[INTERNALS_KEY]
    if not isinstance(internals, dict):
        raise _schema(INTERNALS_KEY, "must be an object")
    version_field = f"{INTERNALS_KEY}.format_version"
    if "format_version" not in internals:
        raise _schema(version_field, "missing")
    version = internals["format_version"]
    if isinstance(version, bool) or not isinstance(version, (int, float)):
        raise _schema(version_field, "must be an integer")
    if not (is_uint(version) and version in SUPPORTED_VERSIONS):
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        raise UnsupportedVersionError(
            f"format version {json.dumps(version)} is not supported (this package reads "
            f"versions {supported}); upgrade pytorch-saver to read this file"
        )
    v2 = version >= 2
    kind = internals.get("kind")
    if v2 and kind == "weights":
        pass
    elif kind != "checkpoint" and kind != "inference":
        allowed = (
            '"checkpoint", "inference" or "weights"'
            if v2
            else '"checkpoint" or "inference" ("weights" needs format version 2)'
        )
        raise _schema(f"{INTERNALS_KEY}.kind", f"must be {allowed}")
    model_class = _get_class(internals, "model")
    if kind == "weights":
        if model_class is not None:
            raise _schema(f"{INTERNALS_KEY}.model", "a weights file names no model class")
    elif model_class is None:
        raise _schema(f"{INTERNALS_KEY}.model", "missing")
    optimizer_class = _get_class(internals, "optimizer")
    scheduler_class = _get_class(internals, "scheduler")
    optimizer = None
    if optimizer_class is not None:
        optimizer = _parse_optimizer(internals["optimizer"], optimizer_class)
    scheduler = None
    if scheduler_class is not None:
        scheduler_state = internals["scheduler"].get("state")
        if not isinstance(scheduler_state, dict):
            raise _schema(f"{INTERNALS_KEY}.scheduler.state", "must be an object")
        scheduler = SchedulerSection(scheduler_class, scheduler_state)
    # Version 1 ignores the keys it does not define, these among them.
    has_extra = v2 and "extra" in internals
    part = optimizer_class is not None or scheduler_class is not None or has_extra
    if kind != "checkpoint" and part:
        if kind == "weights":
            reason = "a weights file holds no optimizer, scheduler or extra state"
        elif v2:
            reason = "an inference file holds no optimizer, scheduler or extra state"
        else:
            reason = "an inference file holds no optimizer or scheduler"
        raise _schema(INTERNALS_KEY, reason)
    if scheduler_class is not None and optimizer_class is None:
        raise _schema(INTERNALS_KEY, "a scheduler needs an optimizer")
    producer_path = f"{INTERNALS_KEY}.producer"
    if "producer" not in internals:
        raise _schema(producer_path, "missing")
    producer_obj = internals["producer"]
    if not isinstance(producer_obj, dict):
        raise _schema(producer_path, "must be an object")
    producer = Producer(
        library=_get_str(producer_obj, "library", producer_path),
        version=_get_str(producer_obj, "version", producer_path),
        language=_get_str(producer_obj, "language", producer_path),
        torch_version=(
            _get_str(producer_obj, "torch_version", producer_path)
            if "torch_version" in producer_obj
            else None
        ),
    )
    if kind == "weights" and "model_kwargs" in meta:
        raise _schema("model_kwargs", "present in a weights file, which names no model")
    model_kwargs = _require_object(meta, "model_kwargs", kind != "weights")
    optim_kwargs = _require_object(meta, "optim_kwargs", optimizer_class is not None)
    scheduler_kwargs = _require_object(meta, "scheduler_kwargs", scheduler_class is not None)
    if "timestamp" not in meta:
        raise _schema("timestamp", "missing")
    timestamp = meta["timestamp"]
    if not is_uint(timestamp):
        raise _schema("timestamp", "must be a non-negative integer (Unix seconds)")
    extra = None
    manager = None
    shard = None
    if v2:
        if has_extra:
            extra = _parse_extra(internals["extra"])
        if "manager" in internals:
            manager = _parse_manager(internals["manager"])
        if "shard" in internals:
            if kind != "weights":
                raise _schema(f"{INTERNALS_KEY}.shard", "only a weights file is a shard")
            shard = _parse_shard(internals["shard"])
        _check_typed_values(model_kwargs, optim_kwargs, scheduler_kwargs, extra)
    else:
        model_kwargs, optim_kwargs, scheduler_kwargs = (
            None if kwargs is None else kwargs_from_v1(kwargs)
            for kwargs in (model_kwargs, optim_kwargs, scheduler_kwargs)
        )
    return Metadata(
        model_kwargs=model_kwargs,
        timestamp=timestamp,
        internals=Internals(
            kind=kind,
            model_class=model_class,
            producer=producer,
            optimizer=optimizer,
            scheduler=scheduler,
            format_version=int(version),
            extra=extra,
            manager=manager,
            shard=shard,
        ),
        optim_kwargs=optim_kwargs,
        scheduler_kwargs=scheduler_kwargs,
        user={k: v for k, v in meta.items() if k not in RESERVED_KEYS},
    )


# ---------------------------------------------------------------------------
# dataclasses -> JSON


def producer_json(producer: Producer) -> dict[str, Any]:
    out = {"library": producer.library, "version": producer.version, "language": producer.language}
    if producer.torch_version is not None:
        out["torch_version"] = producer.torch_version
    return out


def _optimizer_json(opt: OptimizerSection) -> dict[str, Any]:
    return {
        "class": opt.class_name,
        "param_groups": [{**g.options, "params": list(g.params)} for g in opt.param_groups],
        "param_names": list(opt.param_names),
        "state": {str(index): dict(plain) for index, plain in opt.state.items()},
    }


def _top_level(
    metadata: Metadata,
    model_kwargs: Mapping[str, Any] | None,
    optim_kwargs: Mapping[str, Any] | None,
    scheduler_kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if model_kwargs is not None:
        out["model_kwargs"] = dict(model_kwargs)
    if optim_kwargs is not None:
        out["optim_kwargs"] = dict(optim_kwargs)
    if scheduler_kwargs is not None:
        out["scheduler_kwargs"] = dict(scheduler_kwargs)
    out["timestamp"] = metadata.timestamp
    out.update(metadata.user)
    return out


def _v1_needs(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"cannot write: format version 1 cannot hold {message}; write version 2",
        kind="InvalidInput",
    )


def to_json(metadata: Metadata) -> dict[str, Any]:
    """The ``metadata.json`` object of ``metadata``, for its
    ``format_version``, keys in the order the writer stores them:
    ``model_kwargs``, ``optim_kwargs``, ``scheduler_kwargs``,
    ``timestamp``, the user's keys, then ``__pytorch_saver__``
    (``format_version``, ``kind``, ``model``, ``optimizer``, ``scheduler``,
    ``extra``, ``manager``, ``producer``).

    For version 1, the kwargs are written as plain JSON (FORMAT.md 11.7),
    and what needs version 2 (the weights kind, extra state, a manager
    block, a tag other than a ``dict`` tag with string keys in the kwargs)
    is refused with :class:`InvalidArgumentError` of kind ``"InvalidInput"``
    (11.8)."""
    internals = metadata.internals
    kwargs: tuple[Mapping[str, Any] | None, ...] = (
        metadata.model_kwargs,
        metadata.optim_kwargs,
        metadata.scheduler_kwargs,
    )
    if internals.format_version == 1:
        if internals.kind == "weights":
            raise _v1_needs("the weights kind")
        if internals.extra is not None:
            raise _v1_needs(f"extra state ({INTERNALS_KEY}.extra)")
        if internals.manager is not None:
            raise _v1_needs(f"a manager block ({INTERNALS_KEY}.manager)")
        if internals.shard is not None:
            raise _v1_needs(f"a shard block ({INTERNALS_KEY}.shard)")
        names = ("model_kwargs", "optim_kwargs", "scheduler_kwargs")
        kwargs = tuple(
            None if k is None else kwargs_to_v1(k, name)
            for k, name in zip(kwargs, names, strict=True)
        )
    out = _top_level(metadata, kwargs[0], kwargs[1], kwargs[2])
    block: dict[str, Any] = {"format_version": internals.format_version, "kind": internals.kind}
    if internals.model_class is not None:
        block["model"] = {"class": internals.model_class}
    if internals.optimizer is not None:
        block["optimizer"] = _optimizer_json(internals.optimizer)
    if internals.scheduler is not None:
        block["scheduler"] = {
            "class": internals.scheduler.class_name,
            "state": dict(internals.scheduler.state),
        }
    if internals.extra is not None:
        block["extra"] = {
            e.name: {"class": e.class_name, "state": e.state} for e in internals.extra
        }
    if internals.manager is not None:
        block["manager"] = {
            "id": internals.manager.id,
            "step": internals.manager.step,
            "metrics": dict(internals.manager.metrics),
        }
    if internals.shard is not None:
        if internals.kind != "weights":
            raise InvalidArgumentError(
                f"{INTERNALS_KEY}.shard: only a weights file is a shard", kind="InvalidInput"
            )
        block["shard"] = {
            "checkpoint_id": internals.shard.checkpoint_id,
            "rank": internals.shard.rank,
        }
    block["producer"] = producer_json(internals.producer)
    out[INTERNALS_KEY] = block
    return out

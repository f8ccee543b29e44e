"""The ``metadata.json`` schema of format v1 (``src/format/metadata/``;
docs/FORMAT.md sections 3, 5 and 6): the original package's flat top-level
keys, plus the format internals under one reserved key.

This module is the one owner of that schema. :func:`parse` validates a
parsed JSON object into the frozen dataclasses below (:class:`Metadata` and
its parts) in one pass, with the checks and messages of the Rust reader;
:func:`to_json` turns them back into the JSON object the writer stores.
Nothing else reads or assembles the raw document. JSON values that the
schema leaves open (kwargs, user metadata, optimizer hyperparameters and
non-tensor state, scheduler state) are kept as parsed, non-finite floats of
the internals encoded as FORMAT.md 3.4 says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import torch

from .._errors import FormatError, MetadataError, UnsupportedVersionError
from .._version import __version__
from . import METADATA_MEMBER, MODEL_MEMBER, OPTIMIZER_MEMBER
from .json import is_uint

__all__ = [
    "FORMAT_VERSION",
    "INTERNALS_KEY",
    "MAX_METADATA_BYTES",
    "RESERVED_KEYS",
    "SUPPORTED_VERSIONS",
    "FileKind",
    "Internals",
    "Metadata",
    "OptimizerSection",
    "ParamGroup",
    "Producer",
    "SchedulerSection",
    "check_user_keys",
    "parse",
    "to_json",
]

FORMAT_VERSION: Final[int] = 1
"""The format version this module writes."""
SUPPORTED_VERSIONS: Final[frozenset[int]] = frozenset({1})
"""The format versions this module reads."""
INTERNALS_KEY: Final = "__pytorch_saver__"
"""The top-level metadata key that holds every format internal."""
RESERVED_KEYS: Final[frozenset[str]] = frozenset(
    {"model_kwargs", "optim_kwargs", "scheduler_kwargs", "timestamp", INTERNALS_KEY}
)
"""Top-level metadata keys that user metadata may not use."""
MAX_METADATA_BYTES: Final = 16 << 20
"""Largest ``metadata.json`` a reader accepts."""

FileKind = Literal["checkpoint", "inference"]
"""Whether a file resumes training (model, and optionally optimizer and
scheduler) or only serves a model."""

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
class Internals:
    """``__pytorch_saver__`` (FORMAT.md 3.2); keys it does not define are
    not kept."""

    kind: FileKind
    model_class: str
    producer: Producer
    optimizer: OptimizerSection | None = None
    scheduler: SchedulerSection | None = None
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Metadata:
    """The whole ``metadata.json`` (FORMAT.md 3.1)."""

    model_kwargs: Mapping[str, Any]
    timestamp: int
    """Save time, Unix seconds."""
    internals: Internals
    optim_kwargs: Mapping[str, Any] | None = None
    """Present iff there is an optimizer."""
    scheduler_kwargs: Mapping[str, Any] | None = None
    """Present iff there is a scheduler."""
    user: Mapping[str, Any] = field(default_factory=dict)
    """Every other top-level key, in its order."""

    def __post_init__(self) -> None:
        check_user_keys(self.user)

    def flat(self) -> dict[str, Any]:
        """What a loading API returns as "the metadata": the top level
        without ``__pytorch_saver__``."""
        out = to_json(self)
        del out[INTERNALS_KEY]
        return out

    def members(self) -> list[str]:
        """The members a file with this metadata has, in their order."""
        members = [METADATA_MEMBER, MODEL_MEMBER]
        if self.internals.optimizer is not None:
            members.append(OPTIMIZER_MEMBER)
        return members


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


def parse(meta: Mapping[str, Any]) -> Metadata:
    """Validates a parsed ``metadata.json`` against the v1 schema into a
    :class:`Metadata`. The format version is checked first, so that a newer
    file is reported as such (:class:`UnsupportedVersionError`) and not as
    a schema violation (:class:`FormatError` of kind ``"Schema"``)."""
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
    kind = internals.get("kind")
    if kind != "checkpoint" and kind != "inference":
        raise _schema(f"{INTERNALS_KEY}.kind", 'must be "checkpoint" or "inference"')
    model_class = _get_class(internals, "model")
    if model_class is None:
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
    if kind == "inference" and (optimizer_class is not None or scheduler_class is not None):
        raise _schema(INTERNALS_KEY, "an inference file holds no optimizer or scheduler")
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
    model_kwargs = _require_object(meta, "model_kwargs", True)
    assert model_kwargs is not None
    optim_kwargs = _require_object(meta, "optim_kwargs", optimizer_class is not None)
    scheduler_kwargs = _require_object(meta, "scheduler_kwargs", scheduler_class is not None)
    if "timestamp" not in meta:
        raise _schema("timestamp", "missing")
    timestamp = meta["timestamp"]
    if not is_uint(timestamp):
        raise _schema("timestamp", "must be a non-negative integer (Unix seconds)")
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
        ),
        optim_kwargs=optim_kwargs,
        scheduler_kwargs=scheduler_kwargs,
        user={k: v for k, v in meta.items() if k not in RESERVED_KEYS},
    )


# ---------------------------------------------------------------------------
# dataclasses -> JSON


def _producer_json(producer: Producer) -> dict[str, Any]:
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


def to_json(metadata: Metadata) -> dict[str, Any]:
    """The ``metadata.json`` object of ``metadata``, keys in the order the
    writer stores them: ``model_kwargs``, ``optim_kwargs``,
    ``scheduler_kwargs``, ``timestamp``, the user's keys, then
    ``__pytorch_saver__`` (``format_version``, ``kind``, ``model``,
    ``optimizer``, ``scheduler``, ``producer``)."""
    internals = metadata.internals
    out: dict[str, Any] = {"model_kwargs": dict(metadata.model_kwargs)}
    if metadata.optim_kwargs is not None:
        out["optim_kwargs"] = dict(metadata.optim_kwargs)
    if metadata.scheduler_kwargs is not None:
        out["scheduler_kwargs"] = dict(metadata.scheduler_kwargs)
    out["timestamp"] = metadata.timestamp
    out.update(metadata.user)
    block: dict[str, Any] = {
        "format_version": internals.format_version,
        "kind": internals.kind,
        "model": {"class": internals.model_class},
    }
    if internals.optimizer is not None:
        block["optimizer"] = _optimizer_json(internals.optimizer)
    if internals.scheduler is not None:
        block["scheduler"] = {
            "class": internals.scheduler.class_name,
            "state": dict(internals.scheduler.state),
        }
    block["producer"] = _producer_json(internals.producer)
    out[INTERNALS_KEY] = block
    return out

"""Python objects <-> the typed values of format v2 (docs/FORMAT.md 11.2):
the one owner of that conversion, for constructor kwargs and extra state.

Encoding writes the plainest form: ``None``, bools, ints, finite floats,
strings, lists and dicts with str keys (without the key ``"__type__"``) stay
plain JSON; what JSON has no form for becomes a tag, an object with the key
``"__type__"``:

- a tuple: ``{"__type__": "tuple", "items": [...]}``;
- a class (not an instance): ``{"__type__": "class", "name": "mod.Qual"}``;
- a ``torch.dtype``: ``{"__type__": "dtype", "name": "float64"}``;
- a non-finite float: ``{"__type__": "float", "value": "inf"}``;
- a dict with a key that is not a str, or with the key ``"__type__"``:
  ``{"__type__": "dict", "items": [[key, value], ...]}``;
- an object a codec knows: ``{"__type__": "object", "codec": ..., "class":
  ..., "fields": {...}}``. Built in: ``dataclass`` (its ``init`` fields),
  ``namespace`` (an ``argparse.Namespace``'s attributes) and ``hf_config``
  (a Hugging Face ``PretrainedConfig``, by ``to_dict()``; recognised by its
  class hierarchy, without importing transformers); more with
  :func:`register_codec`;
- LambdaLR's and MultiplicativeLR's ``lr_lambda`` (a function, or a list of
  them): ``{"__type__": "callable", "name": "mod.warmup"}``, a placeholder
  for the function the caller passes again to ``load`` (``callables=``);
- each child of the ``schedulers`` kwarg of ``SequentialLR`` and
  ``ChainedScheduler`` (a :class:`Spec`, or a dict ``{"class": cls,
  "kwargs": {...}}``): ``{"__type__": "spec", "class": "mod.Qual",
  "kwargs": {...}}``, its kwargs encoded as a scheduler's (so a ``LambdaLR``
  child's ``lr_lambda`` is a placeholder too, supplied at load under
  ``"schedulers[<i>].lr_lambda"``);
- in extra state only, a tensor: ``{"__type__": "tensor", "name": ...}``,
  the tensor itself going to ``extra.safetensors``.

Lists, dicts, tuples, dataclass fields and a namespace's attributes are
walked recursively. Anything else (a lambda anywhere else, an open file, a
tensor in kwargs) is refused with :class:`MetadataError` naming its path
(``model_kwargs['act']``) and the codecs there are.

Decoding resolves every class name like a model class
(:func:`pytorch_saver._resolve.resolve_value_class`: the classes the caller
passed, registered classes, torch's, modules already imported, modules
allowed) and checks that what it found is what the tag needs (a class; a
dataclass for ``dataclass``; a ``PretrainedConfig`` subclass for
``hf_config``; a subclass of the registered type for a user codec) before
calling anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import torch

from ._errors import (
    ArgumentTypeError,
    ClassResolutionError,
    InvalidArgumentError,
    MetadataError,
    PytorchSaverError,
    TypedValueError,
)
from ._format.typed import DTYPE_NAMES, MAX_CLASS_NAME_BYTES, TYPE_KEY
from ._format.typed import check_class_name as format_class_name_problem
from ._resolve import class_name, resolve_value_class

__all__ = [
    "CALLABLE_KWARGS",
    "SPEC_KWARGS",
    "Decoder",
    "Spec",
    "codec_names",
    "encode_kwargs",
    "encode_scheduler_kwargs",
    "encode_state",
    "has_tags",
    "register_codec",
    "spec_parts",
]

_DTYPES: Final[dict[str, torch.dtype]] = {
    name: getattr(torch, name)
    for name in DTYPE_NAMES
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_DTYPE_NAME: Final[dict[torch.dtype, str]] = {dtype: name for name, dtype in _DTYPES.items()}

_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 64) - 1

CALLABLE_KWARGS: Final[dict[str, frozenset[str]]] = {
    "torch.optim.lr_scheduler.LambdaLR": frozenset({"lr_lambda"}),
    "torch.optim.lr_scheduler.MultiplicativeLR": frozenset({"lr_lambda"}),
}
"""Scheduler class name -> the kwargs that may hold a function (a
``callable`` placeholder in the file, supplied again at load)."""

SPEC_KWARGS: Final[dict[str, frozenset[str]]] = {
    "torch.optim.lr_scheduler.SequentialLR": frozenset({"schedulers"}),
    "torch.optim.lr_scheduler.ChainedScheduler": frozenset({"schedulers"}),
}
"""Scheduler class name -> the kwargs that hold a list of child schedulers,
each written as a ``spec`` tag (its class and kwargs) for the scheduler to
build over the same optimizer."""

_HF_BASES: Final = frozenset(
    {
        ("transformers.configuration_utils", "PretrainedConfig"),
        ("transformers.configuration_utils", "PreTrainedConfig"),
    }
)


@dataclass(frozen=True)
class Spec:
    """A ``spec`` tag (FORMAT.md 11.2): a class and the kwargs to build it
    with, for the object that receives it to build (the child schedulers of
    ``SequentialLR`` and ``ChainedScheduler``). Decoding reads spec tags
    into this; ``initialize`` accepts it (or ``{"class": cls, "kwargs":
    {...}}``) for each child scheduler."""

    cls: type
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class _Codec:
    name: str
    matches: Callable[[object], bool]
    """Whether the codec encodes this instance."""
    encode: Callable[[Any], Mapping[str, Any]]
    needs_class: bool
    accepts: Callable[[type], bool]
    """Whether a resolved class may be handed to ``decode``."""
    class_kind: str
    """What ``accepts`` checks, for messages."""
    decode: Callable[[type | None, dict[str, Any]], Any]
    type_: type | None = None
    """The registered type of a user codec."""


def _is_hf_config_class(cls: type) -> bool:
    return any((base.__module__, base.__name__) in _HF_BASES for base in cls.__mro__)


def _is_dataclass_instance(obj: object) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _dataclass_fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def _dataclass_decode(cls: type | None, fields: dict[str, Any]) -> Any:
    assert cls is not None
    init = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - init)
    if unknown:
        raise TypedValueError(f"the dataclass {class_name(cls)} has no init fields {unknown}")
    return cls(**fields)


def _hf_config_fields(obj: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(obj.to_dict())
    # to_dict() adds two keys an object need not hold: the transformers
    # version (None in a config built in code) and the class's model_type.
    # Leaving them out keeps the rebuilt config equal to the saved one.
    held = vars(obj)
    if held.get("transformers_version") is None:
        fields.pop("transformers_version", None)
    if "model_type" not in held:
        fields.pop("model_type", None)
    return fields


def _hf_config_decode(cls: type | None, fields: dict[str, Any]) -> Any:
    assert cls is not None
    return cls.from_dict(fields)  # type: ignore[attr-defined]


def _hf_config_class_of(fields: Any, where: str) -> type:
    """The config class transformers maps ``fields["model_type"]`` to, for
    an ``hf_config`` tag whose ``class`` is null (FORMAT.md 11.2.2)."""
    model_type = fields.get("model_type") if isinstance(fields, dict) else None
    if not isinstance(model_type, str):
        raise TypedValueError(
            f"{where}: an hf_config object without a class needs a model_type field to find "
            "its config class"
        )
    try:
        from transformers import CONFIG_MAPPING  # noqa: PLC0415  (only for such a tag)
    except ImportError as exc:
        raise TypedValueError(
            f"{where}: an hf_config object without a class (model_type {model_type!r}) needs "
            f"transformers to find its config class, and transformers cannot be imported: {exc}"
        ) from exc
    try:
        cls = CONFIG_MAPPING[model_type]
    except KeyError:
        raise TypedValueError(
            f"{where}: transformers knows no config class for the model_type {model_type!r}"
        ) from None
    if not isinstance(cls, type) or not _is_hf_config_class(cls):
        raise ClassResolutionError(
            f"{where}: transformers maps the model_type {model_type!r} to {cls!r}, which is not "
            "a subclass of transformers' PretrainedConfig; refusing to use it"
        )
    return cls


def _namespace_decode(cls: type | None, fields: dict[str, Any]) -> Any:
    return argparse.Namespace(**fields)


_BUILTIN_CODECS: Final[tuple[_Codec, ...]] = (
    _Codec(
        "hf_config",
        lambda obj: _is_hf_config_class(type(obj)),
        _hf_config_fields,
        True,
        _is_hf_config_class,
        "a subclass of transformers' PretrainedConfig",
        _hf_config_decode,
    ),
    _Codec(
        "dataclass",
        _is_dataclass_instance,
        _dataclass_fields,
        True,
        dataclasses.is_dataclass,
        "a dataclass",
        _dataclass_decode,
    ),
    _Codec(
        "namespace",
        lambda obj: type(obj) is argparse.Namespace,
        vars,
        False,
        lambda cls: False,
        "no class",
        _namespace_decode,
    ),
)

_user_codecs: dict[str, _Codec] = {}
_codecs_lock = threading.Lock()


def register_codec(
    name: str,
    type_: type,
    encode: Callable[[Any], Mapping[str, Any]],
    decode: Callable[[type, dict[str, Any]], Any],
) -> None:
    """Let kwargs and extra state hold instances of ``type_`` (and its
    subclasses), saved as ``{"__type__": "object", "codec": name, "class":
    <the instance's class>, "fields": encode(obj)}`` (FORMAT.md 11.2.2).

    ``encode(obj)`` returns a dict with str keys whose values are typed
    values themselves (JSON, tuples, classes, dtypes, other codecs' objects);
    ``decode(cls, fields)`` rebuilds the object, ``cls`` being the saved
    class, resolved like a model class (passed to ``load``, registered,
    torch's, already imported or allowed) and checked to subclass ``type_``
    before ``decode`` is called.

    ``name`` must contain a dot (``"mypkg.Interval"``), so that it never
    collides with a built-in codec (``dataclass``, ``namespace``,
    ``hf_config``). Registering a name again for a class of the same name
    replaces it (a notebook cell run twice); for another class it raises
    :class:`InvalidArgumentError` (kind ``"DuplicateName"``). Codecs
    registered earlier are tried first when encoding, before the built-ins.
    """
    if not isinstance(name, str) or "." not in name or name.startswith(".") or name.endswith("."):
        raise InvalidArgumentError(
            f"a codec name must contain a dot, such as 'mypkg.Interval', not {name!r}"
        )
    if not isinstance(type_, type):
        raise ArgumentTypeError(f"register_codec() takes a class as type_, not {type_!r}")
    if not callable(encode) or not callable(decode):
        raise ArgumentTypeError(
            "register_codec() takes callables encode(obj) and decode(cls, fields)"
        )

    def accepts(cls: type) -> bool:
        return issubclass(cls, type_)

    codec = _Codec(
        name,
        lambda obj: isinstance(obj, type_),
        encode,
        True,
        accepts,
        f"a subclass of {class_name(type_)}",
        decode,  # type: ignore[arg-type]
        type_,
    )
    with _codecs_lock:
        previous = _user_codecs.get(name)
        if (
            previous is not None
            and previous.type_ is not None
            and class_name(previous.type_) != class_name(type_)
        ):
            raise InvalidArgumentError(
                f"the codec name {name!r} is already registered for {class_name(previous.type_)}",
                kind="DuplicateName",
            )
        _user_codecs[name] = codec


def codec_names() -> list[str]:
    """The codecs there are, user codecs first."""
    return [*_user_codecs, *(c.name for c in _BUILTIN_CODECS)]


def _codec_for(obj: object) -> _Codec | None:
    for codec in (*_user_codecs.values(), *_BUILTIN_CODECS):
        if codec.matches(obj):
            return codec
    return None


def _codec_named(name: str) -> _Codec | None:
    found = _user_codecs.get(name)
    if found is not None:
        return found
    for codec in _BUILTIN_CODECS:
        if codec.name == name:
            return codec
    return None


def check_class_name(name: str) -> str | None:
    """Why ``name`` is not a class name a file can record (FORMAT.md
    11.2.1), or None."""
    problem = format_class_name_problem(name)
    if problem is not None and len(name.encode()) <= MAX_CLASS_NAME_BYTES:
        return f"{problem} (a class defined inside a function has no such name)"
    return problem


# ---------------------------------------------------------------------------
# encoding


def _float_tag(value: float) -> dict[str, Any]:
    text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return {TYPE_KEY: "float", "value": text}


def _callable_name(fn: object) -> str:
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


class _Encoder:
    """One encoding pass; ``tensors`` collects the tensors of extra state
    (``None``: tensors are refused, as in kwargs)."""

    def __init__(self, entry: str | None = None) -> None:
        self.entry = entry
        self.tensors: dict[str, torch.Tensor] | None = None if entry is None else {}
        self._active: set[int] = set()

    def _refuse(self, where: str, value: object, why: str | None = None) -> MetadataError:
        reason = why or (
            f"has no typed form: {type(value).__name__} {value!r:.200}. A kwarg may hold JSON "
            "values, tuples, classes, torch dtypes, non-finite floats, dicts with any such keys, "
            f"and objects of the codecs {', '.join(codec_names())} (more with "
            "pytorch_saver.register_codec)"
        )
        return MetadataError(f"{where} {reason}")

    def _class_tag(self, cls: type, where: str) -> dict[str, Any]:
        name = class_name(cls)
        why = check_class_name(name)
        if why is not None:
            raise self._refuse(
                where,
                cls,
                f"is the class {name!r}, whose name a file cannot record: {why}; define it at "
                "module level (or register it under another name)",
            )
        return {TYPE_KEY: "class", "name": name}

    def _tensor_tag(self, value: torch.Tensor, where: str, parts: tuple[str, ...]) -> Any:
        if self.tensors is None:
            raise self._refuse(
                where, value, "is a tensor: kwargs hold no tensors (track it as extra state)"
            )
        base = ".".join((str(self.entry), *parts))
        name, n = base, 1
        while name in self.tensors:
            name, n = f"{base}~{n}", n + 1
        self.tensors[name] = value.detach().to("cpu").contiguous()
        return {TYPE_KEY: "tensor", "name": name}

    def value(self, value: Any, where: str, parts: tuple[str, ...] = ()) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise self._refuse(where, value, f"is {value}, outside 64 bits")
            return int(value)
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else _float_tag(value)
        if isinstance(value, torch.dtype):
            name = _DTYPE_NAME.get(value)
            if name is None:
                raise self._refuse(where, value, f"is {value}, a dtype the format has no name for")
            return {TYPE_KEY: "dtype", "name": name}
        if isinstance(value, type):
            return self._class_tag(value, where)
        if isinstance(value, torch.Tensor):
            return self._tensor_tag(value, where, parts)
        if isinstance(value, Spec):
            raise self._refuse(
                where,
                value,
                "is a Spec: only the schedulers kwarg of SequentialLR and ChainedScheduler "
                "holds child specs",
            )
        if id(value) in self._active:
            raise self._refuse(where, value, "contains itself")
        self._active.add(id(value))
        try:
            return self._container(value, where, parts)
        finally:
            self._active.discard(id(value))

    def _container(self, value: Any, where: str, parts: tuple[str, ...]) -> Any:
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]", (*parts, str(i))) for i, v in enumerate(value)]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            items = [self.value(v, f"{where}[{i}]", (*parts, str(i))) for i, v in enumerate(value)]
            return {TYPE_KEY: "tuple", "items": items}
        if isinstance(value, dict):
            return self._dict(value, where, parts)
        codec = _codec_for(value)
        if codec is None:
            raise self._refuse(where, value)
        try:
            fields = codec.encode(value)
        except Exception as exc:
            raise self._refuse(
                where, value, f"failed to encode with the codec {codec.name!r}: {exc}"
            ) from exc
        if not isinstance(fields, Mapping) or not all(isinstance(k, str) for k in fields):
            raise self._refuse(
                where,
                value,
                f"was encoded by the codec {codec.name!r} into something other "
                "than a dict with str keys",
            )
        cls_name = self._class_tag(type(value), where)["name"] if codec.needs_class else None
        encoded = {k: self.value(v, f"{where}.{k}", (*parts, k)) for k, v in fields.items()}
        return {TYPE_KEY: "object", "codec": codec.name, "class": cls_name, "fields": encoded}

    def _dict(self, value: dict[Any, Any], where: str, parts: tuple[str, ...]) -> Any:
        if all(isinstance(k, str) for k in value) and TYPE_KEY not in value:
            return {k: self.value(v, f"{where}[{k!r}]", (*parts, k)) for k, v in value.items()}
        items = []
        for i, (k, v) in enumerate(value.items()):
            key = self.value(k, f"{where} key {k!r}", (*parts, f"key{i}"))
            items.append([key, self.value(v, f"{where}[{k!r}]", (*parts, str(k)))])
        return {TYPE_KEY: "dict", "items": items}


def encode_kwargs(
    kwargs: Mapping[str, Any], where: str, callable_keys: Iterable[str] = ()
) -> dict[str, Any]:
    """Constructor kwargs as typed values; ``callable_keys`` are the kwargs
    that may hold a function or a list of them (``lr_lambda``), written as
    ``callable`` placeholders. :class:`MetadataError` names the first value
    that has no typed form (``model_kwargs['act']``)."""
    encoder = _Encoder()
    out: dict[str, Any] = {}
    allowed = frozenset(callable_keys)
    for key, value in kwargs.items():
        path = f"{where}[{key!r}]"
        if key in allowed and _is_function_or_list(value):
            out[key] = _callable_tags(value)
        else:
            out[key] = encoder.value(value, path, (key,))
    return out


def encode_scheduler_kwargs(scheduler_class: object, kwargs: Mapping[str, Any], where: str) -> Any:
    """A scheduler's constructor kwargs as typed values: its ``lr_lambda``
    (``LambdaLR``, ``MultiplicativeLR``) as ``callable`` placeholders, and
    the children of a composite's ``schedulers`` kwarg (``SequentialLR``,
    ``ChainedScheduler``; :data:`SPEC_KWARGS`) as ``spec`` tags whose kwargs
    are encoded by the same rules, for the child's class. A child must be a
    :class:`Spec` or a dict ``{"class": <a class>, "kwargs": {...}}``
    (``kwargs`` may be left out); anything else raises
    :class:`MetadataError` naming its path
    (``scheduler_kwargs['schedulers'][1]``)."""
    name = class_name(scheduler_class) if isinstance(scheduler_class, type) else ""
    spec_keys = SPEC_KWARGS.get(name, frozenset())
    plain = {k: v for k, v in kwargs.items() if k not in spec_keys}
    encoded = encode_kwargs(plain, where, CALLABLE_KWARGS.get(name, frozenset()))
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in spec_keys:
            out[key] = _spec_tags(value, f"{where}[{key!r}]", name)
        else:
            out[key] = encoded[key]
    return out


def _spec_tags(children: object, where: str, owner: str) -> list[dict[str, Any]]:
    if not isinstance(children, (list, tuple)) or not children:
        raise MetadataError(
            f"{where} must be a non-empty list of child schedulers for {owner}, each a "
            'pytorch_saver.Spec or {"class": <a scheduler class>, "kwargs": {...}}, not '
            f"{children!r:.200}"
        )
    return [_spec_tag(child, f"{where}[{i}]") for i, child in enumerate(children)]


def spec_parts(child: object, where: str) -> tuple[type, Mapping[str, Any]]:
    """The class and kwargs of a child scheduler as ``initialize`` takes it
    (a :class:`Spec`, or a dict ``{"class": cls, "kwargs": {...}}``);
    :class:`MetadataError` naming ``where`` for anything else."""
    if isinstance(child, Spec):
        cls: object = child.cls
        kwargs: object = child.kwargs
    elif isinstance(child, Mapping) and "class" in child and set(child) <= {"class", "kwargs"}:
        cls, kwargs = child["class"], child.get("kwargs", {})
    else:
        raise MetadataError(
            f"{where} is not a child scheduler: give a pytorch_saver.Spec or "
            f'{{"class": <a scheduler class>, "kwargs": {{...}}}}, not {child!r:.200}'
        )
    if not isinstance(cls, type):
        raise MetadataError(f"{where}['class'] must be a scheduler class, not {cls!r:.200}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise MetadataError(
            f"{where}['kwargs'] must be a mapping with str keys, not {kwargs!r:.200}"
        )
    return cls, kwargs


def _spec_tag(child: object, where: str) -> dict[str, Any]:
    cls, kwargs = spec_parts(child, where)
    name = _Encoder()._class_tag(cls, f"{where}['class']")["name"]
    return {
        TYPE_KEY: "spec",
        "class": name,
        "kwargs": encode_scheduler_kwargs(cls, kwargs, f"{where}['kwargs']"),
    }


def _is_function_or_list(value: object) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_plain_callable(v) for v in value)
    return _is_plain_callable(value)


def _is_plain_callable(value: object) -> bool:
    return callable(value) and not isinstance(value, type)


def _callable_tags(value: Any) -> Any:
    if isinstance(value, list):
        return [_callable_tags(v) for v in value]
    return {TYPE_KEY: "callable", "name": _callable_name(value)}


def encode_state(entry: str, state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """An extra-state entry's state as a typed value, every tensor replaced
    by a ``tensor`` tag named ``<entry>.<path>`` (``rng.torch.cpu``), and
    those tensors (on the CPU)."""
    encoder = _Encoder(entry)
    encoded = encoder.value(state, f"extra state {entry!r}")
    assert encoder.tensors is not None
    return encoded, encoder.tensors


def has_tags(value: Any) -> bool:
    """Whether an encoded value holds a tag that version 1 cannot express."""
    if isinstance(value, list):
        return any(has_tags(v) for v in value)
    if isinstance(value, dict):
        return TYPE_KEY in value or any(has_tags(v) for v in value.values())
    return False


# ---------------------------------------------------------------------------
# decoding


class Decoder:
    """Typed values -> Python objects, with the classes, modules and
    functions the caller allowed and, for extra state, the tensors of
    ``extra.safetensors``."""

    def __init__(
        self,
        *,
        allow: Iterable[str] = (),
        classes: Iterable[type] = (),
        callables: Mapping[str, Any] | None = None,
        tensors: Mapping[str, torch.Tensor] | None = None,
        keep_callables: bool = False,
    ) -> None:
        self.allow = tuple([allow] if isinstance(allow, str) else allow)
        given: dict[str, type] = {}
        for cls in classes:
            if not isinstance(cls, type):
                raise ArgumentTypeError(f"classes must hold classes, not {cls!r}")
            given.setdefault(class_name(cls), cls)
            given.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
        self.given = given
        if callables is not None and not isinstance(callables, Mapping):
            raise ArgumentTypeError(
                f"callables must be a mapping from kwarg names, not {callables!r}"
            )
        self.callables = dict(callables or {})
        self.tensors = tensors
        self.keep_callables = keep_callables

    def with_tensors(self, tensors: Mapping[str, torch.Tensor]) -> Decoder:
        """This decoder, for extra state whose tensors are ``tensors``."""
        other = Decoder(allow=self.allow, callables=self.callables, tensors=tensors)
        other.given = self.given
        return other

    def _class(self, name: Any, where: str) -> object:
        if not isinstance(name, str):
            raise TypedValueError(f"{where}: a class name must be a string, not {name!r}")
        return resolve_value_class(name, where, allow=self.allow, given=self.given)

    def _a_class(self, name: Any, where: str) -> type:
        obj = self._class(name, where)
        if not isinstance(obj, type):
            raise ClassResolutionError(
                f"{where} names {name!r}, which is not a class ({type(obj).__name__}); "
                "refusing to use it"
            )
        return obj

    def kwargs(
        self, kwargs: Mapping[str, Any], where: str, owner: str | None = None
    ) -> dict[str, Any]:
        """Decoded constructor kwargs of the class ``owner`` (for messages);
        at the top level, ``callable`` placeholders are replaced by
        ``callables[key]``, and in the kwargs of the ``i``-th child of a
        top-level list of ``spec`` tags (a composite scheduler's
        ``schedulers``) by ``callables["<key>[<i>].<child key>"]``."""
        try:
            return self._kwargs(kwargs, where, "", owner)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, PytorchSaverError):
                raise
            raise TypedValueError(f"{where}: a malformed typed value: {exc!r}") from exc

    def state(self, state: Any, where: str) -> Any:
        """A decoded extra-state value (``tensor`` tags from ``tensors``)."""
        try:
            return self.value(state, where)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, PytorchSaverError):
                raise
            raise TypedValueError(f"{where}: a malformed typed value: {exc!r}") from exc

    def _kwargs(
        self, kwargs: Mapping[str, Any], where: str, prefix: str, owner: str | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in kwargs.items():
            path = f"{where}[{key!r}]"
            name = f"{prefix}{key}"
            if _is_callable_tag(value) or (
                isinstance(value, list) and value and all(_is_callable_tag(v) for v in value)
            ):
                if name not in self.callables and self.keep_callables:
                    out[key] = value
                    continue
                if name not in self.callables:
                    names = [v["name"] for v in value] if isinstance(value, list) else value["name"]
                    of = f" of {owner}" if owner else ""
                    raise TypedValueError(
                        f"{path}{of} is the function {names!r}, which a file cannot hold: pass "
                        f"it to load (load(path, callables={{{name!r}: fn}}))"
                    )
                out[key] = self.callables[name]
            elif isinstance(value, list) and value and all(_is_spec_tag(v) for v in value):
                out[key] = [
                    self._spec(v, f"{path}[{i}]", f"{name}[{i}].") for i, v in enumerate(value)
                ]
            else:
                out[key] = self.value(value, path)
        return out

    def _spec(self, tag: dict[str, Any], where: str, prefix: str) -> Spec:
        cls = self._a_class(tag["class"], where)
        kwargs = tag["kwargs"]
        if not isinstance(kwargs, dict):
            raise TypedValueError(f"{where}: a spec's kwargs must be an object, not {kwargs!r}")
        return Spec(cls, self._kwargs(kwargs, f"{where}.kwargs", prefix, tag["class"]))

    def value(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, dict):
            return value
        if TYPE_KEY not in value:
            return {k: self.value(v, f"{where}[{k!r}]") for k, v in value.items()}
        return self._tag(value, where)

    def _tag(self, tag: dict[str, Any], where: str) -> Any:
        kind = tag[TYPE_KEY]
        if kind == "tuple":
            return tuple(self.value(v, f"{where}[{i}]") for i, v in enumerate(tag["items"]))
        if kind == "class":
            return self._a_class(tag["name"], where)
        if kind == "dtype":
            dtype = _DTYPES.get(tag["name"])
            if dtype is None:
                raise TypedValueError(f"{where}: the dtype {tag['name']!r} is not known to torch")
            return dtype
        if kind == "float":
            if tag["value"] not in ("inf", "-inf", "nan"):
                raise TypedValueError(f"{where}: {tag['value']!r} is not a non-finite float")
            return float(tag["value"])
        if kind == "dict":
            return self._dict(tag["items"], where)
        if kind == "object":
            return self._object(tag, where)
        if kind == "spec":
            cls = self._a_class(tag["class"], where)
            return Spec(cls, self.value(tag["kwargs"], f"{where}.kwargs"))
        if kind == "tensor":
            if self.tensors is None or tag["name"] not in self.tensors:
                raise TypedValueError(
                    f"{where}: a tensor {tag['name']!r} where the file holds none of that name"
                )
            return self.tensors[tag["name"]]
        if kind == "callable":
            raise TypedValueError(
                f"{where} is the function {tag['name']!r}: only a top-level kwarg of "
                "LambdaLR or MultiplicativeLR (or of such a child of SequentialLR or "
                "ChainedScheduler) may be a function"
            )
        raise TypedValueError(f"{where}: unknown typed value {kind!r}")

    def _dict(self, items: list[Any], where: str) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for i, (k, v) in enumerate(items):
            key = self.value(k, f"{where} key {i}")
            try:
                repeated = key in out
            except TypeError as exc:
                raise TypedValueError(f"{where}: key {i} ({key!r}) cannot be a dict key") from exc
            if repeated:
                raise TypedValueError(f"{where}: the key {key!r} appears twice")
            out[key] = self.value(v, f"{where}[{key!r}]")
        return out

    def _object(self, tag: dict[str, Any], where: str) -> Any:
        codec = _codec_named(tag["codec"])
        if codec is None:
            raise TypedValueError(
                f"{where} is an object of the codec {tag['codec']!r}, which is not registered "
                f"(codecs: {', '.join(codec_names())}); register it with "
                "pytorch_saver.register_codec before loading"
            )
        cls: type | None = None
        if codec.needs_class and tag["class"] is None and codec.name == "hf_config":
            # Written by a converter without transformers (the Rust one):
            # the class is the one transformers maps fields["model_type"] to.
            cls = _hf_config_class_of(tag["fields"], where)
        elif codec.needs_class:
            if tag["class"] is None:
                raise TypedValueError(f"{where}: the codec {codec.name!r} needs a class")
            cls = self._a_class(tag["class"], where)
            if not codec.accepts(cls):
                raise ClassResolutionError(
                    f"{where} names {tag['class']!r} for the codec {codec.name!r}, which is not "
                    f"{codec.class_kind}; refusing to use it"
                )
        elif tag["class"] is not None:
            raise TypedValueError(f"{where}: the codec {codec.name!r} takes no class")
        fields = {k: self.value(v, f"{where}.{k}") for k, v in tag["fields"].items()}
        try:
            return codec.decode(cls, fields)
        except TypedValueError:
            raise
        except Exception as exc:
            raise TypedValueError(
                f"{where}: the codec {codec.name!r} failed to rebuild "
                f"{tag['class'] or 'the object'}: {type(exc).__name__}: {exc}"
            ) from exc


def _is_callable_tag(value: Any) -> bool:
    return isinstance(value, dict) and value.get(TYPE_KEY) == "callable"


def _is_spec_tag(value: Any) -> bool:
    return isinstance(value, dict) and value.get(TYPE_KEY) == "spec"

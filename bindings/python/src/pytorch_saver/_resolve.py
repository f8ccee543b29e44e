"""Safe class resolution: from a class name recorded in a file to a class, and
from a class to the name to record (docs/FORMAT.md 3.3; loading never runs code from a file).

A name read from a file is only ever *looked up*, never imported blindly. It
resolves, in this order, from:

1. classes registered with :func:`register` (under their registered name);
2. PyTorch's own classes under their public names: ``torch.nn.X``,
   ``torch.optim.X`` and ``torch.optim.lr_scheduler.X``;
3. the built-in models :class:`pytorch_saver.models.MLP` and
   :class:`pytorch_saver.models.Sequential` (docs/MODELS.md);
4. classes of modules already in ``sys.modules``, found by walking the
   qualified name through module and class namespaces without running any
   attribute hook (``__getattr__``, properties) and without importing;
5. modules the caller explicitly allows (``allow=["mypkg.models"]``): exactly
   those may be imported.

(Classes the caller passes to ``load`` come before all of these: they are
used as given, by the container.) Whatever a name resolves to must be a class
that subclasses the expected base (``nn.Module``, ``torch.optim.Optimizer``,
``LRScheduler`` / ``ReduceLROnPlateau``) before anything calls it.

Class names inside typed kwargs and extra state (FORMAT.md 11.2.1:
``torchvision.models.resnet.BasicBlock``, a dataclass, a Hugging Face config)
resolve by the same rules (:func:`resolve_value_class`), with the classes the
caller passed first; what they need to be (a class, a dataclass, a
``PretrainedConfig``) is checked by ``_typed_kwargs`` before anything is
called.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Final, Literal, TypeVar

import torch
from torch import nn
from torch.optim import lr_scheduler

from . import models
from ._errors import ArgumentTypeError, ClassResolutionError

__all__ = ["Kind", "check_kind", "class_name", "register", "resolve", "resolve_value_class"]

Kind = Literal["model", "optimizer", "scheduler"]
"""The three roles a class can play in a checkpoint."""

_T = TypeVar("_T", bound=type)

_BASES: Final[dict[Kind, tuple[type, ...]]] = {
    "model": (nn.Module,),
    "optimizer": (torch.optim.Optimizer,),
    "scheduler": (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau),
}
_BASE_TEXT: Final[dict[Kind, str]] = {
    "model": "torch.nn.Module",
    "optimizer": "torch.optim.Optimizer",
    "scheduler": "torch.optim.lr_scheduler.LRScheduler (or ReduceLROnPlateau)",
}
_ARGUMENT: Final[dict[Kind, str]] = {
    "model": "model_class",
    "optimizer": "optim_class",
    "scheduler": "scheduler_class",
}
# PyTorch's public namespaces, as (recorded prefix, module). A built-in is
# recorded under the name users write (torch.optim.Adam), not under the
# module that defines it (torch.optim.adam.Adam).
_TORCH_NAMESPACES: Final[tuple[tuple[str, ModuleType], ...]] = (
    ("torch.nn", nn),
    ("torch.optim", torch.optim),
    ("torch.optim.lr_scheduler", lr_scheduler),
)
_BUILTINS: Final[dict[str, type]] = {
    "pytorch_saver.models.MLP": models.MLP,
    "pytorch_saver.models.Sequential": models.Sequential,
}

_MISSING: Final = object()

# name -> class, and class -> the name to record (its first registration).
_registry: dict[str, type] = {}
_recorded: dict[type, str] = {}


def _kinds_of(cls: type) -> list[Kind]:
    return [kind for kind, bases in _BASES.items() if issubclass(cls, bases)]


def _default_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: _T, name: str | None = None) -> _T:
    """Allow ``cls`` to be loaded by name, and record it under ``name``.

    ``name`` defaults to ``module.QualName``. Registering is the way to load
    a class that is not importable by name (one defined inside a function),
    or to keep loading files that name a class which has since moved
    (``register(Net, name="oldpkg.models.Net")``). A class registered under
    several names is recorded under the first. Returns ``cls``, so that it
    also works as a class decorator (``@pytorch_saver.register``).

    Raises :class:`ClassResolutionError` if ``cls`` is not a subclass of
    ``nn.Module``, ``torch.optim.Optimizer`` or an LR scheduler, or if
    ``name`` is already registered for another class (kind
    ``"DuplicateName"``), and :class:`ArgumentTypeError` (a ``TypeError``)
    if ``cls`` is not a class or ``name`` not a non-empty str.
    """
    if not isinstance(cls, type):
        raise ArgumentTypeError(f"register() takes a class, not {type(cls).__name__}: {cls!r}")
    if name is None:
        name = _default_name(cls)
    if not isinstance(name, str) or not name:
        raise ArgumentTypeError(
            f"the name to register {cls.__qualname__} under must be a non-empty str"
        )
    if not _kinds_of(cls):
        raise ClassResolutionError(
            f"cannot register {_default_name(cls)}: it is not a subclass of torch.nn.Module, "
            "torch.optim.Optimizer or an LR scheduler"
        )
    previous = _registry.get(name)
    # Redefining a class (a notebook cell run twice) re-registers it under the
    # same name; two different classes under one name is a mistake.
    if (
        previous is not None
        and previous is not cls
        and _default_name(previous) != _default_name(cls)
    ):
        raise ClassResolutionError(
            f"the name {name!r} is already registered for {_default_name(previous)}",
            kind="DuplicateName",
        )
    if previous is not None and previous is not cls:
        _recorded.pop(previous, None)
    _registry[name] = cls
    _recorded.setdefault(cls, name)
    return cls


def class_name(cls: type) -> str:
    """The name a checkpoint records for ``cls``: its registered name if it is
    registered, PyTorch's public name for a torch built-in (``torch.optim.Adam``,
    ``torch.nn.Linear``), otherwise ``module.QualName``.

    A class defined inside a function gets a name with ``<locals>`` in it: it
    is saved, but loads only when passed to ``load`` or registered.
    """
    recorded = _recorded.get(cls)
    if recorded is not None:
        return recorded
    for prefix, namespace in _TORCH_NAMESPACES:
        if vars(namespace).get(cls.__name__) is cls:
            return f"{prefix}.{cls.__name__}"
    return _default_name(cls)


def check_kind(obj: object, kind: Kind, name: str) -> type:
    """``obj`` if it is a class subclassing the base of ``kind``, otherwise a
    :class:`ClassResolutionError` naming ``name``. Nothing is called."""
    if not isinstance(obj, type):
        raise ClassResolutionError(
            f"{name!r} is not a class ({type(obj).__name__}); refusing to use it as the {kind}"
        )
    if not issubclass(obj, _BASES[kind]):
        raise ClassResolutionError(
            f"{name!r} is not a subclass of {_BASE_TEXT[kind]}; refusing to use it as the {kind}"
        )
    return obj


def _walk(root: object, parts: list[str]) -> object:
    """``root.a.b.c`` through module and class namespaces only, without running
    attribute hooks (``__getattr__``, properties, lazy imports)."""
    obj = root
    for part in parts:
        if not isinstance(obj, (ModuleType, type)):
            return _MISSING
        obj = inspect.getattr_static(obj, part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _module_splits(parts: list[str]) -> Iterable[tuple[str, list[str]]]:
    """(module, attribute path) splits of a dotted name, longest module first."""
    for i in range(len(parts) - 1, 0, -1):
        yield ".".join(parts[:i]), parts[i:]


def _from_loaded_modules(parts: list[str]) -> object:
    for module_name, rest in _module_splits(parts):
        module = sys.modules.get(module_name)
        if isinstance(module, ModuleType):
            obj = _walk(module, rest)
            if obj is not _MISSING:
                return obj
    return _MISSING


def _from_allowed_modules(name: str, parts: list[str], allowed: frozenset[str]) -> object:
    for module_name, rest in _module_splits(parts):
        if module_name not in allowed:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # the name splits elsewhere (a nested class)
            raise ClassResolutionError(
                f"cannot import {module_name!r}, allowed to resolve {name!r}: {exc}"
            ) from exc
        except Exception as exc:
            raise ClassResolutionError(
                f"importing {module_name!r}, allowed to resolve {name!r}, failed: {exc}"
            ) from exc
        obj = _walk(module, rest)
        if obj is not _MISSING:
            return obj
    return _MISSING


def _lookup(name: str, allowed: frozenset[str]) -> object:
    registered = _registry.get(name)
    if registered is not None:
        return registered
    for prefix, namespace in _TORCH_NAMESPACES:
        head, _, tail = name.rpartition(".")
        if head == prefix:
            builtin = vars(namespace).get(tail, _MISSING)
            if isinstance(builtin, type):
                return builtin
    if name in _BUILTINS:
        return _BUILTINS[name]
    parts = name.split(".")
    # Anything that is not a plain dotted identifier (`<locals>`, spaces,
    # empty parts) is not a walkable name: only the registry knows it.
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        return _MISSING
    obj = _from_loaded_modules(parts)
    if obj is _MISSING:
        obj = _from_allowed_modules(name, parts, allowed)
    return obj


def _allowed_set(allow: Iterable[str]) -> frozenset[str]:
    if isinstance(allow, str):
        return frozenset((allow,))
    modules = frozenset(allow)
    for module in modules:
        if not isinstance(module, str):
            raise ArgumentTypeError(f"allow must hold module names (str), not {module!r}")
    return modules


def resolve(name: str, kind: Kind, *, allow: Iterable[str] = ()) -> type:
    """The class a file names ``name`` for ``kind``, found as the module
    docstring describes and checked to subclass the base of ``kind``; nothing
    is called, and nothing is imported but the modules in ``allow``.

    Raises :class:`ClassResolutionError`, whose message says how to allow the
    class, when the name is not found among what is allowed or what it finds
    is not a class of the expected kind.
    """
    if not isinstance(name, str) or not name:
        raise ClassResolutionError(f"the file's {kind} class name is not a name: {name!r}")
    obj = _lookup(name, _allowed_set(allow))
    if obj is _MISSING:
        module = name.rpartition(".")[0] or name
        raise ClassResolutionError(
            f"{kind} class {name!r} is not allowed or not found: it is not registered, not a "
            "torch built-in and not in a module already imported. To load it, pass the class "
            f"(load(path, ..., {_ARGUMENT[kind]}=cls)), register it "
            f"(pytorch_saver.register(cls, name={name!r})), import its module before loading, "
            f"or allow its module (load(path, allow=[{module!r}]))"
        )
    return check_kind(obj, kind, name)


def resolve_value_class(
    name: str, where: str, *, allow: Iterable[str] = (), given: Mapping[str, type] | None = None
) -> object:
    """What the class name ``name`` of a typed value at ``where``
    (``model_kwargs['block']``) stands for: a class in ``given`` (the classes
    the caller passed to ``load``, by recorded name), else found as the
    module docstring describes. Nothing is called and nothing is imported but
    the modules in ``allow``; the caller checks what kind of object it is.

    Raises :class:`ClassResolutionError` naming ``where`` and the ways to
    allow the class when the name is not found.
    """
    if given is not None and name in given:
        return given[name]
    obj = _lookup(name, _allowed_set(allow))
    if obj is _MISSING:
        module = name.rpartition(".")[0] or name
        raise ClassResolutionError(
            f"{where} names the class {name!r}, which is not allowed or not found: it is not "
            "registered, not a torch built-in and not in a module already imported. To load "
            "it, pass the class (load(path, classes=[cls])), import its module before "
            f"loading, or allow its module (load(path, allow=[{module!r}]))"
        )
    return obj

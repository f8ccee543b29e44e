"""Built-in models: classes every pytorch-saver implementation knows by name,
so that a file naming one loads in Python, Rust, C, C++ and Go with no user
code (docs/MODELS.md).

``MLP`` is recorded as ``pytorch_saver.models.MLP``; its state-dict names are
those of the Rust core's ``Mlp`` (``src/models.rs``). ``Sequential`` is
recorded as ``pytorch_saver.models.Sequential``: a ``torch.nn.Sequential``
described by a JSON layer list, the portable way to save a model of your own
design.
"""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import torch
from torch import nn

from ._errors import LayerSpecError

__all__ = ["MLP", "Sequential"]


class MLP(nn.Module):
    """The multilayer perceptron of the original pytorch-saver tutorial.

    ``fc1`` maps ``in_dim`` to ``hidden_dim``; ``hidden_layers`` is a
    Sequential of ``n_layers - 1`` hidden Linear layers each followed by a
    ReLU (the ReLUs hold the odd indices), then a Linear to ``n_classes`` at
    index ``2 * (n_layers - 1)``. State-dict keys: ``fc1.weight``,
    ``fc1.bias``, ``hidden_layers.0.weight``, ``hidden_layers.0.bias``, ...
    """

    def __init__(self, in_dim: int, hidden_dim: int, n_classes: int, n_layers: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        layers: list[nn.Module] = []
        for _ in range(n_layers - 1):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        layers.append(nn.Linear(hidden_dim, n_classes))
        self.hidden_layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.hidden_layers(torch.relu(self.fc1(x)))
        return out


# Sequential (docs/MODELS.md). Every layer list is checked against the tables
# below before any module is built.

_REQUIRED: Final = object()
_MISSING: Final = object()


class _Invalid(Exception):
    """One value breaking one rule; the message lacks the layer and argument
    it belongs to."""


def _show(value: object) -> str:
    """``value`` as JSON, as the message quotes it (``"3"``, ``true``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_int(value: object) -> bool:
    # A JSON integer that every implementation reads (Rust's is an i64).
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _is_number(value: object) -> bool:
    # A JSON number: no boolean, no NaN or infinity (JSON has none).
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


_Check = Callable[[Any], Any]
"""Checks one argument's value; returns what to pass to PyTorch, or raises
:class:`_Invalid` with the rule (``must be an int, got 2.0``)."""


def _int(minimum: int | None = None) -> _Check:
    def check(value: Any) -> Any:
        if not _is_int(value):
            raise _Invalid(f"must be an int, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise _Invalid(f"must be >= {minimum}, got {_show(value)}")
        return value

    return check


def _ints_text(n: int) -> str:
    return f"an int or {n} int{'s' if n > 1 else ''}"


def _ints(n: int, minimum: int, strings: tuple[str, ...] = ()) -> _Check:
    """An int, or an array of exactly ``n`` ints (PyTorch's ``_single`` /
    ``_pair``), each at least ``minimum``; or one of ``strings``."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and value in strings:
            return value
        if _is_int(value):
            items: tuple[int, ...] = (value,)
        elif (
            isinstance(value, (list, tuple))
            and len(value) == n
            and all(_is_int(item) for item in value)
        ):
            items = tuple(value)
            value = items
        else:
            text = _ints_text(n) + "".join(f' or "{s}"' for s in strings)
            raise _Invalid(f"must be {text}, got {_show(value)}")
        if any(item < minimum for item in items):
            raise _Invalid(f"must be >= {minimum}, got {_show(value)}")
        return value

    return check


def _shape(value: Any) -> Any:
    """LayerNorm's ``normalized_shape``: an int or a non-empty array of ints,
    each at least 1."""
    if _is_int(value):
        items: tuple[int, ...] = (value,)
    elif (
        isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_int(item) for item in value)
    ):
        items = tuple(value)
        value = items
    else:
        raise _Invalid(f"must be an int or a non-empty array of ints, got {_show(value)}")
    if any(item < 1 for item in items):
        raise _Invalid(f"must be >= 1, got {_show(value)}")
    return value


def _bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise _Invalid(f"must be a bool (true or false), got {_show(value)}")
    return value


def _number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> _Check:
    """Any JSON number; with ``low`` and ``high``, in ``[low, high]``
    (``(low, ...`` when ``low_open``)."""

    def check(value: Any) -> Any:
        if not _is_number(value):
            raise _Invalid(f"must be a number, got {_show(value)}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and value > high
        if below or above:
            if high is None:
                rule = f"> {low:g}" if low_open else f">= {low:g}"
            else:
                rule = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
            raise _Invalid(f"must be {rule}, got {_show(value)}")
        return value

    return check


def _one_of(*choices: object) -> _Check:
    def check(value: Any) -> Any:
        if not any(type(value) is type(c) and value == c for c in choices):
            text = " or ".join(_show(c) for c in choices)
            raise _Invalid(f"must be {text}, got {_show(value)}")
        return value

    return check


@dataclass(frozen=True)
class _Arg:
    """One constructor argument: its check and its default (``_REQUIRED``
    when it has none). ``null`` is PyTorch's ``None``, accepted only where
    the default is ``None`` or the argument is ``nullable``."""

    check: _Check
    default: Any = _REQUIRED
    nullable: bool = False


@dataclass(frozen=True)
class _LayerType:
    """A layer type: the module to build, its arguments in PyTorch's order,
    whether its state is floating-point (built as float32), and a check of
    rules between arguments (returns the broken rule, or None)."""

    module: Callable[..., nn.Module]
    args: dict[str, _Arg] = field(default_factory=dict)
    has_state: bool = False
    check: Callable[[dict[str, Any]], str | None] | None = None


def _tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def _conv_rules(args: dict[str, Any]) -> str | None:
    groups = args["groups"]
    for name in ("in_channels", "out_channels"):
        if args[name] % groups:
            return f'argument "{name}" must be divisible by groups ({groups}), got {args[name]}'
    if args["padding"] == "same" and any(s != 1 for s in _tuple(args["stride"])):
        return (
            'argument "padding" "same" needs stride 1 (PyTorch does not support it for '
            f"strided convolutions), got stride {_show(args['stride'])}"
        )
    return None


def _embedding_rules(args: dict[str, Any]) -> str | None:
    n, padding_idx = args["num_embeddings"], args["padding_idx"]
    if padding_idx is not None and not -n <= padding_idx < n:
        return f'argument "padding_idx" must be in [{-n}, {n}), got {padding_idx}'
    return None


def _conv(module: Callable[..., nn.Module], n: int) -> _LayerType:
    return _LayerType(
        module,
        {
            "in_channels": _Arg(_int(1)),
            "out_channels": _Arg(_int(1)),
            "kernel_size": _Arg(_ints(n, 1)),
            "stride": _Arg(_ints(n, 1), 1),
            "padding": _Arg(_ints(n, 0, ("valid", "same")), 0),
            "dilation": _Arg(_ints(n, 1), 1),
            "groups": _Arg(_int(1), 1),
            "bias": _Arg(_bool, True),
            "padding_mode": _Arg(_one_of("zeros"), "zeros"),
        },
        has_state=True,
        check=_conv_rules,
    )


def _batch_norm(module: Callable[..., nn.Module]) -> _LayerType:
    return _LayerType(
        module,
        {
            "num_features": _Arg(_int(1)),
            "eps": _Arg(_number(0, low_open=True), 1e-5),
            "momentum": _Arg(_number(0, 1), 0.1, nullable=True),
            "affine": _Arg(_bool, True),
            "track_running_stats": _Arg(_bool, True),
        },
        has_state=True,
    )


_INPLACE: Final = {"inplace": _Arg(_bool, False)}

# The layer types of docs/MODELS.md, in its table's order.
_LAYER_TYPES: Final[dict[str, _LayerType]] = {
    "Linear": _LayerType(
        nn.Linear,
        {
            "in_features": _Arg(_int(1)),
            "out_features": _Arg(_int(1)),
            "bias": _Arg(_bool, True),
        },
        has_state=True,
    ),
    "Conv1d": _conv(nn.Conv1d, 1),
    "Conv2d": _conv(nn.Conv2d, 2),
    "Embedding": _LayerType(
        nn.Embedding,
        {
            "num_embeddings": _Arg(_int(1)),
            "embedding_dim": _Arg(_int(1)),
            "padding_idx": _Arg(_int(), None),
        },
        has_state=True,
        check=_embedding_rules,
    ),
    "LayerNorm": _LayerType(
        nn.LayerNorm,
        {
            "normalized_shape": _Arg(_shape),
            "eps": _Arg(_number(0, low_open=True), 1e-5),
            "elementwise_affine": _Arg(_bool, True),
            "bias": _Arg(_bool, True),
        },
        has_state=True,
    ),
    "BatchNorm1d": _batch_norm(nn.BatchNorm1d),
    "BatchNorm2d": _batch_norm(nn.BatchNorm2d),
    "Dropout": _LayerType(nn.Dropout, {"p": _Arg(_number(0, 1), 0.5), **_INPLACE}),
    "Flatten": _LayerType(nn.Flatten, {"start_dim": _Arg(_int(), 1), "end_dim": _Arg(_int(), -1)}),
    "ReLU": _LayerType(nn.ReLU, dict(_INPLACE)),
    "LeakyReLU": _LayerType(nn.LeakyReLU, {"negative_slope": _Arg(_number(), 0.01), **_INPLACE}),
    "GELU": _LayerType(nn.GELU, {"approximate": _Arg(_one_of("none", "tanh"), "none")}),
    "SiLU": _LayerType(nn.SiLU, dict(_INPLACE)),
    "Tanh": _LayerType(nn.Tanh),
    "Sigmoid": _LayerType(nn.Sigmoid),
    "Identity": _LayerType(nn.Identity),
    "Softmax": _LayerType(nn.Softmax, {"dim": _Arg(_int())}),
    "MaxPool2d": _LayerType(
        nn.MaxPool2d,
        {
            "kernel_size": _Arg(_ints(2, 1)),
            "stride": _Arg(_ints(2, 1), None),
            "padding": _Arg(_ints(2, 0), 0),
            "dilation": _Arg(_ints(2, 1), 1),
            "ceil_mode": _Arg(_bool, False),
            "return_indices": _Arg(_one_of(False), False),
        },
    ),
    "AvgPool2d": _LayerType(
        nn.AvgPool2d,
        {
            "kernel_size": _Arg(_ints(2, 1)),
            "stride": _Arg(_ints(2, 1), None),
            "padding": _Arg(_ints(2, 0), 0),
            "ceil_mode": _Arg(_bool, False),
            "count_include_pad": _Arg(_bool, True),
            "divisor_override": _Arg(_int(1), None),
        },
    ),
}

_WHY_REQUIRED: Final = {
    "Softmax": " (PyTorch's implicit dim is deprecated and not portable)",
}


def _layer_args(index: int, spec: object) -> tuple[_LayerType, dict[str, Any]]:
    """The type of layer ``index`` and the arguments to build it with, every
    rule checked; :class:`LayerSpecError` for the first rule broken."""
    if not isinstance(spec, Mapping):
        raise LayerSpecError(
            f'layer {index}: must be an object with a string "type", got {_show(spec)}'
        )
    name = spec.get("type", _MISSING)
    if name is _MISSING or name is None:
        raise LayerSpecError(f'layer {index}: has no "type" (a string naming the layer type)')
    if not isinstance(name, str):
        raise LayerSpecError(f'layer {index}: "type" must be a string, got {_show(name)}')
    prefix = f"layer {index} ({name}): "
    layer_type = _LAYER_TYPES.get(name)
    if layer_type is None:
        raise LayerSpecError(
            f"{prefix}unknown type {_show(name)}; the known types are {', '.join(_LAYER_TYPES)}"
        )
    for key in spec:
        if key != "type" and key not in layer_type.args:
            takes = ", ".join(layer_type.args) or "no arguments"
            raise LayerSpecError(f"{prefix}unexpected argument {_show(key)} ({name} takes {takes})")
    args: dict[str, Any] = {}
    for arg_name, arg in layer_type.args.items():
        if arg_name not in spec:
            if arg.default is _REQUIRED:
                why = _WHY_REQUIRED.get(name, "")
                raise LayerSpecError(f'{prefix}argument "{arg_name}" is required{why}')
            args[arg_name] = arg.default
            continue
        value = spec[arg_name]
        if value is None and (arg.nullable or arg.default is None):
            # PyTorch's None: the default where that is None, a cumulative
            # average for BatchNorm's momentum. Elsewhere null is refused
            # below: PyTorch reads None differently from the default
            # (Conv2d(bias=None) has no bias).
            args[arg_name] = None
            continue
        try:
            args[arg_name] = arg.check(value)
        except _Invalid as exc:
            raise LayerSpecError(f'{prefix}argument "{arg_name}" {exc}') from None
    rule = layer_type.check(args) if layer_type.check is not None else None
    if rule is not None:
        raise LayerSpecError(prefix + rule)
    if layer_type.has_state:
        args["dtype"] = torch.float32
    return layer_type, args


def _checked(layers: object, other: Mapping[str, Any]) -> list[tuple[_LayerType, dict[str, Any]]]:
    """Every layer's type and arguments, the whole list checked."""
    if other:
        raise LayerSpecError(
            f'Sequential: unexpected kwarg {_show(next(iter(other)))} (the only kwarg is "layers")'
        )
    if layers is None:
        raise LayerSpecError('Sequential: kwarg "layers" is required')
    if not isinstance(layers, (list, tuple)) or not layers:
        raise LayerSpecError(
            f'Sequential: kwarg "layers" must be a non-empty array of layer objects, '
            f"got {_show(layers)}"
        )
    return [_layer_args(index, spec) for index, spec in enumerate(layers)]


class Sequential(nn.Sequential):
    """The portable model: a ``torch.nn.Sequential`` described by a JSON list
    of layers, each a PyTorch layer class name and its constructor arguments
    (docs/MODELS.md). It is recorded as ``pytorch_saver.models.Sequential``
    with the kwargs ``{"layers": [...]}`` exactly as given, so a file holding
    one loads in Python, Rust, C, C++ and Go with no user code::

        model = Sequential([
            {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3,
             "padding": 1},
            {"type": "BatchNorm2d", "num_features": 4},
            {"type": "ReLU"},
            {"type": "MaxPool2d", "kernel_size": 2},
            {"type": "Flatten"},
            {"type": "Linear", "in_features": 64, "out_features": 10},
        ])

    Layer types: ``Linear``, ``Conv1d``, ``Conv2d``, ``Embedding``,
    ``LayerNorm``, ``BatchNorm1d``, ``BatchNorm2d``, ``Dropout``, ``Flatten``,
    ``ReLU``, ``LeakyReLU``, ``GELU``, ``SiLU``, ``Tanh``, ``Sigmoid``,
    ``Identity``, ``Softmax`` (``dim`` required), ``MaxPool2d`` and
    ``AvgPool2d``, each taking the arguments of docs/MODELS.md under
    PyTorch's names (``device``, ``dtype`` and non-portable options such as
    ``padding_mode="reflect"`` are refused); ``null`` is PyTorch's ``None``,
    accepted only where that is the default, and for BatchNorm's ``momentum``
    (a cumulative average).

    It is a ``torch.nn.Sequential`` of the ``torch.nn`` modules named, so it
    trains, moves between devices and runs with ordinary PyTorch code, and its
    state-dict names are ``nn.Sequential``'s: ``0.weight``,
    ``1.running_mean``, ... (layers without state keep their index: above,
    the Linear's weight is ``5.weight``). Its tensors start float32 with
    PyTorch's default initialisation.

    The whole list is checked before any module exists: a layer that breaks a
    rule raises :class:`~pytorch_saver.LayerSpecError` (a ``ValueError``)
    naming the layer's index and type and the rule, e.g. ``layer 2 (Conv2d):
    argument "kernel_size" must be an int or 2 ints, got "3"``.

    Changing the layers afterwards (``append``, ``insert``, assigning
    ``model[i]``) is possible, as on any ``nn.Sequential``, but the recorded
    kwargs then no longer describe the model. A slice (``model[1:3]``) is a
    plain ``torch.nn.Sequential``.
    """

    def __init__(self, layers: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> None:
        # `layers` defaults to None only so that a missing or unexpected kwarg
        # is a LayerSpecError, as docs/MODELS.md says, not a TypeError.
        checked = _checked(layers, kwargs)
        assert layers is not None
        # Copied before building: the list the model describes, as given.
        specs = copy.deepcopy(layers)
        super().__init__(*(layer_type.module(**args) for layer_type, args in checked))
        self._layer_specs = specs

    @property
    def layer_specs(self) -> list[dict[str, Any]]:
        """A copy of the layer list this model was built from, as given."""
        return [dict(copy.deepcopy(spec)) for spec in self._layer_specs]

    def __getitem__(self, idx: slice | int) -> nn.Sequential | nn.Module:
        # nn.Sequential slices with `self.__class__(OrderedDict(...))`, which
        # is not a layer list: a slice is a plain nn.Sequential.
        if isinstance(idx, slice):
            modules = OrderedDict(
                (key, module)
                for key, module in list(self._modules.items())[idx]
                if module is not None
            )
            return nn.Sequential(modules)
        return super().__getitem__(idx)

"""The check before anything is built: does the model that a class and its
kwargs describe hold exactly the tensors of the file (names, shapes,
dtypes)?

A file is data: its kwargs may describe a model a million times larger than
its tensors (``n_layers = 10**9``, ``hidden_dim = 2**62``). The built-in
models (``torch.nn.Linear``, :class:`~pytorch_saver.models.MLP`,
:class:`~pytorch_saver.models.Sequential`) derive their tensor list from the
kwargs arithmetically, the tensor count first, without building anything; a
user class is built on the meta device (no memory), and its non-persistent
buffers (which the file does not hold, so nothing bounds them) may not
exceed 64 MiB plus the file's tensor bytes. The first mismatching kwarg or
tensor is named in the error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch
from torch import nn

from . import models
from ._errors import InitializationError, LayerSpecError, StateMismatchError
from ._format import TensorEntry

__all__ = ["BUFFER_ALLOWANCE", "check_model", "compare_state"]

BUFFER_ALLOWANCE: Final = 64 << 20
"""Bytes of non-persistent buffers a user class may build beyond the size of
the file's tensors."""

_I64_LIMIT: Final = 1 << 63


@dataclass(frozen=True)
class _Spec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def _kwarg_error(cls: str, key: str, value: object, rule: str) -> InitializationError:
    return InitializationError(
        f"model_kwargs {key!r} = {value!r} of {cls}: {rule}", kind="InvalidKwargs"
    )


def _dim(cls: str, kwargs: Mapping[str, Any], key: str, default: object = None) -> int:
    if key not in kwargs and default is None:
        raise InitializationError(
            f"model_kwargs of {cls} lack the required {key!r}", kind="InvalidKwargs"
        )
    value = kwargs.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _kwarg_error(cls, key, value, "must be an integer")
    if not 0 <= value < _I64_LIMIT:
        raise _kwarg_error(cls, key, value, "must be in [0, 2**63), a tensor dimension")
    return value


def _unknown(cls: str, kwargs: Mapping[str, Any], known: Sequence[str]) -> None:
    for key in kwargs:
        if key not in known:
            raise InitializationError(
                f"model_kwargs of {cls} hold {key!r}, which it does not take "
                f"(it takes {', '.join(known)})",
                kind="InvalidKwargs",
            )


def _count(cls: str, key: str, value: str, count: int, file_count: int) -> None:
    if count != file_count:
        raise StateMismatchError(
            f"model_kwargs {key!r} = {value} describes {count} tensors of {cls}; "
            f"the file holds {file_count}"
        )


_F32: Final = torch.float32


def _linear(
    prefix: str, n_in: int, n_out: int, bias: bool, dtype: torch.dtype = _F32
) -> Iterator[_Spec]:
    yield _Spec(f"{prefix}weight", (n_out, n_in), dtype)
    if bias:
        yield _Spec(f"{prefix}bias", (n_out,), dtype)


def _linear_specs(kwargs: Mapping[str, Any], file_count: int) -> list[_Spec]:
    cls = "torch.nn.Linear"
    _unknown(cls, kwargs, ("in_features", "out_features", "bias", "dtype"))
    n_in = _dim(cls, kwargs, "in_features")
    n_out = _dim(cls, kwargs, "out_features")
    bias = bool(kwargs.get("bias", True))
    dtype = kwargs.get("dtype")
    if dtype is None:
        dtype = _F32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise _kwarg_error(cls, "dtype", dtype, "must be a floating-point torch.dtype")
    _count(cls, "bias", repr(kwargs.get("bias", True)), 2 if bias else 1, file_count)
    return list(_linear("", n_in, n_out, bias, dtype))


def _mlp_specs(kwargs: Mapping[str, Any], file_count: int) -> list[_Spec]:
    cls = "pytorch_saver.models.MLP"
    _unknown(cls, kwargs, ("in_dim", "hidden_dim", "n_classes", "n_layers"))
    n_layers = kwargs.get("n_layers", 3)
    if not isinstance(n_layers, int) or isinstance(n_layers, bool):
        raise _kwarg_error(cls, "n_layers", n_layers, "must be an integer")
    layers = max(n_layers, 1)  # MLP builds fc1 and the last layer for any n_layers
    # The count first: n_layers = 10**9 is refused before anything is enumerated.
    _count(cls, "n_layers", repr(n_layers), 2 * layers + 2, file_count)
    in_dim = _dim(cls, kwargs, "in_dim")
    hidden = _dim(cls, kwargs, "hidden_dim")
    n_classes = _dim(cls, kwargs, "n_classes")
    specs = list(_linear("fc1.", in_dim, hidden, True))
    for i in range(layers - 1):
        specs += _linear(f"hidden_layers.{2 * i}.", hidden, hidden, True)
    specs += _linear(f"hidden_layers.{2 * (layers - 1)}.", hidden, n_classes, True)
    return specs


def _n(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def _layer_specs(prefix: str, layer: type[nn.Module], args: Mapping[str, Any]) -> list[_Spec]:
    """The state of one Sequential layer as torch creates it (docs/MODELS.md)."""
    if layer is nn.Linear:
        return list(_linear(prefix, args["in_features"], args["out_features"], args["bias"]))
    if layer in (nn.Conv1d, nn.Conv2d):
        n = 1 if layer is nn.Conv1d else 2
        out = args["out_channels"]
        weight = (out, args["in_channels"] // args["groups"], *_n(args["kernel_size"], n))
        specs = [_Spec(f"{prefix}weight", weight, _F32)]
        if args["bias"]:
            specs.append(_Spec(f"{prefix}bias", (out,), _F32))
        return specs
    if layer is nn.Embedding:
        return [_Spec(f"{prefix}weight", (args["num_embeddings"], args["embedding_dim"]), _F32)]
    if layer is nn.LayerNorm:
        shape = _n(args["normalized_shape"], 1)
        specs = []
        if args["elementwise_affine"]:
            specs.append(_Spec(f"{prefix}weight", shape, _F32))
            if args["bias"]:
                specs.append(_Spec(f"{prefix}bias", shape, _F32))
        return specs
    if layer in (nn.BatchNorm1d, nn.BatchNorm2d):
        c = (args["num_features"],)
        specs = []
        if args["affine"]:
            specs += [_Spec(f"{prefix}weight", c, _F32), _Spec(f"{prefix}bias", c, _F32)]
        if args["track_running_stats"]:
            specs += [
                _Spec(f"{prefix}running_mean", c, _F32),
                _Spec(f"{prefix}running_var", c, _F32),
                _Spec(f"{prefix}num_batches_tracked", (), torch.int64),
            ]
        return specs
    return []


def _sequential_specs(kwargs: Mapping[str, Any], file_count: int) -> list[_Spec]:
    other = {k: v for k, v in kwargs.items() if k != "layers"}
    try:
        checked = models._checked(kwargs.get("layers"), other)
    except LayerSpecError as exc:
        raise InitializationError(
            "building the model pytorch_saver.models.Sequential(...) failed: "
            f"LayerSpecError: {exc}",
            kind="InvalidKwargs",
        ) from exc
    per_layer = [
        _layer_specs(f"{i}.", layer_type.module, args)  # type: ignore[arg-type]
        for i, (layer_type, args) in enumerate(checked)
    ]
    _count(
        "pytorch_saver.models.Sequential",
        "layers",
        f"[...{len(checked)} layers]",
        sum(len(s) for s in per_layer),
        file_count,
    )
    return [spec for specs in per_layer for spec in specs]


def _meta_specs(
    model_class: type[nn.Module], label: str, kwargs: Mapping[str, Any], file_bytes: int
) -> list[_Spec] | None:
    """The state of ``model_class(**kwargs)`` built on the meta device, or
    None if the class cannot be built there (then it is checked after an
    ordinary build)."""
    try:
        with torch.device("meta"):
            model = model_class(**kwargs)
    except Exception:
        return None
    state = model.state_dict(keep_vars=True)
    persistent = {id(t) for t in state.values()}
    budget = BUFFER_ALLOWANCE + file_bytes
    total = 0
    for name, buffer in model.named_buffers():
        if id(buffer) in persistent or name in state:
            continue
        total += buffer.numel() * buffer.element_size()
        if total > budget:
            raise InitializationError(
                f"{label} with model_kwargs {dict(kwargs)!r} builds the non-persistent buffer "
                f"{name!r} of shape {list(buffer.shape)}, bringing its buffers the file does "
                f"not hold to {total} bytes, above the limit of {budget} (64 MiB + the "
                "file's tensor bytes)",
                kind="InvalidKwargs",
            )
    return [_Spec(k, tuple(t.shape), t.dtype) for k, t in state.items()]


def _show(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _compare(label: str, specs: Sequence[_Spec], entries: Sequence[TensorEntry]) -> None:
    """:class:`StateMismatchError` naming the first tensor whose name, shape
    or dtype differs between the model (``specs``) and the file."""
    saved = {e.name: e for e in entries}
    names = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in saved]
    unexpected = [e.name for e in entries if e.name not in names]
    if missing or unexpected:
        raise StateMismatchError(
            f"the saved model state does not fit {label}: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}"
        )
    for spec in specs:
        entry = saved[spec.name]
        if entry.shape != spec.shape:
            raise StateMismatchError(
                f"model tensor {spec.name!r} is saved with shape {_show(entry.shape)}, the "
                f"model_kwargs of {label} describe {_show(spec.shape)}"
            )
        if entry.dtype.torch_dtype != spec.dtype:
            raise StateMismatchError(
                f"model tensor {spec.name!r} is saved as {entry.dtype.torch_dtype}, the model "
                f"{label} has {spec.dtype}"
            )


_BUILTINS: Final = {
    nn.Linear: _linear_specs,
    models.MLP: _mlp_specs,
    models.Sequential: _sequential_specs,
}


def check_model(
    model_class: type[nn.Module],
    label: str,
    kwargs: Mapping[str, Any],
    entries: Sequence[TensorEntry],
) -> bool:
    """Checks the model ``model_class(**kwargs)`` against the file's model
    tensors without allocating any; raises :class:`StateMismatchError` or
    :class:`InitializationError` naming the tensor or kwarg. Returns False
    when the class could not be built on the meta device, so that the check
    happens after an ordinary build."""
    derive = _BUILTINS.get(model_class)
    if derive is not None:
        specs = derive(kwargs, len(entries))
    else:
        file_bytes = sum(e.end - e.start for e in entries)
        meta = _meta_specs(model_class, label, kwargs, file_bytes)
        if meta is None:
            return False
        specs = meta
    _compare(label, specs, entries)
    return True


def compare_state(
    label: str, state: Mapping[str, torch.Tensor], entries: Sequence[TensorEntry]
) -> None:
    """:func:`check_model` for a model that exists: its ``state_dict()``
    against the file's model tensors."""
    _compare(label, [_Spec(k, tuple(t.shape), t.dtype) for k, t in state.items()], entries)

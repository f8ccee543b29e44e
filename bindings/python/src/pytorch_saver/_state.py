"""Optimizer and scheduler state <-> the v1 layout (docs/FORMAT.md 3.4, 5, 6),
and constructor kwargs <-> JSON.

An optimizer's ``state_dict()`` becomes the internals of FORMAT.md 5 (an
``OptimizerSection`` of ``_format.metadata``: ``class``, ``param_groups``,
``param_names``, non-tensor ``state`` as JSON) plus tensors named
``state.<index>.<key>``; a scheduler's becomes a JSON object. Loading matches
the optimizer state to parameters by *name*, not by position, and checks
everything before the optimizer changes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Final

import torch
from torch import nn

from ._errors import FormatError, InitializationError, MetadataError, StateMismatchError
from ._format.metadata import OptimizerSection, ParamGroup

__all__ = [
    "build_params",
    "check_positional_state",
    "decode",
    "encode",
    "kwargs_from_json",
    "kwargs_to_json",
    "optimizer_layout",
    "optimizer_state_dict",
    "scheduler_state_from_json",
    "scheduler_state_to_json",
]

# Optimizer hyperparameters that PyTorch keeps as tuples; JSON has only lists.
# (`eps` is a pair for Adafactor, a float elsewhere.)
_TUPLE_KEYS: Final = frozenset({"betas", "etas", "step_sizes", "eps", "ns_coefficients"})

# Per-parameter state that has its parameter's shape in PyTorch's optimizers.
# Other keys (Adafactor's row_var, ASGD's eta, a custom optimizer's) have
# shapes of their own and are left to the optimizer.
_PARAMETER_SHAPED: Final = frozenset(
    {
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
        "momentum_buffer",
        "square_avg",
        "grad_avg",
        "sum",
        "acc_delta",
        "ax",
        "prev",
        "step_size",
        "exp_inf",
        "variance",
    }
)

_FLOAT_KEY: Final = "__float__"

# LBFGS's lists of tensors, each stored as one stacked tensor (FORMAT.md 5):
# old_dirs and old_stps [n, N] (N the parameters' total numel), ro [n].
_LBFGS_LISTS: Final = ("old_dirs", "old_stps", "ro")


def _lbfgs_stacked(entry: Mapping[str, Any], params: list[torch.Tensor]) -> dict[str, Any]:
    """LBFGS's state (under its first parameter) in the file layout: each
    list of tensors stacked into one; ``al`` (``history_size`` entries, the
    non-None ones a prefix) as that prefix, ``[k]``. None stays None."""
    numel = sum(p.numel() for p in params)
    like = params[0]
    out = dict(entry)
    for key in _LBFGS_LISTS:
        value = out.get(key)
        if isinstance(value, list):
            shape = (0,) if key == "ro" else (0, numel)
            out[key] = torch.stack(value) if value else like.new_empty(shape)
    al = out.get("al")
    if isinstance(al, list):
        prefix = [a for a in al if a is not None]
        if any(a is None for a in al[: len(prefix)]):
            raise MetadataError("LBFGS state 'al' has tensors after a None: not a prefix")
        out["al"] = torch.stack(prefix) if prefix else like.new_empty((0,))
    return out


def _lbfgs_unstacked(
    entry: dict[str, Any], params: list[torch.Tensor], history_size: object
) -> dict[str, Any]:
    """The inverse of :func:`_lbfgs_stacked`, with the shape checks of
    FORMAT.md 5: n <= history_size rows of N (the parameters' total numel),
    ``al`` of k <= history_size, ``d`` and ``prev_flat_grad`` of N."""
    numel = sum(p.numel() for p in params)
    if not isinstance(history_size, int) or isinstance(history_size, bool):
        raise FormatError(
            f"LBFGS history_size {history_size!r} is not an integer", kind="InvalidState"
        )

    def bad(key: str, value: torch.Tensor, expected: str) -> FormatError:
        return FormatError(
            f"LBFGS state {key!r} has shape {list(value.shape)}, expected {expected}",
            kind="InvalidState",
        )

    out = dict(entry)
    for key in ("d", "prev_flat_grad"):
        value = out.get(key)
        if isinstance(value, torch.Tensor) and list(value.shape) != [numel]:
            raise bad(key, value, f"[{numel}]")
    rows = None
    for key in _LBFGS_LISTS:
        value = out.get(key)
        if not isinstance(value, torch.Tensor):
            continue
        n = value.shape[0] if value.dim() >= 1 else -1
        expected = [n] if key == "ro" else [n, numel]
        if list(value.shape) != expected or not 0 <= n <= history_size or rows not in (None, n):
            raise bad(key, value, f"[n, {numel}] / [n] with the same n <= {history_size}")
        rows = n
        out[key] = [row.clone() for row in value]
    al = out.get("al")
    if isinstance(al, torch.Tensor):
        if al.dim() != 1 or al.shape[0] > history_size:
            raise bad("al", al, f"[k] with k <= {history_size}")
        out["al"] = [a.clone() for a in al] + [None] * (history_size - al.shape[0])
    for key in ("t", "H_diag"):
        value = out.get(key)
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise bad(key, value, "one element")
            out[key] = value.reshape(())
    return out


def encode(value: object, where: str = "value") -> Any:
    """``value`` as JSON for the internals: tuples become lists, non-finite
    floats ``{"__float__": "inf" | "-inf" | "nan"}`` (FORMAT.md 3.4), dict keys
    strings (MultiStepLR's Counter of milestones). Raises
    :class:`MetadataError` naming ``where`` for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        tag = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return {_FLOAT_KEY: tag}
    if isinstance(value, (list, tuple)):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise MetadataError(f"{where} has a key JSON cannot represent: {k!r}")
            out[str(k)] = encode(v, f"{where}[{k!r}]")
        return out
    raise MetadataError(f"{where} has no JSON form: {type(value).__name__} {value!r}")


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`, except that lists stay lists."""
    if isinstance(value, dict):
        if set(value) == {_FLOAT_KEY}:
            tag = value[_FLOAT_KEY]
            if tag not in ("inf", "-inf", "nan"):
                raise FormatError(
                    f"unknown non-finite float encoding {value!r}", kind="InvalidState"
                )
            return float(tag)
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _to_plain_json(value: object, where: str) -> Any:
    """``value`` as standard JSON (user metadata and kwargs): no non-finite
    floats, no encoding, str keys only; tuples become lists."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MetadataError(f"{where} is {value!r}, which JSON cannot represent")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_to_plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise MetadataError(f"{where} has a key that is not a str: {k!r}")
            out[k] = _to_plain_json(v, f"{where}[{k!r}]")
        return out
    raise MetadataError(
        f"{where} is not JSON-serializable: {type(value).__name__} {value!r} "
        "(use str, int, finite float, bool, None, lists and dicts with str keys)"
    )


def kwargs_to_json(kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Constructor kwargs or user metadata as JSON; :class:`MetadataError`
    names the first value that is not (``optim_kwargs['betas'][0]``)."""
    out: dict[str, Any] = _to_plain_json(dict(kwargs), where)
    return out


def _tuples(group: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: tuple(v) if k in _TUPLE_KEYS and isinstance(v, list) else v for k, v in group.items()
    }


def kwargs_from_json(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs read from JSON in the types PyTorch expects: the
    pairs ``betas``, ``etas``, ``step_sizes`` (and Adafactor's ``eps``) as
    tuples, also inside the ``param_groups`` kwarg."""
    out = _tuples(kwargs)
    groups = out.get("param_groups")
    if isinstance(groups, list):
        out["param_groups"] = [_tuples(g) if isinstance(g, dict) else g for g in groups]
    return out


def _invalid_kwargs(message: str) -> InitializationError:
    return InitializationError(message, kind="InvalidKwargs")


def build_params(
    model: nn.Module, optim_kwargs: Mapping[str, Any]
) -> tuple[list[torch.Tensor] | list[dict[str, Any]], dict[str, Any]]:
    """(params, kwargs) to construct an optimizer over ``model``.

    Without a ``param_groups`` kwarg the params are ``model.parameters()``.
    With one, a list of ``{"params": [parameter names], <overrides>}`` naming
    every parameter exactly once, they are PyTorch's list of group dicts in
    that order. Raises :class:`InitializationError` for a malformed
    ``param_groups``.
    """
    kwargs = dict(optim_kwargs)
    spec = kwargs.pop("param_groups", None)
    if spec is None:
        params: list[torch.Tensor] = list(model.parameters())
        return params, kwargs
    named = dict(model.named_parameters())
    if not isinstance(spec, (list, tuple)) or not spec:
        raise _invalid_kwargs(
            "optim_kwargs['param_groups'] must be a non-empty list of "
            '{"params": [parameter names], ...} objects'
        )
    seen: dict[str, int] = {}
    groups: list[dict[str, Any]] = []
    for g, item in enumerate(spec):
        if not isinstance(item, Mapping) or "params" not in item:
            raise _invalid_kwargs(
                f"optim_kwargs['param_groups'][{g}] must be an object with a 'params' list"
            )
        names = item["params"]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise _invalid_kwargs(
                f"optim_kwargs['param_groups'][{g}]['params'] must be a list of parameter names"
            )
        for n in names:
            if n not in named:
                raise _invalid_kwargs(
                    f"optim_kwargs['param_groups'][{g}] names {n!r}, which is not a parameter "
                    f"of the model (its parameters: {', '.join(named)})"
                )
            if n in seen:
                raise _invalid_kwargs(
                    f"parameter {n!r} is in optim_kwargs['param_groups'][{seen[n]}] and [{g}]"
                )
            seen[n] = g
        group = {k: v for k, v in item.items() if k != "params"}
        group["params"] = [named[n] for n in names]
        groups.append(group)
    missing = [n for n in named if n not in seen]
    if missing:
        raise _invalid_kwargs(
            f"optim_kwargs['param_groups'] does not name the parameters {missing}: "
            "every parameter must be in exactly one group"
        )
    return groups, kwargs


def _parameter_names(
    optimizer: torch.optim.Optimizer, model: nn.Module
) -> Iterator[tuple[torch.Tensor, str]]:
    """(parameter, model name) in the optimizer's index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names.get(id(p))
            if name is None:
                raise StateMismatchError(
                    f"the optimizer holds a parameter of shape {list(p.shape)} that is not a "
                    "parameter of the model; build the optimizer over the model's parameters"
                )
            yield p, name


def optimizer_layout(
    optimizer: torch.optim.Optimizer, model: nn.Module, class_name: str
) -> tuple[OptimizerSection, dict[str, torch.Tensor]]:
    """(``__pytorch_saver__.optimizer``, ``optimizer.safetensors`` tensors)
    of ``optimizer`` over ``model``'s parameters (FORMAT.md 5)."""
    param_names = tuple(name for _, name in _parameter_names(optimizer, model))
    sd = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    lbfgs = isinstance(optimizer, torch.optim.LBFGS)
    for index, entry in sd["state"].items():
        if lbfgs:
            entry = _lbfgs_stacked(entry, optimizer.param_groups[0]["params"])
        if not isinstance(index, int) or isinstance(index, bool):
            raise MetadataError(f"optimizer state key {index!r} is not a parameter index")
        plain: dict[str, Any] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach()
            else:
                plain[str(key)] = encode(value, f"optimizer state {index}[{key!r}]")
        state[index] = plain
    groups = encode(sd["param_groups"], "optimizer param_groups")
    param_groups = tuple(
        ParamGroup(tuple(group["params"]), {k: v for k, v in group.items() if k != "params"})
        for group in groups
    )
    return OptimizerSection(class_name, param_groups, param_names, state), tensors


def _saved_index(key: str) -> int:
    if not key.isdigit() or (len(key) > 1 and key[0] == "0"):
        raise FormatError(
            f"optimizer state key {key!r} is not a parameter index", kind="InvalidState"
        )
    return int(key)


def optimizer_state_dict(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    saved: OptimizerSection,
    tensors: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    """A ``state_dict`` for ``optimizer.load_state_dict`` built from the saved
    layout, with the saved state matched to ``optimizer``'s parameters by
    name (FORMAT.md 5) and renumbered to the optimizer's own order.

    Raises :class:`StateMismatchError`, having changed nothing, when a saved
    name is not a parameter of the optimizer, the groups do not correspond one
    to one, or a state tensor's shape is not its parameter's.
    """
    current = list(_parameter_names(optimizer, model))
    index_of = {name: i for i, (_, name) in enumerate(current)}
    saved_groups = saved.param_groups
    saved_names = saved.param_names
    groups = optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise StateMismatchError(
            f"the saved optimizer has {len(saved_groups)} parameter groups, "
            f"the optimizer {len(groups)}"
        )
    remap: dict[int, int] = {}
    new_groups: list[dict[str, Any]] = []
    start = 0
    for g, (saved_group, ours) in enumerate(zip(saved_groups, groups, strict=True)):
        ours_indices = range(start, start + len(ours["params"]))
        start += len(ours["params"])
        saved_params = saved_group.params
        if len(saved_params) != len(ours_indices):
            raise StateMismatchError(
                f"saved param_groups[{g}] holds {len(saved_params)} parameters, "
                f"the optimizer's group {len(ours_indices)}"
            )
        for s in saved_params:
            if not 0 <= s < len(saved_names):
                raise FormatError(
                    f"optimizer param_groups[{g}] holds index {s} with no name", kind="InvalidState"
                )
            name = saved_names[s]
            j = index_of.get(name)
            if j is None:
                raise StateMismatchError(
                    f"the saved optimizer state is for parameter {name!r}, "
                    "which the model does not have"
                )
            if j not in ours_indices:
                raise StateMismatchError(
                    f"parameter {name!r} is in saved param_groups[{g}] but in another group "
                    "of the optimizer"
                )
            if s in remap:
                raise FormatError(
                    f"optimizer parameter index {s} is in two groups", kind="InvalidState"
                )
            remap[s] = j
        # Saved hyperparameters win, as in PyTorch; a key the saved group
        # lacks keeps the constructor's value (FORMAT.md 5).
        merged = {k: v for k, v in ours.items() if k != "params"}
        merged.update(_tuples(decode(dict(saved_group.options))))
        merged["params"] = list(ours_indices)
        new_groups.append(merged)

    state: dict[int, dict[str, Any]] = {}
    for s, plain in saved.state.items():
        if s not in remap:
            raise FormatError(
                f"optimizer state {s} is for a parameter index no group holds",
                kind="InvalidState",
            )
        state[remap[s]] = decode(dict(plain))
    for tensor_name, value in tensors.items():
        prefix, _, key = tensor_name.partition(".")
        index, _, state_key = key.partition(".")
        if prefix != "state" or not state_key:
            raise FormatError(
                f"optimizer.safetensors: unexpected tensor {tensor_name!r}", kind="InvalidState"
            )
        s = _saved_index(index)
        if s not in remap or remap[s] not in state:
            raise FormatError(
                f"optimizer.safetensors: {tensor_name!r} has no state entry", kind="InvalidState"
            )
        j = remap[s]
        param, name = current[j]
        _check_state_shape(name, param, state_key, value)
        state[j][state_key] = value
    if isinstance(optimizer, torch.optim.LBFGS):
        params = [p for p, _ in current]
        if any(remap[s] != k for k, s in enumerate(saved_groups[0].params)):
            raise StateMismatchError(
                "LBFGS's state is flat over the parameters in order, and the saved "
                "parameters are in another order"
            )
        history_size = new_groups[0].get("history_size")
        state = {j: _lbfgs_unstacked(entry, params, history_size) for j, entry in state.items()}
    return {"state": state, "param_groups": new_groups}


def _check_state_shape(name: str, param: torch.Tensor, key: str, value: torch.Tensor) -> None:
    if key == "step":
        if value.numel() != 1:
            raise StateMismatchError(
                f"optimizer state 'step' of {name!r} has shape {list(value.shape)}, not one element"
            )
    elif key in _PARAMETER_SHAPED and value.shape != param.shape:
        raise StateMismatchError(
            f"optimizer state {key!r} of {name!r} has shape {list(value.shape)}, "
            f"the parameter {list(param.shape)}"
        )


def check_positional_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, state_dict: Mapping[str, Any]
) -> dict[str, Any]:
    """A PyTorch optimizer ``state_dict`` with no parameter names (a file of the
    original package), matched to ``optimizer``'s parameters by position as
    PyTorch does, with the checks of :func:`optimizer_state_dict`."""
    try:
        saved_groups = [dict(g) for g in state_dict["param_groups"]]
        saved_state = dict(state_dict["state"])
        param_groups = tuple(
            ParamGroup(
                tuple(int(i) for i in g["params"]), {k: v for k, v in g.items() if k != "params"}
            )
            for g in saved_groups
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateMismatchError(f"the saved optimizer state is not a state_dict: {exc}") from exc
    saved_params = [i for group in param_groups for i in group.params]
    names = tuple(name for _, name in _parameter_names(optimizer, model))
    if sorted(saved_params) != list(range(len(names))):
        raise StateMismatchError(
            f"the saved optimizer state has {len(saved_params)} parameters, "
            f"the optimizer {len(names)}"
        )
    state: dict[int, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for index, entry in saved_state.items():
        plain: dict[str, Any] = {}
        for key, value in dict(entry).items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                plain[str(key)] = value
        state[_saved_index(str(index))] = plain
    saved = OptimizerSection("", param_groups, names, state)
    return optimizer_state_dict(optimizer, model, saved, tensors)


def scheduler_state_to_json(state: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler's ``state_dict()`` as the JSON of FORMAT.md 6."""
    out: dict[str, Any] = encode(state, "scheduler state")
    return out


def scheduler_state_from_json(state: Mapping[str, Any]) -> dict[str, Any]:
    """A scheduler state from JSON in the types PyTorch's ``state_dict()`` has
    (MultiStepLR's milestones a Counter with int keys)."""
    out: dict[str, Any] = decode(dict(state))
    milestones = out.get("milestones")
    if isinstance(milestones, dict):
        try:
            out["milestones"] = Counter({int(k): v for k, v in milestones.items()})
        except ValueError as exc:
            raise FormatError(
                f"scheduler milestones {milestones!r} are not integers", kind="InvalidState"
            ) from exc
    return out

"""Conversion between torch.optim / lr_scheduler state_dicts and the
pytorch-saver v1 layout (docs/FORMAT.md sections 5 and 6): JSON internals
plus `state.<i>.<key>` tensors. Used by the tests that compare Rust's
optimizers and schedulers with PyTorch's."""

import math
from collections import Counter

import torch


def encode(value):
    """A state_dict or param group value as JSON: tuples become lists,
    non-finite floats the format's encoding (FORMAT.md 3.4), dict keys
    strings (MultiStepLR's Counter of milestones)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"__float__": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    raise TypeError(f"no JSON form for {type(value).__name__}: {value!r}")


def decode(value):
    """The inverse of encode (lists stay lists, see scheduler_state)."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def scheduler_state(state):
    """A scheduler state from JSON, in the types PyTorch's state_dict() has."""
    out = decode(state)
    if "milestones" in out:
        out["milestones"] = Counter({int(k): v for k, v in out["milestones"].items()})
    return out


def to_layout(optimizer, names_by_param):
    """(internals, tensors) for an optimizer: internals holds class,
    param_groups, param_names and the non-tensor state."""
    sd = optimizer.state_dict()
    ordered = [p for g in optimizer.param_groups for p in g["params"]]
    internals = {
        "class": f"torch.optim.{type(optimizer).__name__}",
        "param_groups": encode(sd["param_groups"]),
        "param_names": [names_by_param[p] for p in ordered],
        "state": {},
    }
    tensors = {}
    for index, state in sd["state"].items():
        plain = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous()
            else:
                plain[key] = encode(value)
        internals["state"][str(index)] = plain
    return internals, tensors


def from_layout(internals, tensors):
    """A state_dict for torch.optim's load_state_dict."""
    state = {int(i): decode(plain) for i, plain in internals["state"].items()}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state[int(index)][key] = value
    groups = decode(internals["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}

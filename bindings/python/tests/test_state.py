"""Optimizer and scheduler state through a file: the v1 layout, bit-for-bit
resume for every built-in optimizer and scheduler, and optimizer state
matched to parameters by name."""

from __future__ import annotations

import json
import math
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_saver import ModelContainer, ModelObjects, StateMismatchError, read_checkpoint
from pytorch_saver._state import (
    decode,
    encode,
    optimizer_layout,
    optimizer_state_dict,
    scheduler_state_from_json,
    scheduler_state_to_json,
)
from support import (
    MODEL_KWARGS,
    Backward,
    BufferB,
    Forward,
    Model,
    ScaledForward,
    ScaleParameter,
    SwappedParameter,
    assert_same_objects,
    assert_same_optimizer,
    batches,
    optimizer_state_by_name,
    train,
)
from torch import nn
from torch.optim import lr_scheduler as sched

OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd-momentum": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    "adam-amsgrad": (torch.optim.Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.01}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "betas": (0.85, 0.99)}),
    "rmsprop-centered": (torch.optim.RMSprop, {"lr": 1e-3, "centered": True, "momentum": 0.5}),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.1}),
    "adamax": (torch.optim.Adamax, {"lr": 1e-2, "weight_decay": 0.01}),
    "nadam-decoupled": (
        torch.optim.NAdam,
        {"lr": 1e-2, "weight_decay": 0.01, "decoupled_weight_decay": True},
    ),
    "radam": (torch.optim.RAdam, {"lr": 1e-2}),
    "adadelta": (torch.optim.Adadelta, {"rho": 0.8}),
    "rprop": (torch.optim.Rprop, {"lr": 1e-2, "etas": (0.4, 1.3)}),
    "asgd": (torch.optim.ASGD, {"lr": 1e-2, "t0": 2.0}),
    "adafactor": (torch.optim.Adafactor, {"lr": 1e-2, "weight_decay": 0.01}),
}

SCHEDULERS: dict[str, tuple[type[Any], dict[str, Any]]] = {
    "StepLR": (sched.StepLR, {"step_size": 2, "gamma": 0.5}),
    "MultiStepLR": (sched.MultiStepLR, {"milestones": [2, 4, 4], "gamma": 0.5}),
    "ExponentialLR": (sched.ExponentialLR, {"gamma": 0.9}),
    "ConstantLR": (sched.ConstantLR, {"factor": 0.5, "total_iters": 4}),
    "LinearLR": (sched.LinearLR, {"start_factor": 0.25, "total_iters": 5}),
    "PolynomialLR": (sched.PolynomialLR, {"total_iters": 8, "power": 2.0}),
    "CosineAnnealingLR": (sched.CosineAnnealingLR, {"T_max": 5, "eta_min": 1e-4}),
    "CosineAnnealingWarmRestarts": (sched.CosineAnnealingWarmRestarts, {"T_0": 3, "T_mult": 2}),
    "OneCycleLR": (sched.OneCycleLR, {"max_lr": 0.1, "total_steps": 20, "cycle_momentum": True}),
    "ReduceLROnPlateau": (sched.ReduceLROnPlateau, {"patience": 1, "factor": 0.5}),
    "CyclicLR": (sched.CyclicLR, {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}),
}


def resume_matches_uninterrupted(
    tmp_path: Path,
    optimizer: tuple[type[torch.optim.Optimizer], dict[str, Any]],
    scheduler: tuple[type[Any], dict[str, Any]] | None,
) -> None:
    """Train 3 steps, save, load with no classes, train both 4 more steps:
    the loaded objects equal the uninterrupted ones bit for bit."""
    torch.manual_seed(0)
    container = ModelContainer()
    sched_cls, sched_kwargs = scheduler if scheduler is not None else (None, None)
    objs = container.initialize(Model, MODEL_KWARGS, *optimizer, sched_cls, sched_kwargs)
    data = batches(7)
    train(objs, data[:3])
    path = container.save(tmp_path, "resume", epoch=3)
    metadata, loaded = ModelContainer().load(path)
    assert metadata["epoch"] == 3
    assert_same_objects(objs, loaded)
    train(objs, data[3:])
    train(loaded, data[3:])
    assert_same_objects(objs, loaded)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_builtin_optimizer_resumes_bit_for_bit(tmp_path: Path, name: str) -> None:
    resume_matches_uninterrupted(tmp_path, OPTIMIZERS[name], SCHEDULERS["StepLR"])


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_builtin_scheduler_resumes_bit_for_bit(tmp_path: Path, name: str) -> None:
    optimizer = OPTIMIZERS["sgd-momentum"]
    if name == "OneCycleLR":
        # cycle_momentum drives Adam's betas[0], a tuple in the param groups.
        optimizer = (torch.optim.Adam, {"lr": 1e-2})
    resume_matches_uninterrupted(tmp_path, optimizer, SCHEDULERS[name])


def test_an_optimizer_without_a_scheduler_resumes_bit_for_bit(tmp_path: Path) -> None:
    resume_matches_uninterrupted(tmp_path, OPTIMIZERS["adam-amsgrad"], None)


def test_optimizer_layout_in_the_file(tmp_path: Path) -> None:
    container = ModelContainer()
    objs = container.initialize(Model, MODEL_KWARGS, torch.optim.Adam, {"lr": 1e-3})
    train(objs, batches(1))
    path = container.save(tmp_path)
    with zipfile.ZipFile(path) as zf:
        internals = json.loads(zf.read("metadata.json"))["__pytorch_saver__"]["optimizer"]
    names = [n for n, _ in objs.model.named_parameters()]
    assert internals["class"] == "torch.optim.Adam"
    assert internals["param_names"] == names
    assert internals["param_groups"][0]["params"] == list(range(len(names)))
    assert internals["param_groups"][0]["betas"] == [0.9, 0.999]
    assert internals["state"] == {str(i): {} for i in range(len(names))}
    tensors = read_checkpoint(path).optimizer
    assert set(tensors) == {
        f"state.{i}.{key}" for i in range(len(names)) for key in ("step", "exp_avg", "exp_avg_sq")
    }
    assert tensors["state.0.step"].shape == () and tensors["state.0.step"].dtype == torch.float32


def test_reduce_lr_on_plateau_infinity_uses_the_float_encoding(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(
        Model, MODEL_KWARGS, torch.optim.SGD, {"lr": 0.1}, sched.ReduceLROnPlateau, {}
    )
    path = container.save(tmp_path)
    with zipfile.ZipFile(path) as zf:
        text = zf.read("metadata.json").decode()
    state = json.loads(text)["__pytorch_saver__"]["scheduler"]["state"]
    assert state["best"] == {"__float__": "inf"}
    assert state["mode_worse"] == {"__float__": "inf"}
    assert state["min_lrs"] == [0]  # an int stays an int
    assert "Infinity" not in text and "NaN" not in text
    _, loaded = ModelContainer().load(path)
    assert isinstance(loaded.scheduler, sched.ReduceLROnPlateau)
    assert loaded.scheduler.best == math.inf


def test_non_finite_floats_encode_and_decode() -> None:
    value = {"a": math.inf, "b": [-math.inf, 1.5, 2], "c": (math.nan,)}
    encoded = encode(value)
    assert encoded == {
        "a": {"__float__": "inf"},
        "b": [{"__float__": "-inf"}, 1.5, 2],
        "c": [{"__float__": "nan"}],
    }
    text = json.dumps(encoded, allow_nan=False)
    decoded = decode(json.loads(text))
    assert decoded["a"] == math.inf and decoded["b"] == [-math.inf, 1.5, 2]
    assert math.isnan(decoded["c"][0])


def test_multistep_milestones_are_a_counter_with_int_keys() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = sched.MultiStepLR(opt, milestones=[30, 80, 80])
    encoded = scheduler_state_to_json(scheduler.state_dict())
    assert encoded["milestones"] == {"30": 1, "80": 2}
    decoded = scheduler_state_from_json(json.loads(json.dumps(encoded)))
    assert decoded["milestones"] == Counter({30: 1, 80: 2})
    assert decoded == scheduler.state_dict()


def test_scheduler_state_from_an_older_torch_loads() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = sched.StepLR(opt, step_size=2)
    state = scheduler_state_to_json(scheduler.state_dict())
    del state["_is_initial"], state["_get_lr_called_within_step"]
    state["verbose"] = False
    scheduler.load_state_dict(scheduler_state_from_json(state))
    assert scheduler.last_epoch == 0


# optimizer state matched by name


def trained(
    tmp_path: Path, model_class: type[nn.Module], optim: tuple[type[Any], dict[str, Any]]
) -> tuple[ModelContainer, ModelObjects, str]:
    torch.manual_seed(0)
    container = ModelContainer()
    objs = container.initialize(model_class, {}, *optim)
    train(objs, batches(3, out_dim=2))
    return container, objs, container.save(tmp_path)


@pytest.mark.parametrize(
    "optim",
    [
        (torch.optim.Adam, {"lr": 1e-2}),
        (
            torch.optim.SGD,
            {
                "lr": 0.1,
                "momentum": 0.9,
                "param_groups": [
                    {"params": ["b.weight", "a.bias"], "lr": 0.01},
                    {"params": ["a.weight", "b.bias"]},
                ],
            },
        ),
    ],
    ids=["one-group", "two-groups"],
)
def test_state_follows_parameters_created_in_another_order(
    tmp_path: Path, optim: tuple[type[Any], dict[str, Any]]
) -> None:
    _, objs, path = trained(tmp_path, Forward, optim)
    _, loaded = ModelContainer().load(path, Backward, optim[0])
    assert loaded.optimizer is not None and objs.optimizer is not None
    forward_names = [n for n, _ in objs.model.named_parameters()]
    backward_names = [n for n, _ in loaded.model.named_parameters()]
    assert forward_names != backward_names  # PyTorch's positional load would mix them up
    assert_same_optimizer(objs.optimizer, objs.model, loaded.optimizer, loaded.model)
    data = batches(5, out_dim=2)[3:]
    train(objs, data)
    train(loaded, data)
    assert_same_optimizer(objs.optimizer, objs.model, loaded.optimizer, loaded.model)
    for name, value in objs.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name]), name


@pytest.mark.parametrize(
    ("saved_class", "loaded_class"),
    [(Forward, BufferB), (ScaledForward, ScaleParameter), (ScaledForward, SwappedParameter)],
    ids=["missing-parameter", "extra-parameter", "other-parameter"],
)
def test_state_that_does_not_fit_raises_and_changes_nothing(
    tmp_path: Path, saved_class: type[nn.Module], loaded_class: type[nn.Module]
) -> None:
    _, _, path = trained(tmp_path, saved_class, (torch.optim.Adam, {"lr": 1e-2}))
    container = ModelContainer()
    held = container.initialize(Model, MODEL_KWARGS, torch.optim.SGD, {"lr": 0.1})
    with pytest.raises(StateMismatchError):
        container.load(path, loaded_class, torch.optim.Adam)
    assert container.model is held.model and container.optim is held.optimizer


def test_unit_checks_leave_the_optimizer_unchanged() -> None:
    torch.manual_seed(0)
    model = Forward()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(ModelObjects(model, opt), batches(2, out_dim=2))
    internals, tensors = optimizer_layout(opt, model, "torch.optim.Adam")
    before = optimizer_state_by_name(opt, model)

    wrong_shape = dict(tensors, **{"state.0.exp_avg": torch.zeros(3)})
    with pytest.raises(StateMismatchError, match="exp_avg"):
        optimizer_state_dict(opt, model, internals, wrong_shape)
    wrong_step = dict(tensors, **{"state.0.step": torch.zeros(2)})
    with pytest.raises(StateMismatchError, match="step"):
        optimizer_state_dict(opt, model, internals, wrong_step)
    group = internals.param_groups[0]
    two_groups = replace(
        internals,
        param_groups=(replace(group, params=(0, 1)), replace(group, params=(2, 3))),
    )
    with pytest.raises(StateMismatchError, match="groups"):
        optimizer_state_dict(opt, model, two_groups, tensors)
    unknown = replace(internals, param_names=("a.weight", "a.bias", "c.weight", "b.bias"))
    with pytest.raises(StateMismatchError, match="c.weight"):
        optimizer_state_dict(opt, model, unknown, tensors)

    after = optimizer_state_by_name(opt, model)
    for name in before:
        for key in before[name]:
            assert torch.equal(before[name][key], after[name][key])


def test_saved_hyperparameters_win_and_missing_keys_keep_the_constructors() -> None:
    model = Forward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    internals, tensors = optimizer_layout(opt, model, "torch.optim.SGD")
    options = dict(internals.param_groups[0].options, lr=0.5)
    del options["momentum"]
    internals = replace(
        internals, param_groups=(replace(internals.param_groups[0], options=options),)
    )
    other = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.7)
    other.load_state_dict(optimizer_state_dict(other, model, internals, tensors))
    assert other.param_groups[0]["lr"] == 0.5
    assert other.param_groups[0]["momentum"] == 0.7

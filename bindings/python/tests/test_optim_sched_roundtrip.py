"""Issue 19's optimizers and LR schedulers through ``ModelContainer``: train
N steps, save, load in a new container (classes resolved by name), train M
more, and the parameters, optimizer state and scheduler state are
bit-identical to N + M uninterrupted steps. Composite schedulers
(``SequentialLR``, ``ChainedScheduler``) are given their children as specs
and written as ``spec`` tags; ``LambdaLR``/``MultiplicativeLR`` rebuild from
the function passed to ``load``, which the file names but never holds."""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_saver import (
    ClassResolutionError,
    InitializationError,
    MetadataError,
    ModelContainer,
    ModelObjects,
    Spec,
    StateMismatchError,
    TypedValueError,
)
from pytorch_saver._composite import composite_state
from pytorch_saver.models import MLP
from torch import nn
from torch.optim import lr_scheduler as sched

MLP_KWARGS: dict[str, Any] = {"in_dim": 4, "hidden_dim": 8, "n_classes": 3}


class NoBias(nn.Module):
    """Two bias-free layers: only 2-D parameters, as Muon requires."""

    def __init__(self, in_dim: int, hidden_dim: int, n_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=False)
        self.fc2 = nn.Linear(hidden_dim, n_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.tanh(self.fc1(x)))
        return out


def warmup(epoch: int) -> float:
    return min(1.0, (epoch + 1) / 5)


def shrink(epoch: int) -> float:
    return 0.9 if epoch % 2 else 0.97


def linear_then_cosine(t_max: int = 12) -> dict[str, Any]:
    """The usual warmup recipe: LinearLR for 4 steps, then cosine decay."""
    return {
        "schedulers": [
            {"class": sched.LinearLR, "kwargs": {"start_factor": 0.1, "total_iters": 4}},
            {"class": sched.CosineAnnealingLR, "kwargs": {"T_max": t_max, "eta_min": 1e-4}},
        ],
        "milestones": [4],
    }


@dataclass
class Case:
    optim: type[torch.optim.Optimizer]
    optim_kwargs: dict[str, Any]
    scheduler: type[Any] | None = None
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    model: type[nn.Module] = MLP
    callables: dict[str, Any] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "Adamax": Case(torch.optim.Adamax, {"lr": 0.01, "weight_decay": 0.01}),
    "NAdam+SequentialLR": Case(
        torch.optim.NAdam,
        {"lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": True, "momentum_decay": 0.005},
        sched.SequentialLR,
        linear_then_cosine(),
    ),
    "NAdam-coupled": Case(torch.optim.NAdam, {"lr": 0.01, "weight_decay": 0.01}),
    "RAdam+SequentialLR": Case(
        torch.optim.RAdam,
        {"lr": 0.01, "weight_decay": 0.02, "decoupled_weight_decay": True},
        sched.SequentialLR,
        linear_then_cosine(),
    ),
    "Adadelta": Case(torch.optim.Adadelta, {"lr": 1.0, "rho": 0.8, "weight_decay": 0.01}),
    "Rprop": Case(torch.optim.Rprop, {"lr": 0.01, "etas": (0.4, 1.3), "step_sizes": (1e-5, 1.0)}),
    "ASGD": Case(torch.optim.ASGD, {"lr": 0.05, "t0": 3.0, "lambd": 1e-3}),
    "Adafactor": Case(torch.optim.Adafactor, {"lr": 0.01, "weight_decay": 0.01}),
    "Muon": Case(torch.optim.Muon, {"lr": 0.02, "weight_decay": 0.05}, model=NoBias),
    "SGD+CyclicLR-momentum": Case(
        torch.optim.SGD,
        {"lr": 0.01, "momentum": 0.9},
        sched.CyclicLR,
        {"base_lr": 0.001, "max_lr": 0.05, "step_size_up": 3, "mode": "triangular2"},
    ),
    "Adam+CyclicLR-betas": Case(
        torch.optim.Adam,
        {"lr": 0.01},
        sched.CyclicLR,
        {
            "base_lr": 0.001,
            "max_lr": 0.02,
            "step_size_up": 4,
            "mode": "exp_range",
            "gamma": 0.95,
            "base_momentum": 0.85,
            "max_momentum": 0.95,
        },
    ),
    "Adamax+ChainedScheduler": Case(
        torch.optim.Adamax,
        {"lr": 0.01},
        sched.ChainedScheduler,
        {
            "schedulers": [
                Spec(sched.ExponentialLR, {"gamma": 0.95}),
                {"class": sched.MultiStepLR, "kwargs": {"milestones": [3, 6, 6], "gamma": 0.5}},
            ]
        },
    ),
    "Rprop+SequentialLR(MultiStepLR,CyclicLR)": Case(
        torch.optim.Rprop,
        {"lr": 0.01},
        sched.SequentialLR,
        {
            "schedulers": [
                {"class": sched.MultiStepLR, "kwargs": {"milestones": [2, 4], "gamma": 0.5}},
                {
                    "class": sched.CyclicLR,
                    "kwargs": {
                        "base_lr": 0.001,
                        "max_lr": 0.01,
                        "step_size_up": 2,
                        "cycle_momentum": False,
                    },
                },
            ],
            "milestones": [5],
        },
    ),
    "SGD+LambdaLR": Case(
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.5},
        sched.LambdaLR,
        {"lr_lambda": warmup},
        callables={"lr_lambda": warmup},
    ),
    "Adam+MultiplicativeLR": Case(
        torch.optim.Adam,
        {"lr": 0.01},
        sched.MultiplicativeLR,
        {"lr_lambda": shrink},
        callables={"lr_lambda": shrink},
    ),
    "AdamW+SequentialLR(LambdaLR,ExponentialLR)": Case(
        torch.optim.AdamW,
        {"lr": 0.01},
        sched.SequentialLR,
        {
            "schedulers": [
                {"class": sched.LambdaLR, "kwargs": {"lr_lambda": warmup}},
                {"class": sched.ExponentialLR, "kwargs": {"gamma": 0.9}},
            ],
            "milestones": [5],
        },
        callables={"schedulers[0].lr_lambda": warmup},
    ),
}

N, M = 7, 10


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)) for _ in range(6)]


DATA = batches()


def train(objs: ModelObjects, start: int, steps: int) -> list[list[float]]:
    """Steps ``start..start+steps``; the learning rates after each."""
    assert objs.optimizer is not None
    lrs = []
    for step in range(start, start + steps):
        x, y = DATA[step % len(DATA)]
        objs.optimizer.zero_grad()
        loss = (objs.model(x) - y).square().mean()
        loss.backward()
        objs.optimizer.step()
        if objs.scheduler is not None:
            objs.scheduler.step()
        lrs.append([g["lr"] for g in objs.optimizer.param_groups])
    return lrs


def initialize(case: Case) -> tuple[ModelContainer, ModelObjects]:
    torch.manual_seed(3)
    container = ModelContainer()
    objs = container.initialize(
        case.model,
        MLP_KWARGS,
        case.optim,
        case.optim_kwargs,
        case.scheduler,
        case.scheduler_kwargs if case.scheduler else None,
    )
    return container, objs


def assert_same(a: Any, b: Any, where: str) -> None:
    """Bit-identical: tensors of the same dtype and bits, floats equal (NaN
    to NaN), containers of the same type and keys (in any order: a loaded
    optimizer state lists its plain values before its tensors), recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), where
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{where}: {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} vs {b!r}"


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    state: dict[str, Any] = scheduler.state_dict()
    # CyclicLR: a bound method of the scheduler itself, rebuilt by load_state_dict.
    state.pop("_scale_fn_ref", None)
    for child in state.get("_schedulers", []):
        child.pop("_scale_fn_ref", None)
    return state


@pytest.mark.parametrize("name", list(CASES))
def test_resume_is_bit_identical_to_an_uninterrupted_run(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    _, whole = initialize(case)
    lrs_whole = train(whole, 0, N + M)

    container, half = initialize(case)
    lrs_half = train(half, 0, N)
    path = container.save(tmp_path, step=N)
    metadata, resumed = ModelContainer().load(path, callables=case.callables)
    assert metadata["step"] == N
    assert type(resumed.optimizer) is case.optim
    assert type(resumed.scheduler) is (case.scheduler or type(None))
    lrs_resumed = lrs_half + train(resumed, N, M)

    assert lrs_resumed == lrs_whole
    assert_same(resumed.model.state_dict(), whole.model.state_dict(), "model")
    assert resumed.optimizer is not None and whole.optimizer is not None
    assert_same(resumed.optimizer.state_dict(), whole.optimizer.state_dict(), "optimizer")
    if case.scheduler is not None:
        assert_same(scheduler_state(resumed.scheduler), scheduler_state(whole.scheduler), "sched")


def raw_metadata(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as z:
        out: dict[str, Any] = json.loads(z.read("metadata.json"))
        return out


def test_sequential_lr_children_are_spec_tags_with_their_state_in_torch_layout(
    tmp_path: Path,
) -> None:
    container, objs = initialize(CASES["NAdam+SequentialLR"])
    train(objs, 0, 5)
    path = container.save(tmp_path)
    saved = raw_metadata(path)
    assert saved["scheduler_kwargs"] == {
        "schedulers": [
            {
                "__type__": "spec",
                "class": "torch.optim.lr_scheduler.LinearLR",
                "kwargs": {"start_factor": 0.1, "total_iters": 4},
            },
            {
                "__type__": "spec",
                "class": "torch.optim.lr_scheduler.CosineAnnealingLR",
                "kwargs": {"T_max": 12, "eta_min": 1e-4},
            },
        ],
        "milestones": [4],
    }
    section = saved["__pytorch_saver__"]["scheduler"]
    assert section["class"] == "torch.optim.lr_scheduler.SequentialLR"
    assert objs.scheduler is not None
    expected = json.loads(json.dumps(objs.scheduler.state_dict()))
    assert section["state"] == expected
    # torch 2.13: LinearLR stopped at 3 (its last step is the switch), cosine at 1.
    assert [s["last_epoch"] for s in section["state"]["_schedulers"]] == [3, 1]

    metadata, _ = ModelContainer().load(path)
    children = metadata["scheduler_kwargs"]["schedulers"]
    assert children == [
        Spec(sched.LinearLR, {"start_factor": 0.1, "total_iters": 4}),
        Spec(sched.CosineAnnealingLR, {"T_max": 12, "eta_min": 1e-4}),
    ]


def test_children_state_is_decoded_recursively(tmp_path: Path) -> None:
    """A MultiStepLR child's Counter and a non-finite float inside
    ``_schedulers`` come back in torch's types."""
    _, objs = initialize(CASES["Adamax+ChainedScheduler"])
    children: list[dict[str, Any]] = [
        {"gamma": {"__float__": "inf"}, "base_lrs": [0.01], "last_epoch": 0},
        {"milestones": {"3": 1, "6": 2}, "gamma": 0.5, "last_epoch": 0},
    ]
    saved = {
        "_last_lr": [0.01],
        "_schedulers": children,
    }
    state = composite_state(objs.scheduler, saved)
    assert state["_schedulers"][0]["gamma"] == math.inf
    assert state["_schedulers"][1]["milestones"] == {3: 1, 6: 2}
    assert type(state["_schedulers"][1]["milestones"]).__name__ == "Counter"
    with pytest.raises(StateMismatchError, match="1 child scheduler states, the scheduler 2"):
        composite_state(objs.scheduler, {"_schedulers": children[:1]})


def test_a_composite_with_other_children_in_the_file_is_refused_by_restore(
    tmp_path: Path,
) -> None:
    container, objs = initialize(CASES["Adamax+ChainedScheduler"])
    train(objs, 0, 3)
    path = container.save(tmp_path)
    other = ModelContainer()
    torch.manual_seed(3)
    other.initialize(
        MLP,
        MLP_KWARGS,
        torch.optim.Adamax,
        {"lr": 0.01},
        sched.ChainedScheduler,
        {"schedulers": [Spec(sched.ExponentialLR, {"gamma": 0.95})]},
    )
    before = other.scheduler.state_dict() if other.scheduler else None
    with pytest.raises(StateMismatchError, match="2 child scheduler states, the scheduler 1"):
        other.restore(path)
    assert other.scheduler is not None and other.scheduler.state_dict() == before


@pytest.mark.parametrize(
    ("children", "where"),
    [
        ([sched.LinearLR], r"\['schedulers'\]\[0\] is not a child scheduler"),
        ([{"class": "LinearLR", "kwargs": {}}], r"\['schedulers'\]\[0\]\['class'\] must be"),
        ([{"cls": sched.LinearLR}], r"\['schedulers'\]\[0\] is not a child scheduler"),
        (
            [Spec(sched.LinearLR, {}), {"class": sched.ExponentialLR, "kwargs": {"gamma": open}}],
            r"\['schedulers'\]\[1\]\['kwargs'\]\['gamma'\] has no typed form",
        ),
        ([], r"\['schedulers'\] must be a non-empty list"),
        ("LinearLR", r"\['schedulers'\] must be a non-empty list"),
    ],
)
def test_children_that_are_not_specs_are_refused_naming_the_path(children: Any, where: str) -> None:
    container = ModelContainer()
    with pytest.raises(MetadataError, match=r"scheduler_kwargs" + where):
        container.initialize(
            MLP,
            MLP_KWARGS,
            torch.optim.SGD,
            {"lr": 0.1},
            sched.SequentialLR,
            {"schedulers": children, "milestones": [2]},
        )
    assert container.model is None


def test_a_spec_anywhere_else_is_refused() -> None:
    with pytest.raises(MetadataError, match=r"scheduler_kwargs\['gamma'\] is a Spec"):
        ModelContainer().initialize(
            MLP,
            MLP_KWARGS,
            torch.optim.SGD,
            {"lr": 0.1},
            sched.ExponentialLR,
            {"gamma": Spec(sched.LinearLR, {})},
        )


def test_a_child_that_is_not_a_scheduler_or_fails_to_build_is_named() -> None:
    with pytest.raises(ClassResolutionError, match=r"\['schedulers'\]\[1\].*torch.nn.Linear"):
        ModelContainer().initialize(
            MLP,
            MLP_KWARGS,
            torch.optim.SGD,
            {"lr": 0.1},
            sched.SequentialLR,
            {"schedulers": [Spec(sched.LinearLR, {}), Spec(nn.Linear, {})], "milestones": [2]},
        )
    with pytest.raises(InitializationError, match=r"ExponentialLR.*\['schedulers'\]\[0\]"):
        ModelContainer().initialize(
            MLP,
            MLP_KWARGS,
            torch.optim.SGD,
            {"lr": 0.1},
            sched.ChainedScheduler,
            {"schedulers": [Spec(sched.ExponentialLR, {"gama": 0.5})]},
        )


def test_a_version_1_container_refuses_child_specs() -> None:
    with pytest.raises(MetadataError, match="version 2"):
        ModelContainer(format_version=1).initialize(
            MLP,
            MLP_KWARGS,
            torch.optim.SGD,
            {"lr": 0.1},
            sched.SequentialLR,
            linear_then_cosine(),
        )


# LambdaLR and MultiplicativeLR: the function is named, never held.


@pytest.mark.parametrize("name", ["SGD+LambdaLR", "Adam+MultiplicativeLR"])
def test_a_lambda_scheduler_file_holds_only_the_placeholder(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    container, objs = initialize(case)
    train(objs, 0, N)
    path = container.save(tmp_path)
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == ["metadata.json", "model.safetensors", "optimizer.safetensors"]
    saved = raw_metadata(path)
    fn = case.callables["lr_lambda"]
    assert saved["scheduler_kwargs"] == {
        "lr_lambda": {"__type__": "callable", "name": f"{__name__}.{fn.__name__}"}
    }
    assert saved["__pytorch_saver__"]["scheduler"]["state"]["lr_lambdas"] == [None]

    cls = f"torch.optim.lr_scheduler.{case.scheduler.__name__ if case.scheduler else ''}"
    with pytest.raises(TypedValueError, match=rf"\['lr_lambda'\] of {cls} is the function") as e:
        ModelContainer().load(path)
    assert "callables={'lr_lambda': fn}" in str(e.value)


def test_a_lambda_child_is_supplied_by_its_position(tmp_path: Path) -> None:
    case = CASES["AdamW+SequentialLR(LambdaLR,ExponentialLR)"]
    container, objs = initialize(case)
    train(objs, 0, 3)
    path = container.save(tmp_path)
    child = raw_metadata(path)["scheduler_kwargs"]["schedulers"][0]
    assert child["kwargs"] == {"lr_lambda": {"__type__": "callable", "name": f"{__name__}.warmup"}}
    with pytest.raises(
        TypedValueError,
        match=r"\['schedulers'\]\[0\]\.kwargs\['lr_lambda'\] of "
        r"torch.optim.lr_scheduler.LambdaLR is the function .*'schedulers\[0\]\.lr_lambda'",
    ):
        ModelContainer().load(path, callables={"lr_lambda": warmup})
    metadata, loaded = ModelContainer().load(path, callables=case.callables)
    assert metadata["scheduler_kwargs"]["schedulers"][0] == Spec(
        sched.LambdaLR, {"lr_lambda": warmup}
    )
    assert loaded.scheduler is not None
    assert isinstance(loaded.scheduler, sched.SequentialLR)
    assert loaded.scheduler._schedulers[0].lr_lambdas == [warmup]  # type: ignore[attr-defined]
    # restore() rebuilds nothing: the placeholder stays in the metadata.
    restored = container.restore(path)
    assert restored["scheduler_kwargs"]["schedulers"][0].kwargs["lr_lambda"] == {
        "__type__": "callable",
        "name": f"{__name__}.warmup",
    }

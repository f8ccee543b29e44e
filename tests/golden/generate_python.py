"""Writes the Python-side golden files into tests/golden/v<N>/, each with a
sidecar `<file>.json` holding what a reader must find in it (the same schema
as examples/golden.rs writes for Rust). It only ever adds: a file that
exists is kept as it is.

    .venv/bin/python tests/golden/generate_python.py

The matrix (tests/golden/README.md): the built-in MLP and torch.nn.Linear,
each with no optimizer, SGD + StepLR, Adam + CosineAnnealingWarmRestarts
and AdamW + OneCycleLR, trained 10 steps; plus every dtype; plus two
portable Sequentials (docs/MODELS.md) trained the same way (all in v1/,
written by version 1 of the format). Version 2 (v2/): a checkpoint with typed
kwargs (a dtype, a tuple) and extra state (RNG, GradScaler, Counters), a
weights file, and training checkpoints of the optimizers and schedulers
added in version 2's time (V2_TRAINING).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy
import torch
from pytorch_saver import RNG, Counters, ModelContainer, read_checkpoint
from pytorch_saver._format import write_checkpoint
from pytorch_saver.models import MLP, Sequential

GOLDEN_ROOT = Path(__file__).resolve().parent
GOLDEN = GOLDEN_ROOT / "v1"
GOLDEN_V2 = GOLDEN_ROOT / "v2"
FORMAT_VERSION = 1
"""The version of the v1 matrix files (written once, kept forever)."""
BEFORE, AFTER = 10, 5

MODELS: dict[str, tuple[type[torch.nn.Module], dict[str, Any]]] = {
    "mlp": (MLP, {"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}),
    "linear": (torch.nn.Linear, {"in_features": 4, "out_features": 3}),
}

# The portable Sequentials of examples/golden.rs: name -> (layers, per-example
# input shape, combo).
SEQUENTIAL_NETS: dict[str, tuple[list[dict[str, Any]], list[int], str]] = {
    "convnet": (
        [
            {
                "type": "Conv2d",
                "in_channels": 1,
                "out_channels": 4,
                "kernel_size": 3,
                "padding": 1,
                "bias": False,
            },
            {"type": "BatchNorm2d", "num_features": 4},
            {"type": "ReLU"},
            {"type": "MaxPool2d", "kernel_size": 2},
            {"type": "Flatten"},
            {"type": "Linear", "in_features": 36, "out_features": 3},
        ],
        [1, 6, 6],
        "adam_warm_restarts",
    ),
    "layers": (
        [
            {
                "type": "Conv1d",
                "in_channels": 3,
                "out_channels": 4,
                "kernel_size": 3,
                "padding": "same",
            },
            {"type": "BatchNorm1d", "num_features": 4, "momentum": None},
            {"type": "LeakyReLU", "negative_slope": 0.1},
            {"type": "Flatten"},
            {"type": "LayerNorm", "normalized_shape": 32},
            {"type": "Linear", "in_features": 32, "out_features": 8},
            {"type": "GELU", "approximate": "tanh"},
            {"type": "Linear", "in_features": 8, "out_features": 8},
            {"type": "SiLU"},
            {"type": "Linear", "in_features": 8, "out_features": 3},
            {"type": "Tanh"},
        ],
        [3, 8],
        "sgd_steplr",
    ),
}

COMBOS: dict[str, tuple[Any, dict[str, Any], Any, dict[str, Any]]] = {
    "none": (None, {}, None, {}),
    "sgd_steplr": (
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9},
        torch.optim.lr_scheduler.StepLR,
        {"step_size": 3, "gamma": 0.5},
    ),
    "adam_warm_restarts": (
        torch.optim.Adam,
        {"lr": 0.01},
        torch.optim.lr_scheduler.CosineAnnealingWarmRestarts,
        {"T_0": 4, "T_mult": 2},
    ),
    "adamw_onecycle": (
        torch.optim.AdamW,
        {"lr": 0.01, "weight_decay": 0.01},
        torch.optim.lr_scheduler.OneCycleLR,
        {"max_lr": 0.02, "total_steps": 40},
    ),
}


def f32s(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().to(torch.float32).reshape(-1).tolist()]


def sidecar(path: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The file's whole metadata and every tensor's dtype, shape and bytes."""
    ckpt = read_checkpoint(path)
    members: dict[str, Any] = {}
    internals = ckpt.metadata["__pytorch_saver__"]
    for member, tensors in (
        ("model.safetensors", ckpt.model),
        ("optimizer.safetensors", ckpt.optimizer),
        ("extra.safetensors", ckpt.extra),
    ):
        if member == "optimizer.safetensors" and "optimizer" not in internals:
            continue
        if member == "extra.safetensors" and "extra" not in internals:
            continue
        members[member] = {
            name: {
                "dtype": DTYPE_NAMES[t.dtype],
                "shape": list(t.shape),
                "hex": t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex(),
            }
            for name, t in tensors.items()
        }
    return {"metadata": ckpt.metadata, "tensors": members, **extra}


DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def keep_or_write(name: str, write: Any, golden: Path = GOLDEN) -> None:
    target = golden / name
    if target.exists():
        print(f"kept    {target}")
        return
    with tempfile.TemporaryDirectory() as scratch:
        written, extra = write(scratch)
        expected = sidecar(written, extra)
        shutil.copyfile(written, target)
    (golden / f"{name}.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")
    print(f"added   {target}")


def train(objs: Any, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """The loop of tests/golden.rs: MSE on one batch, optimizer step,
    scheduler step."""
    for _ in range(steps):
        objs.optimizer.zero_grad()
        loss = (objs.model(x) - y).square().mean()
        loss.backward()
        objs.optimizer.step()
        if objs.scheduler is not None:
            objs.scheduler.step()


def matrix_checkpoint(
    scratch: str,
    seed: int,
    model: str,
    combo: str,
    in_shape: list[int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """A checkpoint of MODELS[model] (or the Sequential of that name, with
    inputs of shape [batch, *in_shape]), trained 10 steps with the combo,
    with the sidecar's forward and resume."""
    if in_shape is None:
        model_class, model_kwargs = MODELS[model]
        in_shape = [4]
    else:
        model_class, model_kwargs = Sequential, {"layers": SEQUENTIAL_NETS[model][0]}
    optim_class, optim_kwargs, sched_class, sched_kwargs = COMBOS[combo]
    torch.manual_seed(seed)
    container = ModelContainer()
    objs = container.initialize(
        model_class,
        model_kwargs,
        optim_class,
        optim_kwargs or None,
        sched_class,
        sched_kwargs or None,
    )
    x, y = torch.randn(6, *in_shape), torch.randn(6, 3)
    trains = objs.optimizer is not None
    if trains:
        train(objs, x, y, BEFORE)
    path = container.save(scratch, "golden", step=BEFORE if trains else 0)

    numel = 2 * int(torch.Size(in_shape).numel())
    probe = torch.linspace(-1.0, 1.0, numel).reshape(2, *in_shape)
    with torch.no_grad():
        output = objs.model.eval()(probe)
    extra: dict[str, Any] = {
        "forward": {"input": f32s(probe), "input_shape": [2, *in_shape], "output": f32s(output)}
    }
    if not trains:
        return path, extra
    _, resumed = ModelContainer().load(path)
    train(resumed, x, y, AFTER)
    extra["resume"] = {
        "input": f32s(x),
        "input_shape": [6, *in_shape],
        "target": f32s(y),
        "target_shape": [6, 3],
        "steps": AFTER,
        "params_after": {n: f32s(t) for n, t in resumed.model.state_dict().items()},
        "lrs_after": [g["lr"] for g in resumed.optimizer.param_groups],
    }
    return path, extra


def all_dtypes(scratch: str) -> tuple[str, dict[str, Any]]:
    """Every v1 dtype as matrix, rank-0 and empty tensors, written through
    the format layer directly (class tests.AllDtypes, as Rust's file)."""
    tensors: dict[str, torch.Tensor] = {}
    for i, dtype in enumerate(DTYPE_NAMES):
        size = torch.empty((), dtype=dtype).element_size()
        for kind, shape, n in (("matrix", [2, 3], 6), ("scalar", [], 1), ("empty", [0, 4], 0)):
            if dtype == torch.bool:
                raw = bytes(j % 2 for j in range(n))
            else:
                raw = bytes((j * 41 + i * 13) % 256 for j in range(n * size))
            flat = torch.tensor(list(raw), dtype=torch.uint8)
            name = f"{DTYPE_NAMES[dtype].lower()}.{kind}"
            tensors[name] = flat.view(dtype).reshape(shape).clone()
    metadata = {
        "model_kwargs": {},
        "timestamp": 1_796_000_000,
        "description": "every v1 dtype as matrix, rank-0 and empty tensors, written by Python",
        "__pytorch_saver__": {
            "format_version": FORMAT_VERSION,
            "kind": "inference",
            "model": {"class": "tests.AllDtypes"},
            "producer": {
                "library": "pytorch-saver",
                "version": "0.1.0",
                "language": "python",
                "torch_version": torch.__version__,
            },
        },
    }
    return write_checkpoint(scratch, "golden", metadata, tensors, None), {}


def v2_typed_extra_checkpoint(scratch: str) -> tuple[str, dict[str, Any]]:
    """Version 2: torch.nn.Linear with a dtype kwarg, Adam with a betas
    tuple, StepLR, trained 10 steps as the matrix is, with the extra state
    "rng" (pytorch_saver.RNG), "scaler" (torch.amp.GradScaler("cpu")) and
    "counters" (Counters(step=10, epoch=1))."""
    torch.manual_seed(200)
    random.seed(200)
    numpy.random.seed(200)
    container = ModelContainer()
    objs = container.initialize(
        torch.nn.Linear,
        {"in_features": 4, "out_features": 3, "dtype": torch.float64},
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.9, 0.99)},
        torch.optim.lr_scheduler.StepLR,
        {"step_size": 3, "gamma": 0.5},
    )
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randn(6, 3, dtype=torch.float64)
    train(objs, x, y, BEFORE)
    loss = float((objs.model(x) - y).square().mean())
    container.track("rng", RNG())
    container.track("scaler", torch.amp.GradScaler("cpu"))
    container.track("counters", Counters(step=BEFORE, epoch=1))
    return container.save(scratch, "golden", loss=loss, note="golden"), {}


def v2_weights(scratch: str) -> tuple[str, dict[str, Any]]:
    """Version 2's weights kind: a few tensors and user metadata, no class,
    written through the format layer."""
    gen = torch.Generator().manual_seed(201)
    tensors = {
        "embed.weight": torch.randn(5, 3, generator=gen),
        "head.bias": torch.randn(2, generator=gen).to(torch.bfloat16),
        "steps": torch.tensor(7, dtype=torch.int64),
    }
    metadata = {
        "timestamp": 1_797_000_000,
        "description": "a weights file (no class), written by Python",
        "__pytorch_saver__": {
            "format_version": 2,
            "kind": "weights",
            "producer": {
                "library": "pytorch-saver",
                "version": "0.2.0",
                "language": "python",
                "torch_version": torch.__version__,
            },
        },
    }
    return write_checkpoint(scratch, "golden", metadata, tensors, None), {}


def warmup_factor(epoch: int) -> float:
    """LambdaLR's ``lr_lambda`` in ``python_v2_mlp_adam_lambda``: the file
    records only its name; a reader passes a function again at load."""
    return min(1.0, (epoch + 1) / 4)


def decay_factor(epoch: int) -> float:
    """MultiplicativeLR's ``lr_lambda`` in ``python_v2_mlp_sgd_multiplicative``."""
    return 0.9 if epoch % 3 == 0 else 1.0


_LR = torch.optim.lr_scheduler
_MLP_KWARGS = MODELS["mlp"][1]
_WARMUP_COSINE = {
    "schedulers": [
        {"class": _LR.LinearLR, "kwargs": {"start_factor": 0.1, "total_iters": 4}},
        {"class": _LR.CosineAnnealingLR, "kwargs": {"T_max": 20, "eta_min": 0.001}},
    ],
    "milestones": [4],
}

V2_TRAINING: dict[str, tuple[Any, dict[str, Any], Any, dict[str, Any], Any, dict[str, Any]]] = {
    "mlp_nadam_sequential": (
        MLP,
        _MLP_KWARGS,
        torch.optim.NAdam,
        {"lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": True, "momentum_decay": 0.005},
        _LR.SequentialLR,
        _WARMUP_COSINE,
    ),
    "mlp_radam_chained": (
        MLP,
        _MLP_KWARGS,
        torch.optim.RAdam,
        {"lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": True},
        _LR.ChainedScheduler,
        {
            "schedulers": [
                {"class": _LR.ConstantLR, "kwargs": {"factor": 0.5, "total_iters": 6}},
                {"class": _LR.ExponentialLR, "kwargs": {"gamma": 0.95}},
            ]
        },
    ),
    "mlp_adamax_cyclic": (
        MLP,
        _MLP_KWARGS,
        torch.optim.Adamax,
        {"lr": 0.01},
        _LR.CyclicLR,
        {
            "base_lr": 0.001,
            "max_lr": 0.01,
            "step_size_up": 3,
            "mode": "triangular2",
            "cycle_momentum": False,
        },
    ),
    "mlp_adadelta_sequential": (
        MLP,
        _MLP_KWARGS,
        torch.optim.Adadelta,
        {"lr": 1.0, "rho": 0.85},
        _LR.SequentialLR,
        {
            "schedulers": [
                {"class": _LR.ConstantLR, "kwargs": {"factor": 0.25, "total_iters": 3}},
                {"class": _LR.StepLR, "kwargs": {"step_size": 2, "gamma": 0.7}},
            ],
            "milestones": [5],
        },
    ),
    "mlp_rprop_cyclic": (
        MLP,
        _MLP_KWARGS,
        torch.optim.Rprop,
        {"lr": 0.005, "etas": (0.4, 1.3)},
        _LR.CyclicLR,
        {
            "base_lr": 0.001,
            "max_lr": 0.005,
            "step_size_up": 4,
            "mode": "exp_range",
            "gamma": 0.97,
            "cycle_momentum": False,
        },
    ),
    "mlp_asgd_sequential": (
        MLP,
        _MLP_KWARGS,
        torch.optim.ASGD,
        {"lr": 0.02, "t0": 4.0},
        _LR.SequentialLR,
        _WARMUP_COSINE,
    ),
    "mlp_adafactor_chained": (
        MLP,
        _MLP_KWARGS,
        torch.optim.Adafactor,
        {"lr": 0.01},
        _LR.ChainedScheduler,
        {
            "schedulers": [
                {"class": _LR.LinearLR, "kwargs": {"start_factor": 0.5, "total_iters": 5}},
                {"class": _LR.MultiStepLR, "kwargs": {"milestones": [3, 8], "gamma": 0.5}},
            ]
        },
    ),
    "linear_muon_cyclic": (
        torch.nn.Linear,
        {"in_features": 4, "out_features": 3, "bias": False},
        torch.optim.Muon,
        {"lr": 0.02, "momentum": 0.9},
        _LR.CyclicLR,
        {
            "base_lr": 0.005,
            "max_lr": 0.02,
            "step_size_up": 3,
            "base_momentum": 0.8,
            "max_momentum": 0.95,
        },
    ),
    "mlp_sgd_cyclic_momentum": (
        MLP,
        _MLP_KWARGS,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9},
        _LR.CyclicLR,
        {"base_lr": 0.01, "max_lr": 0.05, "step_size_up": 2, "step_size_down": 4},
    ),
    "mlp_adam_lambda": (
        MLP,
        _MLP_KWARGS,
        torch.optim.Adam,
        {"lr": 0.01},
        _LR.LambdaLR,
        {"lr_lambda": warmup_factor},
    ),
    "mlp_sgd_multiplicative": (
        MLP,
        _MLP_KWARGS,
        torch.optim.SGD,
        {"lr": 0.05},
        _LR.MultiplicativeLR,
        {"lr_lambda": decay_factor},
    ),
}
"""Version 2 training checkpoints: name -> (model class, kwargs, optimizer,
kwargs, scheduler, kwargs). Composites' children are ``spec`` tags in the
file; LambdaLR's and MultiplicativeLR's functions ``callable`` tags."""


def v2_training_checkpoint(scratch: str, seed: int, name: str) -> tuple[str, dict[str, Any]]:
    """A V2_TRAINING checkpoint trained 10 steps as the matrix is, with the
    sidecar's forward and resume (the resume passes the callables again)."""
    model_class, model_kwargs, optim_class, optim_kwargs, sched_class, sched_kwargs = V2_TRAINING[
        name
    ]
    torch.manual_seed(seed)
    container = ModelContainer()
    objs = container.initialize(
        model_class, model_kwargs, optim_class, optim_kwargs, sched_class, sched_kwargs
    )
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    train(objs, x, y, BEFORE)
    path = container.save(scratch, "golden", step=BEFORE)
    probe = torch.linspace(-1.0, 1.0, 8).reshape(2, 4)
    with torch.no_grad():
        output = objs.model.eval()(probe)
    callables = {k: v for k, v in sched_kwargs.items() if k == "lr_lambda"}
    _, resumed = ModelContainer().load(path, callables=callables or None)
    train(resumed, x, y, AFTER)
    return path, {
        "forward": {"input": f32s(probe), "input_shape": [2, 4], "output": f32s(output)},
        "resume": {
            "input": f32s(x),
            "input_shape": [6, 4],
            "target": f32s(y),
            "target_shape": [6, 3],
            "steps": AFTER,
            "params_after": {n: f32s(t) for n, t in resumed.model.state_dict().items()},
            "lrs_after": [g["lr"] for g in resumed.optimizer.param_groups],
        },
    }


def v2_lbfgs_checkpoint(scratch: str) -> tuple[str, dict[str, Any]]:
    """The MLP with LBFGS (a short history, rolled over by the save, and
    the strong Wolfe line search) and StepLR, trained 6 steps with a
    closure, as examples/golden.rs writes Rust's; with the sidecar's
    forward and no resume record (replaying one needs a closure)."""
    torch.manual_seed(310)
    container = ModelContainer()
    objs = container.initialize(
        MLP,
        _MLP_KWARGS,
        torch.optim.LBFGS,
        {"lr": 0.5, "max_iter": 4, "history_size": 3, "line_search_fn": "strong_wolfe"},
        _LR.StepLR,
        {"step_size": 2, "gamma": 0.5},
    )
    x, y = torch.randn(6, 4), torch.randn(6, 3)

    def closure() -> torch.Tensor:
        objs.optimizer.zero_grad()
        loss = (objs.model(x) - y).square().mean()
        loss.backward()
        return loss

    for _ in range(6):
        objs.optimizer.step(closure)
        objs.scheduler.step()
    path = container.save(scratch, "golden", step=6)
    probe = torch.linspace(-1.0, 1.0, 8).reshape(2, 4)
    with torch.no_grad():
        output = objs.model.eval()(probe)
    return path, {"forward": {"input": f32s(probe), "input_shape": [2, 4], "output": f32s(output)}}


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    GOLDEN_V2.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    keep_or_write("python_v2_typed_extra_checkpoint.zip", v2_typed_extra_checkpoint, GOLDEN_V2)
    keep_or_write("python_v2_weights.zip", v2_weights, GOLDEN_V2)
    for i, name in enumerate(V2_TRAINING):
        keep_or_write(
            f"python_v2_{name}_checkpoint.zip",
            lambda scratch, i=i, name=name: v2_training_checkpoint(scratch, 300 + i, name),
            GOLDEN_V2,
        )
    keep_or_write("python_v2_mlp_lbfgs_steplr_checkpoint.zip", v2_lbfgs_checkpoint, GOLDEN_V2)
    keep_or_write("python_all_dtypes_inference.zip", all_dtypes)
    for m, model in enumerate(MODELS):
        for c, combo in enumerate(COMBOS):
            keep_or_write(
                f"python_matrix_{model}_{combo}.zip",
                lambda scratch, m=m, c=c, model=model, combo=combo: matrix_checkpoint(
                    scratch, 100 + 10 * m + c, model, combo
                ),
            )
    for name, (_, in_shape, combo) in SEQUENTIAL_NETS.items():
        keep_or_write(
            f"python_sequential_{name}_{combo}.zip",
            lambda scratch, name=name, combo=combo, in_shape=in_shape: matrix_checkpoint(
                scratch, 130, name, combo, in_shape
            ),
        )


if __name__ == "__main__":
    sys.exit(main())

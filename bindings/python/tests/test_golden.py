"""Every golden file of every format version and every language reads in
Python with exactly the metadata and bytes its sidecar records; files of
built-in models load through ModelContainer with no classes given, give
the recorded forward output and resume to the recorded state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_saver import RNG, ClassResolutionError, Counters, ModelContainer, Spec, read_checkpoint
from pytorch_saver._state import optimizer_layout
from pytorch_saver.distributed import read_tensors, verify

GOLDEN = Path(__file__).resolve().parents[3] / "tests" / "golden"
FILES = sorted(GOLDEN.glob("v*/*.zip"))
BUILTIN_MODELS = {"pytorch_saver.models.MLP", "torch.nn.Linear"}


def sidecar(path: Path) -> dict[str, Any]:
    return json.loads(Path(f"{path}.json").read_text())


def hex_of(t: torch.Tensor) -> str:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()


def tensor(values: list[float], shape: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_both_languages_wrote_the_matrix() -> None:
    names = {p.name for p in FILES}
    for language in ("rust", "python"):
        for model in ("mlp", "linear"):
            for combo in ("none", "sgd_steplr", "adam_warm_restarts", "adamw_onecycle"):
                assert f"{language}_matrix_{model}_{combo}.zip" in names
        assert f"{language}_all_dtypes_inference.zip" in names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_reads_with_the_recorded_values(path: Path) -> None:
    want = sidecar(path)
    ckpt = read_checkpoint(path)
    assert ckpt.metadata == want["metadata"]
    members = {
        "model.safetensors": ckpt.model,
        "optimizer.safetensors": ckpt.optimizer,
        "extra.safetensors": ckpt.extra,
    }
    assert set(want["tensors"]) == {m for m, tensors in members.items() if tensors} | (
        {"optimizer.safetensors"} if "optimizer" in want["metadata"]["__pytorch_saver__"] else set()
    )
    for member, tensors in want["tensors"].items():
        got = members[member]
        assert set(got) == set(tensors), member
        for name, t in tensors.items():
            assert list(got[name].shape) == t["shape"], name
            assert hex_of(got[name]) == t["hex"], f"{member}: {name}"


# The files of built-in models whose kwargs are plain JSON (v1's matrix),
# and v2's training checkpoints of the optimizers and schedulers added with
# it: their metadata loads back as the sidecar records it. The other v2
# files have tests of their own below.
BUILTIN_FILES = [
    p
    for p in FILES
    if (p.parent.name == "v1" or (p.parent.name == "v2" and p.name.endswith("_checkpoint.zip")))
    and "extra" not in sidecar(p)["metadata"]["__pytorch_saver__"]
    and sidecar(p)["metadata"]["__pytorch_saver__"].get("model", {}).get("class") in BUILTIN_MODELS
]


def warmup_factor(epoch: int) -> float:
    """The generator's LambdaLR function (tests/golden/README.md)."""
    return min(1.0, (epoch + 1) / 4)


def decay_factor(epoch: int) -> float:
    """The generator's MultiplicativeLR function (tests/golden/README.md)."""
    return 0.9 if epoch % 3 == 0 else 1.0


# Scheduler class -> the function its golden files' callable tag stands for.
CALLABLES = {
    "torch.optim.lr_scheduler.LambdaLR": warmup_factor,
    "torch.optim.lr_scheduler.MultiplicativeLR": decay_factor,
}


def test_the_v2_training_checkpoints_of_both_languages_are_there() -> None:
    names = {p.name for p in BUILTIN_FILES}
    for name in (
        "mlp_nadam_sequential",
        "mlp_radam_chained",
        "mlp_adamax_cyclic",
        "mlp_adadelta_sequential",
        "mlp_rprop_cyclic",
        "mlp_asgd_sequential",
        "mlp_adafactor_chained",
        "linear_muon_cyclic",
        "mlp_sgd_cyclic_momentum",
        "mlp_lbfgs_steplr",
    ):
        for language in ("rust", "python"):
            assert f"{language}_v2_{name}_checkpoint.zip" in names
    assert "python_v2_mlp_adam_lambda_checkpoint.zip" in names
    assert "python_v2_mlp_sgd_multiplicative_checkpoint.zip" in names


def as_recorded(value: Any, recorded: Any) -> Any:
    """Loaded metadata in the file's form: tuples back to ``tuple`` tags, a
    composite's children (loaded as ``Spec``) back to ``spec`` tags, and
    the function passed for a ``callable`` tag back to that tag."""
    if isinstance(value, Spec):
        name = f"{value.cls.__module__}.{value.cls.__qualname__}"
        return {
            "__type__": "spec",
            "class": name,
            "kwargs": as_recorded(value.kwargs, recorded["kwargs"]),
        }
    if isinstance(value, tuple) and isinstance(recorded, dict):
        items = [as_recorded(v, r) for v, r in zip(value, recorded["items"], strict=True)]
        return {"__type__": "tuple", "items": items}
    if isinstance(value, dict) and isinstance(recorded, dict):
        return {k: as_recorded(v, recorded.get(k)) for k, v in value.items()}
    if isinstance(value, list) and isinstance(recorded, list) and len(value) == len(recorded):
        return [as_recorded(v, r) for v, r in zip(value, recorded, strict=True)]
    if any(value is fn for fn in CALLABLES.values()):
        assert isinstance(recorded, dict) and recorded.get("__type__") == "callable", recorded
        return recorded
    return value


@pytest.mark.parametrize("path", BUILTIN_FILES, ids=lambda p: p.name)
def test_loads_by_name_with_its_bytes_forward_and_resume(path: Path) -> None:
    want = sidecar(path)
    scheduler = want["metadata"]["__pytorch_saver__"].get("scheduler", {}).get("class")
    callables = {"lr_lambda": CALLABLES[scheduler]} if scheduler in CALLABLES else None
    metadata, objs = ModelContainer().load(path, callables=callables)
    assert "__pytorch_saver__" not in metadata
    recorded = {k: v for k, v in want["metadata"].items() if k != "__pytorch_saver__"}
    assert as_recorded(metadata, recorded) == recorded
    for name, t in objs.model.state_dict().items():
        assert hex_of(t) == want["tensors"]["model.safetensors"][name]["hex"], name
    internals = want["metadata"]["__pytorch_saver__"]
    assert (objs.optimizer is None) == ("optimizer" not in internals)
    assert (objs.scheduler is None) == ("scheduler" not in internals)
    if objs.optimizer is not None:
        # The optimizer's state in the file's layout (LBFGS's lists stacked).
        saved = want["tensors"]["optimizer.safetensors"]
        _, tensors = optimizer_layout(objs.optimizer, objs.model, internals["optimizer"]["class"])
        assert set(tensors) == set(saved)
        for name, value in tensors.items():
            assert hex_of(value) == saved[name]["hex"], name

    if "forward" in want:
        fwd = want["forward"]
        with torch.no_grad():
            out = objs.model.eval()(tensor(fwd["input"], fwd["input_shape"])).reshape(-1)
        expected = torch.tensor(fwd["output"], dtype=torch.float32)
        assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6), path.name
        objs.model.train()

    if "resume" in want:
        resume = want["resume"]
        x = tensor(resume["input"], resume["input_shape"])
        y = tensor(resume["target"], resume["target_shape"])
        plateau = isinstance(objs.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        for _ in range(resume["steps"]):
            objs.optimizer.zero_grad()
            loss = (objs.model(x) - y).square().mean()
            loss.backward()
            objs.optimizer.step()
            if objs.scheduler is not None:
                objs.scheduler.step(loss.item()) if plateau else objs.scheduler.step()
        for name, t in objs.model.state_dict().items():
            recorded = torch.tensor(resume["params_after"][name], dtype=torch.float32)
            assert torch.allclose(t.reshape(-1), recorded, rtol=1e-5, atol=1e-6), name
        lrs = [g["lr"] for g in objs.optimizer.param_groups]
        assert lrs == pytest.approx(resume["lrs_after"], rel=1e-12)


V2 = GOLDEN / "v2"


def test_the_python_v2_checkpoint_loads_its_typed_kwargs_and_extra_state() -> None:
    path = V2 / "python_v2_typed_extra_checkpoint.zip"
    want = sidecar(path)
    extra = want["tensors"]["extra.safetensors"]
    rng, counters = RNG(), Counters()
    scaler = torch.amp.GradScaler("cpu")
    metadata, objs = ModelContainer().load(
        path, track={"rng": rng, "scaler": scaler, "counters": counters}
    )
    assert metadata["model_kwargs"] == {"in_features": 4, "out_features": 3, "dtype": torch.float64}
    assert metadata["optim_kwargs"] == {"lr": 0.01, "betas": (0.9, 0.99)}
    assert metadata["scheduler_kwargs"] == {"step_size": 3, "gamma": 0.5}
    assert metadata["note"] == "golden" and isinstance(metadata["loss"], float)
    assert objs.model.weight.dtype == torch.float64
    assert objs.optimizer is not None
    assert objs.optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    assert isinstance(objs.scheduler, torch.optim.lr_scheduler.StepLR)
    assert hex_of(torch.get_rng_state()) == extra["rng.torch.cpu"]["hex"]
    assert counters == Counters(step=10, epoch=1)
    assert scaler.state_dict() == want["metadata"]["__pytorch_saver__"]["extra"]["scaler"]["state"]


def test_a_weights_file_reads_but_names_no_class_to_build() -> None:
    path = V2 / "python_v2_weights.zip"
    ckpt = read_checkpoint(path)
    assert ckpt.metadata["__pytorch_saver__"]["kind"] == "weights"
    assert set(ckpt.model) == {"embed.weight", "head.bias", "steps"}
    with pytest.raises(ClassResolutionError, match="weights file"):
        ModelContainer().load(path)


# Cross-language: written by Rust (examples/golden.rs); runs once that file
# exists in tests/golden/v2.
RUST_V2 = V2 / "rust_v2_mlp_extra_checkpoint.zip"


@pytest.mark.skipif(not RUST_V2.exists(), reason="needs the Rust v2 golden file")
def test_the_rust_v2_checkpoint_restores_its_rng_into_python() -> None:
    want = sidecar(RUST_V2)
    torch.manual_seed(12345)  # another state than the file's
    rng, counters = RNG(), Counters()
    metadata, objs = ModelContainer().load(RUST_V2, track={"rng": rng, "counters": counters})
    assert type(objs.model).__name__ == "MLP"
    assert isinstance(objs.optimizer, torch.optim.Adam)
    assert isinstance(objs.scheduler, torch.optim.lr_scheduler.StepLR)
    assert metadata["model_kwargs"] == want["metadata"]["model_kwargs"]
    assert torch.equal(
        torch.get_rng_state(),
        torch.tensor(
            list(bytes.fromhex(want["tensors"]["extra.safetensors"]["rng.torch.cpu"]["hex"])),
            dtype=torch.uint8,
        ),
    )
    saved_counters = want["metadata"]["__pytorch_saver__"]["extra"]["counters"]["state"]
    assert counters.state_dict() == saved_counters
    for name, t in objs.model.state_dict().items():
        assert hex_of(t) == want["tensors"]["model.safetensors"][name]["hex"], name


SHARDED = sorted((GOLDEN / "sharded_v1").glob("*.json"))


@pytest.mark.parametrize("sidecar_path", SHARDED, ids=[p.stem for p in SHARDED])
def test_a_golden_sharded_checkpoint_reads_and_loads_as_recorded(sidecar_path: Path) -> None:
    want = json.loads(sidecar_path.read_text())
    index = GOLDEN / want["index"]
    verify(index)
    whole = read_tensors(index)
    assert sorted(whole) == sorted(want["tensors"])
    for name, t in want["tensors"].items():
        assert hex_of(whole[name]) == t["hex"], name
    _, objs = ModelContainer().load(index)
    forward = want["forward"]
    objs.model.eval()
    with torch.no_grad():
        out = objs.model(tensor(forward["input"], forward["shape"]))
    assert torch.allclose(out.flatten(), torch.tensor(forward["output"]), rtol=1e-6, atol=1e-6)

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
from pytorch_saver import RNG, ClassResolutionError, Counters, ModelContainer, read_checkpoint
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


# The files of built-in models whose kwargs are plain JSON (v1's matrix):
# their metadata loads back as the sidecar records it. The v2 files have
# tests of their own below.
BUILTIN_FILES = [
    p
    for p in FILES
    if p.parent.name == "v1"
    and sidecar(p)["metadata"]["__pytorch_saver__"]["model"]["class"] in BUILTIN_MODELS
]


@pytest.mark.parametrize("path", BUILTIN_FILES, ids=lambda p: p.name)
def test_loads_by_name_with_its_bytes_forward_and_resume(path: Path) -> None:
    want = sidecar(path)
    metadata, objs = ModelContainer().load(path)
    assert "__pytorch_saver__" not in metadata
    assert metadata == {k: v for k, v in want["metadata"].items() if k != "__pytorch_saver__"}
    for name, t in objs.model.state_dict().items():
        assert hex_of(t) == want["tensors"]["model.safetensors"][name]["hex"], name
    internals = want["metadata"]["__pytorch_saver__"]
    assert (objs.optimizer is None) == ("optimizer" not in internals)
    assert (objs.scheduler is None) == ("scheduler" not in internals)
    if objs.optimizer is not None:
        saved = want["tensors"]["optimizer.safetensors"]
        state = objs.optimizer.state_dict()["state"]
        n = 0
        for index, entries in state.items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    assert hex_of(value) == saved[f"state.{index}.{key}"]["hex"], (index, key)
                    n += 1
        assert n == len(saved)

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

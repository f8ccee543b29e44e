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
from pytorch_saver import ModelContainer, read_checkpoint

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
    members = {"model.safetensors": ckpt.model, "optimizer.safetensors": ckpt.optimizer}
    for member, tensors in want["tensors"].items():
        got = members[member]
        assert set(got) == set(tensors), member
        for name, t in tensors.items():
            assert list(got[name].shape) == t["shape"], name
            assert hex_of(got[name]) == t["hex"], f"{member}: {name}"


BUILTIN_FILES = [
    p
    for p in FILES
    if sidecar(p)["metadata"]["__pytorch_saver__"]["model"]["class"] in BUILTIN_MODELS
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

"""Files of the original package (0.1.x: a pickle in a zip): converted to
format v1 by ``upgrade`` and ``python -m pytorch_saver upgrade``, loaded
directly when the classes are given, and never unpickled unsafely. Also the
``inspect`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_saver import (
    ClassResolutionError,
    ModelContainer,
    ModelObjects,
    StateMismatchError,
    UnsafePickleError,
    read_checkpoint,
    upgrade,
)
from pytorch_saver.__main__ import main
from support import MODEL_KWARGS, Model, assert_same_objects, batches, train, write_legacy
from torch.optim.lr_scheduler import StepLR

TESTS = Path(__file__).resolve().parent
TIMESTAMP = 1_700_000_000


def legacy_file(
    tmp_path: Path, optimizer: bool = True, scheduler: bool = True
) -> tuple[Path, ModelObjects]:
    """A trained model (with Adam and StepLR) saved as the original did."""
    torch.manual_seed(0)
    model = Model(**MODEL_KWARGS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.9)) if optimizer else None
    sched = StepLR(opt, step_size=2) if opt is not None and scheduler else None
    objs = ModelObjects(model, opt, sched)
    if opt is not None:
        train(objs, batches(3))
    metadata: dict[str, Any] = {"model_kwargs": MODEL_KWARGS}
    state_dicts: dict[str, Any] = {"model_state_dict": model.state_dict()}
    if opt is not None:
        metadata["optim_kwargs"] = {"lr": 1e-2, "betas": [0.8, 0.9]}
        state_dicts["optim_state_dict"] = opt.state_dict()
    if sched is not None:
        metadata["scheduler_kwargs"] = {"step_size": 2}
        state_dicts["scheduler_state_dict"] = sched.state_dict()
    metadata.update(loss=0.5, dataset="fake", timestamp=TIMESTAMP)
    path = write_legacy(tmp_path / f"old_checkpoint_{TIMESTAMP}.zip", metadata, state_dicts)
    return path, objs


def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def test_upgrade_converts_a_file_that_loads_back_equal(tmp_path: Path) -> None:
    old, objs = legacy_file(tmp_path)
    new = upgrade(old, out_dir(tmp_path), Model, torch.optim.Adam, StepLR, prefix="new")
    assert os.path.basename(new) == f"new_checkpoint_{TIMESTAMP}.zip"
    metadata, loaded = ModelContainer().load(new)
    assert_same_objects(objs, loaded)
    assert metadata == {
        "model_kwargs": MODEL_KWARGS,
        "optim_kwargs": {"lr": 1e-2, "betas": [0.8, 0.9]},
        "scheduler_kwargs": {"step_size": 2},
        "timestamp": TIMESTAMP,
        "loss": 0.5,
        "dataset": "fake",
    }
    data = batches(5)[3:]
    assert objs.optimizer is not None
    train(objs, data)
    train(loaded, data)
    assert_same_objects(objs, loaded)


def test_upgrade_of_a_model_only_file_writes_an_inference_file(tmp_path: Path) -> None:
    old, objs = legacy_file(tmp_path, optimizer=False)
    new = upgrade(old, out_dir(tmp_path), Model)
    assert read_checkpoint(new).metadata["__pytorch_saver__"]["kind"] == "inference"
    _, loaded = ModelContainer().load(new)
    assert_same_objects(objs, loaded)


@pytest.mark.parametrize(
    "classes",
    [(Model, None, None), (Model, torch.optim.Adam, None)],
    ids=["optimizer-left-behind", "scheduler-left-behind"],
)
def test_upgrade_refuses_to_leave_state_behind(tmp_path: Path, classes: tuple[Any, ...]) -> None:
    old, _ = legacy_file(tmp_path)
    out = out_dir(tmp_path)
    with pytest.raises(StateMismatchError):
        upgrade(old, out, *classes)
    assert list(out.iterdir()) == []


def test_upgrade_refuses_state_that_does_not_fit(tmp_path: Path) -> None:
    old, _ = legacy_file(tmp_path, optimizer=False)
    out = out_dir(tmp_path)
    with pytest.raises(StateMismatchError):
        upgrade(old, out, Model, torch.optim.Adam)
    assert list(out.iterdir()) == []


def test_load_reads_an_original_file_when_the_classes_are_given(tmp_path: Path) -> None:
    old, objs = legacy_file(tmp_path)
    metadata, loaded = ModelContainer().load(old, Model, torch.optim.Adam, StepLR)
    assert_same_objects(objs, loaded)
    assert metadata["loss"] == 0.5
    _, model_only = ModelContainer().load(old, Model)
    assert model_only.optimizer is None
    with pytest.raises(ClassResolutionError, match="upgrade"):
        ModelContainer().load(old)


class _Evil:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.canary}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    metadata = {"model_kwargs": MODEL_KWARGS, "timestamp": TIMESTAMP}
    model = Model(**MODEL_KWARGS)
    old = write_legacy(
        tmp_path / "evil.zip",
        metadata,
        {"model_state_dict": model.state_dict(), "extra": _Evil(canary)},
    )
    with pytest.raises(UnsafePickleError):
        upgrade(old, out_dir(tmp_path), Model)
    with pytest.raises(UnsafePickleError):
        ModelContainer().load(old, Model)
    assert not canary.exists()


# the command line


def test_the_upgrade_command_converts_a_file(tmp_path: Path) -> None:
    old, objs = legacy_file(tmp_path)
    out = out_dir(tmp_path)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytorch_saver",
            "upgrade",
            str(old),
            str(out),
            "--model",
            "support.Model",
            "--optimizer",
            "torch.optim.Adam",
            "--scheduler",
            "torch.optim.lr_scheduler.StepLR",
        ],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    new = run.stdout.strip()
    assert Path(new).parent == out
    _, loaded = ModelContainer().load(new)
    assert_same_objects(objs, loaded)


def test_the_upgrade_command_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, _ = legacy_file(tmp_path)
    out = out_dir(tmp_path)
    assert main(["upgrade", str(old), str(out), "--model", "support.Model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pytorch-saver: error:") and err.count("\n") == 1
    assert main(["upgrade", str(old), str(out), "--model", "no_such_pkg_xyz.Net"]) == 1
    assert "no_such_pkg_xyz.Net" in capsys.readouterr().err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["upgrade", "old.zip", "dir"],
        [
            "upgrade",
            "old.zip",
            "dir",
            "--model",
            "m.M",
            "--scheduler",
            "torch.optim.lr_scheduler.StepLR",
        ],
        ["inspect"],
        ["frobnicate"],
    ],
    ids=["no-command", "no-model", "scheduler-without-optimizer", "no-file", "unknown-command"],
)
def test_usage_errors_exit_with_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    capsys.readouterr()


def test_inspect_prints_the_metadata_and_the_tensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    container = ModelContainer()
    objs = container.initialize(Model, MODEL_KWARGS, torch.optim.Adam, {"lr": 1e-3})
    train(objs, batches(1))
    path = container.save(tmp_path, loss=0.25)
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    end = out.index("\nmodel.safetensors")
    assert json.loads(out[:end]) == read_checkpoint(path).metadata
    lines = out[end:].split("\n")
    assert "fc1.weight" in out and "state.0.exp_avg" in out
    assert any(line.split()[:3] == ["fc1.weight", "float32", "[8,"] for line in lines)
    assert "optimizer.safetensors" in out


def test_inspect_of_a_bad_file_exits_with_1_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip file")
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pytorch-saver: error:") and err.count("\n") == 1
    assert main(["inspect", str(tmp_path / "missing.zip")]) == 1
    capsys.readouterr()
    old, _ = legacy_file(tmp_path)
    assert main(["inspect", str(old)]) == 1
    assert "upgrade" in capsys.readouterr().err

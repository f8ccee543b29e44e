"""Saves in the background (CheckpointManager.save_async): the file holds
the state as it was at the call, bit for bit, while training goes on during
the write; the copies' buffers are reused; a failing write is raised by
wait() and by the next save and leaves no file under a final name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from pytorch_saver import RNG, CheckpointManager, Counters, ModelContainer, read_checkpoint
from pytorch_saver.models import MLP

CHILD = Path(__file__).resolve().parents[3] / "tests" / "python" / "manager_child.py"


def train_step(c: ModelContainer) -> None:
    assert c.model is not None and c.optim is not None
    c.model(torch.randn(4, 64)).pow(2).mean().backward()
    c.optim.step()
    c.optim.zero_grad()


def optimizer_tensors(c: ModelContainer) -> dict[str, torch.Tensor]:
    """The optimizer state as optimizer.safetensors names it (state.{i}.{key})."""
    assert c.optim is not None
    out = {}
    for index, (_, state) in enumerate(c.optim.state_dict()["state"].items()):
        for key, value in state.items():
            out[f"state.{index}.{key}"] = value.clone()
    return out


def test_the_file_holds_the_state_at_the_call_while_training_goes_on(tmp_path: Path) -> None:
    torch.manual_seed(0)
    c = ModelContainer()
    # About 150 MB of parameters, 450 MB with Adam's state: a write that
    # takes long enough for training steps to run during it.
    c.initialize(
        MLP, {"in_dim": 64, "hidden_dim": 3072, "n_classes": 8}, torch.optim.Adam, {"lr": 1e-3}
    )
    counters = c.track("counters", Counters(step=1))
    c.track("rng", RNG())
    train_step(c)
    assert c.model is not None
    with CheckpointManager(tmp_path, "run", keep_last=2) as mgr:
        buffers: dict[str, int] = {}
        for save in range(2):
            model_at_call = {k: v.clone() for k, v in c.model.state_dict().items()}
            optim_at_call = optimizer_tensors(c)
            step_at_call = counters.step
            handle = mgr.save_async(c, save, loss=float(save))
            overlapped = 0
            for _ in range(5):
                train_step(c)
                counters.step += 1
                overlapped += not handle.done()
            assert overlapped >= 1, "the write ended before the first training step"
            assert handle.path is None or handle.done()
            path = handle.wait()
            assert handle.done() and handle.path == path
            saved = read_checkpoint(path)
            assert saved.model.keys() == model_at_call.keys()
            for name, tensor in model_at_call.items():
                assert torch.equal(saved.model[name], tensor), name
                assert not torch.equal(c.model.state_dict()[name], tensor), name
            assert saved.optimizer.keys() == optim_at_call.keys()
            for name, tensor in optim_at_call.items():
                assert torch.equal(saved.optimizer[name], tensor), name
            extra = saved.metadata["__pytorch_saver__"]["extra"]
            assert extra["counters"]["state"] == {"step": step_at_call}
            manager = saved.metadata["__pytorch_saver__"]["manager"]
            assert manager == {"id": mgr.id, "step": save, "metrics": {"loss": float(save)}}
            # The second save copies into the buffers of the first.
            snapshot = mgr._snapshots._buffers
            pointers = {
                f"{group}/{name}": t.data_ptr()
                for group, tensors in snapshot.items()
                for name, t in tensors.items()
            }
            if save == 0:
                buffers = pointers
            else:
                assert pointers == buffers
        # Resuming from it restores the state of the call.
        fresh = ModelContainer()
        fresh.initialize(
            MLP,
            {"in_dim": 64, "hidden_dim": 3072, "n_classes": 8},
            torch.optim.Adam,
            {"lr": 1e-3},
        )
        fresh_counters = fresh.track("counters", Counters(step=0))
        metadata = mgr.restore_latest(fresh)
        assert metadata is not None and metadata["loss"] == 1.0
        assert fresh_counters.step == step_at_call
        assert fresh.model is not None
        for name, tensor in model_at_call.items():
            assert torch.equal(fresh.model.state_dict()[name], tensor)


def test_the_next_save_waits_for_the_one_in_flight(tmp_path: Path) -> None:
    c = ModelContainer()
    c.initialize(MLP, {"in_dim": 4, "hidden_dim": 8, "n_classes": 3})
    with CheckpointManager(tmp_path, "run") as mgr:
        first = mgr.save_async(c, 0)
        second = mgr.save_async(c, 1)
        assert first.done()
        third = mgr.save(c, 2)
        assert second.done()
        assert [Path(i.path).name for i in mgr.list()] == [
            Path(first.wait()).name,
            Path(second.wait()).name,
            Path(third).name,
        ]
        assert mgr.wait() is None
        mgr.save_async(c, 3)
    # close() waited for it.
    with CheckpointManager(tmp_path, "run") as mgr:
        latest = mgr.latest()
        assert latest is not None and latest.step == 3


def test_a_failing_background_write_is_raised_and_leaves_no_file(tmp_path: Path) -> None:
    # A child process with RLIMIT_FSIZE (and SIGXFSZ ignored): the write
    # fails with EFBIG whoever runs the tests (root ignores permissions).
    run = subprocess.run(
        [sys.executable, str(CHILD), json.dumps({"mode": "fsize", "dir": str(tmp_path)})],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["wait"] is not None and "File too large" in report["wait"]
    assert report["path_after_failure"] is None
    # Not collected by wait(): raised by the next save, which wrote nothing.
    assert report["next_save"] is not None and "File too large" in report["next_save"]
    first = Path(report["first"]).name
    assert report["files_after_failures"] == [".run.lock", ".run.manager.json", first]
    # Once raised, the error is gone: the save after it was written.
    saved = read_checkpoint(report["saved_after"])
    assert saved.metadata["__pytorch_saver__"]["manager"]["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run_checkpoint_")) == (
        sorted([first, Path(report["saved_after"]).name])
    )

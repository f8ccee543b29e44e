"""Crash safety of the checkpoint manager (FORMAT.md 12.3): a child process
(tests/python/manager_child.py) saves in a loop with keep_last=2, resuming
each time from what the last one left, and is SIGKILLed at random moments.
After every kill a fresh manager (the lock released by the kernel) must
resume whenever a checkpoint had been committed, every file under a final
name must be complete and valid, and retention must have kept what it
promises."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from pytorch_saver import CheckpointManager, ModelContainer, read_checkpoint
from pytorch_saver.models import MLP

CHILD = Path(__file__).resolve().parents[3] / "tests" / "python" / "manager_child.py"
KILLS = 12  # per variant: 24 in all


def final_names(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("run_checkpoint_"))


@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
def test_killed_saves_leave_a_resumable_series(tmp_path: Path, background: bool) -> None:
    rng = random.Random(1234 + background)
    directory = tmp_path / "run"
    last_committed = -1  # the last step a child reported committed
    on_disk_latest = -1  # the latest step on disk when the child started
    for kill in range(KILLS):
        spec = {"mode": "loop", "dir": str(directory), "async": background, "hidden": 384}
        child = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            ready = child.stdout.readline().strip()
            assert ready == "ready", (ready, child.stderr.read() if child.stderr else "")
            # Kill during the first save, between saves, or many saves in.
            time.sleep(rng.uniform(0.0, 0.6))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
            lines = child.stdout.read().splitlines()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        committed = [int(line.split()[1]) for line in lines if line.startswith("committed ")]
        if committed:
            # The child resumed from the latest checkpoint on disk.
            assert committed[0] == on_disk_latest + 1, (kill, committed, on_disk_latest)
            assert committed == list(range(committed[0], committed[-1] + 1))
            last_committed = committed[-1]

        files = final_names(directory)
        # Nothing partial under a final name: every file is complete.
        for path in files:
            read_checkpoint(path)
        # keep_last=2: the two newest, plus at most one committed whose
        # retention the kill interrupted.
        assert len(files) <= 3, (kill, [p.name for p in files])
        with CheckpointManager(directory, "run", keep_last=2) as mgr:
            listed = mgr.list()
            assert len(listed) == len(files)
            assert all(info.metrics.keys() == {"loss"} for info in listed)
            if last_committed >= 0:
                latest = mgr.latest()
                assert latest is not None and latest.step >= last_committed
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # nothing damaged to skip
                    loaded = mgr.load_latest()
                assert loaded is not None
                # What was committed last (or a newer one) is what resumes.
                assert loaded[0]["loss"] == latest.metrics["loss"]
                # Retention kept the last reported commit unless two newer
                # ones (commits whose report the kills cut off) followed it.
                steps = [info.step for info in listed]
                assert last_committed in steps or len([s for s in steps if s > last_committed]) >= 2
            on_disk_latest = listed[-1].step if listed else -1
            ids = {read_checkpoint(p).metadata["__pytorch_saver__"]["manager"]["id"] for p in files}
            assert ids <= {mgr.id}
    assert last_committed >= 3, "the kills came too early to test anything"


# The exact points of one save-then-retain: the writes of the temporary
# file (the first and a later one), its fsync, the link that publishes it,
# the directory fsync after it, the temporary name's removal (the first
# unlink), and the deletions of retention (keep_last=1 over five older
# checkpoints: the second unlink is the first deletion, the fourth one is
# in the middle).
KILL_POINTS = [
    ("pwrite", 1),
    ("pwrite", 2),
    ("fsync", 1),
    ("link", 1),
    ("fsync", 2),
    ("unlink", 1),
    ("unlink", 2),
    ("unlink", 4),
]


@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("call", "nth"), KILL_POINTS, ids=[f"{c}{n}" for c, n in KILL_POINTS])
def test_a_kill_at_each_point_of_save_then_retain_leaves_a_resumable_series(
    tmp_path: Path, background: bool, call: str, nth: int
) -> None:
    directory = tmp_path / "run"
    with CheckpointManager(directory, "run") as mgr:  # keeps every checkpoint
        c = ModelContainer()
        c.initialize(MLP, {"in_dim": 16, "hidden_dim": 64, "n_classes": 4})
        for step in range(5):
            mgr.save(c, step)
    before = {p.name: p.read_bytes() for p in final_names(directory)}
    assert len(before) == 5
    spec = {
        "mode": "kill-at",
        "dir": str(directory),
        "async": background,
        "call": call,
        "nth": nth,
        "step": 5,
    }
    run = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(spec)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == -signal.SIGKILL, (run.returncode, run.stdout, run.stderr)
    files = final_names(directory)
    for path in files:
        read_checkpoint(path)  # complete and valid, or refused here
        if path.name in before:
            assert path.read_bytes() == before[path.name], path.name
    names = {p.name for p in files}
    new = names - set(before)
    assert len(new) <= 1, names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with CheckpointManager(directory, "run", keep_last=1) as mgr:
            latest = mgr.latest()
            assert latest is not None
            # The newest committed checkpoint survives: step 4 until the new
            # one is linked, step 5 after.
            assert latest.step == (5 if new else 4), (call, nth, names)
            loaded = mgr.load_latest()
            assert loaded is not None and loaded[0]["timestamp"] == latest.timestamp

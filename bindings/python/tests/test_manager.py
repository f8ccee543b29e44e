"""The checkpoint manager (FORMAT.md section 12): opening and its lock, the
series' id, saves with their manager block, retention (the pure function,
and the files on disk after seeded random sequences of saves, pins and
foreign files), listing, pins, resuming past damaged files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from pytorch_saver import (
    CheckpointManager,
    CheckpointSkippedWarning,
    FormatError,
    InvalidArgumentError,
    ManagerLockedError,
    MetadataError,
    ModelContainer,
    UsageError,
    read_checkpoint,
)
from pytorch_saver._format import CheckpointReader
from pytorch_saver._retention import Candidate, Policy, decide, order_key
from pytorch_saver.models import MLP

CHILD = Path(__file__).resolve().parents[3] / "tests" / "python" / "manager_child.py"
MODEL_KWARGS = {"in_dim": 4, "hidden_dim": 8, "n_classes": 3}


def tiny() -> ModelContainer:
    c = ModelContainer()
    c.initialize(MLP, MODEL_KWARGS, torch.optim.Adam, {"lr": 1e-2})
    return c


def step_once(c: ModelContainer) -> None:
    assert c.model is not None and c.optim is not None
    c.model(torch.randn(2, 4)).sum().backward()
    c.optim.step()
    c.optim.zero_grad()


def series_files(directory: Path, prefix: str = "run") -> set[str]:
    return {
        p.name
        for p in directory.iterdir()
        if p.name.startswith(f"{prefix}_checkpoint_") and p.suffix == ".zip"
    }


def assert_valid_series(
    directory: Path, prefix: str = "run", foreign: frozenset[str] = frozenset()
) -> str:
    """Every checkpoint named as the series' is fully valid and carries the
    id of the state file (the contract a manager of another language reads);
    returns the id."""
    state = json.loads((directory / f".{prefix}.manager.json").read_text("utf-8"))
    assert set(state) == {"id", "pinned"}
    assert isinstance(state["id"], str) and len(state["id"]) == 36
    for name in series_files(directory, prefix) - foreign:
        manager = read_checkpoint(directory / name).metadata["__pytorch_saver__"]["manager"]
        assert manager["id"] == state["id"], name
    return str(state["id"])


# -- opening ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"keep_last": 0}, InvalidArgumentError),
        ({"keep_last": -1}, InvalidArgumentError),
        ({"keep_last": 1.5}, TypeError),
        ({"keep_last": True}, TypeError),
        ({"keep_best": 1}, InvalidArgumentError),  # no metric
        ({"keep_best": 0, "metric": "loss"}, InvalidArgumentError),
        ({"keep_every_steps": 0}, InvalidArgumentError),
        ({"metric": "loss", "mode": "lowest"}, InvalidArgumentError),
        ({"prefix": ""}, InvalidArgumentError),
        ({"prefix": "a/b"}, InvalidArgumentError),
        ({"prefix": ".hidden"}, InvalidArgumentError),
    ],
)
def test_a_bad_policy_is_refused_before_anything_is_created(
    tmp_path: Path, kwargs: dict, error: type[Exception]
) -> None:
    directory = tmp_path / "new"
    with pytest.raises(error):
        CheckpointManager(directory, **kwargs)
    assert not directory.exists()


def test_opening_creates_the_directory_the_lock_and_the_state(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    with CheckpointManager(directory, "run") as mgr:
        assert sorted(os.listdir(directory)) == [".run.lock", ".run.manager.json"]
        assert (directory / ".run.lock").stat().st_size == 0
        state = json.loads((directory / ".run.manager.json").read_text("utf-8"))
        assert state == {"id": mgr.id, "pinned": []}
        first_id = mgr.id
    # The id is created once and reused by every later manager of the series.
    with CheckpointManager(directory, "run") as mgr:
        assert mgr.id == first_id
    with CheckpointManager(directory, "other") as other:
        assert other.id != first_id


def test_the_lock_refuses_a_second_manager_in_this_process(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, "run")
    with pytest.raises(ManagerLockedError) as info:
        CheckpointManager(tmp_path, "run")
    assert str(tmp_path) in str(info.value) and "'run'" in str(info.value)
    assert info.value.kind == "Locked"
    # Another prefix is another series, with its own lock.
    CheckpointManager(tmp_path, "run2").close()
    mgr.close()
    CheckpointManager(tmp_path, "run").close()
    with pytest.raises(UsageError, match="closed"):
        mgr.save(tiny(), 0)


def _child(spec: dict) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, "run"):
        out, err = _child({"mode": "try", "dir": str(tmp_path)}).communicate(timeout=300)
        assert out.startswith("ManagerLockedError Locked"), (out, err)
        assert str(tmp_path) in out
    out, err = _child({"mode": "try", "dir": str(tmp_path)}).communicate(timeout=300)
    assert out.strip() == "opened", (out, err)

    holder = _child({"mode": "hold", "dir": str(tmp_path)})
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ManagerLockedError):
            CheckpointManager(tmp_path, "run")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # The kernel released the lock of the killed process.
    CheckpointManager(tmp_path, "run").close()


def test_a_malformed_state_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    state = tmp_path / ".run.manager.json"
    state.write_text('{"pinned": []}')
    with pytest.raises(Exception, match='"id"'):
        CheckpointManager(tmp_path, "run")
    assert state.read_text() == '{"pinned": []}'
    # The lock was released with the failure.
    state.unlink()
    CheckpointManager(tmp_path, "run").close()


# -- saving ---------------------------------------------------------------------


def test_a_save_writes_the_manager_block(tmp_path: Path) -> None:
    c = tiny()
    with CheckpointManager(tmp_path, "run") as mgr:
        path = mgr.save(c, 7, loss=0.25, epoch=3, flag=True, name="x")
        assert Path(path).parent == tmp_path and Path(path).name.startswith("run_checkpoint_")
        metadata = read_checkpoint(path).metadata
        assert metadata["__pytorch_saver__"]["manager"] == {
            "id": mgr.id,
            "step": 7,
            "metrics": {"loss": 0.25, "epoch": 3},
        }
        assert metadata["loss"] == 0.25 and metadata["name"] == "x"
        # It loads as any checkpoint.
        loaded, objs = ModelContainer().load(path)
        assert loaded["epoch"] == 3
        assert torch.equal(objs.model.fc1.weight, c.model.fc1.weight)  # type: ignore[union-attr]
    assert_valid_series(tmp_path)


def test_the_policy_metric_is_required_before_writing(tmp_path: Path) -> None:
    c = tiny()
    with CheckpointManager(tmp_path, "run", keep_best=1, metric="loss") as mgr:
        for bad in ({}, {"loss": "low"}, {"loss": True}):
            with pytest.raises(MetadataError, match="'loss'"):
                mgr.save(c, 0, **bad)
        with pytest.raises(MetadataError):
            mgr.save(c, 0, loss=float("nan"))
        with pytest.raises(InvalidArgumentError):
            mgr.save(c, -1, loss=1.0)
        with pytest.raises(TypeError):
            mgr.save(c, 1.0, loss=1.0)  # type: ignore[arg-type]
        # What the writer refuses is refused by save_async before it returns.
        with pytest.raises(MetadataError, match="64-bit"):
            mgr.save_async(c, 0, loss=1.0, big=10**400)
        assert mgr.wait() is None
        assert series_files(tmp_path) == set()
        mgr.save(c, 0, loss=1.0)
        assert len(series_files(tmp_path)) == 1


def test_a_version_1_container_is_refused(tmp_path: Path) -> None:
    c = ModelContainer(format_version=1)
    c.initialize(MLP, MODEL_KWARGS)
    with CheckpointManager(tmp_path, "run") as mgr:
        with pytest.raises(InvalidArgumentError, match="version 2"):
            mgr.save(c, 0)
    assert series_files(tmp_path) == set()


def test_a_vanished_directory_fails_the_save_and_is_not_created_again(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    c = tiny()
    with CheckpointManager(directory, "run") as mgr:
        mgr.save(c, 0)
        shutil.rmtree(directory)
        with pytest.raises(FileNotFoundError, match="no longer exists"):
            mgr.save(c, 1)
        handle = None
        with pytest.raises(FileNotFoundError):
            handle = mgr.save_async(c, 2)
        assert handle is None
        assert not directory.exists()


# -- retention: the pure function ---------------------------------------------------


def cand(name: str, step: int, ts: int = 0, pinned: bool = False, **metrics: float) -> Candidate:
    return Candidate(name, step, ts, metrics, pinned)


def test_retention_keeps_all_without_a_rule_and_always_the_latest() -> None:
    cs = [cand("a", 1), cand("b", 3), cand("c", 2)]
    assert decide(cs, Policy()) == [("all",), ("latest", "all"), ("all",)]
    assert decide(cs, Policy(keep_every_steps=100)) == [(), ("latest",), ()]
    assert decide([], Policy(keep_last=1)) == []


def test_retention_orders_by_step_then_timestamp_then_name_bytes() -> None:
    cs = [cand("x_9.zip", 5, 10), cand("x_1.zip", 5, 11), cand("x_2.zip", 5, 11), cand("z", 4, 99)]
    assert decide(cs, Policy(keep_last=1)) == [(), (), ("latest", "last"), ()]
    assert decide(cs, Policy(keep_last=3)) == [("last",), ("last",), ("latest", "last"), ()]
    # A same-second collision number orders as a number, after no number.
    assert order_key(cand("P_checkpoint_5-1.zip", 0)) > order_key(cand("P_checkpoint_5.zip", 0))
    assert order_key(cand("P_checkpoint_5-10.zip", 0)) > order_key(cand("P_checkpoint_5-9.zip", 0))
    # Code points above the BMP order as their UTF-8 bytes.
    assert order_key(cand("\uffff", 0)) < order_key(cand("\U00010000", 0))


def test_retention_best_ranks_by_metric_ties_to_the_newer_missing_not_candidates() -> None:
    cs = [
        cand("a", 1, loss=0.5),
        cand("b", 2, loss=0.1),
        cand("c", 3),  # no metric: not a candidate
        cand("d", 4, loss=0.1),  # ties with b: the newer wins
        cand("e", 5, loss=0.9),
    ]
    assert decide(cs, Policy(keep_best=1, metric="loss")) == [(), (), (), ("best",), ("latest",)]
    assert decide(cs, Policy(keep_best=2, metric="loss")) == [
        (),
        ("best",),
        (),
        ("best",),
        ("latest",),
    ]
    assert decide(cs, Policy(keep_best=1, metric="loss", mode="max")) == [
        (),
        (),
        (),
        (),
        ("latest", "best"),
    ]
    assert decide(cs, Policy(keep_best=10, metric="acc")) == [(), (), (), (), ("latest",)]


def test_retention_every_pinned_and_rule_names_in_order() -> None:
    cs = [cand("a", 0, pinned=True), cand("b", 2), cand("c", 3, pinned=True, m=1.0), cand("d", 4)]
    policy = Policy(keep_last=2, keep_best=1, metric="m", keep_every_steps=2)
    assert decide(cs, policy) == [
        ("pinned", "every"),
        ("every",),
        ("pinned", "last", "best"),
        ("latest", "last", "every"),
    ]


# -- retention on disk: seeded random sequences -------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_policy(rng: random.Random) -> dict:
    policy: dict = {}
    if rng.random() < 0.6:
        policy["keep_last"] = rng.randint(1, 3)
    if rng.random() < 0.5:
        policy.update(keep_best=rng.randint(1, 2), metric="loss", mode=rng.choice(["min", "max"]))
    if rng.random() < 0.4:
        policy["keep_every_steps"] = rng.randint(2, 4)
    return policy


def plant_foreign_files(directory: Path, tmp: Path, c: ModelContainer) -> dict[Path, str]:
    """Files the manager must never touch: a checkpoint named as the
    series' but of another series (another id), another prefix's series,
    an unrelated zip, a damaged file with the series' name, a checkpoint
    without a manager block."""
    elsewhere = tmp / "elsewhere"
    with CheckpointManager(elsewhere, "run") as other_series:
        other = Path(other_series.save(c, 10**6, loss=-1.0))
    planted = [directory / "run_checkpoint_1.zip", directory / "run_checkpoint_2-7.zip"]
    shutil.copy(other, planted[0])
    plain = Path(c.save(tmp, "run"))
    shutil.copy(plain, planted[1])
    with CheckpointManager(directory, "run2") as another_prefix:
        planted.append(Path(another_prefix.save(c, 0)))
        planted.append(Path(another_prefix.save(c, 10**7)))
    unrelated = directory / "notes.zip"
    unrelated.write_bytes(b"PK\x05\x06" + bytes(18))
    damaged = directory / "run_checkpoint_3.zip"
    damaged.write_bytes(b"not a zip at all")
    planted += [unrelated, damaged]
    return {p: digest(p) for p in planted}


@pytest.mark.parametrize("seed", range(12))
def test_random_saves_keep_exactly_what_retention_decides(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    directory = tmp_path / "ckpt"
    c = tiny()
    policy = random_policy(rng)
    directory.mkdir()
    foreign = plant_foreign_files(directory, tmp_path, c) if seed % 2 == 0 else {}
    committed: dict[str, Candidate] = {}  # name -> candidate, our own record
    pinned: set[str] = set()
    step = 0
    with CheckpointManager(directory, "run", **policy) as mgr:
        for _ in range(rng.randint(6, 14)):
            step += rng.choice([0, 1, 1, 2, 3]) if committed else 0
            metrics = {"loss": rng.choice([0.1, 0.2, 0.3, 0.5, 1.0])}
            if "metric" not in policy and rng.random() < 0.3:
                metrics = {}
            step_once(c)
            if rng.random() < 0.3:
                path = Path(mgr.save_async(c, step, note="async", **metrics).wait())
            else:
                path = Path(mgr.save(c, step, **metrics))
            # The name holds the timestamp (FORMAT.md 7); the file itself may
            # be gone already when retention did not keep it.
            timestamp = int(path.name.split("_")[-1].split("-")[0].removesuffix(".zip"))
            committed[path.name] = Candidate(path.name, step, timestamp, metrics)
            # What the pure function keeps of everything committed and kept so far.
            names = sorted(committed)
            candidates = [
                Candidate(
                    n, committed[n].step, committed[n].timestamp, committed[n].metrics, n in pinned
                )
                for n in names
            ]
            kept = decide(candidates, mgr.policy)
            expected = {n for n, rules in zip(names, kept, strict=True) if rules}
            newest = max(candidates, key=order_key).name
            on_disk = series_files(directory) - {p.name for p in foreign}
            assert on_disk == expected, (seed, policy)
            assert newest in on_disk
            for gone in set(committed) - expected:
                del committed[gone]
                pinned.discard(gone)
            listed = mgr.list()
            assert [Path(i.path).name for i in listed] == sorted(
                expected, key=lambda n: order_key(committed[n])
            )
            assert all(i.kept_by for i in listed)
            assert listed[-1].kept_by[0] == "latest" and mgr.latest() == listed[-1]
            if rng.random() < 0.25:
                chosen = rng.choice(sorted(committed))
                mgr.pin(directory / chosen)
                pinned.add(chosen)
            if pinned and rng.random() < 0.15:
                chosen = rng.choice(sorted(pinned))
                mgr.unpin(chosen)
                pinned.discard(chosen)
            assert set(mgr.pinned) == pinned
        for path, before in foreign.items():
            assert digest(path) == before, path
    assert assert_valid_series(directory, foreign=frozenset(p.name for p in foreign)) == mgr.id
    state = json.loads((directory / ".run.manager.json").read_text("utf-8"))
    assert set(state["pinned"]) == pinned


def test_pin_keeps_a_checkpoint_until_unpinned(tmp_path: Path) -> None:
    c = tiny()
    with CheckpointManager(tmp_path, "run", keep_last=1) as mgr:
        first = mgr.save(c, 0)
        mgr.pin(first)
        with pytest.raises(InvalidArgumentError, match="not a checkpoint of the series"):
            mgr.pin(tmp_path / "run_checkpoint_1.zip")
        with pytest.raises(InvalidArgumentError, match="not in the directory"):
            mgr.pin(tmp_path.parent / Path(first).name)
        second = mgr.save(c, 1)
        third = mgr.save(c, 2)
        assert [(Path(i.path).name, i.kept_by) for i in mgr.list()] == [
            (Path(first).name, ("pinned",)),
            (Path(third).name, ("latest", "last")),
        ]
        assert not Path(second).exists()
    # Pins are the series' state: a later manager sees them.
    with CheckpointManager(tmp_path, "run", keep_last=1) as mgr:
        assert mgr.pinned == [Path(first).name]
        mgr.unpin(first)
        mgr.save(c, 3)
        assert not Path(first).exists()
        assert len(mgr.list()) == 1


def test_best_and_latest(tmp_path: Path) -> None:
    c = tiny()
    with CheckpointManager(tmp_path, "run", keep_best=2, metric="acc", mode="max") as mgr:
        assert mgr.latest() is None and mgr.best() is None
        for step, acc in enumerate([0.5, 0.9, 0.7, 0.9, 0.1]):
            mgr.save(c, step, acc=acc)
        best = mgr.best()
        assert best is not None and best.step == 3 and best.metrics == {"acc": 0.9}
        latest = mgr.latest()
        assert latest is not None and latest.step == 4
        assert [(i.step, i.kept_by) for i in mgr.list()] == [
            (1, ("best",)),
            (3, ("best",)),
            (4, ("latest",)),
        ]
    with CheckpointManager(tmp_path, "run") as mgr, pytest.raises(UsageError):
        mgr.best()


# -- resuming ---------------------------------------------------------------------


def three_saves(directory: Path) -> tuple[ModelContainer, list[str], list[dict]]:
    c = tiny()
    paths, states = [], []
    with CheckpointManager(directory, "run") as mgr:
        for step in range(3):
            step_once(c)
            paths.append(mgr.save(c, step, loss=float(step)))
            states.append({k: v.clone() for k, v in c.model.state_dict().items()})  # type: ignore[union-attr]
    return c, paths, states


def flip_byte_in_tensor_data(path: str) -> None:
    with CheckpointReader(path) as reader:
        model = reader.scan.model
        at = model.data_start + len(model.header) + 4  # inside the first tensor's data
    data = bytearray(Path(path).read_bytes())
    data[at] ^= 0x40
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_resuming_skips_a_damaged_newest_checkpoint(tmp_path: Path, damage: str) -> None:
    c, paths, states = three_saves(tmp_path)
    if damage == "flip":
        flip_byte_in_tensor_data(paths[2])
    else:
        size = os.path.getsize(paths[2])
        os.truncate(paths[2], size // 2)
    with CheckpointManager(tmp_path, "run") as mgr:
        with pytest.warns(CheckpointSkippedWarning, match=Path(paths[2]).name) as caught:
            loaded = mgr.load_latest()
        assert loaded is not None
        metadata, objs = loaded
        assert metadata["loss"] == 1.0
        for name, tensor in objs.model.state_dict().items():
            assert torch.equal(tensor, states[1][name])
        assert any(paths[2] in str(w.message) for w in caught)
        if damage == "flip":
            assert "CrcMismatch" in str(caught[0].message) or "CRC" in str(caught[0].message)
        # restore_latest takes the same one, into the held objects.
        fresh = tiny()
        with pytest.warns(CheckpointSkippedWarning):
            restored = mgr.restore_latest(fresh)
        assert restored is not None and restored["loss"] == 1.0
        assert torch.equal(fresh.model.fc1.weight, states[1]["fc1.weight"])  # type: ignore[union-attr]
        # The damaged file is neither listed-and-resumed nor deleted.
        mgr.save(c, 3)
    assert Path(paths[2]).exists()


def test_resuming_an_empty_series_is_none_and_one_with_nothing_good_an_error(
    tmp_path: Path,
) -> None:
    with CheckpointManager(tmp_path, "run") as mgr:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert mgr.load_latest() is None
            assert mgr.restore_latest(tiny()) is None
    _, paths, _ = three_saves(tmp_path)
    for path in paths:
        flip_byte_in_tensor_data(path)
    with CheckpointManager(tmp_path, "run") as mgr:
        with pytest.warns(CheckpointSkippedWarning) as caught:
            with pytest.raises(FormatError) as raised:
                mgr.load_latest()
        assert len(caught) == 3
        assert raised.value.kind == "CrcMismatch" and paths[2] in str(caught[0].message)


def test_resuming_raises_what_is_not_the_files_fault(tmp_path: Path) -> None:
    three_saves(tmp_path)
    other = ModelContainer()
    other.initialize(MLP, MODEL_KWARGS, torch.optim.SGD, {"lr": 0.1})
    with CheckpointManager(tmp_path, "run") as mgr:
        with pytest.raises(Exception, match="restore"):
            mgr.restore_latest(other)


def test_resuming_picks_the_newest_by_step_not_by_file_time(tmp_path: Path) -> None:
    c = tiny()
    with CheckpointManager(tmp_path, "run") as mgr:
        high = mgr.save(c, 10, loss=10.0)
        mgr.save(c, 5, loss=5.0)  # written later, older by step
        os.utime(high, (0, 0))
        loaded = mgr.load_latest()
        assert loaded is not None and loaded[0]["loss"] == 10.0

"""Ranks of the sharded-checkpoint tests (test_distributed.py), run as real
processes: ``python sharded_ranks.py SCENARIO --world N --out DIR``.

Each rank joins a gloo process group on loopback with a short timeout (a
dead peer fails the others in seconds, not gloo's 30 minutes). The model
is ``pytorch_saver.models.MLP`` with every parameter sharded along
dimension 0 on a 1-D CPU mesh by FSDP2 (``fully_shard``), trained with Adam and a StepLR on data
that every rank draws alike. Results go to files in DIR: whole tensors
(each rank's DTensors gathered) and the losses, as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytorch_saver
import torch
import torch.distributed as dist
from pytorch_saver._format import write_checkpoint
from pytorch_saver._format.metadata import Internals, Metadata, Producer
from pytorch_saver.models import MLP
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

TIMEOUT = datetime.timedelta(seconds=20)
MODEL_KWARGS = {"in_dim": 6, "hidden_dim": 10, "n_classes": 3, "n_layers": 3}
STEPS = 4
"""Steps before the save, and again after it."""


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    return [
        (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
        for _ in range(2 * STEPS)
    ]


def _step(objs: pytorch_saver.ModelObjects, x: torch.Tensor, y: torch.Tensor) -> float:
    assert objs.optimizer is not None and objs.scheduler is not None
    objs.optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(objs.model(x), y)
    loss.backward()
    objs.optimizer.step()
    objs.scheduler.step()
    return float(loss.detach())


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone()


def full_state(objs: pytorch_saver.ModelObjects) -> dict[str, torch.Tensor]:
    """Every tensor of the model and the optimizer, whole, by the index's
    names (FORMAT.md 13.3), gathered on every rank."""
    out = {f"model.{k}": _whole(v) for k, v in objs.model.state_dict().items()}
    assert objs.optimizer is not None
    names = {p: n for n, p in objs.model.named_parameters()}
    index = {
        p: i for i, p in enumerate(p for g in objs.optimizer.param_groups for p in g["params"])
    }
    for param, state in objs.optimizer.state.items():
        assert names[param]
        for key, value in state.items():
            out[f"optimizer.state.{index[param]}.{key}"] = _whole(value)
    return out


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # Test data only, for the parent process to compare.
    torch.save(tensors, path)


def _write_weights(out: Path, tensors: dict[str, torch.Tensor]) -> str:
    """``tensors`` as a weights file in ``out``, for readers of other
    languages to compare with; its path."""
    metadata = Metadata(
        model_kwargs=None,
        timestamp=0,
        internals=Internals(kind="weights", model_class=None, producer=Producer.this_package()),
    )
    return write_checkpoint(str(out), "expected", metadata, tensors, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init(rank: int, world: int, port: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=TIMEOUT,
    )


def _container(world: int) -> tuple[pytorch_saver.ModelContainer, pytorch_saver.ModelObjects]:
    torch.manual_seed(0)
    container = pytorch_saver.ModelContainer()
    mesh = init_device_mesh("cpu", (world,)) if world > 1 else None
    objs = container.initialize(
        MLP,
        MODEL_KWARGS,
        torch.optim.Adam,
        {"lr": 0.01},
        torch.optim.lr_scheduler.StepLR,
        {"step_size": 2, "gamma": 0.5},
        distribute=None if mesh is None else (lambda m: fully_shard(m, mesh=mesh)),
    )
    return container, objs


def train_save(rank: int, world: int, out: Path) -> None:
    """Trains STEPS steps, saves, trains STEPS more: the uninterrupted run."""
    data = _batches()
    container, objs = _container(world)
    losses = [_step(objs, x, y) for x, y in data[:STEPS]]
    index = container.save(str(out / "saved"), "run", step=STEPS)
    state = full_state(objs)
    probe = torch.randn(5, MODEL_KWARGS["in_dim"], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        output = objs.model(probe)
    losses += [_step(objs, x, y) for x, y in data[STEPS:]]
    if rank == 0:
        _write_tensors(out / "expected.pt", state)
        expected = _write_weights(out, state)
        (out / "train.json").write_text(
            json.dumps(
                {
                    "index": index,
                    "losses": losses,
                    "expected": expected,
                    "input": probe.tolist(),
                    "output": output.tolist(),
                }
            )
        )


def load_resume(rank: int, world: int, out: Path) -> None:
    """Loads the saved checkpoint on ``world`` ranks and trains on."""
    data = _batches()
    index = json.loads((out / "train.json").read_text())["index"]
    metadata, objs = pytorch_saver.ModelContainer().load(index)
    state = full_state(objs)
    losses = [_step(objs, x, y) for x, y in data[STEPS:]]
    if rank == 0:
        _write_tensors(out / f"loaded_{world}.pt", state)
        (out / f"resumed_{world}.json").write_text(
            json.dumps({"losses": losses, "step": metadata["step"]})
        )


class _KillingPlanner(DefaultSavePlanner):
    """Kills its process (SIGKILL) while it hands over the data of rank 2's
    second tensor: the middle of that rank's write."""

    def __init__(self) -> None:
        super().__init__()
        self._handed = 0

    def resolve_data(self, write_item: Any) -> Any:
        self._handed += 1
        if dist.get_rank() == 2 and self._handed == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().resolve_data(write_item)


def killed_save(rank: int, world: int, out: Path) -> None:
    """A save in which rank 2 dies: the others must fail, in seconds."""
    import torch.distributed.checkpoint as dcp
    from pytorch_saver.distributed import Writer

    _, objs = _container(world)
    dcp.save({"model": objs.model.state_dict()}, storage_writer=Writer(out / "earlier"))
    try:
        dcp.save(
            {"model": objs.model.state_dict()},
            storage_writer=Writer(out / "killed"),
            planner=_KillingPlanner(),
        )
    except Exception as e:  # noqa: BLE001 (reported to the parent)
        (out / f"failed_{rank}.txt").write_text(f"{type(e).__name__}: {e}")
        return
    (out / f"failed_{rank}.txt").write_text("no error")


def dcp_round_trip(rank: int, world: int, out: Path) -> None:
    """dcp.save and dcp.load of DTensors, plain tensors and JSON values."""
    import torch.distributed.checkpoint as dcp
    from pytorch_saver.distributed import Reader, Writer
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(5)
    full = torch.randn(6, 4, generator=g)
    plain = torch.arange(10, dtype=torch.int64)
    state = {
        "sharded": distribute_tensor(full, mesh, [Shard(0)]),
        "plain": plain.clone(),
        "epoch": 3,
        "cfg": {"lr": 0.5, "names": ["a"]},
    }
    dcp.save(state, storage_writer=Writer(out / "dcp"))
    target = {
        "sharded": distribute_tensor(torch.zeros(6, 4), mesh, [Shard(0)]),
        "plain": torch.zeros(10, dtype=torch.int64),
        "epoch": 0,
        "cfg": {"lr": 0.0, "names": None},
    }
    dcp.load(target, storage_reader=Reader(out / "dcp"))
    equal = torch.equal(target["sharded"].full_tensor(), full) and torch.equal(
        target["plain"], plain
    )
    if rank == 0:
        (out / "round_trip.json").write_text(
            json.dumps({"equal": equal, "values": {"epoch": target["epoch"], "cfg": target["cfg"]}})
        )


def tracked_refused(rank: int, world: int, out: Path) -> None:
    """A container that tracks extra state refuses a sharded save, and a
    checkpoint manager refuses a sharded model."""
    container, _ = _container(world)
    with pytorch_saver.CheckpointManager(out / f"managed-{rank}", "run") as manager:
        try:
            manager.save(container, step=1)
        except pytorch_saver.UsageError as e:
            if rank == 0:
                (out / "manager_refused.txt").write_text(str(e))
    container.track("counters", pytorch_saver.Counters(step=1))
    try:
        container.save(str(out / "saved"), "run")
    except pytorch_saver.UsageError as e:
        if rank == 0:
            (out / "refused.txt").write_text(str(e))


SCENARIOS = {
    "dcp_round_trip": dcp_round_trip,
    "tracked_refused": tracked_refused,
    "train_save": train_save,
    "load_resume": load_resume,
    "killed_save": killed_save,
}


def _rank_main(rank: int, scenario: str, world: int, port: int, out: Path) -> None:
    _init(rank, world, port)
    try:
        SCENARIOS[scenario](rank, world, out)
        if scenario != "killed_save":
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _launch(scenario: str, world: int, out: str) -> int:
    """Starts the ranks as separate processes, as torchrun does (a rank that
    dies does not take the others down), and waits for all; the highest
    exit status, a signal's as 128 + its number."""
    port = _free_port()
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                scenario,
                "--world",
                str(world),
                "--out",
                out,
                "--rank",
                str(rank),
                "--port",
                str(port),
            ]
        )
        for rank in range(world)
    ]
    codes = []
    for process in ranks:
        try:
            code = process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        codes.append(128 - code if code < 0 else code)
    return max(codes)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rank", type=int, help="run this rank (else: launch them all)")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.world == 1:
        SCENARIOS[args.scenario](0, 1, Path(args.out))
        return 0
    if args.rank is None:
        return _launch(args.scenario, args.world, args.out)
    _rank_main(args.rank, args.scenario, args.world, args.port, Path(args.out))
    # destroy_process_group leaves gloo's transport threads running (the
    # device mesh still holds the group), and tearing them down among the
    # interpreter's exit-time destructors sometimes aborts the process
    # ("terminate called without an active exception") after the rank has
    # done all its work. A finished rank exits here instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

"""Sharded saves and loads by 4 ranks, side by side in one run.

Four processes (gloo on loopback, one CPU mesh) hold a 1 GiB model
between them: 8 fp32 tensors of 4096 x 8192, each a DTensor sharded by
rows (``Shard(0)``), 256 MiB per rank. Each run saves it with
``torch.distributed.checkpoint.save`` through pytorch_saver's ``Writer``
and through DCP's own ``FileSystemWriter`` (the anchor), then loads each
into freshly allocated DTensors of the same layout through ``Reader`` and
``FileSystemReader`` and reads one float of every 4 KiB page of every
tensor (a user touching the weights). A third anchor is raw I/O: each rank
writes its bytes to one file with ``write`` and ``fsync``, and reads them
back with ``readinto``. A phase's time is the slowest rank's, from a
barrier before it to a barrier after it. Files stay in the page cache
between save and load, for every method alike.

    .venv/bin/python benches/sharded.py [--runs N] [--dir DIR]

The files go into a temporary directory under ``--dir`` (default
target/bench-data), removed at the end. Prints medians, ratios and
met/MISSED verdicts (the target: within 1.1x of DCP's); asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORLD = 4
ROWS, COLS, TENSORS = 4096, 8192, 8
MODEL_BYTES = ROWS * COLS * 4 * TENSORS
TARGET = 1.1
METHODS = ("pytorch-saver", "DCP FileSystem", "raw write/readinto")


# --------------------------------------------------------------------------
# Rank side.


def _rank(rank: int, port: int, directory: Path, runs: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from pytorch_saver.distributed import Reader, Writer
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=600),
    )
    mesh = init_device_mesh("cpu", (WORLD,))
    rows = ROWS // WORLD

    def state(fill: bool) -> dict[str, Any]:
        out = {}
        for i in range(TENSORS):
            local = torch.empty(rows, COLS)
            if fill:
                local.normal_(generator=torch.Generator().manual_seed(rank * 100 + i))
            out[f"layers.{i}.weight"] = DTensor.from_local(
                local, mesh, [Shard(0)], shape=torch.Size([ROWS, COLS]), stride=(COLS, 1)
            )
        return out

    def touch(sd: dict[str, Any]) -> float:
        total = 0.0
        for t in sd.values():
            local = t.to_local() if isinstance(t, DTensor) else t
            total += float(local.view(-1)[::1024].sum())
        return total

    def timed(fn: Callable[[], object]) -> float:
        dist.barrier()
        start = time.perf_counter()
        fn()
        dist.barrier()
        return time.perf_counter() - start

    saved = state(fill=True)

    def operations(method: str, where: Path) -> tuple[Callable[[], None], Callable[[], None]]:
        """(save, load) of one method into ``where``."""
        if method == "pytorch-saver":

            def save() -> None:
                dcp.save(saved, storage_writer=Writer(where))

            def load() -> None:
                sd = state(fill=False)
                dcp.load(sd, storage_reader=Reader(where))
                touch(sd)

        elif method == "DCP FileSystem":

            def save() -> None:
                dcp.save(saved, storage_writer=dcp.FileSystemWriter(where))

            def load() -> None:
                sd = state(fill=False)
                dcp.load(sd, storage_reader=dcp.FileSystemReader(where))
                touch(sd)

        else:
            path = where / f"rank{rank}.bin"

            def save() -> None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    for t in saved.values():
                        f.write(memoryview(t.to_local().numpy()).cast("B"))
                    f.flush()
                    os.fsync(f.fileno())

            def load() -> None:
                sd = state(fill=False)
                with open(path, "rb") as f:
                    for t in sd.values():
                        f.readinto(memoryview(t.to_local().numpy()).cast("B"))
                touch(sd)

        return save, load

    times: dict[str, dict[str, list[float]]] = {m: {"save": [], "load": []} for m in METHODS}
    for run in range(runs):
        for method in METHODS:
            where = directory / f"run{run}-{method.split()[0]}"
            save, load = operations(method, where)
            times[method]["save"].append(timed(save))
            times[method]["load"].append(timed(load))
            if rank == 0:
                shutil.rmtree(where, ignore_errors=True)
            dist.barrier()
    if rank == 0:
        print(json.dumps(times), flush=True)
    dist.destroy_process_group()


# --------------------------------------------------------------------------
# Parent side.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=str(ROOT / "target" / "bench-data"))
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        _rank(args.rank, args.port, Path(args.work), args.runs)
        # gloo's transport threads outlive destroy_process_group, and their
        # teardown among the interpreter's exit-time destructors can abort a
        # rank that has finished: exit without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    os.makedirs(args.dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sharded-", dir=args.dir)
    try:
        port = _free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        ranks = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--rank",
                    str(r),
                    "--port",
                    str(port),
                    "--work",
                    work,
                    "--runs",
                    str(args.runs),
                ],
                stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                env=env,
            )
            for r in range(WORLD)
        ]
        out, _ = ranks[0].communicate()
        for p in ranks[1:]:
            p.wait()
        if any(p.returncode for p in ranks):
            sys.exit("a rank failed")
        times = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gib = MODEL_BYTES / (1 << 30)
    print(
        f"sharded save and load: {WORLD} ranks (gloo, CPU), {gib:.0f} GiB model "
        f"({TENSORS} x {ROWS}x{COLS} fp32, Shard(0)), {args.runs} runs, medians"
    )
    print(f"{'method':<22}{'save s':>10}{'load+touch s':>14}")
    medians = {}
    for method in METHODS:
        save = statistics.median(times[method]["save"])
        load = statistics.median(times[method]["load"])
        medians[method] = (save, load)
        print(f"{method:<22}{save:>10.3f}{load:>14.3f}")
    ours, dcp_times = medians["pytorch-saver"], medians["DCP FileSystem"]
    raw = medians["raw write/readinto"]
    for i, phase in enumerate(("save", "load")):
        ratio = ours[i] / dcp_times[i]
        verdict = "met" if ratio <= TARGET else "MISSED"
        print(
            f"{phase}: pytorch-saver / DCP FileSystem = {ratio:.2f}x "
            f"(target <= {TARGET}x: {verdict}); / raw = {ours[i] / raw[i]:.2f}x, "
            f"DCP / raw = {dcp_times[i] / raw[i]:.2f}x"
        )


if __name__ == "__main__":
    main()

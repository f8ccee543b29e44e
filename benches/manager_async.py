"""How long CheckpointManager.save_async blocks a Python training loop,
against a synchronous save, in one run.

A 1 GiB model (``pytorch_saver.models.MLP(in_dim=8192, hidden_dim=8192,
n_classes=8192, n_layers=3)``, fp32, with SGD, which has no state) is saved
into a directory on the real disk (``--dir``, default target/bench-data:
not tmpfs, so fsync costs what it costs), ``keep_last=2``. Five
synchronous saves, then five ``save_async`` calls, each followed by
``wait()`` before the next; the first async call allocates the snapshot
buffers, the later ones reuse them, as a training loop does. Prints the
medians and the ratio of a reused-buffer ``save_async`` call to a
synchronous save (the target is at most 0.2x); asserts nothing.

    .venv/bin/python benches/manager_async.py [--runs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from pytorch_saver import CheckpointManager, ModelContainer
from pytorch_saver.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=os.path.join("target", "bench-data"))
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    container = ModelContainer()
    container.initialize(
        MLP,
        {"in_dim": 8192, "hidden_dim": 8192, "n_classes": 8192, "n_layers": 3},
        torch.optim.SGD,
        {"lr": 0.01},
    )
    size = sum(t.numel() * t.element_size() for t in container.model.state_dict().values())
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        with CheckpointManager(directory, prefix="bench", keep_last=2) as manager:
            sync = []
            for step in range(args.runs):
                start = time.perf_counter()
                manager.save(container, step)
                sync.append(time.perf_counter() - start)
            first = blocked = None
            calls, totals = [], []
            for step in range(args.runs, 2 * args.runs + 1):
                start = time.perf_counter()
                handle = manager.save_async(container, step)
                returned = time.perf_counter() - start
                handle.wait()
                total = time.perf_counter() - start
                if first is None:
                    first = returned
                else:
                    calls.append(returned)
                    totals.append(total)
    sync_median = statistics.median(sync)
    blocked = statistics.median(calls)
    print(f"model: {size / 2**30:.2f} GiB, {args.runs} runs, directory under {args.dir}")
    print(f"synchronous save (write, fsync, retention):  {sync_median * 1e3:9.1f} ms (median)")
    print(f"first save_async call (allocates buffers):    {first * 1e3:9.1f} ms")
    print(f"save_async blocks the caller (buffer reused): {blocked * 1e3:9.1f} ms (median)")
    whole = statistics.median(totals)
    print(f"save_async + wait (the whole background save): {whole * 1e3:8.1f} ms (median)")
    ratio = blocked / sync_median
    verdict = "met" if ratio <= 0.2 else "MISSED"
    print(f"blocking / synchronous: {ratio:.3f}x (target <= 0.2x: {verdict})")


if __name__ == "__main__":
    main()

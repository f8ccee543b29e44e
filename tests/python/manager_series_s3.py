"""The Python side of the interop test of tests/s3_manager.rs: one step of
a checkpoint series on an object store (docs/FORMAT.md 12.6) shared with
Rust. The server is the one the standard AWS variables of the environment
name (the Rust test sets them).

Reads a JSON spec on stdin: {"dir" (an s3:// URL), "prefix", "keep_last",
"saves": [steps]}. When the series is locked by another manager, prints
{"locked": message}. Otherwise opens it with pytorch_saver.CheckpointManager,
saves a small MLP at each step (with a "loss" metric), then prints the
series as this manager sees it: its id, every checkpoint (name, step) and
the step load_latest loads.
"""

from __future__ import annotations

import json
import sys

import torch
from pytorch_saver import CheckpointManager, ManagerLockedError, ModelContainer
from pytorch_saver.models import MLP


def main() -> None:
    spec = json.load(sys.stdin)
    torch.manual_seed(3)
    try:
        m = CheckpointManager(spec["dir"], prefix=spec["prefix"], keep_last=spec["keep_last"])
    except ManagerLockedError as e:
        json.dump({"locked": str(e)}, sys.stdout)
        return
    with m:
        container = ModelContainer()
        container.initialize(
            MLP, {"in_dim": 4, "hidden_dim": 8, "n_classes": 3}, torch.optim.SGD, {"lr": 0.1}
        )
        for step in spec["saves"]:
            m.save(container, step, loss=1.0 / (1 + step))
        checkpoints = [{"name": c.path.rsplit("/", 1)[-1], "step": c.step} for c in m.list()]
        loaded = m.load_latest()
        assert loaded is not None, "the series has a checkpoint"
        metadata, _ = loaded
        json.dump(
            {"id": m.id, "checkpoints": checkpoints, "loaded_loss": metadata["loss"]}, sys.stdout
        )


if __name__ == "__main__":
    main()

"""The Python side of tests/manager_interop.rs: one step of a checkpoint
series shared with Rust (docs/FORMAT.md section 12).

Reads a JSON spec on stdin: {"dir", "prefix", "keep_last", "saves": [steps]}.
Opens the series with pytorch_saver.CheckpointManager, saves a small MLP
at each step (with a "loss" metric), then prints the series as this
manager sees it: its id, every checkpoint (name, step, metrics, kept_by)
and what load_latest loads (the step and the first weight values).
"""

from __future__ import annotations

import json
import os
import sys

import torch
from pytorch_saver import CheckpointManager, ModelContainer
from pytorch_saver.models import MLP


def main() -> None:
    spec = json.load(sys.stdin)
    torch.manual_seed(3)
    with CheckpointManager(spec["dir"], prefix=spec["prefix"], keep_last=spec["keep_last"]) as m:
        container = ModelContainer()
        container.initialize(
            MLP, {"in_dim": 4, "hidden_dim": 8, "n_classes": 3}, torch.optim.SGD, {"lr": 0.1}
        )
        for step in spec["saves"]:
            m.save(container, step, loss=1.0 / (1 + step))
        checkpoints = [
            {
                "name": os.path.basename(c.path),
                "step": c.step,
                "metrics": dict(c.metrics),
                "kept_by": list(c.kept_by),
            }
            for c in m.list()
        ]
        loaded = m.load_latest()
        assert loaded is not None, "the series has a checkpoint"
        metadata, objects = loaded
        weight = objects.model.state_dict()["fc1.weight"].flatten()[:4].tolist()
    with open(os.path.join(spec["dir"], f".{spec['prefix']}.manager.json")) as f:
        series_id = json.load(f)["id"]
    json.dump({"id": series_id, "checkpoints": checkpoints, "weight": weight}, sys.stdout)


if __name__ == "__main__":
    main()

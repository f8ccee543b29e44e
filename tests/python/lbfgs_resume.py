"""PyTorch's side of tests/lbfgs.rs, with the installed Python package and
torch.optim.LBFGS, by mode:

  {"mode": "train", "data": X/Y safetensors, "out": dir, "steps": n,
   "total": m, "optim_kwargs": {...}}: trains the built-in MLP with a
   closure, saves after n steps ("half"), trains on to m and saves again
   ("whole"), for Rust to resume "half" and compare with "whole";
  {"mode": "resume", "checkpoint": path, "data": ..., "out": dir,
   "start": s, "steps": n}: loads a file Rust wrote, trains steps s..s+n,
   saves ("resumed"), for Rust to compare with its own uninterrupted run.

stdout: JSON with the paths written. The loop is tests/lbfgs.rs's: batch
step % 8 of 8 rows; the closure zeroes the gradients in place, computes
the MSE and runs backward."""

import json
import sys

import torch
from pytorch_saver import ModelContainer
from pytorch_saver.models import MLP
from safetensors.torch import load_file


def train(objs, data, start, steps):
    x_all, y_all = data["X"], data["Y"]
    for step in range(start, start + steps):
        b = step % 8
        x, y = x_all[b * 8 : b * 8 + 8], y_all[b * 8 : b * 8 + 8]

        def closure(x=x, y=y):
            objs.optimizer.zero_grad(set_to_none=False)
            loss = (objs.model(x) - y).square().mean()
            loss.backward()
            return loss

        objs.optimizer.step(closure)


def main():
    spec = json.load(sys.stdin)
    torch.set_num_threads(1)
    data = load_file(spec["data"])
    if spec.get("mode") == "resume":
        container = ModelContainer()
        metadata, objs = container.load(spec["checkpoint"])
        assert metadata["step"] == spec["start"], metadata
        train(objs, data, spec["start"], spec["steps"])
        resumed = container.save(spec["out"], "python_resumed", step=spec["start"] + spec["steps"])
        json.dump({"resumed": resumed}, sys.stdout)
        return
    torch.manual_seed(11)
    container = ModelContainer()
    model_kwargs = {"in_dim": 4, "hidden_dim": 16, "n_classes": 3, "n_layers": 2}
    objs = container.initialize(MLP, model_kwargs, torch.optim.LBFGS, spec["optim_kwargs"])
    train(objs, data, 0, spec["steps"])
    half = container.save(spec["out"], "python_half", step=spec["steps"])
    train(objs, data, spec["steps"], spec["total"] - spec["steps"])
    whole = container.save(spec["out"], "python_whole", step=spec["total"])
    json.dump({"half": half, "whole": whole}, sys.stdout)


if __name__ == "__main__":
    main()

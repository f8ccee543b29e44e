"""The Python package's side of tests/python_package.rs: training with
pytorch_saver.ModelContainer (the installed package, not this repo's Rust
code), saving, and resuming files written by Rust.

stdin JSON, by mode:
  {"mode": "train", "config": CONFIG, "data": X/Y safetensors, "out": dir,
   "steps": n, "total": m}
      builds the model, optimizer and scheduler of CONFIG, trains steps 0..n,
      saves ("half"), trains on to m uninterrupted and saves again ("whole");
  {"mode": "resume", "checkpoint": path, "data": ..., "out": dir, "start": s, "steps": n}
      loads the file with no classes given, trains steps s..s+n, saves ("resumed").
CONFIG is {"model": [class name, kwargs], "optimizer": [class name, kwargs],
"scheduler": [class name, kwargs]}, the kwargs typed values as a file holds
them (docs/FORMAT.md 11.2: a composite's children are spec tags), which the
package decodes into what its initialize takes (children as Specs).
stdout: JSON with the paths written. The training loop is tests/training.rs's:
batch b = step % 8 of 8 rows, MSE, optimizer step, scheduler step.
"""

import json
import sys

import torch
from pytorch_saver import ModelContainer
from pytorch_saver._resolve import resolve
from pytorch_saver._typed_kwargs import Decoder
from safetensors.torch import load_file


def train(objs, data, start, steps):
    x_all, y_all = data["X"], data["Y"]
    for step in range(start, start + steps):
        b = step % 8
        x, y = x_all[b * 8 : b * 8 + 8], y_all[b * 8 : b * 8 + 8]
        objs.optimizer.zero_grad()
        loss = (objs.model(x) - y).square().mean()
        loss.backward()
        objs.optimizer.step()
        objs.scheduler.step()


def built_from(config):
    """(class, kwargs) for the model, optimizer and scheduler of CONFIG, in
    the order initialize takes them."""
    decoder = Decoder()
    args = []
    for kind, key in (("model", "model"), ("optimizer", "optimizer"), ("scheduler", "scheduler")):
        name, kwargs = config[key]
        args += [resolve(name, kind), decoder.kwargs(kwargs, f"{key} kwargs", name)]
    return args


def main():
    spec = json.load(sys.stdin)
    torch.set_num_threads(1)
    data = load_file(spec["data"])
    if spec["mode"] == "train":
        torch.manual_seed(11)
        container = ModelContainer()
        objs = container.initialize(*built_from(spec["config"]))
        train(objs, data, 0, spec["steps"])
        half = container.save(spec["out"], "python_half", step=spec["steps"])
        train(objs, data, spec["steps"], spec["total"] - spec["steps"])
        whole = container.save(spec["out"], "python_whole", step=spec["total"])
        json.dump({"half": half, "whole": whole}, sys.stdout)
    elif spec["mode"] == "resume":
        container = ModelContainer()
        _, objs = container.load(spec["checkpoint"])
        train(objs, data, spec["start"], spec["steps"])
        resumed = container.save(spec["out"], "python_resumed", step=spec["start"] + spec["steps"])
        json.dump({"resumed": resumed}, sys.stdout)
    else:
        raise SystemExit(f"unknown mode {spec['mode']!r}")


if __name__ == "__main__":
    main()

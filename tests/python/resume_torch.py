"""PyTorch's side of the cross-language resume test (tests/training.rs).

stdin: {"checkpoint": path written by Rust, "data": safetensors with X and Y,
"start": step the checkpoint was saved at, "steps": n, "extra": m,
"out": directory}. Reads the checkpoint with zipfile + safetensors + json
only, rebuilds model, optimizer and scheduler with torch's own classes (a
composite scheduler's children from the spec tags of its kwargs, as
lr_sequences.py builds them) and their load_state_dict, then:
  1. trains `steps` steps and writes out/from_rust.safetensors;
  2. trains `extra` more steps and writes its whole state in the
     pytorch-saver layout: out/python_state.safetensors (model.<name>,
     optimizer tensors state.<i>.<key>) and JSON on stdout (`internals`);
  3. trains `steps` more steps and writes out/python_final.safetensors.
Each result file holds the parameters (param.<name>) and optimizer state
(state.<i>.<key>); stdout JSON also has each result's param_groups and
scheduler state."""

import json
import sys
import zipfile

import torch
from layout import encode, from_layout, to_layout
from lr_sequences import make_scheduler, state_from_json
from safetensors.torch import load, load_file, save_file
from torch import nn


class MLP(nn.Module):
    """pytorch_saver.models.MLP, as the README documents it."""

    def __init__(self, in_dim, hidden_dim, n_classes, n_layers=3):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        layers = []
        for _ in range(n_layers - 1):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        layers.append(nn.Linear(hidden_dim, n_classes))
        self.hidden_layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.hidden_layers(torch.relu(self.fc1(x)))


def torch_class(name, module, prefix):
    if not name.startswith(prefix):
        raise ValueError(f"not a {prefix}* class: {name}")
    return getattr(module, name[len(prefix) :])


def load_checkpoint(path):
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read("metadata.json"))
        model_state = load(z.read("model.safetensors"))
        opt_tensors = load(z.read("optimizer.safetensors"))
    internals = meta["__pytorch_saver__"]
    if internals["model"]["class"] != "pytorch_saver.models.MLP":
        raise ValueError(internals["model"]["class"])
    model = MLP(**meta["model_kwargs"])
    model.load_state_dict(model_state)
    kwargs = dict(meta["optim_kwargs"])
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    opt_cls = torch_class(internals["optimizer"]["class"], torch.optim, "torch.optim.")
    opt = opt_cls(model.parameters(), **kwargs)
    # Construct both, then load both: a scheduler's constructor steps the
    # optimizer's lr, which the loaded param_groups then overwrite. A
    # composite (SequentialLR, ChainedScheduler) builds its children from
    # the spec tags of its kwargs, and loads each child's state.
    sched = make_scheduler(opt, internals["scheduler"]["class"], meta["scheduler_kwargs"])
    opt.load_state_dict(from_layout(internals["optimizer"], opt_tensors))
    sched.load_state_dict(state_from_json(internals["scheduler"]["state"]))
    return model, opt, sched


def train(model, opt, sched, data, start, steps):
    x_all, y_all = data["X"], data["Y"]
    for step in range(start, start + steps):
        b = step % 8
        x, y = x_all[b * 8 : b * 8 + 8], y_all[b * 8 : b * 8 + 8]
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(loss.item())
        else:
            sched.step()


def snapshot(model, opt, sched, path):
    names = {p: n for n, p in model.named_parameters()}
    internals, tensors = to_layout(opt, names)
    out = {f"param.{n}": p.detach().contiguous() for n, p in model.named_parameters()}
    out.update(tensors)
    save_file(out, path)
    return {
        "param_groups": internals["param_groups"],
        "scheduler": encode(sched.state_dict()),
    }


def main():
    spec = json.load(sys.stdin)
    data = load_file(spec["data"])
    out = spec["out"]
    model, opt, sched = load_checkpoint(spec["checkpoint"])
    start, steps = spec["start"], spec["steps"]
    train(model, opt, sched, data, start, steps)
    result = {"from_rust": snapshot(model, opt, sched, f"{out}/from_rust.safetensors")}

    train(model, opt, sched, data, start + steps, spec["extra"])
    names = {p: n for n, p in model.named_parameters()}
    internals, tensors = to_layout(opt, names)
    state = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state.update(tensors)
    save_file(state, f"{out}/python_state.safetensors")
    result["python_state"] = {
        "optimizer": internals,
        "scheduler": {
            "class": f"torch.optim.lr_scheduler.{type(sched).__name__}",
            "state": encode(sched.state_dict()),
        },
    }

    train(model, opt, sched, data, start + steps + spec["extra"], steps)
    result["python_final"] = snapshot(model, opt, sched, f"{out}/python_final.safetensors")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()

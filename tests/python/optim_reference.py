"""PyTorch's side of tests/optimizers.rs: runs torch.optim (single-tensor
path) on seeded parameters and gradients and writes everything the Rust
test needs to repeat and compare the run.

stdin: {"seed": int, "steps": int, "out": path, "scenarios": [{"class": name,
"kwargs": {...}, "params": [names]}]}, where kwargs may hold "param_groups":
[{"params": [names], ...overrides}] and "params", if present, picks the
parameters the scenario optimizes (Muon takes the 2-D ones only). Writes
`out` (safetensors: init.<name>, grad.<step>.<name>, final.<s>.<name>,
state.<s>.<index>.<key>) and prints JSON: per scenario the internals of
layout.to_layout."""

import inspect
import json
import sys

import torch
from layout import to_layout
from safetensors.torch import save_file

# name, shape, dtype; "e" gets a gradient only on some steps.
PARAMS = [
    ("a.weight", (4, 3), torch.float32),
    ("a.bias", (4,), torch.float32),
    ("b.weight", (2, 4), torch.float32),
    ("c", (), torch.float32),
    ("d", (3,), torch.float64),
    ("e", (5,), torch.float32),
]


def has_grad(name, step):
    return name != "e" or step % 3 != 1


def main():
    spec = json.load(sys.stdin)
    gen = torch.Generator().manual_seed(spec["seed"])
    init = {n: torch.randn(shape, generator=gen, dtype=dt) for n, shape, dt in PARAMS}
    grads = []
    for step in range(spec["steps"]):
        scale = 1.0 + step / 50
        grads.append(
            {
                n: torch.randn(shape, generator=gen, dtype=dt) * scale
                for n, shape, dt in PARAMS
                if has_grad(n, step)
            }
        )
    out = {f"init.{n}": t for n, t in init.items()}
    for step, g in enumerate(grads):
        out.update({f"grad.{step}.{n}": t for n, t in g.items()})

    results = []
    for s, scenario in enumerate(spec["scenarios"]):
        chosen = scenario.get("params") or [n for n, _, _ in PARAMS]
        params = {n: init[n].clone().requires_grad_() for n, _, _ in PARAMS if n in chosen}
        kwargs = dict(scenario["kwargs"])
        cls = getattr(torch.optim, scenario["class"].rsplit(".", 1)[1])
        groups = kwargs.pop("param_groups", None)
        if groups is None:
            target = list(params.values())
        else:
            target = []
            for g in groups:
                group = {k: v for k, v in g.items() if k != "params"}
                group["params"] = [params[n] for n in g["params"]]
                target.append(group)
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        # foreach=False pins PyTorch's single-tensor path (Muon has only that
        # one and no foreach kwarg).
        if "foreach" in inspect.signature(cls).parameters:
            kwargs["foreach"] = False
        opt = cls(target, **kwargs)
        for step in range(spec["steps"]):
            opt.zero_grad()
            for n, g in grads[step].items():
                if n in params:
                    (params[n] * g).sum().backward()
            opt.step()
        names = {p: n for n, p in params.items()}
        internals, tensors = to_layout(opt, names)
        # foreach=False was passed only to pin PyTorch's code path.
        for g in internals["param_groups"]:
            if "foreach" in g:
                g["foreach"] = None
        results.append(internals)
        out.update({f"final.{s}.{n}": p.detach() for n, p in params.items()})
        out.update({f"state.{s}.{k[len('state.') :]}": t for k, t in tensors.items()})
    save_file(out, spec["out"])
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()

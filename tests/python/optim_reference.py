"""PyTorch's side of tests/optimizers.rs: runs torch.optim (single-tensor
path) on seeded parameters and gradients and writes everything the Rust
test needs to repeat and compare the run.

stdin: {"seed": int, "steps": int, "out": path, "scenarios": [{"class": name,
"kwargs": {...}, "params": [names]}]}, where kwargs may hold "param_groups":
[{"params": [names], ...overrides}] and "params", if present, picks the
parameters the scenario optimizes (Muon takes the 2-D ones only). Writes
`out` (safetensors: init.<name>, grad.<step>.<name>, final.<s>.<name>,
state.<s>.<index>.<key>) and prints JSON: per scenario the internals of
layout.to_layout.

A scenario with "closure": true (LBFGS) ignores the gradients: its step
takes a closure, the MSE of a small MLP (MLP_PARAMS, init.mlp.<name>) on
fixed data (data.x, data.y), computed as tests/optimizers.rs computes it
(mlp_loss), with the gradients zeroed in place before each backward."""

import inspect
import json
import sys

import torch
from layout import encode, to_layout
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


# LBFGS's closure scenarios: a 3-8-2 MLP, float32.
MLP_PARAMS = [("w1", (8, 3)), ("b1", (8,)), ("w2", (2, 8)), ("b2", (2,))]


def mlp_loss(p, x, y):
    """The loss tests/optimizers.rs repeats op for op."""
    h = torch.tanh(x.matmul(p["w1"].t()) + p["b1"])
    out = h.matmul(p["w2"].t()) + p["b2"]
    return ((out - y) ** 2).mean()


def run_closure(scenario, steps, init, x, y):
    """(optimizer, params) after `steps` steps with the MLP closure."""
    params = {n: init[f"mlp.{n}"].clone().requires_grad_() for n, _ in MLP_PARAMS}
    cls = getattr(torch.optim, scenario["class"].rsplit(".", 1)[1])
    opt = cls(list(params.values()), **scenario["kwargs"])

    def closure():
        # In place, as tch's Tensor::zero_grad on the Rust side.
        opt.zero_grad(set_to_none=False)
        loss = mlp_loss(params, x, y)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return opt, params


def lbfgs_layout(opt, names_by_param):
    """to_layout for LBFGS (FORMAT.md 5): its lists of tensors stacked,
    old_dirs and old_stps [n, N], ro [n], al's non-None prefix [k]."""
    params = opt.param_groups[0]["params"]
    numel = sum(p.numel() for p in params)
    like = params[0]
    internals = {
        "class": "torch.optim.LBFGS",
        "param_groups": encode(opt.state_dict()["param_groups"]),
        "param_names": [names_by_param[p] for p in params],
        "state": {},
    }
    tensors = {}
    for index, state in opt.state_dict()["state"].items():
        plain = {}
        for key, value in state.items():
            if key in ("old_dirs", "old_stps", "ro") and value is not None:
                shape = (0, numel) if key != "ro" else (0,)
                value = torch.stack(value) if value else like.new_empty(shape)
            elif key == "al":
                prefix = [a for a in value if a is not None]
                is_prefix = all(a is b for a, b in zip(value, prefix, strict=False))
                assert is_prefix, "al's tensors are a prefix"
                value = torch.stack(prefix) if prefix else like.new_empty((0,))
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous()
            else:
                plain[key] = encode(value)
        internals["state"][str(index)] = plain
    return internals, tensors


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
    for n, shape in MLP_PARAMS:
        init[f"mlp.{n}"] = torch.randn(shape, generator=gen) * 0.5
    x = torch.randn((32, 3), generator=gen)
    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2])], 1) + 0.1 * torch.randn(
        (32, 2), generator=gen
    )
    out = {f"init.{n}": t for n, t in init.items()}
    out.update({"data.x": x, "data.y": y})
    for step, g in enumerate(grads):
        out.update({f"grad.{step}.{n}": t for n, t in g.items()})

    results = []
    for s, scenario in enumerate(spec["scenarios"]):
        if scenario.get("closure"):
            opt, params = run_closure(scenario, spec["steps"], init, x, y)
            internals, tensors = lbfgs_layout(opt, {p: n for n, p in params.items()})
            results.append(internals)
            out.update({f"final.{s}.{n}": p.detach() for n, p in params.items()})
            out.update({f"state.{s}.{k[len('state.') :]}": t for k, t in tensors.items()})
            continue
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

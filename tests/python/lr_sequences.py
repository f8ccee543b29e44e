"""PyTorch's side of the scheduler tests (tests/schedulers.rs): runs
torch.optim.lr_scheduler schedulers over a two-group optimizer and prints,
as JSON, every group's lr and momentum after every step, state_dict()
snapshots, and the steps taken after loading a foreign (Rust) state.

Input on stdin: {"scenarios": [scenario, ...]}, each scenario
    {"class": "torch.optim.lr_scheduler.StepLR", "kwargs": {...},
     "optimizer": "SGD" | "Adam", "optimizer_kwargs": {...}, "lrs": [...],
     "initial_lrs": [...] | null, "steps": N, "metrics": [...] | null,
     "snapshots": [k, ...], "resume": null | {"groups": [...], "state": {...},
     "steps": M, "metrics": [...] | null}}
Output on stdout: {"results": [{"lrs", "momenta", "snapshots", "resumed"}, ...]}.

The JSON form of a state_dict (shared with the Rust core): tuples become
lists, non-finite floats {"__float__": "inf" | "-inf" | "nan"}, and
MultiStepLR's Counter of milestones an object keyed by the milestone in
decimal. Only stdlib and torch are used.
"""

import json
import sys
import warnings
from typing import Any

import torch
from layout import decode, encode, scheduler_state
from torch.optim import lr_scheduler

PREFIX = "torch.optim.lr_scheduler."


def groups_json(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: encode(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def momenta(optimizer: torch.optim.Optimizer) -> list[float | None]:
    return [g["betas"][0] if "betas" in g else g.get("momentum") for g in optimizer.param_groups]


def lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [g["lr"] for g in optimizer.param_groups]


def build(scenario: dict[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (2, 3)]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, scenario["lrs"], strict=True)]
    opt_class = getattr(torch.optim, scenario["optimizer"])
    optimizer = opt_class(groups, **scenario["optimizer_kwargs"])
    for g, initial_lr in zip(
        optimizer.param_groups, scenario.get("initial_lrs") or [], strict=False
    ):
        g["initial_lr"] = initial_lr
    name = scenario["class"]
    assert name.startswith(PREFIX), name
    sched_class = getattr(lr_scheduler, name.removeprefix(PREFIX))
    return optimizer, sched_class(optimizer, **scenario["kwargs"])


def advance(sched: Any, metrics: list[float] | None, i: int) -> None:
    if metrics is None:
        sched.step()
    else:
        sched.step(metrics[i])


def run(scenario: dict[str, Any]) -> dict[str, Any]:
    optimizer, sched = build(scenario)
    metrics = scenario.get("metrics")
    snapshots = set(scenario["snapshots"])
    out: dict[str, Any] = {"lrs": [], "momenta": [], "snapshots": {}, "resumed": None}

    def snapshot(k: int) -> None:
        if k in snapshots:
            out["snapshots"][str(k)] = {
                "state": encode(sched.state_dict()),
                "groups": groups_json(optimizer),
            }

    snapshot(0)
    for i in range(scenario["steps"]):
        advance(sched, metrics, i)
        out["lrs"].append(lrs(optimizer))
        out["momenta"].append(momenta(optimizer))
        snapshot(i + 1)

    resume = scenario.get("resume")
    if resume is not None:
        # As a user resumes: build, load the optimizer's groups, load the
        # scheduler's state, step on.
        optimizer, sched = build(scenario)
        for g, saved in zip(optimizer.param_groups, resume["groups"], strict=True):
            for k, v in saved.items():
                g[k] = tuple(v) if k == "betas" else decode(v)
        sched.load_state_dict(scheduler_state(resume["state"]))
        resumed: dict[str, list[Any]] = {"lrs": [], "momenta": []}
        for i in range(resume["steps"]):
            advance(sched, resume.get("metrics"), i)
            resumed["lrs"].append(lrs(optimizer))
            resumed["momenta"].append(momenta(optimizer))
        out["resumed"] = resumed
    return out


def main() -> None:
    warnings.simplefilter("ignore")  # scheduler.step() without optimizer.step()
    spec = json.load(sys.stdin)
    results = [run(s) for s in spec["scenarios"]]
    json.dump({"results": results}, sys.stdout, allow_nan=False)


if __name__ == "__main__":
    main()

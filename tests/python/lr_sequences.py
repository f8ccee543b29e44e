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
decimal. SequentialLR's and ChainedScheduler's children are given as the
file's `spec` tags ({"__type__": "spec", "class": ..., "kwargs": {...}}) in
their "schedulers" kwarg and built here, in order, on the same optimizer,
as a user's Python builds them. Only stdlib and torch are used.
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


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, kwargs: dict[str, Any]) -> Any:
    """Scheduler `name` over `optimizer`; a composite's children (spec tags
    in "schedulers") are built first, in order, on the same optimizer."""
    assert name.startswith(PREFIX), name
    sched_class = getattr(lr_scheduler, name.removeprefix(PREFIX))
    kwargs = dict(kwargs)
    if "schedulers" in kwargs:
        children = []
        for spec in kwargs.pop("schedulers"):
            assert spec["__type__"] == "spec", spec
            children.append(make_scheduler(optimizer, spec["class"], spec["kwargs"]))
        if sched_class is lr_scheduler.ChainedScheduler:
            return sched_class(children, **kwargs)
        return sched_class(optimizer, children, **kwargs)
    return sched_class(optimizer, **kwargs)


def state_from_json(state: dict[str, Any]) -> dict[str, Any]:
    """A scheduler state from JSON; a composite's `_schedulers` entry by entry."""
    children = state.get("_schedulers")
    out = scheduler_state({k: v for k, v in state.items() if k != "_schedulers"})
    if children is not None:
        out["_schedulers"] = [state_from_json(c) for c in children]
    return out


def build(scenario: dict[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (2, 3)]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, scenario["lrs"], strict=True)]
    opt_class = getattr(torch.optim, scenario["optimizer"])
    optimizer = opt_class(groups, **scenario["optimizer_kwargs"])
    for g, initial_lr in zip(
        optimizer.param_groups, scenario.get("initial_lrs") or [], strict=False
    ):
        g["initial_lr"] = initial_lr
    return optimizer, make_scheduler(optimizer, scenario["class"], scenario["kwargs"])


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
        sched.load_state_dict(state_from_json(resume["state"]))
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

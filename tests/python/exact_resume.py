"""One leg of the exact-resume experiment of
bindings/python/tests/test_exact_resume.py, run in a fresh process:

    exact_resume.py full OUT           60 steps without a break
    exact_resume.py first DIR OUT      30 steps, then a checkpoint into DIR
    exact_resume.py resume CKPT OUT    load CKPT (every tracked state), 30 steps
    exact_resume.py resume-without-rng CKPT OUT   the same, the RNG left as it is

Each step draws from every generator a run depends on: a torch.Generator
shuffles the data, the global torch RNG adds noise and drives Dropout,
Python's random and NumPy's pick among targets; the loss is computed under
autocast to bfloat16 and scaled by a GradScaler. OUT receives (torch.save,
tensors and lists only) the parameters, the optimizer state, the scaler's
state, the counters, every generator's state and the losses.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import pytorch_saver
import torch
from pytorch_saver import RNG, Counters, ModelContainer
from torch import nn

STEPS = 30


class Net(nn.Module):
    def __init__(self, in_dim: int, hidden: int, p: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


DATA = torch.Generator().manual_seed(7)
X = torch.randn(64, 6, generator=DATA)
Y = torch.randn(4, 64, 2, generator=DATA)


def scramble_globals(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def run(
    container: ModelContainer, shuffle: torch.Generator, scaler: Any, counters: Counters, steps: int
) -> list[float]:
    model, optim = container.model, container.optim
    assert model is not None and optim is not None
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randperm(64, generator=shuffle)[:16]
        target = Y[random.randrange(4)] if np.random.randint(0, 2) else Y[0]
        x = X[idx] + 0.01 * torch.randn(16, 6)
        optim.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss = (out.float() - target[idx]).square().mean()
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
        counters.step += 1
        losses.append(loss.item())
    return losses


def fresh() -> tuple[ModelContainer, torch.Generator, Any, Counters]:
    scramble_globals(0)
    container = ModelContainer()
    container.initialize(Net, {"in_dim": 6, "hidden": 16, "p": 0.3}, torch.optim.Adam, {"lr": 1e-2})
    shuffle = container.track("shuffle", torch.Generator().manual_seed(11))
    scaler = container.track("scaler", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    counters = container.track("counters", Counters(step=0, epoch=0))
    container.track("rng", RNG())
    return container, shuffle, scaler, counters


def dump(
    path: str,
    container: ModelContainer,
    shuffle: torch.Generator,
    scaler: Any,
    counters: Counters,
    losses: list[float],
) -> None:
    assert container.model is not None and container.optim is not None
    names = {id(p): n for n, p in container.model.named_parameters()}
    optim_state = {
        f"{names[id(p)]}.{k}": v.clone()
        for p, s in container.optim.state.items()
        for k, v in s.items()
    }
    py_version, py_words, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    torch.save(
        {
            "params": {k: v.clone() for k, v in container.model.state_dict().items()},
            "optim": optim_state,
            "scaler": scaler.state_dict(),
            "counters": counters.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "shuffle": shuffle.get_state(),
            "python_rng": [py_version, list(py_words), py_gauss],
            "numpy_rng": torch.tensor(np_state["state"]["key"].astype(np.int64)),
            "numpy_pos": int(np_state["state"]["pos"]),
            "losses": losses,
        },
        path,
    )


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    mode = argv[1]
    if mode == "full":
        container, shuffle, scaler, counters = fresh()
        losses = run(container, shuffle, scaler, counters, 2 * STEPS)
        dump(argv[2], container, shuffle, scaler, counters, losses)
    elif mode == "first":
        container, shuffle, scaler, counters = fresh()
        losses = run(container, shuffle, scaler, counters, STEPS)
        counters.epoch = 1
        path = container.save(argv[2], "exact", losses=losses)
        dump(argv[3], container, shuffle, scaler, counters, losses)
        print(path)
    elif mode in ("resume", "resume-without-rng"):
        # Every generator in another state than the first leg left it.
        scramble_globals(12345)
        shuffle = torch.Generator().manual_seed(99)
        scaler = torch.amp.GradScaler("cpu")
        counters = Counters(step=-1)
        track: dict[str, Any] = {"shuffle": shuffle, "scaler": scaler, "counters": counters}
        if mode == "resume":
            track["rng"] = RNG()
        container = ModelContainer()
        container.load(argv[2], track=track)
        assert counters.step == STEPS and counters.epoch == 1, counters
        losses = run(container, shuffle, scaler, counters, STEPS)
        dump(argv[3], container, shuffle, scaler, counters, losses)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    assert pytorch_saver.FORMAT_VERSION == 2


if __name__ == "__main__":
    main(sys.argv)

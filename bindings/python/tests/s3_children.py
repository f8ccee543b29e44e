"""What the child processes of ``test_s3.py`` run (spawned: this module is
imported by name in the child)."""

from __future__ import annotations

import time
from typing import Any

import torch
from pytorch_saver import ModelContainer, PytorchSaverError
from pytorch_saver.models import MLP


def container(seed: int, hidden: int = 8, layers: int = 2) -> ModelContainer:
    torch.manual_seed(seed)
    c = ModelContainer()
    c.initialize(
        MLP,
        {"in_dim": 4, "hidden_dim": hidden, "n_classes": 3, "n_layers": layers},
        torch.optim.SGD,
        {"lr": 0.1},
    )
    return c


def save_at_the_same_second(directory: str, timestamp: int, barrier: Any, results: Any) -> None:
    """Saves at a forced ``timestamp``; waits at ``barrier`` once its upload
    is under way (the name is chosen), so that both writers chose the same
    free name before either publishes."""
    time.time = lambda: float(timestamp)  # the name's timestamp
    c = container(seed=7)
    waited = False

    def progress(done: int, total: int) -> None:
        nonlocal waited
        if done > 0 and not waited:
            waited = True
            barrier.wait(timeout=60)

    c.progress = progress
    try:
        results.put(("ok", c.save(directory, "race")))
    except PytorchSaverError as e:
        results.put(("error", e.kind, str(e)))


def slow_save(directory: str, reports: Any) -> None:
    """A save of about 48 MiB whose progress callback is slow, so that the
    parent can kill it once parts are uploaded."""
    c = container(seed=3, hidden=2048, layers=3)

    def progress(done: int, total: int) -> None:
        reports.put(done)
        time.sleep(0.5)

    c.progress = progress
    c.save(directory, "killed")
    reports.put("finished")

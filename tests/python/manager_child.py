"""A child process for the checkpoint manager's tests
(bindings/python/tests/test_manager*.py): the parent kills it, competes for
its lock, or limits its file sizes.

argv[1] is a JSON object; by "mode":
  {"mode": "loop", "dir": D, "async": bool, "hidden": h}
      opens CheckpointManager(D, "run", keep_last=2), resumes from the
      latest checkpoint if any, prints "ready", then trains and saves
      forever, printing "committed STEP PATH" after each save has returned
      (sync) or been waited for (async); the parent SIGKILLs it;
  {"mode": "hold", "dir": D}
      opens a manager, prints "ready" and sleeps until killed;
  {"mode": "try", "dir": D}
      tries to open a manager; prints "opened" or the error's class and kind;
  {"mode": "kill-at", "dir": D, "async": bool, "call": NAME, "nth": n, "step": s}
      opens CheckpointManager(D, "run", keep_last=1) and saves once at
      step s (through save_async and wait() when "async"), having wrapped
      os.NAME (pwrite, fsync, link or unlink) so that its n-th call kills
      the process with SIGKILL instead of running: a crash at an exact
      point of save-then-retain; prints "survived" if the n-th call never
      came;
  {"mode": "fsize", "dir": D}
      opens a manager, then limits file sizes (RLIMIT_FSIZE, SIGXFSZ
      ignored) so that a background write fails, and prints a JSON report of
      what wait() and the next save raised and which files exist.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

import torch
from pytorch_saver import CheckpointManager, ModelContainer, PytorchSaverError
from pytorch_saver.models import MLP


def container(hidden: int) -> ModelContainer:
    torch.manual_seed(0)
    c = ModelContainer()
    c.initialize(
        MLP,
        {"in_dim": 16, "hidden_dim": hidden, "n_classes": 4},
        torch.optim.Adam,
        {"lr": 1e-3},
    )
    return c


def train_step(c: ModelContainer) -> float:
    assert c.model is not None and c.optim is not None
    x = torch.randn(8, 16)
    loss = c.model(x).pow(2).mean()
    c.optim.zero_grad()
    loss.backward()
    c.optim.step()
    return float(loss)


def loop(spec: dict) -> None:
    c = container(spec["hidden"])
    with CheckpointManager(spec["dir"], "run", keep_last=2) as mgr:
        latest = mgr.latest()
        step = 0 if latest is None else latest.step + 1
        if latest is not None:
            mgr.restore_latest(c)
        print("ready", flush=True)
        while True:
            loss = train_step(c)
            if spec["async"]:
                handle = mgr.save_async(c, step, loss=loss)
                train_step(c)
                path = handle.wait()
            else:
                path = mgr.save(c, step, loss=loss)
            print(f"committed {step} {path}", flush=True)
            step += 1


def hold(spec: dict) -> None:
    with CheckpointManager(spec["dir"], "run"):
        print("ready", flush=True)
        while True:
            time.sleep(60)


def try_open(spec: dict) -> None:
    try:
        with CheckpointManager(spec["dir"], "run"):
            print("opened", flush=True)
    except PytorchSaverError as e:
        print(f"{type(e).__name__} {e.kind} {e}", flush=True)


def kill_at(spec: dict) -> None:
    name, nth = spec["call"], spec["nth"]
    real = getattr(os, name)
    calls = 0

    def wrapped(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    c = container(64)
    with CheckpointManager(spec["dir"], "run", keep_last=1) as mgr:
        setattr(os, name, wrapped)
        if spec["async"]:
            mgr.save_async(c, spec["step"]).wait()
        else:
            mgr.save(c, spec["step"])
    print("survived", flush=True)


def fsize(spec: dict) -> None:
    directory = spec["dir"]
    c = container(256)  # about 1 MiB of tensors with Adam's state
    report: dict = {}
    with CheckpointManager(directory, "run", keep_last=2) as mgr:
        first = mgr.save(c, 0)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        # 1. The error is raised by wait().
        handle = mgr.save_async(c, 1)
        try:
            handle.wait()
            report["wait"] = None
        except OSError as e:
            report["wait"] = type(e).__name__ + ": " + str(e)
        report["path_after_failure"] = handle.path
        # 2. Not collected: the next save raises it, and writes nothing.
        handle = mgr.save_async(c, 2)
        while not handle.done():
            time.sleep(0.01)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        try:
            mgr.save(c, 3)
            report["next_save"] = None
        except OSError as e:
            report["next_save"] = type(e).__name__ + ": " + str(e)
        report["files_after_failures"] = sorted(os.listdir(directory))
        # 3. Once raised, the error is gone: saving works again.
        report["saved_after"] = mgr.save(c, 4)
        report["first"] = first
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    modes = {"loop": loop, "hold": hold, "try": try_open, "kill-at": kill_at, "fsize": fsize}
    modes[spec["mode"]](spec)

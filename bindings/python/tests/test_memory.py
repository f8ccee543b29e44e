"""Memory of zero-copy loads, measured in child processes: one load peaks at
the model's size (the mapping's file pages, once) + 64 MiB above the
baseline, and processes loading the same file share its pages."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pytorch_saver import ModelContainer
from pytorch_saver.models import MLP

MiB = 1 << 20
# Four layers of 4096 x 4096: 256 MiB of
# float32, written once per session.
KWARGS = {"in_dim": 4096, "hidden_dim": 4096, "n_classes": 4096, "n_layers": 3}
# Only guards against a hang; outcomes are asserted, not times.
HANG_TIMEOUT = 120

PRELUDE = r"""
import json, sys
import torch
import pytorch_saver
from pytorch_saver import ModelContainer

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

def load_and_touch(path):
    _, objs = ModelContainer().load(path)
    total = 0.0
    for t in objs.model.state_dict().values():
        # One float of every 4 KiB page.
        total += float(t.detach().reshape(-1)[::1024].double().sum())
    return objs, total
"""

PEAK_CHILD = (
    PRELUDE
    + r"""
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
baseline = status("VmRSS")
objs, _ = load_and_touch(sys.argv[1])
print(json.dumps({"peak": status("VmHWM") - baseline}))
"""
)

SHARING_CHILD = (
    PRELUDE
    + r"""
print("ready", flush=True)
sys.stdin.readline()
objs, _ = load_and_touch(sys.argv[1])
print("loaded", flush=True)
sys.stdin.readline()
"""
)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    container = ModelContainer()
    with torch.no_grad():
        container.initialize(MLP, KWARGS)
    assert container.model is not None
    size = sum(t.numel() * t.element_size() for t in container.model.state_dict().values())
    path = container.save_inference(tmp_path_factory.mktemp("big"))
    del container
    yield path, size
    Path(path).unlink()


def test_a_zero_copy_load_peaks_at_the_model_size(big_file: tuple[str, int]) -> None:
    path, model_bytes = big_file
    run = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, path],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr
    peak = json.loads(run.stdout)["peak"]
    print(f"peak {peak / MiB:.1f} MiB above baseline, model {model_bytes / MiB:.1f} MiB")
    assert peak <= model_bytes + 64 * MiB, (peak / MiB, model_bytes / MiB)


def pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise KeyError("Pss")


def test_four_processes_loading_one_file_share_its_pages(big_file: tuple[str, int]) -> None:
    path, model_bytes = big_file
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SHARING_CHILD, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        before = sum(pss(child.pid) for child in children)
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "loaded"
        after = sum(pss(child.pid) for child in children)
        for child in children:
            assert child.stdin is not None
            child.stdin.write("exit\n")
            child.stdin.flush()
        for child in children:
            assert child.wait(timeout=HANG_TIMEOUT) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()
    print(f"PSS growth {(after - before) / MiB:.1f} MiB for 4 loads of {model_bytes / MiB:.1f} MiB")
    assert after - before <= 1.2 * model_bytes, ((after - before) / MiB, model_bytes / MiB)

"""Exact resumption across processes: a run with Dropout, data shuffled by a
torch.Generator and by the global RNGs, and a GradScaler under bfloat16
autocast, saved after 30 steps (tracking RNG(), the generator, the scaler
and Counters) and resumed for 30 more in a fresh process, ends bit for bit
where 60 uninterrupted steps in another fresh process end: parameters,
optimizer state, every RNG state and the loss sequence. Without restoring
the RNG, it does not (the negative control). The legs are
tests/python/exact_resume.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[3] / "tests" / "python" / "exact_resume.py"


def leg(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def result(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = torch.load(path, weights_only=True)
    return out


def assert_tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def legs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("exact")
    leg("full", str(tmp / "full.pt"))
    checkpoint = leg("first", str(tmp), str(tmp / "first.pt"))
    leg("resume", checkpoint, str(tmp / "resume.pt"))
    leg("resume-without-rng", checkpoint, str(tmp / "no_rng.pt"))
    return {name: result(tmp / f"{name}.pt") for name in ("full", "first", "resume", "no_rng")}


def test_the_resumed_run_ends_bit_for_bit_where_the_uninterrupted_one_does(
    legs: dict[str, dict[str, Any]],
) -> None:
    full, first, resumed = legs["full"], legs["first"], legs["resume"]
    assert len(full["losses"]) == 60
    assert first["losses"] == full["losses"][:30]
    assert resumed["losses"] == full["losses"][30:]
    assert_tensors_equal(resumed["params"], full["params"])
    assert_tensors_equal(resumed["optim"], full["optim"])
    assert resumed["scaler"] == full["scaler"]
    assert resumed["counters"] == {"step": 60, "epoch": 1}
    for key in ("torch_rng", "shuffle", "numpy_rng"):
        assert torch.equal(resumed[key], full[key]), key
    assert resumed["python_rng"] == full["python_rng"]
    assert resumed["numpy_pos"] == full["numpy_pos"]


def test_the_scaler_and_the_generators_did_work(legs: dict[str, dict[str, Any]]) -> None:
    # The experiment tests something: the scale moved, dropout and the
    # shuffle drew, the parameters changed along the way.
    assert legs["full"]["scaler"]["scale"] != 2.0**10 or legs["full"]["scaler"]["_growth_tracker"]
    assert len(set(legs["full"]["losses"])) == 60


def test_without_restoring_the_rng_the_continuation_differs(
    legs: dict[str, dict[str, Any]],
) -> None:
    full, no_rng = legs["full"], legs["no_rng"]
    assert no_rng["losses"] != full["losses"][30:]
    assert any(not torch.equal(no_rng["params"][k], full["params"][k]) for k in full["params"])
    assert not torch.equal(no_rng["torch_rng"], full["torch_rng"])

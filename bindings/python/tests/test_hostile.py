"""Hostile but well-formed files (the shared corpus in tests/hostile, which
the Rust and C suites run too): each is refused with the expected typed
error naming the problem, in a child process whose peak RSS stays under its
baseline + 256 MiB and whose stderr holds no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_saver
import torch
from pytorch_saver._format import write_checkpoint, writer
from pytorch_saver.models import MLP

CORPUS = Path(__file__).resolve().parents[3] / "tests" / "hostile"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text())
PEAK_LIMIT = 256 << 20
# Only guards against a hang; outcomes are asserted, not times.
HANG_TIMEOUT = 30

# Loads a file in a fresh process and reports the error and the peak RSS
# above the baseline (VmHWM reset through clear_refs after the imports).
CHILD = r"""
import json, sys
import pytorch_saver
from pytorch_saver import ModelContainer, PytorchSaverError

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

results = {}
for mode in ("map", "copy"):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = status("VmRSS")
    error = None
    try:
        ModelContainer().load(sys.argv[1], copy=mode == "copy")
    except PytorchSaverError as exc:
        error = {"type": type(exc).__name__, "message": str(exc)}
    results[mode] = {"error": error, "peak": status("VmHWM") - baseline}
print(json.dumps(results))
"""


def load_in_child(path: Path) -> dict[str, dict[str, Any]]:
    """{"map": outcome, "copy": outcome} of loading ``path`` both ways in a
    fresh process, each outcome {"error": {"type", "message"} or None,
    "peak": bytes above the baseline}."""
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
    )
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 0, run.stderr
    out: dict[str, dict[str, Any]] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def test_the_corpus_is_complete_and_small() -> None:
    files = {case["file"] for case in CASES}
    assert files == {p.name for p in CORPUS.glob("*.zip")}
    for case in CASES:
        assert set(case) == {"file", "what", "message_contains_any", "python_error"}
        assert (CORPUS / case["file"]).stat().st_size < 64 << 10
        assert hasattr(pytorch_saver, case["python_error"]), case


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_a_hostile_file_is_refused_naming_the_problem_in_bounded_memory(
    case: dict[str, Any],
) -> None:
    for mode, out in load_in_child(CORPUS / case["file"]).items():
        error = out["error"]
        assert error is not None, f"{case['file']} loaded ({mode})"
        assert error["type"] == case["python_error"], (mode, error)
        assert any(s in error["message"] for s in case["message_contains_any"]), (mode, error)
        assert out["peak"] < PEAK_LIMIT, (mode, out)


def test_metadata_over_16_mib_is_refused_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer refuses such metadata: lift its limit to craft the file.
    monkeypatch.setattr(writer, "MAX_METADATA_BYTES", 1 << 30)
    metadata = {
        "model_kwargs": {"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2},
        "timestamp": 0,
        "padding": "x" * (17 << 20),
        "__pytorch_saver__": {
            "format_version": 1,
            "kind": "inference",
            "model": {"class": "pytorch_saver.models.MLP"},
            "producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "python"},
        },
    }
    model = MLP(in_dim=4, hidden_dim=8, n_classes=3, n_layers=2)
    path = write_checkpoint(tmp_path, None, metadata, model.state_dict(), None)
    for out in load_in_child(Path(path)).values():
        assert out["error"]["type"] == "FormatError"
        assert "metadata.json" in out["error"]["message"]
        assert out["peak"] < PEAK_LIMIT, out


def test_a_user_class_with_huge_non_persistent_buffers_is_refused(tmp_path: Path) -> None:
    class Hungry(torch.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)
            self.register_buffer("table", torch.zeros(n), persistent=False)

    container = pytorch_saver.ModelContainer()
    container.initialize(Hungry, {"n": 4})
    path = container.save(tmp_path)
    container._model_kwargs = {"n": 1 << 40}  # 4 TiB of buffers the file does not hold
    huge = container.save(tmp_path, "huge")
    with pytest.raises(pytorch_saver.InitializationError, match="'table'"):
        pytorch_saver.ModelContainer().load(huge, Hungry)
    _, objs = pytorch_saver.ModelContainer().load(path, Hungry)
    assert objs.model.table.shape == (4,)

"""Writes the shared corpus of hostile-but-well-formed checkpoints: files
whose structure, CRCs and schema are valid, but whose class names or model
kwargs ask a reader to import something it must not, or to build a model far
larger than the tensors the file holds. Every reader (Python, Rust, C, ...)
must refuse each one, naming the problem, without allocating in proportion to
what the kwargs describe. ``cases.json`` lists them: ``file``, ``what``,
``message_contains_any`` (the error message contains at least one) and
``python_error`` (the exception class the Python package raises).

Run ``python tests/hostile/generate.py`` with the Python package installed.
Like the golden files, these are only ever added to: a file or case that
exists is kept as it is, never regenerated.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pytorch_saver._format import write_checkpoint
from pytorch_saver.models import MLP, Sequential
from torch import nn

HERE = Path(__file__).resolve().parent
TIMESTAMP = 1_800_000_000
SMALL_MLP: dict[str, Any] = {"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}
# Written as a JSON string of as many bytes as str(2**70), then patched to
# that integer, which the package's writer refuses (beyond 64 bits).
_PLACEHOLDER = "x" * (len(str(2**70)) - 2)


@dataclass
class Case:
    file: str
    what: str
    message_contains_any: list[str]
    python_error: str
    model_class: str
    model_kwargs: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    patch: tuple[bytes, bytes] | None = None

    def entry(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "what": self.what,
            "message_contains_any": self.message_contains_any,
            "python_error": self.python_error,
        }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _mlp_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _state(MLP(**SMALL_MLP))


def _mlp(**kwargs: Any) -> dict[str, Any]:
    return {**SMALL_MLP, **kwargs}


def cases() -> list[Case]:
    small_linear = [{"type": "Linear", "in_features": 4, "out_features": 3}]
    torch.manual_seed(0)
    seq_state = _state(Sequential(small_linear))
    torch.manual_seed(0)
    wide_seq_state = _state(
        Sequential(
            [
                {"type": "Linear", "in_features": 4, "out_features": 16},
                {"type": "ReLU"},
                {"type": "Linear", "in_features": 16, "out_features": 3},
            ]
        )
    )
    torch.manual_seed(0)
    linear_state = _state(nn.Linear(3, 4))
    huge = {"type": "Linear", "in_features": 100_000, "out_features": 100_000}
    out = [
        Case(
            f"model_class_{name.replace('.', '_').lower()}.zip",
            f"the model class is {name}, a callable that is not an nn.Module class; a reader "
            "must refuse it before importing or calling anything",
            [name],
            "ClassResolutionError",
            name,
            dict(SMALL_MLP),
            _mlp_state(),
        )
        for name in ("os.system", "builtins.eval", "subprocess.Popen")
    ]
    out += [
        Case(
            "mlp_kwargs_100x_tensors.zip",
            "an MLP whose kwargs (hidden_dim 800) describe a model 100 times larger than the "
            "tensors the file holds (hidden_dim 8)",
            ["fc1.weight", "hidden_dim"],
            "StateMismatchError",
            "pytorch_saver.models.MLP",
            _mlp(hidden_dim=800),
            _mlp_state(),
        ),
        Case(
            "mlp_160gb_kwargs.zip",
            "an MLP with in_dim = hidden_dim = 200000 (160 GB of parameters) and the tensors "
            "of a tiny MLP",
            ["fc1.weight", "in_dim", "hidden_dim"],
            "StateMismatchError",
            "pytorch_saver.models.MLP",
            _mlp(in_dim=200_000, hidden_dim=200_000),
            _mlp_state(),
        ),
        Case(
            "mlp_n_layers_1e9.zip",
            "an MLP with n_layers = 10**9 (2*10**9 + 2 tensors) and the 6 tensors of a tiny "
            "MLP; the tensor count must be checked before anything is enumerated",
            ["n_layers"],
            "StateMismatchError",
            "pytorch_saver.models.MLP",
            _mlp(n_layers=10**9),
            _mlp_state(),
        ),
        Case(
            "mlp_negative_hidden_dim.zip",
            "an MLP with hidden_dim = -8",
            ["hidden_dim"],
            "InitializationError",
            "pytorch_saver.models.MLP",
            _mlp(hidden_dim=-8),
            _mlp_state(),
        ),
        Case(
            "mlp_hidden_dim_2_62.zip",
            "an MLP with hidden_dim = 2**62: a 64-bit integer whose tensor sizes overflow 64 bits",
            ["hidden_dim", "fc1.weight"],
            "StateMismatchError",
            "pytorch_saver.models.MLP",
            _mlp(hidden_dim=2**62),
            _mlp_state(),
        ),
        Case(
            "mlp_hidden_dim_2_70.zip",
            "an MLP with hidden_dim = 2**70, an integer beyond 64 bits in metadata.json",
            ["hidden_dim", "fc1.weight"],
            "InitializationError",
            "pytorch_saver.models.MLP",
            _mlp(hidden_dim=_PLACEHOLDER),
            _mlp_state(),
            patch=(json.dumps(_PLACEHOLDER).encode(), str(2**70).encode()),
        ),
        Case(
            "linear_100000_with_4x3_tensors.zip",
            "a torch.nn.Linear with in_features = out_features = 100000 (40 GB) holding a "
            "4x3 weight",
            ["weight"],
            "StateMismatchError",
            "torch.nn.Linear",
            {"in_features": 100_000, "out_features": 100_000},
            linear_state,
        ),
        Case(
            "sequential_layers_mismatch.zip",
            "a Sequential whose layer list (Linear 4->8, ReLU, Linear 8->3) does not match "
            "its tensors (Linear 4->16, ReLU, Linear 16->3)",
            ["0.weight"],
            "StateMismatchError",
            "pytorch_saver.models.Sequential",
            {
                "layers": [
                    {"type": "Linear", "in_features": 4, "out_features": 8},
                    {"type": "ReLU"},
                    {"type": "Linear", "in_features": 8, "out_features": 3},
                ]
            },
            wide_seq_state,
        ),
        Case(
            "sequential_100_huge_linear_layers.zip",
            "a Sequential of 100 Linear(100000, 100000) layers (4 TB) holding the 2 tensors "
            "of one Linear(4, 3); a million such layers would not fit the 16 MiB limit of "
            "metadata.json",
            ["layers", "0.weight"],
            "StateMismatchError",
            "pytorch_saver.models.Sequential",
            {"layers": [huge] * 100},
            seq_state,
        ),
    ]
    return out


def _patch_metadata(path: str, old: bytes, new: bytes) -> None:
    """Replaces ``old`` by ``new`` (same length) in metadata.json, the first
    member, and fixes its CRC-32 in the local and the central header."""
    assert len(old) == len(new)
    data = bytearray(Path(path).read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, 26)
    start = 30 + name_len + extra_len
    (size,) = struct.unpack_from("<I", data, 18)
    member = bytes(data[start : start + size])
    assert member.count(old) == 1, "placeholder not found once"
    member = member.replace(old, new)
    data[start : start + size] = member
    crc = zlib.crc32(member)
    struct.pack_into("<I", data, 14, crc)
    (cd_offset,) = struct.unpack_from("<I", data, len(data) - 22 + 16)
    assert struct.unpack_from("<I", data, cd_offset)[0] == 0x02014B50
    struct.pack_into("<I", data, cd_offset + 16, crc)
    Path(path).write_bytes(bytes(data))


def write_case(case: Case, directory: Path) -> None:
    metadata: dict[str, Any] = {
        "model_kwargs": case.model_kwargs,
        "timestamp": TIMESTAMP,
        "__pytorch_saver__": {
            "format_version": 1,
            "kind": "inference",
            "model": {"class": case.model_class},
            "producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "python"},
        },
    }
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        written = write_checkpoint(tmp, "hostile", metadata, case.tensors, None)
        if case.patch is not None:
            _patch_metadata(written, *case.patch)
        os.link(written, directory / case.file)


def main() -> int:
    HERE.mkdir(parents=True, exist_ok=True)
    index_path = HERE / "cases.json"
    index: list[dict[str, Any]] = json.loads(index_path.read_text()) if index_path.exists() else []
    known = {entry["file"] for entry in index}
    added = 0
    for case in cases():
        if not (HERE / case.file).exists():
            write_case(case, HERE)
            added += 1
        if case.file not in known:
            index.append(case.entry())
            known.add(case.file)
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    print(f"{added} files added; {len(index)} cases in {index_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

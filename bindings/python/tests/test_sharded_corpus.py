"""The shared corpus of malformed sharded checkpoints
(``tests/corpus/sharded``): every case is refused by
``pytorch_saver.distributed.verify`` with the kind and a message fragment
the Rust reader reports; and the valid sharded checkpoints the corpus
generator writes read back as it describes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_saver
import torch
import torch.distributed.checkpoint as dcp
from pytorch_saver import FormatError
from pytorch_saver.distributed import Reader, read_index, read_tensors, verify

CORPUS = Path(__file__).resolve().parents[3] / "tests" / "corpus"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "sharded" / "manifest.json").read_text())[
    "cases"
]


def test_the_manifest_lists_every_case_directory() -> None:
    listed = {case["file"] for case in CASES}
    present = {p.name for p in (CORPUS / "sharded").iterdir() if p.is_dir()}
    assert listed == present


@pytest.mark.parametrize("case", CASES, ids=[case["file"] for case in CASES])
def test_every_case_is_refused_with_its_kind_and_message(case: dict[str, Any]) -> None:
    with pytest.raises(FormatError) as info:
        verify(CORPUS / "sharded" / case["file"])
    assert info.value.kind == case["kind"], info.value
    assert case["message"] in str(info.value)


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("valid")
    subprocess.run(
        [sys.executable, str(CORPUS / "generate.py"), "--write-valid", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


_DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "BF16": torch.bfloat16}


@pytest.mark.parametrize("name", ["sharded_weights", "sharded_container"])
def test_the_valid_checkpoints_assemble_as_described(valid: Path, name: str) -> None:
    expected = json.loads((valid / f"{name}.expected.json").read_text())
    verify(valid / name)
    whole = read_tensors(valid / name / "index.json")
    assert sorted(whole) == sorted(expected["tensors"])
    for tensor_name, want in expected["tensors"].items():
        got = whole[tensor_name]
        assert list(got.shape) == want["shape"], tensor_name
        assert got.dtype == _DTYPES[want["dtype"]], tensor_name
        assert got.flatten().tolist() == want["data"], tensor_name
    assert dict(read_index(valid / name).values) == expected.get("values", {})


def test_dcp_loads_the_generated_weights_checkpoint(valid: Path) -> None:
    expected = json.loads((valid / "sharded_weights.expected.json").read_text())
    target: dict[str, Any] = {
        name: torch.zeros(want["shape"], dtype=_DTYPES[want["dtype"]])
        for name, want in expected["tensors"].items()
    }
    target.update(dict.fromkeys(expected["values"]))
    dcp.load(target, storage_reader=Reader(valid / "sharded_weights"), no_dist=True)
    for name, want in expected["tensors"].items():
        assert target[name].flatten().tolist() == want["data"], name
    for name, value in expected["values"].items():
        assert target[name] == value


def test_a_container_written_elsewhere_loads_in_one_process(valid: Path) -> None:
    metadata, objs = pytorch_saver.ModelContainer().load(valid / "sharded_container")
    assert type(objs.model).__name__ == "MLP"
    assert objs.optimizer is not None
    expected = json.loads((valid / "sharded_container.expected.json").read_text())
    state = objs.model.state_dict()
    for name, want in expected["tensors"].items():
        if name.startswith("model."):
            assert state[name[len("model.") :]].flatten().tolist() == want["data"], name
    assert "timestamp" in metadata

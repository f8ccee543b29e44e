"""Sharded checkpoints (docs/FORMAT.md 13) written and read by real ranks:
gloo process groups on loopback, one process per rank
(``sharded_ranks.py``), FSDP2-sharded models, and
``torch.distributed.checkpoint`` through pytorch_saver's Writer and Reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_saver
import torch
import torch.distributed.checkpoint as dcp
from conftest import S3Dir
from pytorch_saver import FormatError, MetadataError, UsageError
from pytorch_saver.distributed import Reader, Writer, read_index, read_tensors, verify
from torch.distributed.checkpoint.api import CheckpointException

RANKS = Path(__file__).with_name("sharded_ranks.py")


def _ranks(scenario: str, world: int, out: Path) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(RANKS), scenario, "--world", str(world), "--out", str(out)],
        env=env,
        timeout=600,
        check=False,
    )
    return done.returncode


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved by 4 ranks mid-run, and the run's losses."""
    out = tmp_path_factory.mktemp("trained")
    assert _ranks("train_save", 4, out) == 0
    return out


def _shards(index_path: str) -> list[str]:
    return sorted(p.name for p in Path(index_path).parent.iterdir() if p.name.startswith("shard-"))


def test_four_ranks_write_one_shard_each_and_the_index(trained: Path) -> None:
    run = json.loads((trained / "train.json").read_text())
    index = read_index(run["index"])
    assert index.world_size == 4
    assert [s.rank for s in index.shards] == [0, 1, 2, 3]
    assert [s.file for s in index.shards] == _shards(run["index"])
    # The first layer's weight (10 x 6) is split by rows: 3, 3, 3, 1.
    chunks = index.tensors["model.fc1.weight"].chunks
    assert [c.sizes for c in chunks] == [(3, 6), (3, 6), (3, 6), (1, 6)]
    assert index.container is not None
    metadata = index.container["metadata"]
    assert metadata["__pytorch_saver__"]["model"]["class"] == "pytorch_saver.models.MLP"
    assert metadata["step"] == 4
    assert index.container["placements"]["fc1.weight"] == {
        "mesh_shape": [4],
        "placements": ["S(0)"],
    }
    assert not index.values
    verify(run["index"])


@pytest.mark.parametrize("world", [4, 2, 1])
def test_load_on_4_2_and_1_ranks_is_bit_exact_and_resumes_the_same_losses(
    trained: Path, world: int
) -> None:
    assert _ranks("load_resume", world, trained) == 0
    expected = torch.load(trained / "expected.pt")
    loaded = torch.load(trained / f"loaded_{world}.pt")
    assert sorted(loaded) == sorted(expected)
    assert any(k.startswith("optimizer.state.") for k in loaded)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name
    run = json.loads((trained / "train.json").read_text())
    resumed = json.loads((trained / f"resumed_{world}.json").read_text())
    assert resumed["step"] == 4
    assert resumed["losses"] == run["losses"][4:]


def test_read_tensors_assembles_what_the_ranks_held(trained: Path) -> None:
    run = json.loads((trained / "train.json").read_text())
    whole = read_tensors(run["index"])
    expected = torch.load(trained / "expected.pt")
    assert sorted(whole) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(whole[name], tensor), name


def test_dcp_round_trips_dtensors_plain_tensors_and_json_values(tmp_path: Path) -> None:
    assert _ranks("dcp_round_trip", 2, tmp_path) == 0
    result = json.loads((tmp_path / "round_trip.json").read_text())
    assert result == {"equal": True, "values": {"epoch": 3, "cfg": {"lr": 0.5, "names": ["a"]}}}
    index = read_index(tmp_path / "dcp")
    assert index.values == {"epoch": 3, "cfg.lr": 0.5, "cfg.names": ["a"]}
    assert index.planner_data["cfg.lr"] == ("cfg", "lr")
    assert len(index.tensors["sharded"].chunks) == 2
    assert len(index.tensors["plain"].chunks) == 1


def test_a_killed_rank_leaves_no_index_and_the_earlier_checkpoint_whole(tmp_path: Path) -> None:
    code = _ranks("killed_save", 4, tmp_path)
    assert code == 128 + 9, "rank 2 was to die of SIGKILL"
    for rank in (0, 1, 3):
        failure = (tmp_path / f"failed_{rank}.txt").read_text()
        assert failure != "no error", rank
    assert not (tmp_path / "killed" / "index.json").exists()
    with pytest.raises(CheckpointException) as info:
        dcp.load({"w": torch.zeros(1)}, storage_reader=Reader(tmp_path / "killed"), no_dist=True)
    # DCP reports a failed metadata read as an AssertionError of its own,
    # with the reader's message.
    assert "no sharded checkpoint was committed there" in str(_failure(info.value))
    with pytest.raises(FormatError) as direct:
        pytorch_saver.ModelContainer().load(tmp_path / "killed" / "index.json")
    assert direct.value.kind == "NotCommitted"
    verify(tmp_path / "earlier")
    assert read_tensors(tmp_path / "earlier")


def _failure(exc: CheckpointException) -> BaseException:
    """The one rank's error that DCP wrapped."""
    failures = list(exc.failures.values())
    assert len(failures) == 1, failures
    error = failures[0]
    if isinstance(error, tuple):  # (exception, traceback) in torch 2.13
        error = error[0]
    assert isinstance(error, BaseException), error
    return error


def _save_single(state: dict[str, Any], location: Path | str) -> None:
    dcp.save(state, storage_writer=Writer(location), no_dist=True)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (object(), "which is not allowed"),
        ((1, 2), "a tuple"),
        ({1, 2}, "set"),
        (float("nan"), "not a finite number"),
        (torch.ones(2).numpy(), "numpy"),
        (1 << 70, "does not fit 64 bits"),
    ],
)
def test_a_value_that_is_not_json_is_refused_naming_its_key_and_nothing_is_committed(
    tmp_path: Path, value: Any, why: str
) -> None:
    with pytest.raises(CheckpointException) as info:
        _save_single({"weights": torch.ones(3), "not_json": value}, tmp_path / "ckpt")
    error = _failure(info.value)
    assert isinstance(error, MetadataError), error
    assert "'not_json'" in str(error)
    assert why in str(error)
    assert not (tmp_path / "ckpt" / "index.json").exists()
    with pytest.raises(FormatError) as missing:
        read_index(tmp_path / "ckpt")
    assert missing.value.kind == "NotCommitted"


def test_a_location_holds_one_checkpoint(tmp_path: Path) -> None:
    _save_single({"w": torch.ones(2)}, tmp_path / "ckpt")
    with pytest.raises(CheckpointException) as info:
        _save_single({"w": torch.zeros(2)}, tmp_path / "ckpt")
    assert "never overwritten" in str(info.value)
    assert torch.equal(read_tensors(tmp_path / "ckpt")["w"], torch.ones(2))


def test_the_reader_takes_the_index_path_and_checks_crcs(tmp_path: Path) -> None:
    _save_single({"w": torch.arange(64, dtype=torch.float32)}, tmp_path / "ckpt")
    target = {"w": torch.zeros(64)}
    dcp.load(target, storage_reader=Reader(tmp_path / "ckpt" / "index.json"), no_dist=True)
    assert torch.equal(target["w"], torch.arange(64, dtype=torch.float32))
    (shard,) = _shards(str(tmp_path / "ckpt" / "index.json"))
    path = tmp_path / "ckpt" / shard
    data = bytearray(path.read_bytes())
    data[-200] ^= 1  # a byte of tensor data, near the end of the file's data
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError) as info:
        verify(tmp_path / "ckpt")
    assert info.value.kind == "CrcMismatch"


def test_tracked_state_and_a_manager_are_refused_for_a_sharded_model(tmp_path: Path) -> None:
    assert _ranks("tracked_refused", 2, tmp_path) == 0
    assert "carries no extra state" in (tmp_path / "refused.txt").read_text()
    assert not list(tmp_path.glob("saved/*/index.json"))
    assert "keeps single-file checkpoints" in (tmp_path / "manager_refused.txt").read_text()
    assert not list(tmp_path.glob("managed-*/*.zip"))


def test_a_plain_state_dict_checkpoint_is_not_a_container(tmp_path: Path) -> None:
    _save_single({"w": torch.ones(2)}, tmp_path / "ckpt")
    with pytest.raises(UsageError, match="no container metadata"):
        pytorch_saver.ModelContainer().load(tmp_path / "ckpt" / "index.json")


def test_writer_and_reader_at_an_s3_url(s3: S3Dir) -> None:
    url = f"{s3.url}/sharded"
    state = {"w": torch.arange(12, dtype=torch.float32).view(3, 4), "epoch": 2}
    _save_single(state, url)
    keys = s3.keys()
    assert keys[0] == "sharded/index.json" and len(keys) == 2
    assert keys[1].startswith("sharded/shard-00000-of-00001_weights_")
    index = verify(url + "/index.json")
    assert index.values == {"epoch": 2}
    target: dict[str, Any] = {"w": torch.zeros(3, 4), "epoch": 0}
    dcp.load(target, storage_reader=Reader(url), no_dist=True)
    assert torch.equal(target["w"], state["w"]) and target["epoch"] == 2
    with pytest.raises(CheckpointException, match="never overwritten"):
        _save_single({"w": torch.zeros(1)}, url)
    with pytest.raises(FormatError) as missing:
        read_index(f"{s3.url}/nothing-here")
    assert missing.value.kind == "NotCommitted"


def test_a_sharded_load_refuses_what_it_cannot_honour(trained: Path) -> None:
    index = json.loads((trained / "train.json").read_text())["index"]
    for options in ({"track": {"rng": pytorch_saver.RNG()}}, {"device": "cpu"}, {"copy": True}):
        with pytest.raises(UsageError, match="is a sharded checkpoint"):
            pytorch_saver.ModelContainer().load(index, **options)  # type: ignore[arg-type]

"""Progress callbacks of the long operations, on real files of a model of
tens of MiB: saves (the container's, the checkpoint manager's, in the
background too), loads (mapped, copied, unverified, with extra state, of a
file of the original package), restores and full reads. Every report keeps
the contract of ``_progress.py``: ``(0, T)`` first, ``done`` strictly
increasing, ``(T, T)`` last and only on success; a callback that raises ends
the operation, and a save then leaves no file behind."""

from __future__ import annotations

import os
import struct
import threading
import zipfile
from pathlib import Path

import pytest
import support
import torch
from pytorch_saver import (
    RNG,
    ArgumentTypeError,
    CheckpointManager,
    FormatError,
    ModelContainer,
    _crc,
    read_checkpoint,
)
from pytorch_saver.models import MLP

MIB = 1 << 20
CHUNK = 16 * MIB
"""The largest step a report may take: a tensor's bytes are reported in
chunks of at most this."""
# hidden_layers.0.weight is 2560 x 2560 float32, 25 MiB: several chunks.
KWARGS = {"in_dim": 64, "hidden_dim": 2560, "n_classes": 8, "n_layers": 2}
TENSOR_MEMBERS = ("model.safetensors", "optimizer.safetensors")


class Recorder:
    """A progress callback that records its calls and the threads they came
    from; ``fail_at`` makes the call of that index raise."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.calls) - 1 == self.fail_at:
            raise Cancelled(f"cancelled at {done} of {total}")

    def check_complete(self) -> int:
        """Checks the contract of a successful operation; returns its total."""
        assert self.calls, "no report at all"
        first_done, total = self.calls[0]
        assert first_done == 0
        assert all(t == total for _, t in self.calls), self.calls
        done = [d for d, _ in self.calls]
        assert all(a < b for a, b in zip(done, done[1:], strict=False)), done
        assert self.calls[-1] == (total, total)
        return total

    def check_steps(self, largest: int = CHUNK) -> None:
        """No report is further from the one before than ``largest``."""
        done = [d for d, _ in self.calls]
        steps = [b - a for a, b in zip(done, done[1:], strict=False)]
        assert max(steps) <= largest, steps


class Cancelled(Exception):
    """What a failing callback raises."""


def trained(progress: Recorder | None = None) -> ModelContainer:
    """A container with an MLP of about 26 MiB and Adam's state, after a
    step (the optimizer state exists)."""
    torch.manual_seed(0)
    c = ModelContainer(progress=progress)
    c.initialize(MLP, KWARGS, torch.optim.Adam, {"lr": 1e-3})
    assert c.model is not None and c.optim is not None
    c.model(torch.randn(2, 64)).pow(2).mean().backward()
    c.optim.step()
    c.optim.zero_grad()
    return c


def member_sizes(path: str | Path) -> dict[str, int]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: info.file_size for info in zf.infolist()}


def tensor_bytes(path: str | Path, members: tuple[str, ...] = TENSOR_MEMBERS) -> int:
    sizes = member_sizes(path)
    return sum(sizes[m] for m in members if m in sizes)


def leftovers(directory: Path) -> list[str]:
    """Checkpoint files and temporary files in ``directory``."""
    return sorted(n for n in os.listdir(directory) if n.endswith((".zip", ".tmp")))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint of the trained container, written without a callback."""
    return trained().save(tmp_path_factory.mktemp("ckpt"), "progress", epoch=1)


def test_a_save_reports_the_bytes_of_the_file_it_writes(tmp_path: Path) -> None:
    progress = Recorder()
    c = trained(progress)
    path = c.save(tmp_path, "run", epoch=3)
    total = progress.check_complete()
    assert total == os.path.getsize(path)
    # Each header and chunk is reported: more calls than tensors, none
    # further apart than a chunk.
    assert len(progress.calls) > 10
    progress.check_steps()
    assert threading.current_thread().name in progress.threads
    assert read_checkpoint(path).metadata["epoch"] == 3


def test_save_inference_and_a_callback_set_later_report(tmp_path: Path) -> None:
    c = trained()
    assert c.progress is None
    progress = Recorder()
    c.progress = progress
    path = c.save_inference(tmp_path)
    assert progress.check_complete() == os.path.getsize(path)
    assert "optimizer.safetensors" not in member_sizes(path)
    c.progress = None
    c.save(tmp_path, "quiet")
    assert len(leftovers(tmp_path)) == 2
    assert progress.calls[-1] == (os.path.getsize(path), os.path.getsize(path))


def test_a_progress_that_is_not_callable_is_refused() -> None:
    with pytest.raises(ArgumentTypeError, match="progress must be a callable"):
        ModelContainer(progress=5)  # type: ignore[arg-type]
    c = ModelContainer()
    with pytest.raises(ArgumentTypeError, match="progress must be a callable"):
        c.progress = "bar"  # type: ignore[assignment]
    assert c.progress is None


@pytest.mark.parametrize("fail_at", [0, 3, -1])
def test_a_callback_that_raises_ends_the_save_with_no_file(tmp_path: Path, fail_at: int) -> None:
    """At the first call, in the middle, and at the last (the file was just
    published and is taken back)."""
    c = trained()
    counting = Recorder()
    c.progress = counting
    c.save(tmp_path, "count")
    calls = len(counting.calls)
    out = tmp_path / "out"
    out.mkdir()
    failing = Recorder(fail_at=calls - 1 if fail_at == -1 else fail_at)
    c.progress = failing
    with pytest.raises(Cancelled):
        c.save(out, "run", epoch=1)
    assert os.listdir(out) == []
    if fail_at == -1:
        assert len(failing.calls) == calls
        assert failing.calls[-1][0] == failing.calls[-1][1]
    else:
        assert len(failing.calls) == fail_at + 1
    # The container is untouched: without the callback the save succeeds.
    c.progress = None
    assert read_checkpoint(c.save(out, "run")).metadata["__pytorch_saver__"]["kind"] == "checkpoint"


def test_read_checkpoint_reports_the_tensor_members_it_checks(checkpoint: str) -> None:
    progress = Recorder()
    ckpt = read_checkpoint(checkpoint, progress=progress)
    assert progress.check_complete() == tensor_bytes(checkpoint)
    progress.check_steps()
    assert ckpt.model["hidden_layers.0.weight"].shape == (2560, 2560)


def corrupted(checkpoint: str, directory: Path) -> Path:
    """A copy of ``checkpoint`` with the last byte of its last tensor
    member (the optimizer's) flipped: only that member's CRC-32 tells."""
    data = bytearray(Path(checkpoint).read_bytes())
    with zipfile.ZipFile(checkpoint) as zf:
        last = max(zf.infolist(), key=lambda info: info.header_offset)
    assert last.filename == "optimizer.safetensors"
    # The last member's data ends where the central directory begins.
    (cd_offset,) = struct.unpack_from("<I", data, len(data) - 22 + 16)
    data[cd_offset - 1] ^= 0xFF
    path = directory / "corrupted.zip"
    path.write_bytes(bytes(data))
    return path


def check_failed(progress: Recorder, total: int) -> None:
    """A failed operation started and never reported its total."""
    assert progress.calls[0] == (0, total)
    assert (total, total) not in progress.calls
    done = [d for d, _ in progress.calls]
    assert all(a < b for a, b in zip(done, done[1:], strict=False)), done


def test_a_corrupted_file_never_reports_its_total(checkpoint: str, tmp_path: Path) -> None:
    path = corrupted(checkpoint, tmp_path)
    total = tensor_bytes(path)
    progress = Recorder()
    with pytest.raises(FormatError, match="CRC-32 mismatch in optimizer.safetensors") as e:
        read_checkpoint(path, progress=progress)
    assert e.value.kind == "CrcMismatch"
    check_failed(progress, total)
    # The model's member was read: the reports went past it.
    assert progress.calls[-1][0] >= member_sizes(path)["model.safetensors"]
    for copy in (False, True):
        progress = Recorder()
        with pytest.raises(FormatError, match="CRC-32 mismatch"):
            ModelContainer().load(path, copy=copy, progress=progress)
        check_failed(progress, total * (2 if copy else 1))
    progress = Recorder()
    with pytest.raises(FormatError, match="CRC-32 mismatch"):
        trained().restore(path, progress=progress)
    check_failed(progress, total)


@pytest.mark.parametrize(
    ("copy", "verify", "passes"), [(False, True, 1), (True, True, 2), (True, False, 1)]
)
def test_a_load_reports_the_bytes_it_checks_and_copies(
    checkpoint: str, copy: bool, verify: bool, passes: int
) -> None:
    """The tensor members count once for the CRC-32 check and once for the
    copy into memory."""
    progress = Recorder()
    _, objs = ModelContainer().load(checkpoint, copy=copy, verify=verify, progress=progress)
    assert progress.check_complete() == passes * tensor_bytes(checkpoint)
    progress.check_steps(passes * CHUNK)
    assert len(progress.calls) > 4
    support.assert_same_model(objs.model, ModelContainer().load(checkpoint)[1].model)


def test_a_mapped_load_without_verify_reports_start_and_end(checkpoint: str) -> None:
    progress = Recorder()
    ModelContainer().load(checkpoint, verify=False, progress=progress)
    total = tensor_bytes(checkpoint)
    assert progress.calls == [(0, total), (total, total)]


def test_load_and_restore_use_the_containers_callback(checkpoint: str) -> None:
    progress = Recorder()
    c = ModelContainer(progress=progress)
    c.load(checkpoint)
    assert progress.check_complete() == tensor_bytes(checkpoint)
    progress.calls.clear()
    c.restore(checkpoint)
    assert progress.check_complete() == tensor_bytes(checkpoint)
    progress.check_steps()
    # A callback given to the call wins over the container's.
    own = Recorder()
    progress.calls.clear()
    c.restore(checkpoint, verify=False, progress=own)
    assert progress.calls == []
    total = tensor_bytes(checkpoint)
    assert own.calls == [(0, total), (total, total)]


def test_a_load_with_extra_state_counts_its_tensors(tmp_path: Path) -> None:
    """The extra state's member is copied and checked: twice its bytes."""
    c = trained()
    rng = c.track("rng", RNG())
    path = c.save(tmp_path)
    extra = member_sizes(path)["extra.safetensors"]
    assert extra > 0
    progress = Recorder()
    ModelContainer().load(path, track={"rng": rng}, progress=progress)
    assert progress.check_complete() == tensor_bytes(path) + 2 * extra
    progress = Recorder()
    c.restore(path, progress=progress)
    assert progress.check_complete() == tensor_bytes(path) + 2 * extra
    # Loaded without it, the extra state is not read.
    progress = Recorder()
    ModelContainer().load(path, progress=progress)
    assert progress.check_complete() == tensor_bytes(path)


def test_a_callback_that_raises_at_the_end_of_a_load_changes_nothing(checkpoint: str) -> None:
    """The end is reported before the container or the held tensors change."""
    counting = Recorder()
    c = ModelContainer()
    c.load(checkpoint, progress=counting)
    held = c.model
    assert held is not None
    with pytest.raises(Cancelled):
        c.load(checkpoint, progress=Recorder(fail_at=len(counting.calls) - 1))
    assert c.model is held
    counting = Recorder()
    c.restore(checkpoint, progress=counting)
    with torch.no_grad():
        for p in held.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in held.state_dict().items()}
    with pytest.raises(Cancelled):
        c.restore(checkpoint, progress=Recorder(fail_at=len(counting.calls) - 1))
    for k, v in held.state_dict().items():
        assert torch.equal(v, before[k]), k
    c.restore(checkpoint)
    assert not torch.equal(held.state_dict()["fc1.bias"], before["fc1.bias"])


def test_a_parallel_crc_reports_each_chunk(
    checkpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members CRC'd in threads report chunk by chunk, in order."""
    monkeypatch.setattr(_crc, "_PARALLEL_MIN", MIB)
    monkeypatch.setattr(_crc, "_threads", lambda: 4)
    progress = Recorder()
    ModelContainer().load(checkpoint, progress=progress)
    assert progress.check_complete() == tensor_bytes(checkpoint)
    progress.check_steps()
    assert len(progress.calls) > 4


def test_a_file_of_the_original_package_reports_its_size(tmp_path: Path) -> None:
    model = support.Model(**support.MODEL_KWARGS)
    path = support.write_legacy(
        tmp_path / "checkpoint_1.zip",
        {"model_kwargs": support.MODEL_KWARGS, "timestamp": 1},
        {"model_state_dict": model.state_dict()},
    )
    progress = Recorder()
    ModelContainer().load(path, support.Model, progress=progress)
    size = os.path.getsize(path)
    assert progress.calls == [(0, size), (size, size)]


def test_a_manager_save_reports(tmp_path: Path) -> None:
    progress = Recorder()
    c = trained(progress)
    with CheckpointManager(tmp_path, "run", keep_last=2) as mgr:
        path = mgr.save(c, 1, loss=0.5)
    assert progress.check_complete() == os.path.getsize(path)
    progress.check_steps()
    assert progress.threads == {threading.current_thread().name}


def test_an_async_save_reports_from_its_thread(tmp_path: Path) -> None:
    progress = Recorder()
    c = trained(progress)
    with CheckpointManager(tmp_path, "run", keep_last=2) as mgr:
        handle = mgr.save_async(c, 1, loss=0.5)
        path = handle.wait()
    assert progress.check_complete() == os.path.getsize(path)
    progress.check_steps()
    assert progress.threads == {"pytorch_saver save run"}


def test_an_async_save_whose_callback_raises_writes_nothing(tmp_path: Path) -> None:
    c = trained(Recorder(fail_at=2))
    with CheckpointManager(tmp_path, "run", keep_last=2) as mgr:
        handle = mgr.save_async(c, 1, loss=0.5)
        with pytest.raises(Cancelled):
            handle.wait()
        assert handle.path is None
        assert leftovers(tmp_path) == []
        assert mgr.list() == []
        # The next save, with a callback that does not raise, is whole.
        c.progress = Recorder()
        path = mgr.save(c, 2, loss=0.25)
    assert leftovers(tmp_path) == [os.path.basename(path)]

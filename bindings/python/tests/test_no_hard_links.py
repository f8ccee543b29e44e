"""Saving on filesystems without hard links (vfat, exfat, FUSE mounts such
as gcsfuse), where ``link(2)`` fails with ``EPERM``: the writer publishes
with ``renameat2(RENAME_NOREPLACE)`` instead, never replacing a file, and
where that is refused too it fails with an error naming the filesystem and
suggesting an object-store URL, leaving nothing behind.

A real vfat filesystem is used where this machine can mount one (root, loop
devices, the vfat driver and ``mkfs.vfat``); otherwise the test warns (shown
in pytest's summary) and checks the injected path. The other cases inject
the errors through ``PTS_LINK_ERRNO`` and ``PTS_RENAMEAT2_ERRNO``
(``_format/publish.py``), which are read at each call."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_saver._errors import FormatError
from pytorch_saver._format import FORMAT_VERSION, INTERNALS_KEY, read_checkpoint, write_checkpoint

TIMESTAMP = 1_795_000_000
NAME = f"nh_inference_{TIMESTAMP}"


def metadata() -> dict[str, Any]:
    return {
        "model_kwargs": {"width": 3},
        "timestamp": TIMESTAMP,
        INTERNALS_KEY: {
            "format_version": FORMAT_VERSION,
            "kind": "inference",
            "model": {"class": "tests.NoHardLinks"},
            "producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "python"},
        },
    }


def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(17)
    return {
        "weight": torch.randn(64, 1024, generator=gen),
        "bias": torch.randn(64, generator=gen).to(torch.bfloat16),
        "steps": torch.tensor(12345, dtype=torch.int64),
    }


def save(directory: Path) -> str:
    return os.path.basename(write_checkpoint(directory, "nh", metadata(), tensors(), None))


def raw(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).tolist())


def assert_bit_exact(path: Path) -> None:
    loaded = read_checkpoint(path).model
    expected = tensors()
    assert sorted(loaded) == sorted(expected)
    for name, t in expected.items():
        assert loaded[name].dtype == t.dtype, name
        assert loaded[name].shape == t.shape, name
        assert raw(loaded[name]) == raw(t), name


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def check_rename_publish(directory: Path, monkeypatch: pytest.MonkeyPatch, link_errno: str) -> None:
    """(b) With ``link(2)`` refused, the save publishes by renaming: a taken
    name is skipped (its bytes untouched), the saves get ``-1`` and ``-2``,
    load bit-exact, and no temporary file is left."""
    theirs = b"someone else's file, not a checkpoint"
    (directory / f"{NAME}.zip").write_bytes(theirs)
    monkeypatch.setenv("PTS_LINK_ERRNO", link_errno)
    assert save(directory) == f"{NAME}-1.zip"
    assert save(directory) == f"{NAME}-2.zip"
    assert (directory / f"{NAME}.zip").read_bytes() == theirs
    assert_bit_exact(directory / f"{NAME}-1.zip")
    assert_bit_exact(directory / f"{NAME}-2.zip")
    assert names(directory) == [f"{NAME}-1.zip", f"{NAME}-2.zip", f"{NAME}.zip"]


@pytest.mark.parametrize("link_errno", ["EPERM", "EOPNOTSUPP", "ENOSYS"])
def test_link_refused_publishes_by_rename_without_replacing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link_errno: str
) -> None:
    check_rename_publish(tmp_path, monkeypatch, link_errno)


def test_emlink_is_reported_not_worked_around(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTS_LINK_ERRNO", "EMLINK")
    with pytest.raises(OSError) as info:
        save(tmp_path)
    assert not isinstance(info.value, FormatError)
    assert info.value.filename == str(tmp_path / f"{NAME}.zip")
    assert names(tmp_path) == []


def statfs_magic(directory: Path) -> int:
    buf = ctypes.create_string_buffer(256)
    assert ctypes.CDLL(None).statfs(os.fsencode(directory), buf) == 0
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


# The names of the filesystems a test directory is commonly on.
COMMON_FILESYSTEMS = {
    0xEF53: "ext2/ext3/ext4",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x4D44: "vfat",
}


@pytest.mark.parametrize("rename_errno", ["EINVAL", "ENOSYS", "EOPNOTSUPP"])
def test_no_link_and_no_rename_noreplace_fails_naming_the_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rename_errno: str
) -> None:
    """(c) Neither hard links nor ``RENAME_NOREPLACE``: an ``Io`` error that
    names the filesystem and suggests an object-store URL; nothing left."""
    monkeypatch.setenv("PTS_LINK_ERRNO", "EPERM")
    monkeypatch.setenv("PTS_RENAMEAT2_ERRNO", rename_errno)
    with pytest.raises(FormatError) as info:
        save(tmp_path)
    message = str(info.value)
    assert info.value.kind == "Io"
    assert message.startswith(f"cannot publish {tmp_path / NAME}.zip: the "), message
    assert f"filesystem of {tmp_path}" in message
    assert "the unknown filesystem" not in message
    fs = COMMON_FILESYSTEMS.get(statfs_magic(tmp_path))
    if fs is not None:
        assert f"the {fs}" in message
    assert "s3://" in message
    assert "link: Operation not permitted" in message
    assert isinstance(info.value.__cause__, OSError)
    assert names(tmp_path) == []


def test_other_rename_errors_are_reported_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTS_LINK_ERRNO", "EPERM")
    monkeypatch.setenv("PTS_RENAMEAT2_ERRNO", "EIO")
    with pytest.raises(OSError) as info:
        save(tmp_path)
    assert not isinstance(info.value, FormatError)
    assert "s3://" not in str(info.value)
    assert names(tmp_path) == []


@pytest.fixture
def vfat() -> Iterator[Path | str]:
    """A mounted 64 MiB vfat image, or why there is none."""
    with tempfile.TemporaryDirectory() as work:
        image, mountpoint = Path(work, "vfat.img"), Path(work, "mnt")
        mountpoint.mkdir()
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        mkfs = shutil.which("mkfs.vfat") or shutil.which("mkfs.vfat", path="/sbin:/usr/sbin")
        if mkfs is None:
            yield "mkfs.vfat is not installed (dosfstools)"
            return
        for cmd in (
            [mkfs, str(image)],
            ["mount", "-o", f"loop,uid={os.getuid()}", str(image), str(mountpoint)],
        ):
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            except OSError as e:
                yield f"{cmd}: {e}"
                return
            if done.returncode != 0:
                yield f"{cmd}: {done.stderr.strip()}"
                return
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=60)


def test_a_real_vfat_filesystem(
    vfat: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a) On a real vfat mount the save publishes (by rename: vfat has no
    hard links) and a second save gets ``-1``, or it fails naming vfat; no
    temporary file either way. Without one, the injected path runs and a
    warning says vfat was not tested."""
    monkeypatch.delenv("PTS_LINK_ERRNO", raising=False)
    monkeypatch.delenv("PTS_RENAMEAT2_ERRNO", raising=False)
    if isinstance(vfat, str):
        warnings.warn(
            f"vfat NOT tested: cannot mount a vfat image here ({vfat}); "
            "checked the injected EPERM path instead",
            stacklevel=1,
        )
        check_rename_publish(tmp_path, monkeypatch, "EPERM")
        return
    assert statfs_magic(vfat) == 0x4D44
    try:
        first = save(vfat)
    except FormatError as e:
        assert e.kind == "Io"
        assert "vfat" in str(e) and "s3://" in str(e)
        assert names(vfat) == []
        return
    assert first == f"{NAME}.zip"
    assert save(vfat) == f"{NAME}-1.zip"
    assert_bit_exact(vfat / f"{NAME}.zip")
    assert_bit_exact(vfat / f"{NAME}-1.zip")
    assert names(vfat) == [f"{NAME}-1.zip", f"{NAME}.zip"]

"""Giving a finished temporary file its final name without ever replacing a
file that has that name (``src/format/publish.rs``).

``link(2)`` comes first: it fails atomically with ``EEXIST`` when the name
is taken. Filesystems without hard links (vfat, exfat, many FUSE mounts
such as gcsfuse) refuse it with ``EPERM``, ``EOPNOTSUPP`` or ``ENOSYS``;
there the file is moved with ``renameat2(RENAME_NOREPLACE)``, which fails
the same way on a taken name. Where that is refused too (``EINVAL``,
``ENOSYS``, ``EOPNOTSUPP``: a FUSE server without rename2) the publish
fails with a :class:`FormatError` of kind ``"Io"`` that names the
filesystem and suggests an object-store URL. A plain ``rename(2)``, which
replaces the target, is never used.

For tests, as the Rust crate's ``fault-injection`` feature does: the
environment variable ``PTS_LINK_ERRNO=NAME`` makes every ``link(2)`` here
fail with that errno instead of running, and ``PTS_RENAMEAT2_ERRNO=NAME``
does the same for ``renameat2``. NAME is an errno name (``EPERM``,
``EINVAL``, ...) or a number; both are read at each call.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Final, NoReturn

from .._errors import FormatError

MAX_NAMES: Final = 10_000
"""A writer gives up after this many taken names (``{stem}-9999.zip``)."""

_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1
_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS})
"""The errors of ``link(2)`` that mean "this filesystem has no hard links".
``EMLINK`` (too many links to one file) is not one of them."""
_UNSUPPORTED: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
"""The errors of ``renameat2(2)`` that mean the flag is not supported."""

# statfs(2)'s f_type (linux/magic.h and the filesystems' own headers).
# virtiofs and gcsfuse report FUSE's magic.
_FILESYSTEMS: Final = {
    0x4D44: "vfat/msdos",
    0x2011BAB0: "exfat",
    0x65735546: "fuse (or fuseblk)",
    0x5346544E: "ntfs",
    0x7366746E: "ntfs3",
    0x01021997: "9p",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x794C7630: "overlay",
    0x01021994: "tmpfs",
    0xEF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x2FC12FC1: "zfs",
    0x00C36400: "ceph",
    0x482B: "hfsplus",
    0x73717368: "squashfs",
    0xE0F5E1E2: "erofs",
}

_libc = ctypes.CDLL(None, use_errno=True)


def fsync_directory(directory: str) -> None:
    """fsyncs ``directory``, so that the names published in it last."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_numbered(tmp: str, directory: str, stem: str) -> str:
    """Publishes ``tmp`` (in ``directory``) as ``{stem}.zip``, or
    ``{stem}-{n}.zip`` with the smallest n >= 1 that no file has, and
    returns the path it got. The caller fsyncs the directory and removes
    ``tmp`` (gone already after a rename)."""
    for n in range(MAX_NAMES):
        target = os.path.join(directory, f"{stem}.zip" if n == 0 else f"{stem}-{n}.zip")
        try:
            publish_file(tmp, target)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"{MAX_NAMES} files named {stem}-N.zip already exist in {directory}")


def publish_file(tmp: str, target: str) -> None:
    """Gives the finished file ``tmp`` the name ``target`` in the same
    directory, never replacing anything: :class:`FileExistsError` when the
    name is taken (``tmp`` untouched), a :class:`FormatError` of kind
    ``"Io"`` naming the filesystem when it can publish neither way, the
    :class:`OSError` of the call otherwise."""
    try:
        _link(tmp, target)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        link_error = e
    try:
        _rename_noreplace(tmp, target)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        directory = os.path.dirname(target) or "."
        raise FormatError(
            f"cannot publish {target}: the {filesystem_name(directory)} filesystem of "
            f"{directory} supports neither hard links (link: {_describe(link_error)}) nor "
            f"renaming without replacement (renameat2: {_describe(e)}), so a file cannot be "
            "published there without risking replacing another; save to an object-store URL "
            "(s3://bucket/prefix, gs://, az://) or to a local filesystem such as ext4 or xfs "
            "instead",
            kind="Io",
        ) from e


def publish_directory(tmp: str, target: str) -> None:
    """Renames the finished directory ``tmp`` to ``target`` with
    ``renameat2(RENAME_NOREPLACE)``: :class:`FileExistsError` when the name
    is taken, never a replacement (a directory has no hard links to try)."""
    _rename_noreplace(tmp, target)


def filesystem_name(directory: str) -> str:
    """The name of the filesystem ``directory`` is on, from ``statfs(2)``'s
    ``f_type``; the magic in hex for others, ``"unknown"`` when ``statfs``
    fails."""
    # struct statfs starts with f_type (a long); 256 bytes hold the rest.
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(directory), buf) != 0:
        return "unknown"
    magic = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return _FILESYSTEMS.get(magic, f"{magic:#x}")


def _describe(e: OSError) -> str:
    return f"{e.strerror} (os error {e.errno})"


def _injected(variable: str) -> int | None:
    value = os.environ.get(variable)
    if not value:
        return None
    injected = getattr(errno, value, None)
    return injected if isinstance(injected, int) else int(value)


def _raise_errno(code: int, path: str) -> NoReturn:
    raise OSError(code, os.strerror(code), path)


def _link(tmp: str, target: str) -> None:
    injected = _injected("PTS_LINK_ERRNO")
    if injected is not None:
        _raise_errno(injected, target)
    os.link(tmp, target)


def _rename_noreplace(tmp: str, target: str) -> None:
    injected = _injected("PTS_RENAMEAT2_ERRNO")
    if injected is not None:
        _raise_errno(injected, target)
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        _raise_errno(errno.ENOSYS, target)
    rc = renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)
    if rc != 0:
        _raise_errno(ctypes.get_errno(), target)

"""CRC-32 (ISO-HDLC, as in ZIP and zlib) at memory speed.

The accelerated implementation of ``zlib-ng`` (``pip install
pytorch-saver[fast]``) is used when it is importable, else ``zlib.crc32``;
both give the same values and release the GIL on large buffers, so a large
buffer is split into chunks computed in threads and the chunks' CRCs are
joined with :func:`crc32_combine` (zlib's GF(2) algorithm, in pure Python:
a few microseconds per chunk).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from ._errors import InvalidArgumentError

__all__ = ["IMPLEMENTATION", "crc32", "crc32_combine", "crc32_parallel"]

_Crc = Callable[[bytes | bytearray | memoryview, int], int]


def _pick() -> tuple[_Crc, str]:
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        return zlib.crc32, "zlib"
    fast: _Crc = zlib_ng.crc32
    return fast, "zlib-ng"


crc32, IMPLEMENTATION = _pick()
"""``crc32(data, value)``: the CRC-32 of ``data`` continuing from ``value``;
``IMPLEMENTATION`` names the library that computes it."""

_POLY: Final = 0xEDB88320  # reflected CRC-32 polynomial


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo p(x), in the reflected bit order of CRC-32."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> tuple[int, ...]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N: Final = _x2n_table()  # x^(2^k) mod p(x)


def _x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) modulo p(x)."""
    p = 1 << 31  # x^0
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc1`` of A, ``crc2`` of B and B's
    length, as zlib's ``crc32_combine``."""
    if len2 < 0:
        raise InvalidArgumentError(f"len2 must be >= 0, got {len2}")
    return _multmodp(_x2nmodp(len2, 3), crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


_PARALLEL_MIN: Final = 64 << 20  # below this, one thread is as fast
_PARALLEL_CHUNK: Final = 16 << 20
"""What one thread computes at a time, and between two progress reports."""


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def crc32_parallel(
    data: memoryview, value: int = 0, advance: Callable[[int], object] | None = None
) -> int:
    """``crc32(data, value)``, with a buffer of 64 MiB or more split into
    16 MiB chunks computed in as many threads as the process may use.
    ``advance(n)``, if given, hears each chunk's length once its CRC is
    known (chunks of 16 MiB of a smaller buffer too), in order, from the
    calling thread."""
    threads = _threads()
    if len(data) < _PARALLEL_MIN or threads < 2:
        if advance is None:
            return crc32(data, value)
        crc = value
        for at in range(0, len(data), _PARALLEL_CHUNK):
            chunk = data[at : at + _PARALLEL_CHUNK]
            crc = crc32(chunk, crc)
            advance(len(chunk))
        return crc
    chunks = [data[at : at + _PARALLEL_CHUNK] for at in range(0, len(data), _PARALLEL_CHUNK)]
    crc = value
    with ThreadPoolExecutor(max_workers=min(threads, len(chunks))) as pool:
        parts = pool.map(lambda chunk: crc32(chunk, 0), chunks)
        for chunk, part in zip(chunks, parts, strict=True):
            crc = crc32_combine(crc, part, len(chunk))
            if advance is not None:
                advance(len(chunk))
    return crc

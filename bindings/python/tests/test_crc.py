"""The CRC-32 helpers: the accelerated implementation agrees with zlib, the
pure-Python crc32_combine with zlib's, and the threaded CRC with one pass."""

from __future__ import annotations

import os
import random
import zlib

import pytest
from pytorch_saver import _crc


def test_the_crc_in_use_is_zlibs() -> None:
    assert _crc.IMPLEMENTATION in ("zlib", "zlib-ng")
    data = os.urandom(100_003)
    assert _crc.crc32(data, 0) == zlib.crc32(data)
    assert _crc.crc32(data[7:], zlib.crc32(data[:7])) == zlib.crc32(data)


@pytest.mark.parametrize("seed", range(20))
def test_crc32_combine_matches_zlib_on_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(0, 5000))
    cut = rng.randrange(0, len(data) + 1)
    a, b = data[:cut], data[cut:]
    assert _crc.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(data)


def test_crc32_combine_of_long_lengths_matches_zlib_ng_where_installed() -> None:
    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
    rng = random.Random(7)
    for _ in range(50):
        crc1, crc2 = rng.getrandbits(32), rng.getrandbits(32)
        length = rng.randrange(0, 1 << 40)
        assert _crc.crc32_combine(crc1, crc2, length) == zlib_ng.crc32_combine(crc1, crc2, length)


def test_the_threaded_crc_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_crc, "_PARALLEL_MIN", 1000)
    monkeypatch.setattr(_crc, "_PARALLEL_CHUNK", 333)
    monkeypatch.setattr(_crc, "_threads", lambda: 3)
    data = os.urandom(10_000)
    assert _crc.crc32_parallel(memoryview(data)) == zlib.crc32(data)
    assert _crc.crc32_parallel(memoryview(data), 12345) == zlib.crc32(data, 12345)

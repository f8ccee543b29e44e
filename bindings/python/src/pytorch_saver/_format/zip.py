"""The subset of ZIP (APPNOTE 6.3.x) that format v1 uses
(``src/format/zip.rs``): STORED members, 64-byte aligned data, ZIP64 when a
size or offset needs it. Encoding here, strict parsing in ``reader.py``."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ALIGNMENT",
    "CENTRAL",
    "CENTRAL_SIG",
    "EOCD",
    "EOCD_SIG",
    "FORBIDDEN_FLAGS",
    "LOCAL",
    "LOCAL_SIG",
    "U16_MAX",
    "U32_MAX",
    "ZIP64_EOCD",
    "ZIP64_EOCD_SIG",
    "ZIP64_EXTRA_ID",
    "ZIP64_LOCATOR",
    "ZIP64_LOCATOR_SIG",
    "PlannedMember",
    "dos_time_date",
    "end_records",
]

# --- FORMAT.md section 2 ---
LOCAL_SIG: Final = 0x04034B50
CENTRAL_SIG: Final = 0x02014B50
EOCD_SIG: Final = 0x06054B50
ZIP64_EOCD_SIG: Final = 0x06064B50
ZIP64_LOCATOR_SIG: Final = 0x07064B50
LOCAL: Final = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
CENTRAL: Final = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
EOCD: Final = struct.Struct("<IHHHHIIH")  # 22 bytes
ZIP64_EOCD: Final = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
ZIP64_LOCATOR: Final = struct.Struct("<IIQI")  # 20 bytes
ZIP64_EXTRA_ID: Final = 0x0001
"""Extra-field header ID of the ZIP64 extended information block."""
PADDING_EXTRA_ID: Final = 0xD935
"""Extra-field header ID used for alignment padding (the one Android's
zipalign uses): a u16 alignment followed by zero bytes."""
ALIGNMENT: Final = 64
"""Every member's data starts on a multiple of this."""
U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFFFFFF
"""Field value that says "look in the ZIP64 extra field"."""
_VERSION_STORED: Final = 20
_VERSION_ZIP64: Final = 45
# Host "UNIX" in the upper byte, so that `unzip` restores 0644 permissions.
_MADE_BY_UNIX: Final = 3 << 8
_UNIX_FILE_0644: Final = 0o100644 << 16
FORBIDDEN_FLAGS: Final = (1 << 0) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 13)
"""Flag bits a v1 reader refuses: encryption (0), data descriptor (3),
patched data (5), strong encryption (6), masked local header (13)."""


@dataclass
class PlannedMember:
    """Where and how large one member is, as the writer plans it."""

    name: str
    header_offset: int
    size: int
    zip64_sizes: bool
    zip64_offset: bool
    padding: int
    crc: int = 0

    @classmethod
    def plan(cls, name: str, header_offset: int, size: int, force_zip64: bool) -> PlannedMember:
        zip64_sizes = force_zip64 or size >= U32_MAX
        zip64_offset = force_zip64 or header_offset >= U32_MAX
        fixed = LOCAL.size + len(name) + (20 if zip64_sizes else 0)
        padding = -(header_offset + fixed) % ALIGNMENT
        if padding < 6:  # the padding block needs ID, size and alignment
            padding += ALIGNMENT
        return cls(name, header_offset, size, zip64_sizes, zip64_offset, padding)

    @property
    def local_header_len(self) -> int:
        return LOCAL.size + len(self.name) + (20 if self.zip64_sizes else 0) + self.padding

    @property
    def data_offset(self) -> int:
        return self.header_offset + self.local_header_len

    @property
    def end(self) -> int:
        return self.data_offset + self.size

    @property
    def crc_field_offset(self) -> int:
        """Offset of the CRC field inside the local header, for patching."""
        return self.header_offset + 14

    @property
    def version_needed(self) -> int:
        return _VERSION_ZIP64 if self.zip64_sizes or self.zip64_offset else _VERSION_STORED

    def local_header(self, dos_time: int, dos_date: int) -> bytes:
        size32 = U32_MAX if self.zip64_sizes else self.size
        extra = b""
        if self.zip64_sizes:
            extra += struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, self.size, self.size)
        extra += struct.pack("<HHH", PADDING_EXTRA_ID, self.padding - 4, ALIGNMENT)
        extra += bytes(self.padding - 6)
        name = self.name.encode("ascii")
        fixed = LOCAL.pack(
            LOCAL_SIG,
            self.version_needed,
            0,  # flags
            0,  # method: STORED
            dos_time,
            dos_date,
            self.crc,
            size32,
            size32,
            len(name),
            len(extra),
        )
        return fixed + name + extra

    def central_header(self, dos_time: int, dos_date: int) -> bytes:
        zip64 = b""
        if self.zip64_sizes:
            zip64 += struct.pack("<QQ", self.size, self.size)
        if self.zip64_offset:
            zip64 += struct.pack("<Q", self.header_offset)
        extra = struct.pack("<HH", ZIP64_EXTRA_ID, len(zip64)) + zip64 if zip64 else b""
        size32 = U32_MAX if self.zip64_sizes else self.size
        name = self.name.encode("ascii")
        fixed = CENTRAL.pack(
            CENTRAL_SIG,
            _MADE_BY_UNIX | self.version_needed,
            self.version_needed,
            0,  # flags
            0,  # method
            dos_time,
            dos_date,
            self.crc,
            size32,
            size32,
            len(name),
            len(extra),
            0,  # comment length
            0,  # disk number start
            0,  # internal attributes
            _UNIX_FILE_0644,
            U32_MAX if self.zip64_offset else self.header_offset,
        )
        return fixed + name + extra


def end_records(entries: int, cd_offset: int, cd_size: int, force_zip64: bool) -> bytes:
    """The end records: ZIP64 end record and locator when needed, then the
    classic end-of-central-directory record with no comment."""
    zip64 = force_zip64 or entries >= U16_MAX or cd_offset >= U32_MAX or cd_size >= U32_MAX
    out = b""
    if zip64:
        out += ZIP64_EOCD.pack(
            ZIP64_EOCD_SIG,
            ZIP64_EOCD.size - 12,
            _MADE_BY_UNIX | _VERSION_ZIP64,
            _VERSION_ZIP64,
            0,
            0,
            entries,
            entries,
            cd_size,
            cd_offset,
        )
        out += ZIP64_LOCATOR.pack(ZIP64_LOCATOR_SIG, 0, cd_offset + cd_size, 1)
    entries16 = U16_MAX if zip64 else entries
    out += EOCD.pack(
        EOCD_SIG,
        0,
        0,
        entries16,
        entries16,
        U32_MAX if zip64 else cd_size,
        U32_MAX if zip64 else cd_offset,
        0,
    )
    return out


def dos_time_date(unix_seconds: int) -> tuple[int, int]:
    """MS-DOS time and date (UTC) of a Unix timestamp, 1980-01-01 at the
    earliest (as the Rust writer computes them)."""
    secs = max(unix_seconds, 315_532_800)
    days, rem = divmod(secs, 86_400)
    # Howard Hinnant's civil_from_days.
    z = days + 719_468
    era, doe = divmod(z, 146_097)
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    dos_year = min(max(year - 1980, 0), 127)
    time = (rem // 3600) << 11 | ((rem % 3600) // 60) << 5 | (rem % 60) // 2
    return time, (dos_year << 9 | month << 5 | day) & 0xFFFF

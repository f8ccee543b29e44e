//! The subset of ZIP (APPNOTE 6.3.x) that format v1 uses: STORED members,
//! 64-byte aligned data, ZIP64 when a size or offset needs it. Encoding
//! here, strict parsing in `reader.rs`.

pub(crate) const LOCAL_SIG: u32 = 0x0403_4b50;
pub(crate) const CENTRAL_SIG: u32 = 0x0201_4b50;
pub(crate) const EOCD_SIG: u32 = 0x0605_4b50;
pub(crate) const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
pub(crate) const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;

pub(crate) const LOCAL_LEN: u64 = 30;
pub(crate) const CENTRAL_LEN: u64 = 46;
pub(crate) const EOCD_LEN: u64 = 22;
pub(crate) const ZIP64_EOCD_LEN: u64 = 56;
pub(crate) const ZIP64_LOCATOR_LEN: u64 = 20;

/// Extra-field header ID of the ZIP64 extended information block.
pub(crate) const ZIP64_EXTRA_ID: u16 = 0x0001;
/// Extra-field header ID used for alignment padding (the one Android's
/// zipalign uses): a u16 alignment followed by zero bytes.
pub(crate) const PADDING_EXTRA_ID: u16 = 0xd935;

/// Every member's data starts on a multiple of this.
pub const ALIGNMENT: u64 = 64;

/// Field value that says "look in the ZIP64 extra field".
pub(crate) const U32_MAX: u64 = 0xffff_ffff;
pub(crate) const U16_MAX: u64 = 0xffff;

const VERSION_STORED: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// Host "UNIX" in the upper byte, so that `unzip` restores 0644 permissions.
const MADE_BY_UNIX: u16 = 3 << 8;
const UNIX_FILE_0644: u32 = 0o100_644 << 16;

/// Flag bits a v1 reader refuses: encryption (0), data descriptor (3),
/// patched data (5), strong encryption (6), masked local header (13).
pub(crate) const FORBIDDEN_FLAGS: u16 = (1 << 0) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 13);

/// Where and how large one member is, as the writer plans it.
#[derive(Debug, Clone)]
pub(crate) struct PlannedMember {
    pub name: &'static str,
    pub header_offset: u64,
    pub size: u64,
    pub crc: u32,
    /// Sizes go in a ZIP64 extra field (local and central).
    pub zip64_sizes: bool,
    /// The local header offset goes in the central ZIP64 extra field.
    pub zip64_offset: bool,
    /// Bytes of padding extra field in the local header.
    pub padding: u16,
}

impl PlannedMember {
    /// Plans a member whose local header starts at `header_offset`.
    pub fn plan(name: &'static str, header_offset: u64, size: u64, force_zip64: bool) -> Self {
        let zip64_sizes = force_zip64 || size >= U32_MAX;
        let zip64_offset = force_zip64 || header_offset >= U32_MAX;
        let fixed = LOCAL_LEN + name.len() as u64 + if zip64_sizes { 20 } else { 0 };
        // The padding block needs at least 6 bytes (ID, size, alignment).
        let mut padding = (ALIGNMENT - (header_offset + fixed) % ALIGNMENT) % ALIGNMENT;
        if padding < 6 {
            padding += ALIGNMENT;
        }
        PlannedMember {
            name,
            header_offset,
            size,
            crc: 0,
            zip64_sizes,
            zip64_offset,
            padding: padding as u16,
        }
    }

    pub fn local_header_len(&self) -> u64 {
        LOCAL_LEN + self.name.len() as u64 + if self.zip64_sizes { 20 } else { 0 } + self.padding as u64
    }

    pub fn data_offset(&self) -> u64 {
        self.header_offset + self.local_header_len()
    }

    pub fn end(&self) -> u64 {
        self.data_offset() + self.size
    }

    /// Offset of the CRC field inside the local header, for patching.
    pub fn crc_field_offset(&self) -> u64 {
        self.header_offset + 14
    }

    fn version_needed(&self) -> u16 {
        if self.zip64_sizes || self.zip64_offset {
            VERSION_ZIP64
        } else {
            VERSION_STORED
        }
    }

    pub fn local_header(&self, dos_time: u16, dos_date: u16) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.local_header_len() as usize);
        put32(&mut b, LOCAL_SIG);
        put16(&mut b, self.version_needed());
        put16(&mut b, 0); // flags
        put16(&mut b, 0); // method: STORED
        put16(&mut b, dos_time);
        put16(&mut b, dos_date);
        put32(&mut b, self.crc);
        let size32 = if self.zip64_sizes {
            U32_MAX as u32
        } else {
            self.size as u32
        };
        put32(&mut b, size32); // compressed
        put32(&mut b, size32); // uncompressed
        put16(&mut b, self.name.len() as u16);
        let extra = self.local_header_len() - LOCAL_LEN - self.name.len() as u64;
        put16(&mut b, extra as u16);
        b.extend_from_slice(self.name.as_bytes());
        if self.zip64_sizes {
            put16(&mut b, ZIP64_EXTRA_ID);
            put16(&mut b, 16);
            put64(&mut b, self.size);
            put64(&mut b, self.size);
        }
        put16(&mut b, PADDING_EXTRA_ID);
        put16(&mut b, self.padding - 4);
        put16(&mut b, ALIGNMENT as u16);
        b.resize(self.local_header_len() as usize, 0);
        b
    }

    pub fn central_header(&self, dos_time: u16, dos_date: u16) -> Vec<u8> {
        let mut zip64 = Vec::new();
        if self.zip64_sizes {
            put64(&mut zip64, self.size);
            put64(&mut zip64, self.size);
        }
        if self.zip64_offset {
            put64(&mut zip64, self.header_offset);
        }
        let mut b = Vec::with_capacity(CENTRAL_LEN as usize + self.name.len() + 4 + zip64.len());
        put32(&mut b, CENTRAL_SIG);
        put16(&mut b, MADE_BY_UNIX | self.version_needed());
        put16(&mut b, self.version_needed());
        put16(&mut b, 0); // flags
        put16(&mut b, 0); // method
        put16(&mut b, dos_time);
        put16(&mut b, dos_date);
        put32(&mut b, self.crc);
        let size32 = if self.zip64_sizes {
            U32_MAX as u32
        } else {
            self.size as u32
        };
        put32(&mut b, size32);
        put32(&mut b, size32);
        put16(&mut b, self.name.len() as u16);
        put16(&mut b, if zip64.is_empty() { 0 } else { 4 + zip64.len() as u16 });
        put16(&mut b, 0); // comment length
        put16(&mut b, 0); // disk number start
        put16(&mut b, 0); // internal attributes
        put32(&mut b, UNIX_FILE_0644);
        let offset32 = if self.zip64_offset {
            U32_MAX as u32
        } else {
            self.header_offset as u32
        };
        put32(&mut b, offset32);
        b.extend_from_slice(self.name.as_bytes());
        if !zip64.is_empty() {
            put16(&mut b, ZIP64_EXTRA_ID);
            put16(&mut b, zip64.len() as u16);
            b.extend_from_slice(&zip64);
        }
        b
    }
}

/// The end records: ZIP64 end record and locator when needed, then the
/// classic end-of-central-directory record with no comment.
pub(crate) fn end_records(entries: u64, cd_offset: u64, cd_size: u64, force_zip64: bool) -> Vec<u8> {
    let zip64 = force_zip64 || entries >= U16_MAX || cd_offset >= U32_MAX || cd_size >= U32_MAX;
    let mut b = Vec::new();
    if zip64 {
        let eocd64_offset = cd_offset + cd_size;
        put32(&mut b, ZIP64_EOCD_SIG);
        put64(&mut b, ZIP64_EOCD_LEN - 12);
        put16(&mut b, MADE_BY_UNIX | VERSION_ZIP64);
        put16(&mut b, VERSION_ZIP64);
        put32(&mut b, 0);
        put32(&mut b, 0);
        put64(&mut b, entries);
        put64(&mut b, entries);
        put64(&mut b, cd_size);
        put64(&mut b, cd_offset);
        put32(&mut b, ZIP64_LOCATOR_SIG);
        put32(&mut b, 0);
        put64(&mut b, eocd64_offset);
        put32(&mut b, 1);
    }
    put32(&mut b, EOCD_SIG);
    put16(&mut b, 0);
    put16(&mut b, 0);
    let entries16 = if zip64 { U16_MAX as u16 } else { entries as u16 };
    put16(&mut b, entries16);
    put16(&mut b, entries16);
    put32(&mut b, if zip64 { U32_MAX as u32 } else { cd_size as u32 });
    put32(&mut b, if zip64 { U32_MAX as u32 } else { cd_offset as u32 });
    put16(&mut b, 0);
    b
}

/// MS-DOS time and date (UTC) for a Unix timestamp; 1980-01-01 floor.
pub(crate) fn dos_time_date(unix_seconds: u64) -> (u16, u16) {
    const DOS_EPOCH: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    let secs = unix_seconds.max(DOS_EPOCH);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let year = (y - 1980).clamp(0, 127) as u16;
    let time = ((rem / 3600) as u16) << 11 | (((rem % 3600) / 60) as u16) << 5 | ((rem % 60) / 2) as u16;
    let date = year << 9 | (m as u16) << 5 | d as u16;
    (time, date)
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// Little-endian field access over a byte slice whose length the caller checked.
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_data_is_aligned() {
        for offset in 0..200u64 {
            for zip64 in [false, true] {
                let m = PlannedMember::plan("model.safetensors", offset, 10, zip64);
                assert_eq!(m.data_offset() % ALIGNMENT, 0, "offset {offset}");
                assert!(m.padding >= 6);
                assert_eq!(m.local_header(0, 0).len() as u64, m.local_header_len());
            }
        }
    }

    #[test]
    fn dos_date_of_known_day() {
        // 2024-02-29T13:45:30Z
        let (t, d) = dos_time_date(1_709_214_330);
        assert_eq!(d >> 9, 2024 - 1980);
        assert_eq!((d >> 5) & 0xf, 2);
        assert_eq!(d & 0x1f, 29);
        assert_eq!(t >> 11, 13);
        assert_eq!((t >> 5) & 0x3f, 45);
        assert_eq!(t & 0x1f, 15);
    }
}

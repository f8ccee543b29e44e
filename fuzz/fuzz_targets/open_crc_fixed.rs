//! Like `open`, but before the reader sees the input the harness rewrites
//! the CRC-32 of every member it can locate, so that mutations reach the
//! metadata and safetensors header parsers instead of stopping at the
//! checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pytorch_saver::format::Checkpoint;

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Walks the classic central directory and patches each entry's CRC (and
/// its local header's) to match the bytes it points at. Gives up quietly
/// on anything it cannot follow: the reader will refuse those inputs.
fn fix_crcs(b: &mut [u8]) -> Option<()> {
    let eocd = b.len().checked_sub(22)?;
    let (count, mut p) = (u16_at(b, eocd + 10)?, u32_at(b, eocd + 16)?);
    for _ in 0..count.min(16) {
        let (size, nlen) = (u32_at(b, p + 24)?, u16_at(b, p + 28)?);
        let next = p + 46 + nlen + u16_at(b, p + 30)? + u16_at(b, p + 32)?;
        let local = u32_at(b, p + 42)?;
        let start = local + 30 + u16_at(b, local + 26)? + u16_at(b, local + 28)?;
        let crc = crc32fast::hash(b.get(start..start.checked_add(size)?)?).to_le_bytes();
        b.get_mut(p + 16..p + 20)?.copy_from_slice(&crc);
        b.get_mut(local + 14..local + 18)?.copy_from_slice(&crc);
        p = next;
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    let _ = fix_crcs(&mut bytes);
    let path = std::env::temp_dir().join(format!("pts-fuzz-crc-{}.zip", std::process::id()));
    std::fs::write(&path, &bytes).expect("write fuzz input");
    if let Ok(ckpt) = Checkpoint::open(&path) {
        for member in ckpt.members() {
            for t in &member.tensors {
                assert_eq!(ckpt.tensor_bytes(t).len() as u64, t.byte_len());
            }
        }
    }
});

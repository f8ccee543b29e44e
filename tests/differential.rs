//! Differential test of the two independent readers: the Rust reader and
//! the Python package's must agree, on every input, whether a file is a
//! valid checkpoint and, when it is not, on the error kind
//! (docs/FORMAT.md section 9 fixes the order of checks that makes the kind
//! unique). The inputs are golden files mutated the ways real damage and
//! hand-made files go wrong: flipped bits, bytes set to boundary values,
//! truncations, inserted and deleted ranges, length and offset fields set
//! to 0, 1, -1 and the file size, and edits inside the JSON texts; half of
//! the mutated files get their CRC-32 fields rewritten so that the change
//! reaches the metadata and safetensors parsers instead of stopping at the
//! checksum. Each reader reads every file in one process (Python: one
//! child for all of them, tests/python/read_kinds.py).
//!
//! `PTS_DIFFERENTIAL_CASES` overrides the number of files (default 10,000);
//! disagreeing files are copied to target/differential/ for reproduction.

mod common;

use std::path::{Path, PathBuf};

use common::Rng;
use pytorch_saver::format::Checkpoint;
use serde_json::json;

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Where each member's data lies, from the classic central directory:
/// `(central entry offset, local header offset, data start, size)`. None
/// for anything it cannot follow.
fn members(b: &[u8]) -> Option<Vec<(usize, usize, usize, usize)>> {
    let eocd = b.len().checked_sub(22)?;
    let (count, mut p) = (u16_at(b, eocd + 10)?, u32_at(b, eocd + 16)?);
    let mut out = Vec::new();
    for _ in 0..count.min(16) {
        let (size, name_len) = (u32_at(b, p + 24)?, u16_at(b, p + 28)?);
        let next = p + 46 + name_len + u16_at(b, p + 30)? + u16_at(b, p + 32)?;
        let local = u32_at(b, p + 42)?;
        let start = local + 30 + u16_at(b, local + 26)? + u16_at(b, local + 28)?;
        out.push((p, local, start, size));
        p = next;
    }
    Some(out)
}

/// Rewrites the CRC-32 of every member it can locate (central and local
/// header) to match the member's bytes.
fn fix_crcs(b: &mut [u8]) {
    for (central, local, start, size) in members(b).unwrap_or_default() {
        let Some(data) = start.checked_add(size).and_then(|end| b.get(start..end)) else {
            continue;
        };
        let crc = crc32fast::hash(data).to_le_bytes();
        if let Some(field) = b.get_mut(central + 16..central + 20) {
            field.copy_from_slice(&crc);
        }
        if let Some(field) = b.get_mut(local + 14..local + 18) {
            field.copy_from_slice(&crc);
        }
    }
}

/// A byte range inside a JSON text of the file: `metadata.json`, or the
/// header of a safetensors member (after its 8-byte length).
fn json_range(b: &[u8], rng: &mut Rng) -> Option<(usize, usize)> {
    let list = members(b)?;
    let (_, _, start, size) = *list.get(rng.index(list.len()))?;
    if b.get(start) == Some(&b'{') {
        return Some((start, start + size));
    }
    let header = u64::from_le_bytes(b.get(start..start + 8)?.try_into().ok()?) as usize;
    Some((start + 8, start + 8 + header.min(size.saturating_sub(8))))
}

/// Values that length, count and offset fields are worth trying.
fn boundary(len: usize, rng: &mut Rng) -> u64 {
    let choices = [
        0,
        1,
        63,
        64,
        65,
        len as u64,
        len as u64 + 1,
        u32::MAX as u64,
        u64::MAX,
        1 << 40,
    ];
    choices[rng.index(choices.len())]
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    let rounds = 1 + rng.index(3) / 2; // one edit, sometimes two
    for _ in 0..rounds {
        let len = b.len();
        let at = rng.index(len);
        match rng.index(8) {
            0 => b[at] ^= 1 << rng.index(8),
            1 => b[at] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b'{', b'0'][rng.index(8)],
            2 => b.truncate(at),
            3 => {
                let n = 1 + rng.index(64);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, bytes);
            }
            4 => {
                let end = (at + 1 + rng.index(64)).min(len);
                b.drain(at..end);
            }
            5 => {
                let width = [2, 4, 8][rng.index(3)];
                if at + width <= len {
                    let v = boundary(len, rng).to_le_bytes();
                    b[at..at + width].copy_from_slice(&v[..width]);
                }
            }
            _ => {
                if let Some((start, end)) = json_range(&b, rng).filter(|(s, e)| s < e && *e <= len) {
                    let at = start + rng.index(end - start);
                    let c = b[at];
                    b[at] = match c {
                        b'0'..=b'9' => b'0' + rng.index(10) as u8,
                        b'a'..=b'z' => b'a' + rng.index(26) as u8,
                        _ => [b'"', b',', b':', b'}', b']', b' ', b'-', b'e'][rng.index(8)],
                    };
                }
            }
        }
    }
    if rng.index(2) == 0 {
        fix_crcs(&mut b);
    }
    b
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    // Version 1's small files, and every version 2 file (typed values,
    // extra state and the weights kind: the RNG states make them larger).
    let mut out: Vec<(String, Vec<u8>)> = [("v1", 16 * 1024), ("v2", 64 * 1024)]
        .into_iter()
        .flat_map(|(version, max_len)| {
            let dir = root.join(version);
            std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "zip"))
                .map(|p| {
                    (
                        format!("{version}/{}", p.file_name().unwrap().to_string_lossy()),
                        std::fs::read(&p).unwrap(),
                    )
                })
                .filter(move |(_, bytes)| bytes.len() <= max_len)
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    assert!(out.len() >= 10, "the small golden files are the seeds");
    assert!(
        out.iter().filter(|(n, _)| n.starts_with("v2/")).count() >= 3,
        "the version 2 golden files are seeds too"
    );
    out
}

fn rust_kind(path: &Path) -> String {
    match std::panic::catch_unwind(|| Checkpoint::open(path)) {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(e)) => e.kind().to_owned(),
        Err(_) => "crash: the Rust reader panicked".to_owned(),
    }
}

#[test]
fn rust_and_python_readers_agree_on_mutated_files() {
    let count: usize = std::env::var("PTS_DIFFERENTIAL_CASES")
        .ok()
        .map(|v| v.parse().expect("PTS_DIFFERENTIAL_CASES is a number"))
        .unwrap_or(10_000);
    let seeds = seeds();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut names = Vec::with_capacity(count);
    let mut origins = Vec::with_capacity(count);
    for i in 0..count {
        let (seed_name, seed) = &seeds[rng.index(seeds.len())];
        let name = format!("{i:05}.zip");
        std::fs::write(tmp.path().join(&name), mutate(seed, &mut rng)).unwrap();
        names.push(name);
        origins.push(seed_name.clone());
    }

    let rust: Vec<String> = names.iter().map(|n| rust_kind(&tmp.path().join(n))).collect();
    let python: Vec<String> = serde_json::from_value(common::run_python(
        "read_kinds.py",
        &json!({"dir": tmp.path(), "files": names}),
    ))
    .expect("read_kinds.py prints a list of kinds");
    assert_eq!(python.len(), count);

    let keep = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/differential");
    let mut disagreements = Vec::new();
    for i in 0..count {
        if rust[i] != python[i] {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(tmp.path().join(&names[i]), keep.join(&names[i]));
            disagreements.push(format!(
                "{} (from {}): Rust {}, Python {}",
                names[i], origins[i], rust[i], python[i]
            ));
        }
    }
    let mut tally = std::collections::BTreeMap::<&str, usize>::new();
    for kind in &rust {
        *tally.entry(kind.as_str()).or_default() += 1;
    }
    eprintln!("{count} mutated files, kinds seen: {tally:?}");
    assert!(
        disagreements.is_empty(),
        "{} of {count} files read differently (copies in {}):\n{}",
        disagreements.len(),
        keep.display(),
        disagreements.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    // The mutations must reach past the checksum: a test that only ever saw
    // CRC mismatches would prove little about the parsers behind it.
    let reached = rust
        .iter()
        .filter(|k| !matches!(k.as_str(), "CrcMismatch" | "ok"))
        .count();
    assert!(
        reached * 2 > count,
        "only {reached} of {count} files reached a check other than the CRC"
    );
    assert!(
        tally.len() >= 10,
        "the mutations reach at least ten different checks: {tally:?}"
    );
}

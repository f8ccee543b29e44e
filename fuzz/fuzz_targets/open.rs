//! Feeds arbitrary bytes to the validating reader as a file: it must
//! return an error or a checkpoint whose every view is in bounds; never
//! panic, hang or allocate by an untrusted length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pytorch_saver::format::Checkpoint;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("pts-fuzz-{}.zip", std::process::id()));
    std::fs::write(&path, data).expect("write fuzz input");
    if let Ok(ckpt) = Checkpoint::open(&path) {
        for member in ckpt.members() {
            for t in &member.tensors {
                let view = ckpt.tensor_bytes(t);
                assert_eq!(view.len() as u64, t.byte_len());
                let mut copy = vec![0u8; view.len()];
                ckpt.read_tensor_into(t, &mut copy).expect("read a validated tensor");
                assert_eq!(&copy[..], view);
            }
        }
        let _ = ckpt.metadata().len();
    }
});

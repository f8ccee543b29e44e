//! Reading one small tensor of a 256 MiB checkpoint on S3 transfers that
//! tensor and the file's structure, not the file: the bytes moto's server
//! sends are counted by a TCP proxy in front of it (tests/common/s3.rs).
//! One test per binary: the process's AWS_ENDPOINT_URL is the proxy's.

mod common;

use common::s3::{client_env, start_moto, CountingProxy, BUCKET};
use pytorch_saver::format::{Dtype, LazyCheckpoint, MemberName};

#[test]
fn one_small_tensor_of_a_256_mib_checkpoint_costs_less_than_1_mib() {
    let moto = start_moto(&[BUCKET], false);
    let proxy = CountingProxy::start(&moto.endpoint);
    for (k, v) in client_env(&proxy.endpoint) {
        std::env::set_var(k, v);
    }
    let big = common::raw("big", Dtype::U8, vec![256 << 20], vec![7u8; 256 << 20]);
    let small_bytes: Vec<u8> = (0..64u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let small = common::raw("small", Dtype::F32, vec![8, 8], small_bytes.clone());
    let dir = format!("s3://{BUCKET}/lazy");
    let url = common::write_raw_inference(
        std::path::Path::new(&dir),
        "large",
        &[&big, &small],
        &Default::default(),
    )
    .unwrap();

    let before = proxy.bytes_from_server();
    let ckpt = LazyCheckpoint::open(&url).unwrap();
    let entry = ckpt.tensor(MemberName::Model, "small").unwrap().clone();
    let got = ckpt.read_tensor(&entry).unwrap();
    let sent = proxy.bytes_from_server() - before;
    assert_eq!(got, small_bytes);
    assert_eq!(ckpt.tensors(MemberName::Model).len(), 2);
    println!("one 256-byte tensor of a 256 MiB checkpoint: {sent} bytes from the server");
    assert!(sent < 1 << 20, "{sent} bytes transferred");
    // The count is real: the big tensor costs its size.
    let before = proxy.bytes_from_server();
    let big_entry = ckpt.tensor(MemberName::Model, "big").unwrap().clone();
    assert!(ckpt.read_tensor(&big_entry).unwrap().iter().all(|&b| b == 7));
    assert!(proxy.bytes_from_server() - before >= 256 << 20);
}

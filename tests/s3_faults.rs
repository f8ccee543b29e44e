//! Publishing to S3 when writers race or die (built with the
//! `fault-injection` feature: `PTS_DELAY_AT` holds a process at a point,
//! `PTS_KILL_AT` kills it there), against moto's S3 server on loopback.
//!
//! - Two processes save under the same name at the same moment, both
//!   held just before completing their uploads so that both have chosen
//!   the name and sent every part: exactly one object results, the other
//!   writer gets a `Storage` error saying another writer published first,
//!   and the object is a valid checkpoint.
//! - A save killed with SIGKILL after its first parts leaves no object.

mod common;

use std::path::Path;
use std::process::Output;

use common::s3::{list_keys, moto, prefix, BUCKET};
use pytorch_saver::format::{Checkpoint, Dtype, MemberName};

/// A tensor of `mib` MiB whose bytes say which writer wrote it.
fn tensor(writer: u8, mib: usize) -> common::RawTensor {
    common::raw("w", Dtype::U8, vec![mib << 20], vec![writer; mib << 20])
}

/// The child: writes `{stem}.zip` under the URL it was given; prints the
/// outcome as one JSON line.
#[test]
fn child_process_role() {
    let Some((role, dir)) = common::child_role() else {
        return;
    };
    let (writer, mib): (u8, usize) = match role.as_str() {
        "race-a" => (1, 40),
        "race-b" => (2, 40),
        "killed" => (3, 96),
        other => panic!("unknown role {other}"),
    };
    let t = tensor(writer, mib);
    let stem = if role == "killed" { "killed" } else { "race" };
    match common::write_raw_inference(&dir, stem, &[&t], &Default::default()) {
        Ok(p) => println!("{{\"ok\": {:?}}}", p.to_str().unwrap()),
        Err(e) => println!("{{\"err\": {:?}, \"kind\": {:?}}}", e.to_string(), e.kind()),
    }
}

fn outcome(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.find("{\"").map(|i| &l[i..]))
        .unwrap_or_else(|| {
            panic!(
                "child printed no outcome: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

#[test]
fn two_writers_racing_for_one_name_publish_exactly_one_object() {
    let dir = prefix("race");
    moto();
    let spawn = |role: &str, delay: &str| {
        common::spawn_child(role, Path::new(&dir))
            .env("PTS_DELAY_AT", delay)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Both pass the free-name check and upload every part before either
    // completes: they race at the create-only completion. The server
    // checks the condition and completes in one request, but the
    // outcome must not depend on how two such requests interleave in it:
    // the second completion comes a moment after the first.
    let a = spawn("race-a", "upload.complete:1500");
    let b = spawn("race-b", "upload.complete:2500");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let outcomes = [outcome(&a), outcome(&b)];
    let won: Vec<_> = outcomes.iter().filter(|o| o.get("ok").is_some()).collect();
    let lost: Vec<_> = outcomes.iter().filter(|o| o.get("err").is_some()).collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{outcomes:?}");
    let url = format!("{dir}/race.zip");
    assert_eq!(won[0]["ok"], url.as_str());
    assert_eq!(lost[0]["kind"], "Storage");
    let message = lost[0]["err"].as_str().unwrap();
    assert!(
        message.contains(&url) && message.contains("another writer"),
        "{message}"
    );

    assert_eq!(
        list_keys(&moto().endpoint, "race/"),
        ["race/race.zip"],
        "one object, nothing else"
    );
    let ckpt = Checkpoint::open(&url).unwrap();
    let bytes = ckpt.tensor_bytes(ckpt.tensor(MemberName::Model, "w").unwrap());
    let writer = bytes[0];
    assert!(writer == 1 || writer == 2);
    assert!(
        bytes.iter().all(|&b| b == writer),
        "the object is one writer's file, whole"
    );
}

#[test]
fn a_save_killed_midway_leaves_no_object() {
    let dir = prefix("killed");
    moto();
    // 96 MiB: six parts of 16 MiB; killed as the third is about to go.
    let out = common::spawn_child("killed", Path::new(&dir))
        .env("PTS_KILL_AT", "upload.part:3")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        list_keys(&moto().endpoint, "killed/").is_empty(),
        "no object under any name in s3://{BUCKET}/killed/"
    );
    // What a killed writer leaves is an unfinished upload, which is no
    // object: listing and loading never see it.
    let uploads = common::s3::list_uploads(&moto().endpoint, "killed/");
    assert_eq!(uploads, ["killed/killed.zip"], "the upload was under way when it died");
    let err = Checkpoint::open(format!("{dir}/killed.zip")).unwrap_err();
    assert_eq!(err.kind(), "Storage", "{err}");
}

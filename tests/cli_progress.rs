//! `pytorch-saver verify` draws a progress bar per file when standard
//! error is a terminal (here a pseudo-terminal), and nothing when it is
//! not: a script that captures the output sees the result lines alone.

mod common;

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pytorch_saver::format::{BytesTensor, Dtype, WriteOptions};

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pytorch-saver"))
}

/// A valid 64 MiB inference file: long enough to verify that the bar
/// is drawn while it is checked.
fn big_file(dir: &Path) -> PathBuf {
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let tensor = BytesTensor {
        name: "weight".into(),
        dtype: Dtype::U8,
        shape: vec![data.len()],
        data: Cow::Owned(data),
    };
    common::write_raw_inference(dir, "big", &[&tensor], &WriteOptions::default()).unwrap()
}

/// A pseudo-terminal of 24 rows and 100 columns: (master, slave).
fn pty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid out-pointers; no name buffer, default attributes.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: two new descriptors that nothing else owns.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn verify_draws_a_bar_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let path = big_file(dir.path());
    let (mut master, slave) = pty();
    let child = cli()
        .arg("verify")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // The slave's last descriptor is the child's, held by the Command
    // until it is dropped: reading the master ends (EIO) when it exits.
    let reader = std::thread::spawn(move || {
        let mut screen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => screen.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&screen).into_owned()
    });
    let out = child.wait_with_output().unwrap();
    let screen = reader.join().unwrap();
    assert!(out.status.success(), "{out:?} {screen}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("OK {}\n", path.display())
    );
    assert!(
        screen.contains(&path.display().to_string()),
        "the label is drawn: {screen:?}"
    );
    assert!(screen.contains("/64.00 MiB"), "the total is drawn: {screen:?}");
}

#[test]
fn verify_draws_nothing_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let path = big_file(dir.path());
    let out = cli().arg("verify").arg(&path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("OK {}\n", path.display())
    );
    assert!(out.stderr.is_empty(), "{:?}", String::from_utf8_lossy(&out.stderr));
}

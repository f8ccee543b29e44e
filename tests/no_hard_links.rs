//! Saving on filesystems without hard links (vfat, exfat, FUSE mounts such
//! as gcsfuse), where `link(2)` fails with `EPERM`: the writer publishes
//! with `renameat2(RENAME_NOREPLACE)` instead, never replacing a file, and
//! where that is refused too it fails with an error naming the filesystem
//! and suggesting an object-store URL, leaving nothing behind. The
//! conversions' files (`pytorch-saver convert`) publish the same way.
//!
//! A real vfat filesystem is used where this machine can mount one (root,
//! loop devices, the vfat driver and `mkfs.vfat`); otherwise the test says
//! so on stderr and checks the injected path. The other cases inject the
//! errors with the `fault-injection` feature (`PTS_LINK_ERRNO`,
//! `PTS_RENAMEAT2_ERRNO`, src/fault.rs) in a child process per case, so the
//! variables never touch the parallel tests of this binary.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use pytorch_saver::format::{Checkpoint, Dtype, MemberName, TensorSource, WriteOptions};

const STEM: &str = "nh_inference_1700000000";

fn tensors() -> Vec<RawTensor> {
    let pattern = |n: usize, seed: u8| (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    vec![
        raw("weight", Dtype::F32, vec![64, 1024], pattern(64 * 1024 * 4, 7)),
        raw("bias", Dtype::BF16, vec![64], pattern(64 * 2, 11)),
        raw("steps", Dtype::I64, vec![], pattern(8, 13)),
    ]
}

/// One save through the real writer: the published file's name, or the
/// error's kind and message.
fn save(dir: &Path) -> Result<String, (String, String)> {
    let tensors = tensors();
    let sources: Vec<&dyn TensorSource> = tensors.iter().map(|t| t as &dyn TensorSource).collect();
    write_raw_inference(dir, STEM, &sources, &WriteOptions::default())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .map_err(|e| (e.kind().to_owned(), e.to_string()))
}

/// The child: `role` is how many saves to make; each prints one line.
#[test]
fn child_process_role() {
    let Some((role, dir)) = common::child_role() else {
        return;
    };
    for _ in 0..role.parse::<usize>().unwrap() {
        match save(&dir) {
            Ok(name) => println!("\nOUTCOME published {name}"),
            Err((kind, message)) => println!("\nOUTCOME failed {kind} {message}"),
        }
    }
}

/// `saves` saves into `dir` in a child whose `link(2)` and `renameat2(2)`
/// fail with the given errnos; one outcome per save.
fn saves_in_child(dir: &Path, saves: usize, link: Option<&str>, rename: Option<&str>) -> Vec<Result<String, String>> {
    let mut cmd = common::spawn_child(&saves.to_string(), dir);
    cmd.env_remove("PTS_LINK_ERRNO").env_remove("PTS_RENAMEAT2_ERRNO");
    if let Some(errno) = link {
        cmd.env("PTS_LINK_ERRNO", errno);
    }
    if let Some(errno) = rename {
        cmd.env("PTS_RENAMEAT2_ERRNO", errno);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcomes: Vec<_> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("OUTCOME "))
        .map(|l| match l.strip_prefix("published ") {
            Some(name) => Ok(name.to_owned()),
            None => Err(l.strip_prefix("failed ").unwrap_or(l).to_owned()),
        })
        .collect();
    assert_eq!(outcomes.len(), saves, "{stdout}");
    outcomes
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The file loads and holds exactly the tensors that were saved.
fn assert_bit_exact(path: &Path) {
    let ckpt = Checkpoint::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let expected = tensors();
    assert_eq!(ckpt.tensors(MemberName::Model).len(), expected.len());
    for t in &expected {
        let e = ckpt.tensor(MemberName::Model, &t.name).unwrap();
        assert_eq!((e.dtype, &e.shape), (t.dtype, &t.shape), "{}", t.name);
        assert_eq!(ckpt.tensor_bytes(e), &t.data[..], "{}", t.name);
    }
}

/// Writes to stderr past the test harness's capture, so that a run shows
/// which path was checked even when the test passes.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "no_hard_links: {message}");
}

/// (b) With `link(2)` refused as vfat and FUSE refuse it, the save
/// publishes through `renameat2(RENAME_NOREPLACE)`: a taken name is
/// skipped (its bytes untouched), the next saves get `-1`, `-2`, the files
/// load bit-exact and no temporary file is left.
fn check_rename_publish(link_errno: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let theirs = b"someone else's file, not a checkpoint".to_vec();
    std::fs::write(dir.join(format!("{STEM}.zip")), &theirs).unwrap();
    let outcomes = saves_in_child(dir, 2, Some(link_errno), None);
    let expected = [format!("{STEM}-1.zip"), format!("{STEM}-2.zip")];
    assert_eq!(
        outcomes,
        expected.iter().map(|n| Ok(n.clone())).collect::<Vec<_>>(),
        "{link_errno}"
    );
    assert_eq!(
        std::fs::read(dir.join(format!("{STEM}.zip"))).unwrap(),
        theirs,
        "{link_errno}"
    );
    for name in &expected {
        assert_bit_exact(&dir.join(name));
    }
    let mut all = vec![format!("{STEM}.zip")];
    all.extend(expected);
    all.sort();
    assert_eq!(names_in(dir), all, "{link_errno}: nothing else, no temporary file");
}

#[test]
fn link_refused_publishes_by_rename_without_replacing() {
    for errno in ["EPERM", "EOPNOTSUPP", "ENOSYS"] {
        check_rename_publish(errno);
    }
}

/// `EMLINK` is a limit of one file, not a filesystem without hard links:
/// it is reported, not worked around.
#[test]
fn emlink_is_reported_not_worked_around() {
    let tmp = tempfile::tempdir().unwrap();
    let outcomes = saves_in_child(tmp.path(), 1, Some("EMLINK"), None);
    let message = outcomes[0].as_ref().unwrap_err();
    assert!(message.starts_with("Io cannot publish"), "{message}");
    assert!(message.contains(&format!("{STEM}.zip")), "{message}");
    assert!(!message.contains("s3://"), "{message}");
    assert_eq!(names_in(tmp.path()), Vec::<String>::new());
}

/// The name `statfs(2)` gives the filesystem of `dir`, for the filesystems
/// a test directory is commonly on; `None` for others.
fn expected_filesystem_name(dir: &Path) -> Option<&'static str> {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: a plain C struct; statfs fills it from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as u32 {
        0xef53 => Some("ext2/ext3/ext4"),
        0x0102_1994 => Some("tmpfs"),
        0x794c_7630 => Some("overlay"),
        0x5846_5342 => Some("xfs"),
        0x9123_683e => Some("btrfs"),
        0x4d44 => Some("vfat"),
        _ => None,
    }
}

/// (c) Neither hard links nor `RENAME_NOREPLACE`: the save fails with an
/// `Io` error that names the filesystem and suggests an object-store URL,
/// and the directory is left empty.
#[test]
fn no_link_and_no_rename_noreplace_fails_naming_the_filesystem() {
    for rename_errno in ["EINVAL", "ENOSYS", "EOPNOTSUPP"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let outcomes = saves_in_child(dir, 1, Some("EPERM"), Some(rename_errno));
        let message = outcomes[0].as_ref().unwrap_err();
        assert!(message.starts_with("Io cannot publish"), "{message}");
        assert!(
            message.contains(&format!("filesystem of {}", dir.display())),
            "{message}"
        );
        assert!(!message.contains("the unknown filesystem"), "{message}");
        if let Some(fs) = expected_filesystem_name(dir) {
            assert!(message.contains(&format!("the {fs}")), "{fs}: {message}");
        }
        assert!(message.contains("s3://"), "{message}");
        assert!(message.contains("link: Operation not permitted"), "{message}");
        assert_eq!(names_in(dir), Vec::<String>::new(), "{rename_errno}: {message}");
    }
}

/// Another error of `renameat2(2)` is reported as it is, without the
/// filesystem advice, and leaves nothing behind either.
#[test]
fn other_rename_errors_are_reported_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let outcomes = saves_in_child(tmp.path(), 1, Some("EPERM"), Some("EIO"));
    let message = outcomes[0].as_ref().unwrap_err();
    assert!(message.starts_with("Io cannot publish"), "{message}");
    assert!(!message.contains("s3://"), "{message}");
    assert_eq!(names_in(tmp.path()), Vec::<String>::new());
}

/// A loop-mounted vfat image; unmounted when dropped.
struct VfatMount {
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl VfatMount {
    /// Mounts a fresh 64 MiB vfat image, or says why it cannot.
    fn new() -> Result<VfatMount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("vfat.img");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        let mkfs = ["mkfs.vfat", "/sbin/mkfs.vfat", "/usr/sbin/mkfs.vfat"]
            .into_iter()
            .find(|m| Command::new(m).arg("--help").output().is_ok())
            .ok_or("mkfs.vfat is not installed (dosfstools)")?;
        run(Command::new(mkfs).arg(&image))?;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        run(Command::new("mount")
            .arg("-o")
            .arg(format!("loop,uid={uid}"))
            .arg(&image)
            .arg(&mountpoint))?;
        Ok(VfatMount { mountpoint, _dir: dir })
    }
}

impl Drop for VfatMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
    }
}

/// (a) A real vfat filesystem where the machine can mount one: the save
/// publishes (by rename: vfat has no hard links) and a second save gets
/// `-1`, or it fails naming vfat; no temporary file either way. Where no
/// vfat can be mounted, the injected path runs instead, and stderr says so.
#[test]
fn a_real_vfat_filesystem() {
    let mount = match VfatMount::new() {
        Ok(m) => m,
        Err(why) => {
            note(&format!(
                "vfat NOT tested: cannot mount a vfat image here ({why}); checking the injected EPERM path instead"
            ));
            check_rename_publish("EPERM");
            return;
        }
    };
    let dir = &mount.mountpoint;
    assert_eq!(expected_filesystem_name(dir), Some("vfat"));
    let first = save(dir);
    match first {
        Ok(name) => {
            assert_eq!(name, format!("{STEM}.zip"));
            assert_eq!(save(dir), Ok(format!("{STEM}-1.zip")));
            assert_bit_exact(&dir.join(format!("{STEM}.zip")));
            assert_bit_exact(&dir.join(format!("{STEM}-1.zip")));
            assert_eq!(names_in(dir), [format!("{STEM}-1.zip"), format!("{STEM}.zip")]);
            note("vfat tested: published by renameat2(RENAME_NOREPLACE) on a real vfat mount");
        }
        Err((kind, message)) => {
            assert_eq!(kind, "Io", "{message}");
            assert!(message.contains("vfat"), "{message}");
            assert!(message.contains("s3://"), "{message}");
            assert_eq!(names_in(dir), Vec::<String>::new(), "{message}");
            note(&format!("vfat tested: this kernel refuses both publishes: {message}"));
        }
    }
}

/// `pytorch-saver convert` into `dir` (a fault-injection build, as this
/// test's), with `link(2)` and `renameat2(2)` failing as given.
fn convert_in(dir: &Path, input: &Path, link: &str, rename: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pytorch-saver"));
    cmd.arg("convert")
        .arg(input)
        .arg(dir.join("out.safetensors"))
        .args(["--to", "safetensors"])
        .env("PTS_LINK_ERRNO", link)
        .env_remove("PTS_RENAMEAT2_ERRNO");
    if let Some(errno) = rename {
        cmd.env("PTS_RENAMEAT2_ERRNO", errno);
    }
    cmd.output().unwrap()
}

/// Conversions publish their files through the same step: by rename where
/// links are refused, never over a taken name, and with the filesystem
/// named where neither works.
#[test]
fn conversions_publish_the_same_way() {
    let src = tempfile::tempdir().unwrap();
    let input = src.path().join(save(src.path()).unwrap());

    let tmp = tempfile::tempdir().unwrap();
    let out = convert_in(tmp.path(), &input, "EPERM", None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(names_in(tmp.path()), ["out.safetensors"]);
    let bytes = std::fs::read(tmp.path().join("out.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for t in tensors() {
        assert_eq!(st.tensor(&t.name).unwrap().data(), &t.data[..], "{}", t.name);
    }

    let out = convert_in(tmp.path(), &input, "EPERM", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(tmp.path().join("out.safetensors")).unwrap(), bytes);
    assert_eq!(names_in(tmp.path()), ["out.safetensors"]);

    let empty = tempfile::tempdir().unwrap();
    let out = convert_in(empty.path(), &input, "EPERM", Some("EINVAL"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("filesystem of {}", empty.path().display())),
        "{stderr}"
    );
    assert!(stderr.contains("s3://"), "{stderr}");
    assert_eq!(names_in(empty.path()), Vec::<String>::new());
}

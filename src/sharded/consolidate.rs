//! Consolidation (FORMAT.md 13.5, last paragraph): a sharded checkpoint
//! written as the ordinary file that holds every tensor whole. A
//! container checkpoint becomes the checkpoint (or inference) file its
//! `container.metadata` describes; any other becomes a weights file whose
//! user metadata is the index's `values`. Tensors are assembled and
//! written one at a time, through the format's streaming writer (temporary
//! file, fsync, publish without replacing anything).

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::ShardedCheckpoint;
use crate::format::{
    write_checkpoint, Dtype, FormatError, MemberName, Metadata, TensorMember, TensorSource, WriteOptions,
};
use crate::storage::{is_url, Location};

/// One tensor of the output, assembled from its chunks when the writer
/// reaches it (and dropped once written). A failure is kept, so that the
/// caller reports it with its own kind rather than as the writer's I/O
/// error.
struct Assembled<'a> {
    sharded: &'a ShardedCheckpoint,
    /// Its name in the index.
    global: &'a str,
    /// Its name in its member.
    name: &'a str,
    dtype: Dtype,
    shape: Vec<usize>,
    failure: &'a RefCell<Option<FormatError>>,
}

impl TensorSource for Assembled<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }
    fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>> {
        match self.sharded.read_tensor(self.global) {
            Ok(bytes) => Ok(Cow::Owned(bytes)),
            Err(e) => {
                let text = e.to_string();
                *self.failure.borrow_mut() = Some(e);
                Err(std::io::Error::other(text))
            }
        }
    }
}

/// An output path split into its directory (or prefix URL) and its stem
/// (the name without `.zip`), after checking that nothing has the name.
fn split_output(out_path: &str) -> Result<(String, String, String), FormatError> {
    let invalid = |reason: &str| FormatError::InvalidInput(format!("{out_path}: {reason}"));
    let (dir, name) = if is_url(Path::new(out_path)) {
        let (dir, name) = out_path
            .rsplit_once('/')
            .filter(|(d, _)| !d.ends_with('/'))
            .ok_or_else(|| invalid("the output URL names no object"))?;
        (dir.to_owned(), name.to_owned())
    } else {
        let p = Path::new(out_path);
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| invalid("the output needs a file name"))?;
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
            _ => ".".into(),
        };
        (dir, name.to_owned())
    };
    let stem = name
        .strip_suffix(".zip")
        .filter(|s| !s.is_empty() && !s.starts_with('.'))
        .ok_or_else(|| invalid("a pytorch-saver file's name ends in .zip (and does not start with \".\")"))?;
    let exists = match Location::parse(Path::new(out_path))? {
        Location::Local(p) => std::fs::symlink_metadata(p).is_ok(),
        Location::Remote(r) => r.exists()?,
    };
    if exists {
        return Err(taken(out_path));
    }
    Ok((dir, stem.to_owned(), name))
}

fn taken(out_path: &str) -> FormatError {
    FormatError::io(
        "cannot create",
        out_path,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the file exists: consolidate never replaces a file",
        ),
    )
}

/// Removes a file this process wrote under a name nobody asked for.
fn remove_written(written: &Path) {
    match Location::parse(written) {
        Ok(Location::Local(p)) => {
            let _ = std::fs::remove_file(p);
        }
        Ok(Location::Remote(r)) => {
            let _ = r.delete();
        }
        Err(_) => {}
    }
}

/// A member of the consolidated file and its tensors, each as (name in
/// the index, name in the member).
type PlannedMember<'a> = (MemberName, Vec<(&'a str, &'a str)>);

/// The consolidated file's metadata and its members.
fn plan(sharded: &ShardedCheckpoint) -> (Metadata, Vec<PlannedMember<'_>>) {
    let index = sharded.index();
    let names = sharded.tensor_names();
    match &index.container {
        Some(container) => {
            let metadata = container.metadata.clone();
            let with_prefix = |prefix: &str| -> Vec<(&str, &str)> {
                names
                    .iter()
                    .filter_map(|&n| n.strip_prefix(prefix).map(|short| (n, short)))
                    .collect()
            };
            let mut members = vec![(MemberName::Model, with_prefix("model."))];
            if metadata.optimizer.is_some() {
                members.push((MemberName::Optimizer, with_prefix("optimizer.")));
            }
            (metadata, members)
        }
        None => {
            let metadata = Metadata::weights(index.timestamp, index.values.clone());
            let all = names.iter().map(|&n| (n, n)).collect();
            (metadata, vec![(MemberName::Model, all)])
        }
    }
}

/// Writes the sharded checkpoint at `location` (as
/// [`ShardedCheckpoint::open`] takes it) as one ordinary file at
/// `out_path` (a path, or an object-store URL), and returns the path.
/// Every shard is verified whole first (every CRC-32), so that a corrupt
/// shard is never written out under a new, valid CRC; then each tensor is
/// assembled and written in turn. `out_path` must end in `.zip` and must
/// not exist: an existing file is never replaced (an `Io` error of kind
/// `AlreadyExists`), and a failed write leaves nothing under the name.
pub fn consolidate(location: &str, out_path: &str) -> Result<String, FormatError> {
    let (dir, stem, name) = split_output(out_path)?;
    let sharded = ShardedCheckpoint::open(location)?;
    sharded.verify()?;
    let (metadata, members) = plan(&sharded);
    let failure = RefCell::new(None);
    let sources: Vec<(MemberName, Vec<Assembled<'_>>)> = members
        .iter()
        .map(|(member, tensors)| {
            let assembled = tensors
                .iter()
                .map(|&(global, short)| {
                    let t = &sharded.index().tensors[global];
                    Assembled {
                        sharded: &sharded,
                        global,
                        name: short,
                        dtype: t.dtype,
                        shape: t.shape.iter().map(|&d| d as usize).collect(),
                        failure: &failure,
                    }
                })
                .collect();
            (*member, assembled)
        })
        .collect();
    let tensor_members: Vec<TensorMember<'_>> = sources
        .iter()
        .map(|(member, tensors)| TensorMember {
            name: *member,
            tensors: tensors.iter().map(|t| t as &dyn TensorSource).collect(),
        })
        .collect();
    let written = match write_checkpoint(
        Path::new(&dir),
        &stem,
        &metadata,
        &tensor_members,
        &WriteOptions::default(),
    ) {
        Ok(w) => w,
        Err(e) => return Err(failure.into_inner().unwrap_or(e)),
    };
    let expected = if is_url(Path::new(out_path)) {
        PathBuf::from(format!("{dir}/{name}"))
    } else {
        Path::new(&dir).join(&name)
    };
    if written != expected {
        // Another writer took the name between the check and the publish:
        // the file is ours, under a name nobody asked for.
        remove_written(&written);
        return Err(taken(out_path));
    }
    Ok(out_path.to_owned())
}

//! `pytorch-saver inspect FILE [--json]`: what a checkpoint, or a sharded
//! checkpoint, holds.

use std::path::PathBuf;
use std::process::ExitCode;

use std::path::Path;

use pytorch_saver::format::{dtype_name, typed, Checkpoint, ExtraEntry, LazyCheckpoint, Member, Metadata};
use pytorch_saver::sharded::{is_sharded_location, ShardedCheckpoint};
use serde_json::{json, Map, Value};

/// Show what a checkpoint holds: metadata, members and tensors.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint file, or its URL (s3://, gs://, az://): an object is
    /// read lazily, its structure, metadata and tensor headers only (its
    /// CRCs are checked by `verify`). A directory, an index.json or a
    /// prefix URL is a sharded checkpoint: its index and every shard's
    /// structure are checked, and its tensors listed with their global
    /// shapes.
    file: PathBuf,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> ExitCode {
    let file = &args.file;
    if let Some(location) = file.to_str().filter(|l| is_sharded_location(l)) {
        return match ShardedCheckpoint::open(location) {
            Ok(s) if args.json => {
                let text = serde_json::to_string_pretty(&sharded_json(&s)).expect("JSON values serialize");
                println!("{text}");
                ExitCode::SUCCESS
            }
            Ok(s) => {
                print_sharded(&s);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pytorch-saver: {location}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opened = if pytorch_saver::storage::is_url(file) {
        LazyCheckpoint::open(file).map(Opened::Lazy)
    } else {
        Checkpoint::open(file).map(Opened::Full)
    };
    let ckpt = match opened {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pytorch-saver: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    if !args.json {
        print_table(&ckpt);
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&as_json(&ckpt)).expect("JSON values serialize")
        );
    }
    ExitCode::SUCCESS
}

fn member_json(m: &Member) -> Value {
    let tensors: Vec<Value> = m
        .tensors
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "dtype": dtype_name(t.dtype),
                "shape": t.shape,
                "offset": t.start,
                "bytes": t.byte_len(),
            })
        })
        .collect();
    json!({
        "name": m.name.as_str(),
        "offset": m.data_start,
        "size": m.size,
        "crc32": format!("{:08x}", m.crc),
        "tensors": tensors,
    })
}

/// How many tensors of `extra.safetensors` an extra entry's state names.
fn extra_tensor_count(entry: &ExtraEntry) -> usize {
    let mut refs = Vec::new();
    typed::tensor_refs(&entry.state, &entry.name, &mut refs);
    refs.len()
}

/// A file opened and fully checked, or an object read lazily.
enum Opened {
    Full(Checkpoint),
    Lazy(LazyCheckpoint),
}

impl Opened {
    fn path(&self) -> &Path {
        match self {
            Opened::Full(c) => c.path(),
            Opened::Lazy(c) => c.path(),
        }
    }

    fn metadata(&self) -> &Metadata {
        match self {
            Opened::Full(c) => c.metadata(),
            Opened::Lazy(c) => c.metadata(),
        }
    }

    fn members(&self) -> &[Member] {
        match self {
            Opened::Full(c) => c.members(),
            Opened::Lazy(c) => c.members(),
        }
    }
}

fn as_json(ckpt: &Opened) -> Value {
    let meta = ckpt.metadata();
    json!({
        "path": ckpt.path(),
        "format_version": meta.format_version,
        "kind": meta.kind.as_str(),
        "model_class": meta.model.as_ref().map(|m| &m.class),
        "optimizer_class": meta.optimizer.as_ref().map(|o| &o.class),
        "scheduler_class": meta.scheduler.as_ref().map(|s| &s.class),
        "extra": meta.extra.as_ref().map(|entries| {
            entries
                .iter()
                .map(|e| json!({"name": e.name, "class": e.class, "tensors": extra_tensor_count(e)}))
                .collect::<Vec<_>>()
        }),
        "manager": meta.manager.as_ref().map(|r| json!({"id": r.id, "step": r.step, "metrics": r.metrics})),
        "metadata": meta.to_json(),
        "members": ckpt.members().iter().map(member_json).collect::<Vec<_>>(),
    })
}

fn print_table(ckpt: &Opened) {
    let meta = ckpt.metadata();
    let p = &meta.producer;
    println!("file       {}", ckpt.path().display());
    println!(
        "format     v{} {}, written by {} {} ({}{})",
        meta.format_version,
        meta.kind.as_str(),
        p.library,
        p.version,
        p.language,
        p.torch_version
            .as_deref()
            .map(|t| format!(", torch {t}"))
            .unwrap_or_default()
    );
    println!("timestamp  {}", meta.timestamp);
    let kwargs = |kwargs: &Map<String, Value>| Value::Object(kwargs.clone());
    match &meta.model {
        Some(m) => println!("model      {} {}", m.class, kwargs(&m.kwargs)),
        None => println!("model      none (a weights file: tensors only)"),
    }
    if let Some(o) = &meta.optimizer {
        println!("optimizer  {} {}", o.class, kwargs(&o.kwargs));
    }
    if let Some(s) = &meta.scheduler {
        println!("scheduler  {} {}", s.class, kwargs(&s.kwargs));
    }
    for e in meta.extra.iter().flatten() {
        let n = extra_tensor_count(e);
        let plural = if n == 1 { "" } else { "s" };
        println!("extra      {} {} ({n} tensor{plural})", e.name, e.class);
    }
    if let Some(r) = &meta.manager {
        println!(
            "manager    {} step {} metrics {}",
            r.id,
            r.step,
            Value::Object(r.metrics.clone())
        );
    }
    let user: Vec<String> = meta.user.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !user.is_empty() {
        println!("metadata   {}", user.join(" "));
    }
    println!();
    println!("{:<24} {:>12} {:>14} {:>10}", "member", "offset", "bytes", "crc32");
    for m in ckpt.members() {
        println!(
            "{:<24} {:>12} {:>14} {:>10}",
            m.name.as_str(),
            m.data_start,
            m.size,
            format!("{:08x}", m.crc)
        );
    }
    for m in ckpt.members().iter().filter(|m| !m.tensors.is_empty()) {
        println!();
        println!("{} ({} tensors)", m.name, m.tensors.len());
        let width = m.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
        println!("  {:<width$}  {:<5} {:<20} {:>12}", "name", "dtype", "shape", "bytes");
        for t in &m.tensors {
            println!(
                "  {:<width$}  {:<5} {:<20} {:>12}",
                t.name,
                dtype_name(t.dtype),
                format!("{:?}", t.shape),
                t.byte_len()
            );
        }
    }
}

fn sharded_json(s: &ShardedCheckpoint) -> Value {
    let index = s.index();
    let tensors: Vec<Value> = index
        .tensors
        .iter()
        .map(|(name, t)| {
            json!({
                "name": name,
                "dtype": dtype_name(t.dtype),
                "shape": t.shape,
                "bytes": t.byte_len(),
                "chunks": t.chunks.len(),
            })
        })
        .collect();
    let shards: Vec<Value> = index
        .shards
        .iter()
        .map(|e| json!({"file": e.file, "rank": e.rank, "size": e.size}))
        .collect();
    json!({
        "location": s.location(),
        "sharded": true,
        "format_version": index.format_version,
        "checkpoint_id": index.checkpoint_id,
        "timestamp": index.timestamp,
        "world_size": index.world_size,
        "kind": index.container.as_ref().map_or("weights", |c| c.metadata.kind.as_str()),
        "container": index.container.as_ref().map(|c| c.metadata.to_json()),
        "values": index.values,
        "shards": shards,
        "tensors": tensors,
    })
}

fn print_sharded(s: &ShardedCheckpoint) {
    let index = s.index();
    let p = &index.producer;
    println!("location   {}", s.location());
    println!(
        "format     sharded v{}, {} ranks, {} shard files, written by {} {} ({})",
        index.format_version,
        index.world_size,
        index.shards.len(),
        p.library,
        p.version,
        p.language
    );
    println!("checkpoint {}", index.checkpoint_id);
    println!("timestamp  {}", index.timestamp);
    match &index.container {
        Some(c) => {
            let meta = &c.metadata;
            let kwargs = |kwargs: &Map<String, Value>| Value::Object(kwargs.clone());
            println!("container  {}", meta.kind.as_str());
            if let Some(m) = &meta.model {
                println!("model      {} {}", m.class, kwargs(&m.kwargs));
            }
            if let Some(o) = &meta.optimizer {
                println!("optimizer  {} {}", o.class, kwargs(&o.kwargs));
            }
            if let Some(sch) = &meta.scheduler {
                println!("scheduler  {} {}", sch.class, kwargs(&sch.kwargs));
            }
        }
        None => println!("container  none (consolidates to a weights file)"),
    }
    let values: Vec<String> = index.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !values.is_empty() {
        println!("values     {}", values.join(" "));
    }
    println!();
    println!("{:<6} {:>14}  file", "rank", "bytes");
    for e in &index.shards {
        println!("{:<6} {:>14}  {}", e.rank, e.size, e.file);
    }
    println!();
    println!("tensors ({}, global shapes)", index.tensors.len());
    let width = index.tensors.keys().map(String::len).max().unwrap_or(4).max(4);
    println!(
        "  {:<width$}  {:<5} {:<20} {:>12} {:>7}",
        "name", "dtype", "shape", "bytes", "chunks"
    );
    for (name, t) in &index.tensors {
        println!(
            "  {:<width$}  {:<5} {:<20} {:>12} {:>7}",
            name,
            dtype_name(t.dtype),
            format!("{:?}", t.shape),
            t.byte_len(),
            t.chunks.len()
        );
    }
}

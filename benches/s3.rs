//! Save and load of a 1 GiB model at an s3:// URL (moto's S3 server on
//! loopback, tests/s3/moto_server.py), side by side in one run with the
//! same model on local disk and with plain transfers of the same bytes by
//! the same client library (object_store): a multipart upload with our
//! part size and concurrency (16 MiB parts, 4 in flight) and a parallel
//! ranged download with our range size and concurrency (8 MiB ranges, 8 in
//! flight) into one buffer. The plain transfers are the anchors: our save
//! and load should take at most 1.2x theirs. Prints medians and ratios.
//!
//!     cargo bench --bench s3 [-- --runs N] [-- --dim D] [-- --dir DIR] [-- --profile]
//!
//! `--dim` is the MLP's width (default 8192: four 8192x8192 f32 weights,
//! a little over 1 GiB). The contenders of each repetition run
//! back to back, in an order that alternates between repetitions, so that
//! a machine whose load drifts during the run does not favour one of them.
//! Every load is followed by a sum over every byte it produced (for ours
//! the model's parameters, for the plain download the buffer, both as
//! f32 through the same libtorch sum), so that nothing loaded lazily
//! escapes the clock. Objects are deleted after use: moto keeps them in
//! its own memory. `--profile` measures, instead, where the time of a save
//! goes (see [`profile`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectStoreExt, WriteMultipart};
use pytorch_saver::{models, ContainerSpec, ModelContainer, UserMetadata};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

#[allow(dead_code)]
#[path = "../tests/common/s3.rs"]
mod s3;

/// The bucket the benchmark writes in.
const BUCKET: &str = "pts-bench";
/// The plain upload's part size and parts in flight: src/storage/upload.rs's.
const PART: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;
/// The plain download's range size and ranges in flight: src/storage/object.rs's.
const RANGE: usize = 8 << 20;
const RANGES_IN_FLIGHT: usize = 8;
/// The worker threads of the plain transfers' runtime: src/storage/runtime.rs's.
const WORKERS: usize = 4;

/// The venv's python, which runs tests/s3/moto_server.py (for `s3`).
fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run `make venv`", p.display());
    p
}

/// MLP(dim, dim, dim, n_layers=3): four dim x dim f32 weights plus biases.
fn kwargs(dim: i64) -> Map<String, Value> {
    json!({"in_dim": dim, "hidden_dim": dim, "n_classes": dim, "n_layers": 3})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The bytes of a contiguous CPU tensor, borrowed.
fn tensor_slice(t: &Tensor) -> &[u8] {
    let len = t.numel() * t.kind().elt_size_in_bytes();
    // SAFETY: contiguous CPU tensors owned by the model, borrowed while it lives.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) }
}

/// Sums every parameter of the loaded model (reads every byte of it).
fn touch_model(c: &ModelContainer) -> f64 {
    c.model()
        .unwrap()
        .state_dict()
        .values()
        .map(|t| t.sum(Kind::Double).double_value(&[]))
        .sum()
}

/// Sums `buf` as f32 values through the same libtorch sum as
/// [`touch_model`] (the last bytes short of a whole f32 left out).
fn touch_buffer(buf: &[u8]) -> f64 {
    let n = (buf.len() / 4) as i64;
    // SAFETY: `buf` outlives the tensor, which is dropped in this call; the
    // tensor is only read.
    let t = unsafe { Tensor::from_blob(buf.as_ptr(), &[n], &[1], Kind::Float, tch::Device::Cpu) };
    t.sum(Kind::Double).double_value(&[])
}

/// The RSS of moto's server (the benchmark's child running
/// moto_server.py), in MiB, read from /proc.
fn moto_rss_mib() -> Option<f64> {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_owned)
        };
        if field("PPid:").as_deref() != Some(me.as_str()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("moto_server.py") {
            return field("VmRSS:")?.parse::<f64>().ok().map(|kib| kib / 1024.0);
        }
    }
    None
}

/// The plain transfers: object_store's S3 client, configured from the same
/// environment as ours, on a runtime with as many workers as ours.
struct Plain {
    store: Arc<AmazonS3>,
    runtime: tokio::runtime::Runtime,
}

impl Plain {
    fn new() -> Plain {
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(BUCKET)
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s")
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .enable_all()
            .build()
            .unwrap();
        Plain {
            store: Arc::new(store),
            runtime,
        }
    }

    /// A multipart upload of `chunks` followed by `tail` zero bytes:
    /// WriteMultipart with 16 MiB parts, at most 4 in flight.
    fn upload(&self, key: &ObjectPath, chunks: &[&[u8]], tail: usize) {
        self.runtime.block_on(async {
            let upload = self.store.put_multipart(key).await.unwrap();
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let zeros = vec![0u8; tail];
            for bytes in chunks.iter().copied().chain([zeros.as_slice()]) {
                for piece in bytes.chunks(PART) {
                    w.wait_for_capacity(PARTS_IN_FLIGHT).await.unwrap();
                    w.write(piece);
                }
            }
            w.finish().await.unwrap();
        });
    }

    /// The whole object, in ranged reads of 8 MiB, at most 8 in flight,
    /// each copied into its place in one fresh buffer.
    fn download(&self, key: &ObjectPath) -> Vec<u8> {
        self.runtime.block_on(async {
            let size = self.store.head(key).await.unwrap().size as usize;
            let mut buf = vec![0u8; size];
            let store = &self.store;
            let reads = buf.chunks_mut(RANGE).enumerate().map(|(i, chunk)| async move {
                let from = (i * RANGE) as u64;
                let bytes = store.get_range(key, from..from + chunk.len() as u64).await?;
                chunk.copy_from_slice(&bytes);
                Ok::<_, object_store::Error>(())
            });
            futures::stream::iter(reads)
                .buffer_unordered(RANGES_IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await
                .unwrap();
            buf
        })
    }

    /// A multipart upload of `chunks` (then `tail` zeros) by hand: parts
    /// copied into 16 MiB buffers, at most 4 in flight. `hold_first` sends
    /// part 1 only after every other part (as our writer holds a part whose
    /// CRC field is not patched yet); `fresh_client` builds a new client for
    /// the upload (as every save of ours does). Returns the time the last
    /// byte was handed to the client, from the start.
    fn upload_by_hand(
        &self,
        key: &ObjectPath,
        chunks: &[&[u8]],
        tail: usize,
        hold_first: bool,
        fresh_client: bool,
    ) -> Duration {
        let start = Instant::now();
        let store = if fresh_client {
            Plain::new().store
        } else {
            self.store.clone()
        };
        self.runtime.block_on(async {
            let mut upload = store.put_multipart(key).await.unwrap();
            let mut sending: tokio::task::JoinSet<object_store::Result<()>> = tokio::task::JoinSet::new();
            let mut held = None;
            let zeros = vec![0u8; tail];
            let mut part = Vec::with_capacity(PART);
            let mut first = true;
            let mut flush = |part: Vec<u8>, sending: &mut tokio::task::JoinSet<object_store::Result<()>>| {
                let future = upload.put_part(part.into());
                if std::mem::take(&mut first) && hold_first {
                    held = Some(future);
                } else {
                    sending.spawn(future);
                }
            };
            for mut bytes in chunks.iter().copied().chain([zeros.as_slice()]) {
                while !bytes.is_empty() {
                    let n = (PART - part.len()).min(bytes.len());
                    part.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if part.len() == PART {
                        while sending.len() >= PARTS_IN_FLIGHT {
                            sending.join_next().await.unwrap().unwrap().unwrap();
                        }
                        flush(std::mem::replace(&mut part, Vec::with_capacity(PART)), &mut sending);
                    }
                }
            }
            if !part.is_empty() {
                flush(part, &mut sending);
            }
            let streamed = start.elapsed();
            if let Some(future) = held {
                sending.spawn(future);
            }
            while let Some(done) = sending.join_next().await {
                done.unwrap().unwrap();
            }
            upload.complete().await.unwrap();
            streamed
        })
    }

    fn delete(&self, key: &ObjectPath) {
        self.runtime.block_on(self.store.delete(key)).unwrap();
    }

    fn size(&self, key: &ObjectPath) -> u64 {
        self.runtime.block_on(self.store.head(key)).unwrap().size
    }
}

/// The key of `s3://BUCKET/key` URL `url`.
fn key_of(url: &Path) -> ObjectPath {
    let text = url.to_str().unwrap();
    ObjectPath::from(text.strip_prefix(&format!("s3://{BUCKET}/")).unwrap())
}

/// Times `f` once.
fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed(), out)
}

/// Runs `steps` in order on even repetitions, reversed on odd ones.
fn alternate<'a>(rep: usize, steps: &mut [&mut (dyn FnMut() + 'a)]) {
    if rep % 2 == 1 {
        steps.reverse();
    }
    for step in steps.iter_mut() {
        step();
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// `--profile`: where the time of a save to s3:// goes. Our save split at
/// its last progress report (the stream of bytes into parts; then the held
/// part, the last parts and the completion), against the plain upload and
/// hand-made uploads that each copy one trait of ours.
fn profile(runs: usize, c: &mut ModelContainer, prefix: &str, plain: &Plain, chunks: &[&[u8]], tail: usize) {
    let key = ObjectPath::from("bench/profile.bin");
    let last_report = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let seen = last_report.clone();
    c.set_save_progress(Some(pytorch_saver::Progress::new(move |done, total| {
        if done < total {
            *seen.lock().unwrap() = Some(Instant::now());
        }
    })));
    type Row = (&'static str, Vec<Duration>, Vec<Duration>);
    let mut rows: Vec<Row> = [
        "pytorch-saver save to s3://",
        "WriteMultipart (the plain upload)",
        "by hand",
        "by hand, first part held to the end",
        "by hand, fresh client",
    ]
    .into_iter()
    .map(|n| (n, Vec::new(), Vec::new()))
    .collect();
    for rep in 0..runs {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.rotate_left(rep % rows.len());
        for i in order {
            let t = Instant::now();
            let streamed = match i {
                0 => {
                    let url = c.save(prefix, "profile", &UserMetadata::new()).unwrap();
                    let streamed = last_report.lock().unwrap().unwrap() - t;
                    let total = t.elapsed();
                    plain.delete(&key_of(&url));
                    rows[i].1.push(streamed);
                    rows[i].2.push(total);
                    continue;
                }
                1 => {
                    plain.upload(&key, chunks, tail);
                    Duration::ZERO
                }
                2 => plain.upload_by_hand(&key, chunks, tail, false, false),
                3 => plain.upload_by_hand(&key, chunks, tail, true, false),
                _ => plain.upload_by_hand(&key, chunks, tail, false, true),
            };
            let total = t.elapsed();
            plain.delete(&key);
            rows[i].1.push(streamed);
            rows[i].2.push(total);
        }
    }
    c.set_save_progress(None);
    println!();
    println!(
        "{:<40} {:>14} {:>14} {:>10}   (medians, {runs} runs)",
        "upload", "last byte in s", "after it s", "total s"
    );
    for (name, streamed, total) in rows {
        let (s, t) = (median(streamed).as_secs_f64(), median(total).as_secs_f64());
        if s == 0.0 {
            // WriteMultipart does not say when it took the last byte.
            println!("{name:<40} {:>14} {:>14} {t:>10.3}", "-", "-");
        } else {
            println!("{name:<40} {s:>14.3} {:>14.3} {t:>10.3}", t - s);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = arg(&args, "--runs").unwrap_or(5);
    let dim: i64 = arg(&args, "--dim").unwrap_or(8192);
    let dir: PathBuf =
        arg(&args, "--dir").unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    std::fs::create_dir_all(&dir).unwrap();
    let work = tempfile::tempdir_in(&dir).unwrap();

    let moto = s3::start_moto(&[BUCKET], false);
    for (k, v) in s3::client_env(&moto.endpoint) {
        std::env::set_var(k, v);
    }
    let prefix = format!("s3://{BUCKET}/bench");
    let plain = Plain::new();
    let plain_key = ObjectPath::from("bench/plain.bin");

    tch::manual_seed(0);
    let mut c = ModelContainer::new();
    c.initialize(ContainerSpec::model(models::MLP, kwargs(dim))).unwrap();
    let tensors: Vec<Tensor> = c.model().unwrap().state_dict().into_values().collect();
    let chunks: Vec<&[u8]> = tensors.iter().map(tensor_slice).collect();
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    println!(
        "model: MLP dim {dim}, {} tensors, {:.1} MiB; {runs} runs each, median; moto at {}, local files in {}",
        chunks.len(),
        total as f64 / (1 << 20) as f64,
        moto.endpoint,
        dir.display()
    );

    // Saves: ours to S3 and to local disk, and the plain upload of as many
    // bytes as our object has (learnt from a first, untimed save).
    let first = c.save(&prefix, "bench", &UserMetadata::new()).unwrap();
    let object_size = plain.size(&key_of(&first)) as usize;
    plain.delete(&key_of(&first));
    let tail = object_size - total;
    if args.iter().any(|a| a == "--profile") {
        profile(runs, &mut c, &prefix, &plain, &chunks, tail);
        return;
    }
    let (mut ours_s3, mut ours_local, mut plain_up) = (Vec::new(), Vec::new(), Vec::new());
    let mut moto_peak = moto_rss_mib().unwrap_or(0.0);
    for rep in 0..runs {
        alternate(
            rep,
            &mut [
                &mut || {
                    let (t, url) = timed(|| c.save(&prefix, "bench", &UserMetadata::new()).unwrap());
                    moto_peak = moto_peak.max(moto_rss_mib().unwrap_or(0.0));
                    plain.delete(&key_of(&url));
                    ours_s3.push(t);
                },
                &mut || {
                    let (t, ()) = timed(|| plain.upload(&plain_key, &chunks, tail));
                    plain.delete(&plain_key);
                    plain_up.push(t);
                },
                &mut || {
                    let (t, path) = timed(|| c.save(work.path(), "bench", &UserMetadata::new()).unwrap());
                    std::fs::remove_file(path).unwrap();
                    ours_local.push(t);
                },
            ],
        );
    }

    let s = |d: Duration| d.as_secs_f64();
    let mib = object_size as f64 / (1 << 20) as f64;
    let save_anchor = median(plain_up.clone());
    print_table(
        ("save", "vs plain up"),
        &[
            ("plain multipart upload (16 MiB parts, 4 in flight)", &plain_up),
            ("pytorch-saver save to s3://", &ours_s3),
            ("pytorch-saver save to local disk (fsync)", &ours_local),
        ],
        mib,
    );
    // Loads: one object at the URL and one local file, each loaded (and
    // touched) `runs` times, and the plain download of the same object.
    let url = c.save(&prefix, "bench", &UserMetadata::new()).unwrap();
    let local = c.save(work.path(), "bench", &UserMetadata::new()).unwrap();
    drop(chunks);
    drop(tensors);
    drop(c);
    let key = key_of(&url);
    let (mut load_s3, mut load_local, mut plain_down) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sums_s3, mut sums_local) = (Vec::new(), Vec::new());
    for rep in 0..runs {
        alternate(
            rep,
            &mut [
                &mut || {
                    let (t, sum) = timed(|| {
                        let mut fresh = ModelContainer::new();
                        fresh.load(&url).unwrap();
                        touch_model(&fresh)
                    });
                    load_s3.push(t);
                    sums_s3.push(sum);
                },
                &mut || {
                    // The ZIP's headers read as f32 may be NaN: the sum is
                    // only kept from being optimized away.
                    let (t, sum) = timed(|| touch_buffer(&plain.download(&key)));
                    std::hint::black_box(sum);
                    plain_down.push(t);
                },
                &mut || {
                    let (t, sum) = timed(|| {
                        let mut fresh = ModelContainer::new();
                        fresh.load(&local).unwrap();
                        touch_model(&fresh)
                    });
                    load_local.push(t);
                    sums_local.push(sum);
                },
            ],
        );
        moto_peak = moto_peak.max(moto_rss_mib().unwrap_or(0.0));
    }
    plain.delete(&key);
    assert!(
        sums_s3.iter().chain(&sums_local).all(|s| *s == sums_s3[0]),
        "every load read the same parameters: {sums_s3:?} {sums_local:?}"
    );

    let load_anchor = median(plain_down.clone());
    print_table(
        ("load + sum of every parameter", "vs plain down"),
        &[
            ("plain ranged download (8 MiB, 8 in flight) + sum", &plain_down),
            ("pytorch-saver load from s3:// + sum", &load_s3),
            ("pytorch-saver load from local disk + sum", &load_local),
        ],
        mib,
    );
    println!();
    let save_ratio = s(median(ours_s3)) / s(save_anchor);
    let load_ratio = s(median(load_s3)) / s(load_anchor);
    println!(
        "targets: save to s3:// <= 1.2x plain upload: {save_ratio:.2}x {}",
        verdict(save_ratio <= 1.2)
    );
    println!(
        "         load from s3:// <= 1.2x plain download: {load_ratio:.2}x {}",
        verdict(load_ratio <= 1.2)
    );
    println!("moto server RSS, largest sample (after each save and each round of loads): {moto_peak:.0} MiB");
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// One table of medians: the first row is the anchor every ratio is to.
fn print_table((title, versus): (&str, &str), rows: &[(&str, &Vec<Duration>)], mib: f64) {
    let s = |d: Duration| d.as_secs_f64();
    let anchor = median(rows[0].1.clone());
    println!();
    println!(
        "{title:<52} {:>9} {:>9} {:>9} {versus:>12}",
        "median s", "min s", "MiB/s"
    );
    for (name, t) in rows {
        let m = median((*t).clone());
        let min = *t.iter().min().unwrap();
        println!(
            "{name:<52} {:>9.3} {:>9.3} {:>9.0} {:>11.2}x",
            s(m),
            s(min),
            mib / s(m),
            s(m) / s(anchor)
        );
    }
}

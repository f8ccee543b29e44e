//! `pytorch-saver ls DIR`: the checkpoints of the checkpoint-manager
//! series in a directory, with the retention rules that keep them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pytorch_saver::manager::{
    checkpoint_size, scan_series, series_prefixes, CheckpointInfo, Mode, Policy, SeriesListing,
};
use serde_json::{json, Value};

/// List the checkpoints a checkpoint manager keeps in DIR, newest last:
/// step, time (UTC), size, metrics and the retention rules that keep each
/// one under the policy the options give (none: every checkpoint is
/// kept, so `latest`, `pinned` and `all` show; `-` marks one that policy
/// would delete). Reads metadata only; takes no lock and writes nothing,
/// so it works while a training run holds the series.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint directory: a path, or an object store URL
    /// (`s3://bucket/prefix`).
    dir: PathBuf,
    /// Only the series with this prefix (default: every series of DIR,
    /// found by its `.P.manager.json`).
    #[arg(long)]
    prefix: Option<String>,
    /// Retention: keep the N newest.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep_last: Option<u64>,
    /// Retention: keep the K best by --metric.
    #[arg(long, value_name = "K", requires = "metric", value_parser = clap::value_parser!(u64).range(1..))]
    keep_best: Option<u64>,
    /// The metric --keep-best ranks by.
    #[arg(long, value_name = "M")]
    metric: Option<String>,
    /// Whether a lower (min) or higher (max) metric is better.
    #[arg(long, value_enum, default_value_t = ModeArg::Min)]
    mode: ModeArg,
    /// Retention: keep every checkpoint whose step is a multiple of S.
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    keep_every: Option<u64>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Min,
    Max,
}

impl Args {
    fn policy(&self, prefix: &str) -> Policy {
        Policy {
            prefix: prefix.to_owned(),
            keep_last: self.keep_last.map(|n| n as usize),
            keep_best: self.keep_best.map(|k| k as usize),
            metric: self.metric.clone(),
            mode: match self.mode {
                ModeArg::Min => Mode::Min,
                ModeArg::Max => Mode::Max,
            },
            keep_every_steps: self.keep_every,
        }
    }
}

/// A checkpoint as listed: its info and its size on disk.
struct Row {
    info: CheckpointInfo,
    size: u64,
}

pub fn run(args: Args) -> ExitCode {
    let dir = &args.dir;
    if let Some(prefix) = &args.prefix {
        if let Err(e) = args.policy(prefix).validate() {
            eprintln!("pytorch-saver: {e}");
            return ExitCode::from(2);
        }
    }
    let prefixes = match &args.prefix {
        Some(p) => vec![p.clone()],
        None => match series_prefixes(dir) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("pytorch-saver: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut listed = Vec::new();
    for prefix in &prefixes {
        let listing = match scan_series(dir, &args.policy(prefix)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("pytorch-saver: {e}");
                return ExitCode::FAILURE;
            }
        };
        for (path, e) in &listing.unreadable {
            eprintln!("pytorch-saver: {}: cannot be read, not listed: {e}", path.display());
        }
        let rows = rows(&listing);
        listed.push((listing, rows));
    }
    if args.json {
        let doc = json!({
            "directory": dir,
            "policy": policy_json(&args.policy("")),
            "series": listed.iter().map(|(l, rows)| series_json(l, rows)).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON values serialize"));
    } else if listed.is_empty() {
        eprintln!(
            "pytorch-saver: {}: no checkpoint series (no .P.manager.json)",
            dir.display()
        );
    } else {
        for (i, (listing, rows)) in listed.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print_table(dir, listing, rows);
        }
    }
    ExitCode::SUCCESS
}

/// The listing's checkpoints with their sizes; one that is gone by now
/// (deleted by the running manager's retention) is reported and left out.
fn rows(listing: &SeriesListing) -> Vec<Row> {
    let mut rows = Vec::new();
    for info in &listing.checkpoints {
        match checkpoint_size(&info.path) {
            Ok(size) => rows.push(Row {
                info: info.clone(),
                size,
            }),
            Err(e) => eprintln!("pytorch-saver: {}: {e}, not listed", info.path.display()),
        }
    }
    rows
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn rules(info: &CheckpointInfo) -> Vec<&'static str> {
    info.kept_by.iter().map(|r| r.as_str()).collect()
}

fn policy_json(p: &Policy) -> Value {
    json!({
        "keep_last": p.keep_last,
        "keep_best": p.keep_best,
        "metric": p.metric,
        "mode": p.mode.as_str(),
        "keep_every_steps": p.keep_every_steps,
    })
}

fn series_json(listing: &SeriesListing, rows: &[Row]) -> Value {
    let checkpoints: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "file": file_name(&r.info.path),
                "path": r.info.path,
                "step": r.info.step,
                "timestamp": r.info.timestamp,
                "time": iso8601(r.info.timestamp),
                "size": r.size,
                "metrics": r.info.metrics,
                "kept_by": rules(&r.info),
            })
        })
        .collect();
    json!({"prefix": listing.prefix, "id": listing.id, "checkpoints": checkpoints})
}

fn print_table(dir: &Path, listing: &SeriesListing, rows: &[Row]) {
    println!(
        "series {} in {} (id {}): {} checkpoint{}",
        listing.prefix,
        dir.display(),
        listing.id,
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    if rows.is_empty() {
        return;
    }
    let metrics: Vec<String> = rows
        .iter()
        .map(|r| {
            let m: Vec<String> = r.info.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
            m.join(" ")
        })
        .collect();
    let width = metrics.iter().map(String::len).max().unwrap_or(0).max("metrics".len());
    println!(
        "{:>10}  {:<20}  {:>10}  {:<width$}  {:<16}  file",
        "step", "time (UTC)", "size", "metrics", "kept by"
    );
    for (r, m) in rows.iter().zip(&metrics) {
        let kept = match rules(&r.info) {
            k if k.is_empty() => "-".to_owned(),
            k => k.join(","),
        };
        println!(
            "{:>10}  {:<20}  {:>10}  {:<width$}  {:<16}  {}",
            r.info.step,
            iso8601(r.info.timestamp),
            human_size(r.size),
            m,
            kept,
            file_name(&r.info.path)
        );
    }
}

/// 1536 -> "1.5 KiB".
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn iso8601(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let rem = unix_seconds % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{human_size, iso8601};

    #[test]
    fn times_and_sizes() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
    }
}

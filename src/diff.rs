//! What differs between two files of this format (any version, any kind,
//! weights files included): their metadata, path by path, and their
//! tensors, member by member, down to the largest difference of values.
//! Nothing here depends on tch; `pytorch-saver diff` prints the [`Report`].
//!
//! Tensors are read through the files' memory maps
//! ([`Checkpoint::tensor_bytes`]), one tensor at a time, and compared in
//! f64. For two tensors of the same dtype and shape:
//!
//! - equal bytes make them equal;
//! - otherwise, element by element, the absolute difference is `|a - b|`
//!   and the relative difference `|a - b| / max(|a|, |b|)` (0 where both
//!   are 0); the report keeps the largest of each and how many elements
//!   differ in their bits;
//! - two elements with the same bits differ by 0, a NaN included; two
//!   NaNs with different bits differ by 0 too (but are counted among the
//!   elements that differ); a NaN against anything else, or an infinity
//!   against anything but the same infinity, is an infinite difference
//!   (absolute and relative); `-0.0` against `0.0` differs by 0.
//!
//! A tensor only in the first file whose dtype, shape and bytes equal a
//! tensor only in the second is reported as renamed: a hint, still a
//! difference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::format::{dtype_name, Checkpoint, Dtype, MemberName, TensorEntry};

/// The top-level metadata key that is reported but never counted as a
/// difference: two saves of the same state differ in it.
pub const UNCOUNTED_KEY: &str = "timestamp";

/// Everything that differs between files `a` and `b`.
///
/// As JSON (`serde_json::to_value`, what `pytorch-saver diff --json`
/// prints):
///
/// ```json
/// {
///   "a": "run_a.zip", "b": "run_b.zip",
///   "identical": false,
///   "differences": 3,
///   "metadata": [
///     {"path": "timestamp", "a": 1700000000, "b": 1700000042, "counted": false},
///     {"path": "loss", "a": 0.5, "b": 0.25, "counted": true},
///     {"path": "note", "a": "x", "counted": true}
///   ],
///   "tensors": [
///     {"member": "model.safetensors", "name": "fc.weight", "change": "values",
///      "dtype": "F32", "shape": [3, 4], "max_abs_diff": 0.01, "max_rel_diff": 0.2,
///      "elements_differing": 12},
///     {"member": "model.safetensors", "name": "fc.bias", "change": "equal", "dtype": "F32", "shape": [3]}
///   ]
/// }
/// ```
///
/// A metadata entry leaves out `a` or `b` when the path is missing from
/// that file. `change` is one of `equal`, `values` (as above), `only_in_a`
/// and `only_in_b` (with `dtype`, `shape`), `renamed` (`name` in `a`,
/// `renamed_to` in `b`, `dtype`, `shape`), `dtype` (`dtype_a`, `dtype_b`,
/// `shape_a`, `shape_b`) and `shape` (`dtype`, `shape_a`, `shape_b`). An
/// infinite difference is written as the string `"inf"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub a: PathBuf,
    pub b: PathBuf,
    /// No counted difference (`differences == 0`).
    pub identical: bool,
    /// The counted metadata paths plus the tensors that are not equal.
    pub differences: usize,
    /// The metadata paths whose values differ, in document order.
    pub metadata: Vec<MetadataDiff>,
    /// Every tensor of either file, equal ones included, member by member
    /// (`a`'s order, then what only `b` has).
    pub tensors: Vec<TensorDiff>,
}

/// One metadata path whose values differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetadataDiff {
    /// Keys joined by `.`, array positions as `[i]`
    /// (`__pytorch_saver__.optimizer.param_groups[0].lr`).
    pub path: String,
    /// The value in `a`; `None` when `a` does not have the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b: Option<Value>,
    /// Whether it counts as a difference (everything but the timestamp).
    pub counted: bool,
}

/// One tensor of either file and how it compares.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorDiff {
    /// `model.safetensors`, `optimizer.safetensors` or `extra.safetensors`.
    pub member: String,
    /// The tensor's name (in `a`, for a renamed one).
    pub name: String,
    #[serde(flatten)]
    pub change: TensorChange,
}

/// How a tensor compares (see the module documentation for the values).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum TensorChange {
    /// Same dtype, shape and bytes.
    Equal {
        dtype: String,
        shape: Vec<usize>,
    },
    /// Same dtype and shape, different bytes.
    Values {
        dtype: String,
        shape: Vec<usize>,
        #[serde(serialize_with = "number_or_inf")]
        max_abs_diff: f64,
        #[serde(serialize_with = "number_or_inf")]
        max_rel_diff: f64,
        /// Elements whose bits differ.
        elements_differing: u64,
    },
    OnlyInA {
        dtype: String,
        shape: Vec<usize>,
    },
    OnlyInB {
        dtype: String,
        shape: Vec<usize>,
    },
    /// Only in `a` as `name`, only in `b` as `renamed_to`, same bytes.
    Renamed {
        renamed_to: String,
        dtype: String,
        shape: Vec<usize>,
    },
    /// The dtype changed (and maybe the shape).
    Dtype {
        dtype_a: String,
        dtype_b: String,
        shape_a: Vec<usize>,
        shape_b: Vec<usize>,
    },
    /// Same dtype, another shape.
    Shape {
        dtype: String,
        shape_a: Vec<usize>,
        shape_b: Vec<usize>,
    },
}

impl TensorChange {
    pub fn is_equal(&self) -> bool {
        matches!(self, TensorChange::Equal { .. })
    }
}

fn number_or_inf<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_str("inf")
    }
}

/// Opens both files (fully verified) and compares them.
pub fn diff_paths(a: impl AsRef<Path>, b: impl AsRef<Path>) -> Result<Report> {
    let a = Checkpoint::open(a)?;
    let b = Checkpoint::open(b)?;
    Ok(diff(&a, &b))
}

/// Compares two open files.
pub fn diff(a: &Checkpoint, b: &Checkpoint) -> Report {
    let mut metadata = Vec::new();
    diff_objects(&a.metadata().to_json(), &b.metadata().to_json(), "", &mut metadata);
    let mut tensors = Vec::new();
    for member in [MemberName::Model, MemberName::Optimizer, MemberName::Extra] {
        diff_member(a, b, member, &mut tensors);
    }
    let differences =
        metadata.iter().filter(|m| m.counted).count() + tensors.iter().filter(|t| !t.change.is_equal()).count();
    Report {
        a: a.path().to_path_buf(),
        b: b.path().to_path_buf(),
        identical: differences == 0,
        differences,
        metadata,
        tensors,
    }
}

fn join(prefix: &str, key: &str) -> String {
    match prefix {
        "" => key.to_owned(),
        p => format!("{p}.{key}"),
    }
}

fn diff_objects(a: &Map<String, Value>, b: &Map<String, Value>, prefix: &str, out: &mut Vec<MetadataDiff>) {
    for (key, va) in a {
        let path = join(prefix, key);
        match b.get(key) {
            Some(vb) => diff_values(va, vb, path, out),
            None => out.push(change(path, Some(va), None)),
        }
    }
    for (key, vb) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
        out.push(change(join(prefix, key), None, Some(vb)));
    }
}

fn diff_values(a: &Value, b: &Value, path: String, out: &mut Vec<MetadataDiff>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => diff_objects(a, b, &path, out),
        (Value::Array(xs), Value::Array(ys)) if xs.len() == ys.len() => {
            for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
                diff_values(x, y, format!("{path}[{i}]"), out);
            }
        }
        (a, b) if !same_value(a, b) => out.push(change(path, Some(a), Some(b))),
        _ => {}
    }
}

/// JSON equality, with numbers equal when they are the same number
/// (`1` and `1.0`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(_), Some(_), _, _) | (_, _, Some(_), Some(_)) => false,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

fn change(path: String, a: Option<&Value>, b: Option<&Value>) -> MetadataDiff {
    MetadataDiff {
        counted: path != UNCOUNTED_KEY,
        path,
        a: a.cloned(),
        b: b.cloned(),
    }
}

fn diff_member(a: &Checkpoint, b: &Checkpoint, member: MemberName, out: &mut Vec<TensorDiff>) {
    let ta = a.tensors(member);
    let tb = b.tensors(member);
    let in_b: HashMap<&str, &TensorEntry> = tb.iter().map(|t| (t.name.as_str(), t)).collect();
    let in_a: HashMap<&str, &TensorEntry> = ta.iter().map(|t| (t.name.as_str(), t)).collect();
    let only_b: Vec<&TensorEntry> = tb.iter().filter(|t| !in_a.contains_key(t.name.as_str())).collect();
    let renamed_to = renames(a, b, ta.iter().filter(|t| !in_b.contains_key(t.name.as_str())), &only_b);
    let entry = |name: &str, change| TensorDiff {
        member: member.as_str().to_owned(),
        name: name.to_owned(),
        change,
    };
    for x in ta {
        let change = match (in_b.get(x.name.as_str()), renamed_to.get(x.name.as_str())) {
            (Some(y), _) => compare(a, x, b, y),
            (None, Some(to)) => TensorChange::Renamed {
                renamed_to: (*to).to_owned(),
                dtype: dtype_name(x.dtype),
                shape: x.shape.clone(),
            },
            (None, None) => TensorChange::OnlyInA {
                dtype: dtype_name(x.dtype),
                shape: x.shape.clone(),
            },
        };
        out.push(entry(&x.name, change));
    }
    let renamed_in_b: Vec<&str> = renamed_to.values().copied().collect();
    for y in only_b.iter().filter(|y| !renamed_in_b.contains(&y.name.as_str())) {
        let change = TensorChange::OnlyInB {
            dtype: dtype_name(y.dtype),
            shape: y.shape.clone(),
        };
        out.push(entry(&y.name, change));
    }
}

/// Pairs tensors only in `a` with tensors only in `b` of the same dtype,
/// shape and bytes (each used once): `a`'s name to `b`'s.
fn renames<'t>(
    a: &Checkpoint,
    b: &Checkpoint,
    only_a: impl Iterator<Item = &'t TensorEntry>,
    only_b: &[&'t TensorEntry],
) -> HashMap<&'t str, &'t str> {
    let mut renamed = HashMap::new();
    if only_b.is_empty() {
        return renamed;
    }
    // A CRC-32 of each candidate in b narrows the byte comparisons down.
    let mut unmatched: Vec<(&TensorEntry, u32)> = only_b
        .iter()
        .map(|y| (*y, crc32fast::hash(b.tensor_bytes(y))))
        .collect();
    for x in only_a {
        let bytes = a.tensor_bytes(x);
        let crc = crc32fast::hash(bytes);
        let found = unmatched
            .iter()
            .position(|(y, c)| *c == crc && y.dtype == x.dtype && y.shape == x.shape && b.tensor_bytes(y) == bytes);
        if let Some(i) = found {
            let (y, _) = unmatched.swap_remove(i);
            renamed.insert(x.name.as_str(), y.name.as_str());
        }
    }
    renamed
}

fn compare(a: &Checkpoint, x: &TensorEntry, b: &Checkpoint, y: &TensorEntry) -> TensorChange {
    if x.dtype != y.dtype {
        return TensorChange::Dtype {
            dtype_a: dtype_name(x.dtype),
            dtype_b: dtype_name(y.dtype),
            shape_a: x.shape.clone(),
            shape_b: y.shape.clone(),
        };
    }
    if x.shape != y.shape {
        return TensorChange::Shape {
            dtype: dtype_name(x.dtype),
            shape_a: x.shape.clone(),
            shape_b: y.shape.clone(),
        };
    }
    let (bx, by) = (a.tensor_bytes(x), b.tensor_bytes(y));
    let dtype = dtype_name(x.dtype);
    let shape = x.shape.clone();
    if bx == by {
        return TensorChange::Equal { dtype, shape };
    }
    let stats = value_differences(x.dtype, bx, by);
    TensorChange::Values {
        dtype,
        shape,
        max_abs_diff: stats.max_abs,
        max_rel_diff: stats.max_rel,
        elements_differing: stats.differing,
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Stats {
    max_abs: f64,
    max_rel: f64,
    differing: u64,
}

/// The element decoder of a dtype: little-endian bytes to f64.
fn decoder(dtype: Dtype) -> fn(&[u8]) -> f64 {
    fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
        b.try_into().expect("chunks of the dtype's size")
    }
    match dtype {
        Dtype::F64 => |b| f64::from_le_bytes(arr(b)),
        Dtype::F32 => |b| f32::from_le_bytes(arr(b)) as f64,
        Dtype::F16 => |b| f16::from_le_bytes(arr(b)).to_f64(),
        Dtype::BF16 => |b| bf16::from_le_bytes(arr(b)).to_f64(),
        Dtype::I64 => |b| i64::from_le_bytes(arr(b)) as f64,
        Dtype::I32 => |b| i32::from_le_bytes(arr(b)) as f64,
        Dtype::I16 => |b| i16::from_le_bytes(arr(b)) as f64,
        Dtype::I8 => |b| b[0] as i8 as f64,
        // U8 and BOOL (the reader admits no other dtype).
        _ => |b| b[0] as f64,
    }
}

/// Largest differences of two same-dtype, same-length buffers.
fn value_differences(dtype: Dtype, a: &[u8], b: &[u8]) -> Stats {
    let size = crate::format::dtype_size(dtype).max(1);
    let decode = decoder(dtype);
    let mut s = Stats::default();
    for (ea, eb) in a.chunks_exact(size).zip(b.chunks_exact(size)) {
        if ea == eb {
            continue;
        }
        s.differing += 1;
        let (abs, rel) = element_difference(decode(ea), decode(eb));
        s.max_abs = s.max_abs.max(abs);
        s.max_rel = s.max_rel.max(rel);
    }
    s
}

/// The absolute and relative difference of two elements whose bits
/// differ (the rules of the module documentation).
fn element_difference(x: f64, y: f64) -> (f64, f64) {
    if x.is_nan() && y.is_nan() {
        return (0.0, 0.0);
    }
    if x == y {
        // -0.0 and 0.0.
        return (0.0, 0.0);
    }
    if x.is_nan() || y.is_nan() || x.is_infinite() || y.is_infinite() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let abs = (x - y).abs();
    (abs, abs / x.abs().max(y.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_rules() {
        assert_eq!(element_difference(1.0, 3.0), (2.0, 2.0 / 3.0));
        assert_eq!(element_difference(0.0, -0.0), (0.0, 0.0));
        assert_eq!(element_difference(f64::NAN, -f64::NAN), (0.0, 0.0));
        assert_eq!(element_difference(f64::NAN, 1.0), (f64::INFINITY, f64::INFINITY));
        assert_eq!(element_difference(f64::INFINITY, 1e300), (f64::INFINITY, f64::INFINITY));
        assert_eq!(element_difference(f64::INFINITY, f64::NEG_INFINITY).0, f64::INFINITY);
        assert_eq!(element_difference(0.0, 2.0), (2.0, 1.0));
    }

    #[test]
    fn every_dtype_decodes() {
        let cases: [(Dtype, Vec<u8>, f64); 10] = [
            (Dtype::F64, (-2.5f64).to_le_bytes().to_vec(), -2.5),
            (Dtype::F32, 1.5f32.to_le_bytes().to_vec(), 1.5),
            (Dtype::F16, f16::from_f64(0.5).to_le_bytes().to_vec(), 0.5),
            (Dtype::BF16, bf16::from_f64(-4.0).to_le_bytes().to_vec(), -4.0),
            (Dtype::I64, (-7i64).to_le_bytes().to_vec(), -7.0),
            (Dtype::I32, 9i32.to_le_bytes().to_vec(), 9.0),
            (Dtype::I16, (-3i16).to_le_bytes().to_vec(), -3.0),
            (Dtype::I8, vec![0xff], -1.0),
            (Dtype::U8, vec![0xff], 255.0),
            (Dtype::BOOL, vec![1], 1.0),
        ];
        for (dtype, bytes, want) in cases {
            assert_eq!(decoder(dtype)(&bytes), want, "{dtype:?}");
        }
    }

    #[test]
    fn buffers_compare_element_by_element() {
        let a: Vec<u8> = [1.0f32, 2.0, f32::NAN, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b: Vec<u8> = [1.0f32, 2.5, f32::NAN, 2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = value_differences(Dtype::F32, &a, &b);
        assert_eq!(s.differing, 2);
        assert_eq!(s.max_abs, 2.0);
        assert_eq!(s.max_rel, 0.5);
        let c: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(value_differences(Dtype::F32, &a, &c).max_abs, f64::INFINITY);
    }

    #[test]
    fn metadata_paths_and_the_uncounted_timestamp() {
        let a = serde_json::json!({"timestamp": 1, "optim_kwargs": {"lr": 0.1, "betas": [0.9, 0.99]}, "x": 1});
        let b = serde_json::json!({"timestamp": 2, "optim_kwargs": {"lr": 0.2, "betas": [0.9, 0.98]}, "y": 1.0});
        let mut out = Vec::new();
        diff_objects(a.as_object().unwrap(), b.as_object().unwrap(), "", &mut out);
        let paths: Vec<(&str, bool)> = out.iter().map(|d| (d.path.as_str(), d.counted)).collect();
        assert_eq!(
            paths,
            [
                ("timestamp", false),
                ("optim_kwargs.lr", true),
                ("optim_kwargs.betas[1]", true),
                ("x", true),
                ("y", true)
            ]
        );
        assert_eq!(out[3].b, None);
        assert!(same_value(&serde_json::json!(1), &serde_json::json!(1.0)));
        assert!(!same_value(&serde_json::json!(1), &serde_json::json!(2)));
    }
}

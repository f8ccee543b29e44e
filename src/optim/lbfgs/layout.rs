//! LBFGS's state in a file (FORMAT.md 5): numbers in the JSON state
//! object, tensors as `state.0.<key>`, each list of tensors stacked.

use serde_json::{Map, Value};
use tch::Tensor;

use super::num::Num::{self, T};
use super::{fresh, Layout, LbfgsState, STATE_KEYS};
use crate::error::{Error, Result};
use crate::format::metadata::{decode_float, encode_float};

impl LbfgsState {
    /// The state in the file layout: (JSON values, tensors), empty when
    /// PyTorch's state would be. `like` gives the dtype and device of
    /// empty stacks (the first parameter).
    pub(crate) fn to_layout(&self, like: &Tensor) -> Result<Layout> {
        let mut values = Map::new();
        let mut tensors = Vec::new();
        if let Some(v) = self.func_evals {
            values.insert("func_evals".into(), v.into());
        }
        if let Some(v) = self.n_iter {
            values.insert("n_iter".into(), v.into());
        }
        let mut tensor_or_null = |key: &str, t: Option<Tensor>| match t {
            Some(t) => tensors.push((key.to_owned(), t)),
            None => {
                values.insert(key.into(), Value::Null);
            }
        };
        if let Some(d) = &self.d {
            tensor_or_null("d", d.as_ref().map(Tensor::shallow_clone));
        }
        if let Some(p) = &self.prev_flat_grad {
            tensor_or_null("prev_flat_grad", p.as_ref().map(Tensor::shallow_clone));
        }
        let numel = self
            .d
            .as_ref()
            .and_then(|d| d.as_ref())
            .map_or(like.numel() as i64, |d| d.numel() as i64);
        for (key, list, row) in [
            ("old_dirs", &self.old_dirs, Some(numel)),
            ("old_stps", &self.old_stps, Some(numel)),
            ("ro", &self.ro, None),
        ] {
            if let Some(list) = list {
                let stacked = match list {
                    Some(l) => Some(stack(l, row, like)?),
                    None => None,
                };
                tensor_or_null(key, stacked);
            }
        }
        if let Some(al) = &self.al {
            let prefix: Vec<Tensor> = al.iter().map_while(|a| a.as_ref().map(Tensor::shallow_clone)).collect();
            if al[prefix.len()..].iter().any(Option::is_some) {
                return Err(Error::InvalidState {
                    what: "LBFGS state \"al\"".into(),
                    reason: "its tensors are not a prefix of the list".into(),
                });
            }
            tensors.push(("al".into(), stack(&prefix, None, like)?));
        }
        for (key, num) in [("t", &self.t), ("H_diag", &self.h_diag)] {
            match num {
                None => {}
                Some(Some(T(t))) => tensors.push((key.to_owned(), t.shallow_clone())),
                Some(Some(n)) => {
                    values.insert(key.into(), n.to_json().expect("a number"));
                }
                Some(None) => {
                    values.insert(key.into(), Value::Null);
                }
            }
        }
        if let Some(p) = self.prev_loss {
            values.insert("prev_loss".into(), p.map_or(Value::Null, encode_float));
        }
        Ok((values, tensors))
    }

    /// Reads a saved state (file layout), checked against the parameters
    /// (`numel` elements in all, the first one `like`) and the group's
    /// `history_size`; tensors are cast to the first parameter's dtype and
    /// device as PyTorch's load_state_dict does. Errors name the key.
    pub(crate) fn from_layout(
        values: &Map<String, Value>,
        tensors: &std::collections::BTreeMap<String, Tensor>,
        like: &Tensor,
        numel: i64,
        history_size: i64,
    ) -> Result<Self> {
        let bad = |key: &str, reason: String| Error::InvalidState {
            what: format!("optimizer state.0.{key} (torch.optim.LBFGS)"),
            reason,
        };
        for key in values.keys().chain(tensors.keys()) {
            if !STATE_KEYS.contains(&key.as_str()) {
                return Err(bad(key, "is not a key of LBFGS's state".into()));
            }
        }
        let cast = |key: &str, t: &Tensor, shape: &[i64]| -> Result<Tensor> {
            if t.size() != shape {
                return Err(bad(key, format!("has shape {:?}, expected {shape:?}", t.size())));
            }
            let kind = if like.is_floating_point() {
                like.kind()
            } else {
                t.kind()
            };
            fresh(&t.f_to_device(like.device())?.f_to_kind(kind)?)
        };
        let int = |key: &str| -> Result<Option<i64>> {
            match values.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| bad(key, format!("must be an integer, got {v}"))),
            }
        };
        let mut st = LbfgsState {
            func_evals: int("func_evals")?,
            n_iter: int("n_iter")?,
            ..Default::default()
        };
        if values.is_empty() && tensors.is_empty() {
            return Ok(st);
        }
        if st.func_evals.is_none() || st.n_iter.is_none() {
            return Err(bad(
                "n_iter",
                "a non-empty LBFGS state needs func_evals and n_iter".into(),
            ));
        }
        let null = |key: &str| values.get(key).is_some_and(Value::is_null);
        let tensor_key = |key: &str, shape: &[i64]| -> Result<Option<Option<Tensor>>> {
            match tensors.get(key) {
                Some(t) => Ok(Some(Some(cast(key, t, shape)?))),
                None if null(key) => Ok(Some(None)),
                None => match values.get(key) {
                    Some(v) => Err(bad(key, format!("must be a tensor or null, got {v}"))),
                    None => Ok(None),
                },
            }
        };
        st.d = tensor_key("d", &[numel])?;
        st.prev_flat_grad = tensor_key("prev_flat_grad", &[numel])?;
        let rows = |key: &str| tensors.get(key).map(|t| t.size().first().copied().unwrap_or(-1));
        let n = rows("old_dirs").or(rows("old_stps")).or(rows("ro")).unwrap_or(0);
        if n < 0 || n > history_size {
            return Err(bad(
                "old_dirs",
                format!("holds {n} entries, more than history_size {history_size}"),
            ));
        }
        let unstack = |key: &str, shape: &[i64]| -> Result<Option<Option<Vec<Tensor>>>> {
            Ok(match tensor_key(key, shape)? {
                Some(Some(t)) => Some(Some((0..n).map(|i| t.get(i).copy()).collect())),
                Some(None) => Some(None),
                None => None,
            })
        };
        st.old_dirs = unstack("old_dirs", &[n, numel])?;
        st.old_stps = unstack("old_stps", &[n, numel])?;
        st.ro = unstack("ro", &[n])?;
        if let Some(al) = tensors.get("al") {
            let k = al.size().first().copied().unwrap_or(-1);
            if al.dim() != 1 || k > history_size {
                return Err(bad(
                    "al",
                    format!(
                        "has shape {:?}, expected [k] with k <= history_size {history_size}",
                        al.size()
                    ),
                ));
            }
            let al = cast("al", al, &[k])?;
            st.al = Some((0..history_size).map(|i| (i < k).then(|| al.get(i).copy())).collect());
        } else if values.contains_key("al") {
            return Err(bad("al", "must be a tensor".into()));
        }
        for key in ["t", "H_diag"] {
            let num = match (tensors.get(key), values.get(key)) {
                (Some(_), Some(_)) => return Err(bad(key, "is both a tensor and a JSON value".into())),
                (Some(t), None) if t.numel() != 1 => {
                    return Err(bad(key, format!("must have one element, has shape {:?}", t.size())))
                }
                (Some(t), None) => Some(Some(T(cast(key, &t.f_reshape([0i64; 0])?, &[])?))),
                (None, Some(Value::Null)) => Some(None),
                (None, Some(v)) => {
                    Some(Some(Num::from_json(v).ok_or_else(|| {
                        bad(key, format!("must be a number, a tensor or null, got {v}"))
                    })?))
                }
                (None, None) => None,
            };
            match key {
                "t" => st.t = num,
                _ => st.h_diag = num,
            }
        }
        st.prev_loss = match values.get("prev_loss") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => Some(Some(
                decode_float(v).ok_or_else(|| bad("prev_loss", format!("must be a number, got {v}")))?,
            )),
        };
        Ok(st)
    }
}

/// A list of tensors (rows of `row` elements, or 0-d) as one tensor; an
/// empty list as an empty tensor of `like`'s dtype and device.
fn stack(list: &[Tensor], row: Option<i64>, like: &Tensor) -> Result<Tensor> {
    if list.is_empty() {
        let shape: Vec<i64> = match row {
            Some(n) => vec![0, n],
            None => vec![0],
        };
        return Ok(Tensor::f_empty(shape, (like.kind(), like.device()))?);
    }
    Ok(Tensor::f_stack(list, 0)?)
}

//! `torch.optim.LBFGS`: its hyperparameter table, its one global state
//! (kept, as PyTorch keeps it, under the first parameter) and its step,
//! which takes a closure that re-evaluates the loss. PyTorch 2.13's
//! `step`, `_strong_wolfe` and `_cubic_interpolate` op for op: where
//! PyTorch mixes Python numbers with 0-d tensors the same tensor op runs
//! here ([`Num`]), where it computes on Python floats, f64 does.
//!
//! The state layout in a file (FORMAT.md 5): the numbers in the JSON
//! state object of parameter index 0 (`func_evals`, `n_iter`, `prev_loss`,
//! `t` and `H_diag` while they are numbers; a key whose value is None as
//! null), the tensors as `state.0.<key>`, each list of tensors stacked
//! into one: `old_dirs` and `old_stps` `[n, N]`, `ro` `[n]`, and `al` (a
//! list of `history_size` entries whose non-None ones are always a prefix)
//! as that prefix, `[k]`.

use serde_json::{Map, Value};
use tch::{Kind, Scalar, Tensor};

use super::kernels;
use super::options::{hp, Hp, Ty, ANY, NON_NEG};
use super::ParamGroup;
use crate::error::{Error, Result};
use crate::format::metadata::{decode_float, encode_float};

/// An integer hyperparameter (PyTorch checks none of LBFGS's).
const INT: Ty = Ty::IntBelow { below: i64::MAX };

/// PyTorch 2.13's param_group keys of LBFGS, in its order, with their
/// defaults (`max_eval` None becomes `max_iter * 5 // 4`: [`complete_kwargs`]).
pub(super) static HYPERPARAMETERS: &[Hp] = &[
    hp!("lr", NON_NEG, 1),
    hp!("max_iter", INT, 20),
    hp!("max_eval", INT, null),
    hp!("tolerance_grad", ANY, 1e-7),
    hp!("tolerance_change", ANY, 1e-9),
    hp!("history_size", INT, 100),
    hp!("line_search_fn", Ty::OptChoice(&["strong_wolfe"]), null),
];

/// The keys of the state of parameter index 0, tensors or numbers.
pub(super) const STATE_KEYS: &[&str] = &[
    "func_evals",
    "n_iter",
    "d",
    "t",
    "old_dirs",
    "old_stps",
    "ro",
    "H_diag",
    "prev_flat_grad",
    "prev_loss",
    "al",
];

/// The constructor's `max_eval = max_iter * 5 // 4` when `max_eval` is
/// absent or None (and `max_iter` an integer; otherwise its check fails).
pub(super) fn complete_kwargs(kwargs: &Map<String, Value>) -> Map<String, Value> {
    let mut out = kwargs.clone();
    let max_iter = out.get("max_iter").map_or(Some(20), Value::as_i64);
    if out.get("max_eval").is_none_or(Value::is_null) {
        if let Some(m) = max_iter {
            out.insert("max_eval".into(), Value::from((m * 5).div_euclid(4)));
        }
    }
    out
}

/// The error of a step without a closure.
pub(super) fn needs_closure() -> Error {
    Error::Usage(
        "torch.optim.LBFGS needs a closure that re-evaluates the loss: call step_with_closure, not step".into(),
    )
}

/// PyTorch's constructor check of the groups.
pub(super) fn check_group_count(count: usize) -> std::result::Result<(), String> {
    match count {
        1 => Ok(()),
        _ => Err("LBFGS doesn't support per-parameter options (parameter groups)".into()),
    }
}

/// Parameters must be real (LBFGS's complex path views them as pairs of
/// reals; not supported here).
pub(super) fn check_param(name: &str, param: &Tensor) -> std::result::Result<(), String> {
    match param.kind() {
        Kind::ComplexHalf | Kind::ComplexFloat | Kind::ComplexDouble => Err(format!(
            "LBFGS here takes real parameters; {name:?} is {:?}",
            param.kind()
        )),
        _ => Ok(()),
    }
}

/// A Python number or a 0-d tensor, as LBFGS's `t`, `H_diag` and the
/// line search's brackets are, with Python's arithmetic: number with
/// number on Python ints and floats, anything with a tensor as the tensor
/// op PyTorch's operator overloads run.
#[derive(Debug)]
pub(super) enum Num {
    Int(i64),
    Float(f64),
    T(Tensor),
}

use Num::{Float, Int, T};

impl Num {
    fn dup(&self) -> Num {
        match self {
            Int(i) => Int(*i),
            Float(f) => Float(*f),
            T(t) => T(t.shallow_clone()),
        }
    }

    fn scalar(&self) -> Scalar {
        match self {
            Int(i) => Scalar::int(*i),
            Float(f) => Scalar::float(*f),
            T(_) => unreachable!("scalar() of a tensor"),
        }
    }

    fn f64(&self) -> Result<f64> {
        Ok(match self {
            Int(i) => *i as f64,
            Float(f) => *f,
            // A 0-d tensor passed as a Scalar argument: `.item()`.
            T(t) => t.f_double_value(&[])?,
        })
    }

    /// A JSON number hyperparameter as Python has it (int or float).
    fn from_json(v: &Value) -> Option<Num> {
        match v.as_i64() {
            Some(i) => Some(Int(i)),
            None => decode_float(v).map(Float),
        }
    }

    fn add(&self, b: &Num) -> Result<Num> {
        Ok(match (self, b) {
            (T(x), T(y)) => T(x.f_add(y)?),
            (T(x), n) | (n, T(x)) => T(x.f_add_scalar(n.scalar())?),
            (Int(x), Int(y)) => Int(x + y),
            (a, b) => Float(a.f64()? + b.f64()?),
        })
    }

    fn sub(&self, b: &Num) -> Result<Num> {
        Ok(match (self, b) {
            (T(x), T(y)) => T(x.f_sub(y)?),
            (T(x), n) => T(x.f_sub_scalar(n.scalar())?),
            // Tensor.__rsub__: torch.rsub(tensor, number).
            (n, T(y)) => T(y.f_rsub_scalar(n.scalar())?),
            (Int(x), Int(y)) => Int(x - y),
            (a, b) => Float(a.f64()? - b.f64()?),
        })
    }

    fn mul(&self, b: &Num) -> Result<Num> {
        Ok(match (self, b) {
            (T(x), T(y)) => T(x.f_mul(y)?),
            (T(x), n) | (n, T(x)) => T(x.f_mul_scalar(n.scalar())?),
            (Int(x), Int(y)) => Int(x * y),
            (a, b) => Float(a.f64()? * b.f64()?),
        })
    }

    fn div(&self, b: &Num) -> Result<Num> {
        Ok(match (self, b) {
            (T(x), T(y)) => T(x.f_div(y)?),
            (T(x), n) => T(x.f_div_scalar(n.scalar())?),
            // Tensor.__rtruediv__: `self.reciprocal() * other`.
            (n, T(y)) => T(y.f_reciprocal()?.f_mul_scalar(n.scalar())?),
            (a, b) => {
                let d = b.f64()?;
                if d == 0.0 {
                    return Err(Error::Torch("LBFGS line search: float division by zero".into()));
                }
                Float(a.f64()? / d)
            }
        })
    }

    fn abs(&self) -> Result<Num> {
        Ok(match self {
            Int(i) => Int(i.abs()),
            Float(f) => Float(f.abs()),
            T(t) => T(t.f_abs()?),
        })
    }

    /// `self < b` as Python evaluates it (a tensor result through `bool()`).
    fn lt(&self, b: &Num) -> Result<bool> {
        self.compare(b, Cmp::Lt)
    }
    fn le(&self, b: &Num) -> Result<bool> {
        self.compare(b, Cmp::Le)
    }
    fn gt(&self, b: &Num) -> Result<bool> {
        self.compare(b, Cmp::Gt)
    }
    fn ge(&self, b: &Num) -> Result<bool> {
        self.compare(b, Cmp::Ge)
    }

    fn compare(&self, b: &Num, op: Cmp) -> Result<bool> {
        let t = match (self, b) {
            (T(x), T(y)) => match op {
                Cmp::Lt => x.f_lt_tensor(y)?,
                Cmp::Le => x.f_le_tensor(y)?,
                Cmp::Gt => x.f_gt_tensor(y)?,
                Cmp::Ge => x.f_ge_tensor(y)?,
            },
            (T(x), n) => op.scalar(x, n.scalar())?,
            // number OP tensor: Python calls the tensor's reflected operator.
            (n, T(y)) => op.reflected().scalar(y, n.scalar())?,
            (Int(x), Int(y)) => return Ok(op.holds(x.cmp(y))),
            (a, b) => {
                let (x, y) = (a.f64()?, b.f64()?);
                return Ok(match op {
                    Cmp::Lt => x < y,
                    Cmp::Le => x <= y,
                    Cmp::Gt => x > y,
                    Cmp::Ge => x >= y,
                });
            }
        };
        truth(&t)
    }

    fn to_json(&self) -> Option<Value> {
        match self {
            Int(i) => Some(Value::from(*i)),
            Float(f) => Some(encode_float(*f)),
            T(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn reflected(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
        }
    }

    fn scalar(self, x: &Tensor, s: Scalar) -> Result<Tensor> {
        Ok(match self {
            Cmp::Lt => x.f_lt(s)?,
            Cmp::Le => x.f_le(s)?,
            Cmp::Gt => x.f_gt(s)?,
            Cmp::Ge => x.f_ge(s)?,
        })
    }

    fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Lt => o == Less,
            Cmp::Le => o != Greater,
            Cmp::Gt => o == Greater,
            Cmp::Ge => o != Less,
        }
    }
}

/// `bool(tensor)` of a one-element tensor.
fn truth(t: &Tensor) -> Result<bool> {
    Ok(t.f_int64_value(&[])? != 0)
}

/// Python's `max(a, b)`: `b` if `b > a`, else `a`.
fn py_max(a: &Num, b: &Num) -> Result<Num> {
    Ok(if b.gt(a)? { b.dup() } else { a.dup() })
}

/// Python's `min(a, b)`: `b` if `b < a`, else `a`.
fn py_min(a: &Num, b: &Num) -> Result<Num> {
    Ok(if b.lt(a)? { b.dup() } else { a.dup() })
}

/// A group's hyperparameters, read once per step.
#[derive(Debug)]
pub(super) struct LbfgsHp {
    lr: Num,
    max_iter: i64,
    max_eval: i64,
    tolerance_grad: f64,
    tolerance_change: f64,
    history_size: i64,
    strong_wolfe: bool,
}

impl LbfgsHp {
    pub(super) fn read(g: &ParamGroup) -> Result<Self> {
        let int = |key: &str| {
            g.get(key).and_then(Value::as_i64).ok_or_else(|| Error::InvalidState {
                what: format!("param_groups key {key:?}"),
                reason: "must be an integer".into(),
            })
        };
        let lr = g
            .get("lr")
            .and_then(Num::from_json)
            .ok_or_else(|| Error::InvalidState {
                what: "param_groups key \"lr\"".into(),
                reason: "must be a number".into(),
            })?;
        Ok(LbfgsHp {
            lr,
            max_iter: int("max_iter")?,
            max_eval: int("max_eval")?,
            tolerance_grad: g.f64("tolerance_grad")?,
            tolerance_change: g.f64("tolerance_change")?,
            history_size: int("history_size")?,
            strong_wolfe: match g.get("line_search_fn") {
                None | Some(Value::Null) => false,
                Some(Value::String(s)) if s == "strong_wolfe" => true,
                Some(v) => {
                    return Err(Error::Usage(format!(
                        "LBFGS: only 'strong_wolfe' is supported, got {v}"
                    )))
                }
            },
        })
    }
}

/// A state in the file layout: (JSON values, tensors by key).
pub(crate) type Layout = (Map<String, Value>, Vec<(String, Tensor)>);

/// LBFGS's state (PyTorch's `state[params[0]]`). `None` in an `Option`
/// field: the key is absent; `Some(None)`: present and None.
#[derive(Debug, Default)]
pub(crate) struct LbfgsState {
    func_evals: Option<i64>,
    n_iter: Option<i64>,
    d: Option<Option<Tensor>>,
    t: Option<Option<Num>>,
    old_dirs: Option<Option<Vec<Tensor>>>,
    old_stps: Option<Option<Vec<Tensor>>>,
    ro: Option<Option<Vec<Tensor>>>,
    h_diag: Option<Option<Num>>,
    prev_flat_grad: Option<Option<Tensor>>,
    prev_loss: Option<Option<f64>>,
    al: Option<Vec<Option<Tensor>>>,
}

/// The flat view helpers over the parameters (PyTorch's `_gather_flat_grad`,
/// `_add_grad`, `_clone_param`, `_set_param`).
struct Flat<'p> {
    params: &'p [Tensor],
    numel: i64,
}

impl Flat<'_> {
    fn gather_grad(&self) -> Result<Tensor> {
        let mut views = Vec::with_capacity(self.params.len());
        for p in self.params {
            let g = p.f_grad()?;
            views.push(if g.defined() {
                g.f_view([-1])?
            } else {
                Tensor::f_zeros([p.numel() as i64], (p.kind(), p.device()))?
            });
        }
        Ok(Tensor::f_cat(&views, 0)?)
    }

    fn add_grad(&self, step_size: &Num, update: &Tensor) -> Result<()> {
        let alpha = step_size.f64()?;
        let _guard = tch::no_grad_guard();
        let mut offset = 0;
        for p in self.params {
            let numel = p.numel() as i64;
            let mut p = p.shallow_clone();
            let view = update.f_narrow(0, offset, numel)?.f_view_as(&p)?;
            kernels::add_(&mut p, &view, alpha)?;
            offset += numel;
        }
        if offset != self.numel {
            return Err(Error::Torch(format!("LBFGS: offset {offset} != numel {}", self.numel)));
        }
        Ok(())
    }

    fn clone_params(&self) -> Result<Vec<Tensor>> {
        let _guard = tch::no_grad_guard();
        self.params.iter().map(|p| fresh(&p.f_detach()?)).collect()
    }

    fn set_params(&self, x: &[Tensor]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (p, data) in self.params.iter().zip(x) {
            p.shallow_clone().f_copy_(data)?;
        }
        Ok(())
    }
}

/// `t.clone(memory_format=torch.contiguous_format)`: a new contiguous tensor.
fn fresh(t: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::f_empty(t.size(), (t.kind(), t.device()))?;
    out.f_copy_(t)?;
    Ok(out)
}

/// The closure of a step: PyTorch runs it with grad mode enabled.
fn evaluate(closure: &mut dyn FnMut() -> Result<f64>) -> Result<f64> {
    tch::with_grad(closure)
}

/// `flat.abs().max() <= tol` (a tensor compared with a Python float).
fn abs_max_le(flat: &Tensor, tol: f64) -> Result<bool> {
    truth(&flat.f_abs()?.f_max()?.f_le(tol)?)
}

fn missing(key: &str) -> Error {
    Error::InvalidState {
        what: format!("LBFGS state {key:?}"),
        reason: "is None or absent where the step needs it".into(),
    }
}

impl LbfgsState {
    /// Whether PyTorch's `state[params[0]]` has any key.
    pub(crate) fn is_empty(&self) -> bool {
        self.func_evals.is_none() && self.n_iter.is_none()
    }

    /// One `LBFGS.step(closure)`; returns the closure's first loss.
    pub(super) fn step(
        &mut self,
        hp: &LbfgsHp,
        params: &[Tensor],
        closure: &mut dyn FnMut() -> Result<f64>,
    ) -> Result<f64> {
        let flat = Flat {
            params,
            numel: params.iter().map(|p| p.numel() as i64).sum(),
        };
        self.func_evals.get_or_insert(0);
        self.n_iter.get_or_insert(0);

        let orig_loss = evaluate(closure)?;
        let mut loss = orig_loss;
        let mut current_evals = 1;
        *self.func_evals.as_mut().expect("set above") += 1;

        let mut flat_grad = flat.gather_grad()?;
        let mut opt_cond = abs_max_le(&flat_grad, hp.tolerance_grad)?;
        if opt_cond {
            return Ok(orig_loss);
        }

        let mut d = self.d.take().flatten();
        let mut t = self.t.take().flatten();
        let mut old_dirs = self.old_dirs.take().flatten();
        let mut old_stps = self.old_stps.take().flatten();
        let mut ro = self.ro.take().flatten();
        let mut h_diag = self.h_diag.take().flatten();
        let mut prev_flat_grad = self.prev_flat_grad.take().flatten();
        let mut prev_loss = self.prev_loss.take().flatten();
        // Put back what was taken whatever happens below (the step writes
        // them all at its end, as PyTorch does).
        let result = (|| -> Result<()> {
            let mut n_iter = 0;
            while n_iter < hp.max_iter {
                n_iter += 1;
                let state_n_iter = {
                    let n = self.n_iter.as_mut().expect("set above");
                    *n += 1;
                    *n
                };

                // compute gradient descent direction
                if state_n_iter == 1 {
                    d = Some(flat_grad.f_neg()?);
                    old_dirs = Some(Vec::new());
                    old_stps = Some(Vec::new());
                    ro = Some(Vec::new());
                    h_diag = Some(Int(1));
                } else {
                    let (dirs, stps, ros) = match (old_dirs.as_mut(), old_stps.as_mut(), ro.as_mut()) {
                        (Some(a), Some(b), Some(c)) => (a, b, c),
                        _ => return Err(missing("old_dirs")),
                    };
                    let prev = prev_flat_grad.as_ref().ok_or_else(|| missing("prev_flat_grad"))?;
                    let dir = d.as_ref().ok_or_else(|| missing("d"))?;
                    let step_t = t.as_ref().ok_or_else(|| missing("t"))?;
                    let y = flat_grad.f_sub(prev)?;
                    let s = mul_num(dir, step_t)?;
                    let ys = y.f_dot(&s)?;
                    if truth(&ys.f_gt(1e-10)?)? {
                        if dirs.len() as i64 == hp.history_size {
                            drop(dirs.remove(0));
                            drop(stps.remove(0));
                            drop(ros.remove(0));
                        }
                        dirs.push(y.shallow_clone());
                        stps.push(s);
                        // `1.0 / ys`: Tensor.__rtruediv__.
                        ros.push(ys.f_reciprocal()?.f_mul_scalar(1.0)?);
                        h_diag = Some(T(ys.f_div(&y.f_dot(&y)?)?));
                    }
                    let num_old = dirs.len();
                    let al = self
                        .al
                        .get_or_insert_with(|| (0..hp.history_size).map(|_| None).collect());
                    if al.len() < num_old {
                        return Err(Error::InvalidState {
                            what: "LBFGS state \"al\"".into(),
                            reason: format!("has {} entries, the history {num_old}", al.len()),
                        });
                    }
                    let mut q = flat_grad.f_neg()?;
                    for i in (0..num_old).rev() {
                        let a = stps[i].f_dot(&q)?.f_mul(&ros[i])?;
                        kernels::add_(&mut q, &dirs[i], a.f_neg()?.f_double_value(&[])?)?;
                        al[i] = Some(a);
                    }
                    let mut r = match h_diag.as_ref().ok_or_else(|| missing("H_diag"))? {
                        T(h) => q.f_mul(h)?,
                        n => q.f_mul_scalar(n.scalar())?,
                    };
                    for i in 0..num_old {
                        let be_i = dirs[i].f_dot(&r)?.f_mul(&ros[i])?;
                        let a = al[i].as_ref().expect("set in the loop above");
                        kernels::add_(&mut r, &stps[i], a.f_sub(&be_i)?.f_double_value(&[])?)?;
                    }
                    d = Some(r);
                }

                match prev_flat_grad.as_mut() {
                    None => prev_flat_grad = Some(fresh(&flat_grad)?),
                    Some(prev) => {
                        prev.f_copy_(&flat_grad)?;
                    }
                }
                prev_loss = Some(loss);

                // compute step length
                let step_t = if state_n_iter == 1 {
                    let inv = T(flat_grad
                        .f_abs()?
                        .f_sum(None::<Kind>)?
                        .f_reciprocal()?
                        .f_mul_scalar(1.0)?);
                    py_min(&Float(1.0), &inv)?.mul(&hp.lr)?
                } else {
                    hp.lr.dup()
                };
                t = Some(step_t);
                let dir = d.as_ref().expect("set above");
                let gtd = flat_grad.f_dot(dir)?;
                if truth(&gtd.f_gt(-hp.tolerance_change)?)? {
                    break;
                }

                let mut ls_func_evals = 0;
                if hp.strong_wolfe {
                    let x_init = flat.clone_params()?;
                    let found = strong_wolfe(
                        &mut |step: &Num| {
                            flat.add_grad(step, dir)?;
                            let loss = evaluate(closure)?;
                            let grad = flat.gather_grad()?;
                            flat.set_params(&x_init)?;
                            Ok((loss, grad))
                        },
                        t.take().expect("set above"),
                        dir,
                        loss,
                        &flat_grad,
                        &gtd,
                        hp.tolerance_change,
                        hp.max_eval - current_evals,
                    )?;
                    loss = found.f;
                    flat_grad = found.g;
                    t = Some(found.t);
                    ls_func_evals = found.evals;
                    flat.add_grad(t.as_ref().expect("set above"), dir)?;
                    opt_cond = abs_max_le(&flat_grad, hp.tolerance_grad)?;
                } else {
                    flat.add_grad(t.as_ref().expect("set above"), dir)?;
                    if n_iter != hp.max_iter {
                        loss = evaluate(closure)?;
                        flat_grad = flat.gather_grad()?;
                        opt_cond = abs_max_le(&flat_grad, hp.tolerance_grad)?;
                        ls_func_evals = 1;
                    }
                }
                current_evals += ls_func_evals;
                *self.func_evals.as_mut().expect("set above") += ls_func_evals;

                // check conditions
                if n_iter == hp.max_iter || current_evals >= hp.max_eval || opt_cond {
                    break;
                }
                let moved = mul_num(d.as_ref().expect("set above"), t.as_ref().expect("set above"))?;
                if abs_max_le(&moved, hp.tolerance_change)? {
                    break;
                }
                if (loss - prev_loss.expect("set above")).abs() < hp.tolerance_change {
                    break;
                }
            }
            Ok(())
        })();
        self.d = Some(d);
        self.t = Some(t);
        self.old_dirs = Some(old_dirs);
        self.old_stps = Some(old_stps);
        self.ro = Some(ro);
        self.h_diag = Some(h_diag);
        self.prev_flat_grad = Some(prev_flat_grad);
        self.prev_loss = Some(prev_loss);
        result.map(|()| orig_loss)
    }

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

/// `d.mul(t)` with `t` a number or a 0-d tensor.
fn mul_num(d: &Tensor, t: &Num) -> Result<Tensor> {
    Ok(match t {
        T(x) => d.f_mul(x)?,
        n => d.f_mul_scalar(n.scalar())?,
    })
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

/// What the line search found.
struct Found {
    f: f64,
    g: Tensor,
    t: Num,
    evals: i64,
}

/// PyTorch's `_cubic_interpolate`.
fn cubic_interpolate(
    x1: &Num,
    f1: f64,
    g1: &Tensor,
    x2: &Num,
    f2: f64,
    g2: &Tensor,
    bounds: Option<(Num, Num)>,
) -> Result<Num> {
    let (xmin_bound, xmax_bound) = match bounds {
        Some(b) => b,
        None if x1.le(x2)? => (x1.dup(), x2.dup()),
        None => (x2.dup(), x1.dup()),
    };
    let (g1, g2) = (T(g1.shallow_clone()), T(g2.shallow_clone()));
    // d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    let d1 = g1.add(&g2)?.sub(&Float(3.0 * (f1 - f2)).div(&x1.sub(x2)?)?)?;
    let T(d1t) = &d1 else { unreachable!("g1 is a tensor") };
    let d2_square = T(d1t.f_pow_tensor_scalar(2)?).sub(&g1.mul(&g2)?)?;
    if d2_square.ge(&Int(0))? {
        let T(sq) = &d2_square else { unreachable!("a tensor") };
        let d2 = T(sq.f_sqrt()?);
        let two_d2 = Int(2).mul(&d2)?;
        let min_pos = if x1.le(x2)? {
            x2.sub(
                &x2.sub(x1)?
                    .mul(&g2.add(&d2)?.sub(&d1)?.div(&g2.sub(&g1)?.add(&two_d2)?)?)?,
            )?
        } else {
            x1.sub(
                &x1.sub(x2)?
                    .mul(&g1.add(&d2)?.sub(&d1)?.div(&g1.sub(&g2)?.add(&two_d2)?)?)?,
            )?
        };
        py_min(&py_max(&min_pos, &xmin_bound)?, &xmax_bound)
    } else {
        xmin_bound.add(&xmax_bound)?.div(&Float(2.0))
    }
}

/// PyTorch's `_strong_wolfe` (c1 1e-4, c2 0.9). `obj` evaluates the loss
/// and flat gradient at step `t` along `d` and restores the parameters.
#[allow(clippy::too_many_arguments)]
fn strong_wolfe(
    obj: &mut dyn FnMut(&Num) -> Result<(f64, Tensor)>,
    mut t: Num,
    d: &Tensor,
    f: f64,
    g: &Tensor,
    gtd: &Tensor,
    tolerance_change: f64,
    max_ls: i64,
) -> Result<Found> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    let d_norm = T(d.f_abs()?.f_max()?);
    let g = fresh(g)?;
    let (mut f_new, mut g_new) = obj(&t)?;
    let mut ls_func_evals = 1;
    let mut gtd_new = g_new.f_dot(d)?;
    let gtd_n = T(gtd.shallow_clone());
    // f + c1 * t * gtd
    let armijo = |t: &Num| -> Result<Num> { Float(f).add(&Float(C1).mul(t)?.mul(&gtd_n)?) };
    // -c2 * gtd
    let curvature = gtd.f_mul_scalar(-C2)?;

    let (mut t_prev, mut f_prev, mut g_prev, mut gtd_prev) = (Int(0), f, g.shallow_clone(), gtd.shallow_clone());
    let mut done = false;
    let mut ls_iter = 0;
    let mut bracket: Vec<Num> = Vec::new();
    let mut bracket_f: Vec<f64> = Vec::new();
    let mut bracket_g: Vec<Tensor> = Vec::new();
    let mut bracket_gtd: Vec<Tensor> = Vec::new();
    while ls_iter < max_ls {
        if Float(f_new).gt(&armijo(&t)?)? || (ls_iter > 1 && f_new >= f_prev) {
            bracket = vec![t_prev.dup(), t.dup()];
            bracket_f = vec![f_prev, f_new];
            bracket_g = vec![g_prev.shallow_clone(), fresh(&g_new)?];
            bracket_gtd = vec![gtd_prev.shallow_clone(), gtd_new.shallow_clone()];
            break;
        }
        if truth(&gtd_new.f_abs()?.f_le_tensor(&curvature)?)? {
            bracket = vec![t.dup()];
            bracket_f = vec![f_new];
            bracket_g = vec![g_new.shallow_clone()];
            done = true;
            break;
        }
        if truth(&gtd_new.f_ge(0i64)?)? {
            bracket = vec![t_prev.dup(), t.dup()];
            bracket_f = vec![f_prev, f_new];
            bracket_g = vec![g_prev.shallow_clone(), fresh(&g_new)?];
            bracket_gtd = vec![gtd_prev.shallow_clone(), gtd_new.shallow_clone()];
            break;
        }
        // interpolate
        let min_step = t.add(&Float(0.01).mul(&t.sub(&t_prev)?)?)?;
        let max_step = t.mul(&Int(10))?;
        let tmp = t.dup();
        t = cubic_interpolate(
            &t_prev,
            f_prev,
            &gtd_prev,
            &t,
            f_new,
            &gtd_new,
            Some((min_step, max_step)),
        )?;
        // next step
        t_prev = tmp;
        f_prev = f_new;
        g_prev = fresh(&g_new)?;
        gtd_prev = gtd_new.shallow_clone();
        (f_new, g_new) = obj(&t)?;
        ls_func_evals += 1;
        gtd_new = g_new.f_dot(d)?;
        ls_iter += 1;
    }
    if ls_iter == max_ls {
        bracket = vec![Int(0), t.dup()];
        bracket_f = vec![f, f_new];
        bracket_g = vec![g.shallow_clone(), g_new.shallow_clone()];
    }

    // zoom phase
    let mut insuf_progress = false;
    let last = bracket_f.len() - 1;
    let (mut low_pos, mut high_pos) = if bracket_f[0] <= bracket_f[last] {
        (0, 1)
    } else {
        (1, 0)
    };
    while !done && ls_iter < max_ls {
        if bracket[1]
            .sub(&bracket[0])?
            .abs()?
            .mul(&d_norm)?
            .lt(&Float(tolerance_change))?
        {
            break;
        }
        t = cubic_interpolate(
            &bracket[0],
            bracket_f[0],
            &bracket_gtd[0],
            &bracket[1],
            bracket_f[1],
            &bracket_gtd[1],
            None,
        )?;
        let b_max = py_max(&bracket[0], &bracket[1])?;
        let b_min = py_min(&bracket[0], &bracket[1])?;
        let eps = Float(0.1).mul(&b_max.sub(&b_min)?)?;
        if py_min(&b_max.sub(&t)?, &t.sub(&b_min)?)?.lt(&eps)? {
            if insuf_progress || t.ge(&b_max)? || t.le(&b_min)? {
                t = if t.sub(&b_max)?.abs()?.lt(&t.sub(&b_min)?.abs()?)? {
                    b_max.sub(&eps)?
                } else {
                    b_min.add(&eps)?
                };
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }

        (f_new, g_new) = obj(&t)?;
        ls_func_evals += 1;
        gtd_new = g_new.f_dot(d)?;
        ls_iter += 1;

        if Float(f_new).gt(&armijo(&t)?)? || f_new >= bracket_f[low_pos] {
            bracket[high_pos] = t.dup();
            bracket_f[high_pos] = f_new;
            bracket_g[high_pos] = fresh(&g_new)?;
            bracket_gtd[high_pos] = gtd_new.shallow_clone();
            (low_pos, high_pos) = if bracket_f[0] <= bracket_f[1] { (0, 1) } else { (1, 0) };
        } else {
            if truth(&gtd_new.f_abs()?.f_le_tensor(&curvature)?)? {
                done = true;
            } else if T(gtd_new.shallow_clone())
                .mul(&bracket[high_pos].sub(&bracket[low_pos])?)?
                .ge(&Int(0))?
            {
                bracket[high_pos] = bracket[low_pos].dup();
                bracket_f[high_pos] = bracket_f[low_pos];
                bracket_g[high_pos] = bracket_g[low_pos].shallow_clone();
                bracket_gtd[high_pos] = bracket_gtd[low_pos].shallow_clone();
            }
            bracket[low_pos] = t.dup();
            bracket_f[low_pos] = f_new;
            bracket_g[low_pos] = fresh(&g_new)?;
            bracket_gtd[low_pos] = gtd_new.shallow_clone();
        }
    }
    Ok(Found {
        f: bracket_f[low_pos],
        g: bracket_g[low_pos].shallow_clone(),
        t: bracket[low_pos].dup(),
        evals: ls_func_evals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_number_arithmetic() {
        assert!(matches!(Int(3).add(&Int(4)).unwrap(), Int(7)));
        assert!(matches!(Int(3).div(&Int(2)).unwrap(), Float(f) if f == 1.5));
        assert!(Int(1).div(&Float(0.0)).is_err());
        let t = T(Tensor::from(2.0f32));
        let Num::T(r) = Float(1.0).div(&t).unwrap() else {
            panic!()
        };
        assert_eq!(r.double_value(&[]), 0.5);
        assert!(Float(1.0).lt(&t).unwrap());
        assert!(matches!(py_max(&Int(0), &Float(0.0)).unwrap(), Int(0)));
    }
}

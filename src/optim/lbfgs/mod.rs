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
//!
//! - num.rs: [`Num`], Python's number arithmetic over numbers and 0-d tensors;
//! - line_search.rs: `_strong_wolfe` and `_cubic_interpolate`;
//! - layout.rs: the state to and from the file layout.

mod layout;
mod line_search;
mod num;

use serde_json::{Map, Value};
use tch::{Kind, Tensor};

use self::line_search::strong_wolfe;
use self::num::Num::{self, Float, Int, T};
use self::num::{py_min, truth};
use super::kernels;
use super::options::{hp, Hp, Ty, ANY, NON_NEG};
use super::ParamGroup;
use crate::error::{Error, Result};

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
}

/// `d.mul(t)` with `t` a number or a 0-d tensor.
fn mul_num(d: &Tensor, t: &Num) -> Result<Tensor> {
    Ok(match t {
        T(x) => d.f_mul(x)?,
        n => d.f_mul_scalar(n.scalar())?,
    })
}

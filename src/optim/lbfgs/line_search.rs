//! PyTorch's `_strong_wolfe` line search and `_cubic_interpolate`, op for op.

use tch::Tensor;

use super::fresh;
use super::num::Num::{self, Float, Int, T};
use super::num::{py_max, py_min, truth};
use crate::error::Result;

/// What the line search found.
pub(super) struct Found {
    pub(super) f: f64,
    pub(super) g: Tensor,
    pub(super) t: Num,
    pub(super) evals: i64,
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
pub(super) fn strong_wolfe(
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

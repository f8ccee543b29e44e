//! Python numbers and 0-d tensors with Python's arithmetic, as LBFGS
//! computes its step length, `H_diag` and the line search's brackets.

use serde_json::Value;
use tch::{Scalar, Tensor};

use crate::error::{Error, Result};
use crate::format::metadata::{decode_float, encode_float};

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
    pub(super) fn dup(&self) -> Num {
        match self {
            Int(i) => Int(*i),
            Float(f) => Float(*f),
            T(t) => T(t.shallow_clone()),
        }
    }

    pub(super) fn scalar(&self) -> Scalar {
        match self {
            Int(i) => Scalar::int(*i),
            Float(f) => Scalar::float(*f),
            T(_) => unreachable!("scalar() of a tensor"),
        }
    }

    pub(super) fn f64(&self) -> Result<f64> {
        Ok(match self {
            Int(i) => *i as f64,
            Float(f) => *f,
            // A 0-d tensor passed as a Scalar argument: `.item()`.
            T(t) => t.f_double_value(&[])?,
        })
    }

    /// A JSON number hyperparameter as Python has it (int or float).
    pub(super) fn from_json(v: &Value) -> Option<Num> {
        match v.as_i64() {
            Some(i) => Some(Int(i)),
            None => decode_float(v).map(Float),
        }
    }

    pub(super) fn add(&self, b: &Num) -> Result<Num> {
        Ok(match (self, b) {
            (T(x), T(y)) => T(x.f_add(y)?),
            (T(x), n) | (n, T(x)) => T(x.f_add_scalar(n.scalar())?),
            (Int(x), Int(y)) => Int(x + y),
            (a, b) => Float(a.f64()? + b.f64()?),
        })
    }

    pub(super) fn sub(&self, b: &Num) -> Result<Num> {
        Ok(match (self, b) {
            (T(x), T(y)) => T(x.f_sub(y)?),
            (T(x), n) => T(x.f_sub_scalar(n.scalar())?),
            // Tensor.__rsub__: torch.rsub(tensor, number).
            (n, T(y)) => T(y.f_rsub_scalar(n.scalar())?),
            (Int(x), Int(y)) => Int(x - y),
            (a, b) => Float(a.f64()? - b.f64()?),
        })
    }

    pub(super) fn mul(&self, b: &Num) -> Result<Num> {
        Ok(match (self, b) {
            (T(x), T(y)) => T(x.f_mul(y)?),
            (T(x), n) | (n, T(x)) => T(x.f_mul_scalar(n.scalar())?),
            (Int(x), Int(y)) => Int(x * y),
            (a, b) => Float(a.f64()? * b.f64()?),
        })
    }

    pub(super) fn div(&self, b: &Num) -> Result<Num> {
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

    pub(super) fn abs(&self) -> Result<Num> {
        Ok(match self {
            Int(i) => Int(i.abs()),
            Float(f) => Float(f.abs()),
            T(t) => T(t.f_abs()?),
        })
    }

    /// `self < b` as Python evaluates it (a tensor result through `bool()`).
    pub(super) fn lt(&self, b: &Num) -> Result<bool> {
        self.compare(b, Cmp::Lt)
    }
    pub(super) fn le(&self, b: &Num) -> Result<bool> {
        self.compare(b, Cmp::Le)
    }
    pub(super) fn gt(&self, b: &Num) -> Result<bool> {
        self.compare(b, Cmp::Gt)
    }
    pub(super) fn ge(&self, b: &Num) -> Result<bool> {
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

    pub(super) fn to_json(&self) -> Option<Value> {
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
pub(super) fn truth(t: &Tensor) -> Result<bool> {
    Ok(t.f_int64_value(&[])? != 0)
}

/// Python's `max(a, b)`: `b` if `b > a`, else `a`.
pub(super) fn py_max(a: &Num, b: &Num) -> Result<Num> {
    Ok(if b.gt(a)? { b.dup() } else { a.dup() })
}

/// Python's `min(a, b)`: `b` if `b < a`, else `a`.
pub(super) fn py_min(a: &Num, b: &Num) -> Result<Num> {
    Ok(if b.lt(a)? { b.dup() } else { a.dup() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn python_number_arithmetic() {
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

//! Python's number semantics where the schedulers depend on them: a number
//! that remembers whether Python holds it as an `int` or a `float` (PyTorch
//! stores kwargs such as `min_lr=0` verbatim, so its `state_dict()` has `0`,
//! not `0.0`), and the float operations that raise in Python instead of
//! returning inf or NaN (`x / 0.0`, `n % 0`, `math.cos(inf)`, `0.0 ** -1`).
//! Everything else is plain IEEE f64 arithmetic, which is what CPython does.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::format::metadata::{decode_float, encode_float};

/// A Python number as PyTorch keeps it: an `int` or a `float`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    /// The value as Python's `float(x)` gives it.
    pub(crate) fn f(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    /// JSON: an integer for an `int`, a float (or the format's non-finite
    /// encoding) for a `float`.
    pub(crate) fn to_json(self) -> Value {
        match self {
            Num::Int(i) => Value::from(i),
            Num::Float(x) => encode_float(x),
        }
    }

    /// Reads what [`to_json`](Self::to_json) writes: a JSON integer is an
    /// `int`, anything else numeric a `float`.
    pub(crate) fn from_json(v: &Value) -> Option<Num> {
        match v {
            Value::Number(n) if n.is_i64() => n.as_i64().map(Num::Int),
            _ => decode_float(v).map(Num::Float),
        }
    }

    /// `self ** exp` for an integer exponent, as Python computes it: an
    /// exact integer power for an `int` base, C's `pow` for a `float`.
    pub(crate) fn pow_int(self, exp: i64) -> Result<f64> {
        if let (Num::Int(base), Ok(e)) = (self, u32::try_from(exp)) {
            if let Some(p) = base.checked_pow(e) {
                return Ok(p as f64);
            }
        }
        pow(self.f(), exp as f64)
    }
}

fn raised(what: &str) -> Error {
    Error::Usage(format!("{what} (PyTorch raises here)"))
}

/// `a / b` for floats; Python raises ZeroDivisionError on a zero divisor.
pub(crate) fn div(a: f64, b: f64) -> Result<f64> {
    if b == 0.0 {
        return Err(raised("ZeroDivisionError: float division by zero"));
    }
    Ok(a / b)
}

/// `a % b` for ints: floored, the result takes the divisor's sign.
pub(crate) fn floor_mod(a: i64, b: i64) -> Result<i64> {
    if b == 0 {
        return Err(raised("ZeroDivisionError: integer modulo by zero"));
    }
    let r = a.wrapping_rem(b);
    Ok(if r != 0 && ((r < 0) != (b < 0)) { r + b } else { r })
}

/// `a // b` for ints: floored.
pub(crate) fn floor_div(a: i64, b: i64) -> Result<i64> {
    if b == 0 {
        return Err(raised("ZeroDivisionError: integer division or modulo by zero"));
    }
    let q = a
        .checked_div(b)
        .ok_or_else(|| Error::Usage("integer overflow past i64 (Python ints are unbounded)".into()))?;
    Ok(if a % b != 0 && ((a < 0) != (b < 0)) { q - 1 } else { q })
}

/// `math.cos(x)`: glibc's cos, and a ValueError for an infinite argument.
pub(crate) fn cos(x: f64) -> Result<f64> {
    if x.is_infinite() {
        return Err(raised("ValueError: math domain error in math.cos"));
    }
    Ok(x.cos())
}

/// `base ** exp` for floats: glibc's pow, and Python's errors where C would
/// return inf (overflow, zero to a negative power) or Python a complex
/// number (a negative base to a fractional power).
pub(crate) fn pow(base: f64, exp: f64) -> Result<f64> {
    if base == 0.0 && exp < 0.0 {
        return Err(raised("ZeroDivisionError: zero to a negative power"));
    }
    if base < 0.0 && base.is_finite() && exp.is_finite() && exp.fract() != 0.0 {
        return Err(raised("a negative number to a fractional power is complex in Python"));
    }
    let r = base.powf(exp);
    if r.is_infinite() && base.is_finite() && exp.is_finite() {
        return Err(raised("OverflowError: numerical result out of range"));
    }
    Ok(r)
}

/// Checked `a + b` for Python ints, which do not overflow.
pub(crate) fn add_int(a: i64, b: i64) -> Result<i64> {
    a.checked_add(b)
        .ok_or_else(|| Error::Usage("integer overflow past i64 (Python ints are unbounded)".into()))
}

/// Checked `a * b` for Python ints.
pub(crate) fn mul_int(a: i64, b: i64) -> Result<i64> {
    a.checked_mul(b)
        .ok_or_else(|| Error::Usage("integer overflow past i64 (Python ints are unbounded)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_mod_follows_the_divisor_sign() {
        assert_eq!(floor_mod(-7, 3).unwrap(), 2);
        assert_eq!(floor_mod(7, -3).unwrap(), -2);
        assert_eq!(floor_mod(-6, 3).unwrap(), 0);
        assert_eq!(floor_mod(7, 3).unwrap(), 1);
        assert!(floor_mod(1, 0).is_err());
        assert_eq!(floor_div(-7, 3).unwrap(), -3);
        assert_eq!(floor_div(7, -3).unwrap(), -3);
        assert_eq!(floor_div(-6, 3).unwrap(), -2);
        assert_eq!(floor_div(7, 3).unwrap(), 2);
        assert!(floor_div(1, 0).is_err());
    }

    #[test]
    fn nums_keep_their_python_type_through_json() {
        assert_eq!(Num::from_json(&Value::from(0)), Some(Num::Int(0)));
        assert_eq!(Num::from_json(&Value::from(0.0)), Some(Num::Float(0.0)));
        assert_eq!(Num::Int(3).to_json(), Value::from(3));
        assert_eq!(
            Num::from_json(&encode_float(f64::INFINITY)),
            Some(Num::Float(f64::INFINITY))
        );
        assert_eq!(Num::from_json(&Value::Bool(true)), None);
    }

    #[test]
    fn python_errors_instead_of_inf_or_nan() {
        assert!(div(1.0, 0.0).is_err());
        assert!(div(1.0, -0.0).is_err());
        assert!(cos(f64::INFINITY).is_err());
        assert!(cos(f64::NAN).unwrap().is_nan());
        assert!(pow(0.0, -1.0).is_err());
        assert!(pow(-0.5, 0.5).is_err());
        assert!(pow(10.0, 400.0).is_err());
        assert_eq!(pow(-2.0, 3.0).unwrap(), -8.0);
        assert_eq!(Num::Int(3).pow_int(2).unwrap(), 9.0);
    }
}

//! Non-finite floats inside the internals (FORMAT.md section 3.4): JSON
//! has no NaN or infinity, so optimizer and scheduler state writes them as
//! `{"__float__": "inf" | "-inf" | "nan"}`.

use serde_json::{Map, Number, Value};

/// Encodes a float for the internals: finite values as JSON numbers,
/// non-finite ones as `{"__float__": "inf" | "-inf" | "nan"}`.
pub fn encode_float(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None => {
            let tag = if x.is_nan() {
                "nan"
            } else if x > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            let mut m = Map::new();
            m.insert("__float__".into(), tag.into());
            Value::Object(m)
        }
    }
}

/// Decodes what [`encode_float`] wrote; `None` if `v` is neither form.
pub fn decode_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Object(m) if m.len() == 1 => match m.get("__float__")?.as_str()? {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_including_non_finite() {
        for x in [0.0, -1.5, 1e300, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(decode_float(&encode_float(x)), Some(x));
        }
        assert!(decode_float(&encode_float(f64::NAN)).unwrap().is_nan());
        let text = serde_json::to_string(&encode_float(f64::INFINITY)).unwrap();
        assert_eq!(text, r#"{"__float__":"inf"}"#);
    }
}

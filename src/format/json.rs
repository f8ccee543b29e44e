//! JSON parsing that refuses duplicate object keys at any depth.
//!
//! serde_json keeps the last of two equal keys silently; two readers that
//! disagree on which duplicate wins is how one file means two things, so
//! v1 forbids duplicates and the reader rejects them.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let Strict(value) = access.next_value()?;
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Parses any JSON value, refusing duplicate keys anywhere in it; the
/// error is serde_json's message (a duplicate names its key).
pub(crate) fn parse_value(text: &str) -> Result<Value, String> {
    let Strict(v) = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(v)
}

/// Parses a JSON object, refusing duplicate keys anywhere in it.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    match parse_value(text)? {
        Value::Object(m) => Ok(m),
        _ => Err("top level is not a JSON object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_object(br#"{"a": 1, "b": {"c": 1}}"#).is_ok());
        let e = parse_object(br#"{"a": 1, "a": 2}"#).unwrap_err();
        assert!(e.contains("duplicate key \"a\""), "{e}");
        let e = parse_object(br#"{"x": [{"c": 1, "c": 1}]}"#).unwrap_err();
        assert!(e.contains("duplicate key \"c\""), "{e}");
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"\xff").is_err());
    }

    #[test]
    fn any_value_parses_with_the_same_rule() {
        assert_eq!(
            parse_value("[1, {\"a\": null}]").unwrap(),
            serde_json::json!([1, {"a": null}])
        );
        let e = parse_value(r#"[{"k": 1, "k": 1}]"#).unwrap_err();
        assert!(e.contains("duplicate key \"k\""), "{e}");
        assert!(parse_value("{").is_err());
    }
}

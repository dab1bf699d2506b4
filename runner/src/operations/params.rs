//! Reading task params (a JSON object) with `invalid_params` errors that name the field.
//!
//! Only shape checks live here (types, ranges, unknown keys); what a value means — e.g. whether a
//! column exists — is checked by the operation that knows.

use dap_protocol::{failure, TaskError};
use serde_json::{Map, Value};

/// The params object of one task.
#[derive(Debug)]
pub struct Params<'a> {
    map: &'a Map<String, Value>,
}

pub fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::new(failure::INVALID_PARAMS, message)
}

impl<'a> Params<'a> {
    /// Params must be a JSON object; a missing params (`null`) counts as `{}`.
    pub fn new(value: &'a Value) -> Result<Self, TaskError> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match value {
            Value::Object(map) => Ok(Self { map }),
            Value::Null => Ok(Self {
                map: EMPTY.get_or_init(Map::new),
            }),
            _ => Err(invalid("params must be a JSON object")),
        }
    }

    /// Refuse keys the operation does not know, so a typo (`colums`) is not silently ignored.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), TaskError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(invalid(format!(
                "params.{k} is not a parameter of this operation (expected: {})",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    pub fn required_str(&self, field: &str) -> Result<&'a str, TaskError> {
        match self.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(invalid(format!("params.{field} must be a string"))),
            None => Err(invalid(format!("params.{field} is required"))),
        }
    }

    /// An optional integer in `min..=max`, `default` when absent or null.
    pub fn u64_in(&self, field: &str, default: u64, min: u64, max: u64) -> Result<u64, TaskError> {
        let Some(v) = self.get(field) else {
            return Ok(default);
        };
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(invalid(format!(
                "params.{field} must be an integer between {min} and {max} (got {v})"
            ))),
        }
    }

    /// An optional non-empty array of distinct strings.
    pub fn string_list(&self, field: &str) -> Result<Option<Vec<String>>, TaskError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| invalid(format!("params.{field} must be an array of strings")))?;
        if items.is_empty() {
            return Err(invalid(format!(
                "params.{field} must not be empty (omit it to mean all)"
            )));
        }
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let s = item
                .as_str()
                .ok_or_else(|| invalid(format!("params.{field} must be an array of strings")))?;
            if out.iter().any(|seen| seen == s) {
                return Err(invalid(format!("params.{field} lists `{s}` twice")));
            }
            out.push(s.to_owned());
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        let v = json!({"s": "x", "n": 5, "l": ["a", "b"], "bad": -1, "z": null});
        let p = Params::new(&v).unwrap();
        assert_eq!(p.required_str("s").unwrap(), "x");
        assert!(p
            .required_str("n")
            .unwrap_err()
            .message
            .contains("params.n"));
        assert!(p
            .required_str("z")
            .unwrap_err()
            .message
            .contains("required"));
        assert_eq!(p.u64_in("n", 1, 0, 10).unwrap(), 5);
        assert_eq!(p.u64_in("missing", 7, 0, 10).unwrap(), 7);
        assert_eq!(p.u64_in("z", 7, 0, 10).unwrap(), 7);
        assert!(p.u64_in("bad", 1, 0, 10).is_err());
        assert!(p
            .u64_in("n", 1, 0, 4)
            .unwrap_err()
            .message
            .contains("params.n"));
        assert_eq!(p.string_list("l").unwrap().unwrap(), vec!["a", "b"]);
        assert!(p.string_list("s").is_err());
        assert!(p
            .deny_unknown(&["s"])
            .unwrap_err()
            .message
            .contains("params."));
        assert!(Params::new(&json!([1])).is_err());
        assert!(Params::new(&Value::Null).is_ok());
        let dup = json!({"l": ["a", "a"]});
        assert!(Params::new(&dup).unwrap().string_list("l").is_err());
        let empty = json!({"l": []});
        assert!(Params::new(&empty).unwrap().string_list("l").is_err());
    }
}

//! Reading task params (a JSON object) with `invalid_params` errors that name the field.
//!
//! Only shape checks live here (types, ranges, unknown keys); what a value means — e.g. whether a
//! column exists — is checked by the operation that knows. Nested objects (a filter predicate, a
//! sort key) are read the same way through [`Params::at`], so their errors name the full path
//! (`params.group_by.aggregations[1].fn`).

use dap_protocol::{failure, TaskError};
use serde_json::{Map, Value};

/// The params object of one task, or an object nested in it.
#[derive(Debug)]
pub struct Params<'a> {
    map: &'a Map<String, Value>,
    /// Where this object sits, for messages: `params`, `params.sort[0]`, …
    prefix: String,
}

/// A parameter spelled as one of a fixed set of names (an operator, an aggregation, a model, a
/// format): one table gives parsing, the canonical name and the list for error messages.
pub trait Named: Copy + PartialEq + 'static {
    /// Every accepted name with its value, in the order messages list them.
    const NAMES: &'static [(&'static str, Self)];

    fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }

    /// `"a, b, c"`, for "expected one of" messages.
    fn names() -> String {
        Self::NAMES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::new(failure::INVALID_PARAMS, message)
}

impl<'a> Params<'a> {
    /// Params must be a JSON object; a missing params (`null`) counts as `{}`.
    pub fn new(value: &'a Value) -> Result<Self, TaskError> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match value {
            Value::Null => Ok(Self {
                map: EMPTY.get_or_init(Map::new),
                prefix: "params".to_owned(),
            }),
            other => Self::at(other, "params"),
        }
    }

    /// An object nested in the params, found at `prefix` (e.g. `params.sort[0]`).
    pub fn at(value: &'a Value, prefix: impl Into<String>) -> Result<Self, TaskError> {
        let prefix = prefix.into();
        match value {
            Value::Object(map) => Ok(Self { map, prefix }),
            _ => Err(invalid(format!("{prefix} must be a JSON object"))),
        }
    }

    /// Where this object sits (`params`, `params.sort[0]`, …).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Refuse keys the operation does not know, so a typo (`colums`) is not silently ignored.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), TaskError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) if self.prefix == "params" => Err(invalid(format!(
                "params.{k} is not a parameter of this operation (expected: {})",
                known.join(", ")
            ))),
            Some(k) => Err(invalid(format!(
                "{}.{k} is not accepted here (expected: {})",
                self.prefix,
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// The value of `field`, unless absent or null.
    pub fn value(&self, field: &str) -> Option<&'a Value> {
        self.get(field)
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    pub fn required_str(&self, field: &str) -> Result<&'a str, TaskError> {
        let prefix = &self.prefix;
        match self.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(invalid(format!("{prefix}.{field} must be a string"))),
            None => Err(invalid(format!("{prefix}.{field} is required"))),
        }
    }

    /// An optional non-empty string.
    pub fn optional_str(&self, field: &str) -> Result<Option<&'a str>, TaskError> {
        let prefix = &self.prefix;
        match self.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => Err(invalid(format!(
                "{prefix}.{field} must be a non-empty string"
            ))),
            None => Ok(None),
        }
    }

    /// An optional boolean, `default` when absent or null.
    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool, TaskError> {
        match self.get(field) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(invalid(format!(
                "{}.{field} must be true or false",
                self.prefix
            ))),
            None => Ok(default),
        }
    }

    /// An optional integer in `min..=max`; `None` when absent or null.
    pub fn optional_u64_in(
        &self,
        field: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, TaskError> {
        match self.get(field) {
            Some(_) => self.u64_in(field, min, min, max).map(Some),
            None => Ok(None),
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
                "{}.{field} must be an integer between {min} and {max} (got {})",
                self.prefix,
                shorten_json(v)
            ))),
        }
    }

    /// An optional non-empty array of distinct strings.
    pub fn string_list(&self, field: &str) -> Result<Option<Vec<String>>, TaskError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let prefix = &self.prefix;
        let items = v
            .as_array()
            .ok_or_else(|| invalid(format!("{prefix}.{field} must be an array of strings")))?;
        if items.is_empty() {
            return Err(invalid(format!(
                "{prefix}.{field} must not be empty (omit it to mean all)"
            )));
        }
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let s = item
                .as_str()
                .ok_or_else(|| invalid(format!("{prefix}.{field} must be an array of strings")))?;
            if out.iter().any(|seen| seen == s) {
                return Err(invalid(format!("{prefix}.{field} lists `{s}` twice")));
            }
            out.push(s.to_owned());
        }
        Ok(Some(out))
    }
}

/// Where an operation reads its table from: a declared dataset (`params.dataset`) or the kept
/// output of an earlier task on this runner (`params.input = {"task_id": …}`), exactly one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRef {
    Dataset(String),
    Task(String),
}

/// Longest task id accepted in `params.input.task_id` (server ids are 36-character UUIDs).
const MAX_TASK_ID_LEN: usize = 64;

impl SourceRef {
    /// Read `dataset` / `input` from an operation's params.
    pub fn parse(p: &Params<'_>) -> Result<Self, TaskError> {
        let Some(input) = p.value("input") else {
            return p
                .required_str("dataset")
                .map(|d| SourceRef::Dataset(d.to_owned()))
                .map_err(|e| {
                    if p.value("dataset").is_none() {
                        invalid(
                            "params.dataset is required (the name of a declared dataset), \
                             or params.input = {\"task_id\": …} to read an earlier task's output",
                        )
                    } else {
                        e
                    }
                });
        };
        if p.value("dataset").is_some() {
            return Err(invalid(
                "params.dataset and params.input are exclusive: give one of them",
            ));
        }
        let input = Params::at(input, "params.input")?;
        input.deny_unknown(&["task_id"])?;
        let id = input.required_str("task_id")?;
        if id.is_empty()
            || id.len() > MAX_TASK_ID_LEN
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(TaskError::new(
                failure::PATH_NOT_ALLOWED,
                format!(
                    "params.input.task_id must be a task id (letters, digits and `-`), got {}",
                    shorten_json(&Value::from(id))
                ),
            ));
        }
        Ok(SourceRef::Task(id.to_owned()))
    }

    /// How messages and results name it: the dataset's name, or `task:<id>` (dataset names
    /// cannot contain `:`, so the two never collide).
    pub fn label(&self) -> String {
        match self {
            SourceRef::Dataset(name) => name.clone(),
            SourceRef::Task(id) => format!("task:{id}"),
        }
    }
}

impl From<&str> for SourceRef {
    fn from(name: &str) -> Self {
        SourceRef::Dataset(name.to_owned())
    }
}

/// A JSON value for a message: its text, cut short so a huge value does not flood the error.
pub fn shorten_json(v: &Value) -> String {
    const MAX: usize = 80;
    let text = v.to_string();
    if text.chars().count() <= MAX {
        text
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_source_is_a_dataset_or_an_earlier_task_never_both_never_a_path() {
        let parse = |v: Value| SourceRef::parse(&Params::new(&v).unwrap());
        assert_eq!(
            parse(json!({"dataset": "sales"})).unwrap(),
            SourceRef::Dataset("sales".into())
        );
        let id = "0192f0e2-aaaa-7bbb-8ccc-0123456789ab";
        let t = parse(json!({"input": {"task_id": id}})).unwrap();
        assert_eq!(t, SourceRef::Task(id.into()));
        assert_eq!(t.label(), format!("task:{id}"));
        let e = parse(json!({})).unwrap_err();
        assert!(e.message.contains("params.dataset") && e.message.contains("params.input"));
        let e = parse(json!({"dataset": "a", "input": {"task_id": id}})).unwrap_err();
        assert!(e.message.contains("exclusive"), "{}", e.message);
        for bad in [
            json!("x"),
            json!({}),
            json!({"task_id": 5}),
            json!({"task_id": id, "x": 1}),
        ] {
            let e = parse(json!({ "input": bad })).unwrap_err();
            assert_eq!(e.code, failure::INVALID_PARAMS, "{bad}: {e:?}");
            assert!(e.message.contains("params.input"), "{}", e.message);
        }
        for bad in ["../etc/passwd", "/tmp/x", "a b", "", &"x".repeat(65)] {
            let e = parse(json!({"input": {"task_id": bad}})).unwrap_err();
            assert_eq!(e.code, failure::PATH_NOT_ALLOWED, "{bad}: {e:?}");
        }
    }

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

    #[test]
    fn nested_objects_name_their_path() {
        let v = json!({"column": "a", "descending": "yes", "n": 3, "e": ""});
        let p = Params::at(&v, "params.sort[2]").unwrap();
        assert_eq!(p.prefix(), "params.sort[2]");
        let e = p.bool_or("descending", false).unwrap_err();
        assert!(
            e.message.contains("params.sort[2].descending"),
            "{}",
            e.message
        );
        assert!(p.bool_or("missing", true).unwrap());
        assert_eq!(p.optional_str("column").unwrap(), Some("a"));
        assert_eq!(p.optional_str("missing").unwrap(), None);
        assert!(p.optional_str("e").is_err());
        assert_eq!(p.optional_u64_in("n", 0, 5).unwrap(), Some(3));
        assert_eq!(p.optional_u64_in("missing", 0, 5).unwrap(), None);
        let e = p.optional_u64_in("n", 0, 2).unwrap_err();
        assert!(e.message.contains("params.sort[2].n"), "{}", e.message);
        let e = p.deny_unknown(&["column"]).unwrap_err();
        assert!(e.message.starts_with("params.sort[2]."), "{}", e.message);
        let e = Params::at(&json!([1]), "params.where").unwrap_err();
        assert_eq!(e.message, "params.where must be a JSON object");
        let long = json!("x".repeat(500));
        assert!(shorten_json(&long).chars().count() <= 81);
    }
}

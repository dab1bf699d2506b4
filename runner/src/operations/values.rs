//! Converting polars values to JSON for results: numbers stay numbers, non-finite floats and
//! nulls become `null`, strings stay strings, and anything else (dates, lists, …) uses polars'
//! own text form, which for dates is ISO 8601.
//!
//! It does not decide which rows or columns to convert; the operation does.

use polars::prelude::*;
use serde_json::{Number, Value};

/// One polars value as JSON.
pub fn to_json(value: AnyValue<'_>) -> Value {
    match value {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::String(s) => Value::String(s.to_owned()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::UInt8(v) => Value::from(v),
        AnyValue::UInt16(v) => Value::from(v),
        AnyValue::UInt32(v) => Value::from(v),
        AnyValue::UInt64(v) => Value::from(v),
        AnyValue::Int8(v) => Value::from(v),
        AnyValue::Int16(v) => Value::from(v),
        AnyValue::Int32(v) => Value::from(v),
        AnyValue::Int64(v) => Value::from(v),
        // Wider than JSON numbers can carry exactly: keep the digits as text.
        AnyValue::Int128(v) => match i64::try_from(v) {
            Ok(v) => Value::from(v),
            Err(_) => Value::String(v.to_string()),
        },
        // Through the shortest decimal text, so 1.1f32 is 1.1 and not 1.100000023841858.
        AnyValue::Float32(v) => float(v.to_string().parse::<f64>().unwrap_or(f64::NAN)),
        AnyValue::Float64(v) => float(v),
        other => Value::String(other.to_string()),
    }
}

fn float(v: f64) -> Value {
    // from_f64 refuses NaN and ±inf, which JSON cannot represent.
    Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// A data frame as row-major JSON arrays, in column order.
pub fn rows(df: &DataFrame) -> PolarsResult<Vec<Vec<Value>>> {
    let height = df.height();
    let mut rows: Vec<Vec<Value>> = (0..height)
        .map(|_| Vec::with_capacity(df.width()))
        .collect();
    for column in df.get_columns() {
        let series = column.as_materialized_series();
        for (i, row) in rows.iter_mut().enumerate() {
            row.push(to_json(series.get(i)?));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars() {
        assert_eq!(to_json(AnyValue::Null), Value::Null);
        assert_eq!(to_json(AnyValue::Int64(-3)), json!(-3));
        assert_eq!(to_json(AnyValue::UInt64(u64::MAX)), json!(u64::MAX));
        assert_eq!(to_json(AnyValue::Float64(2.5)), json!(2.5));
        assert_eq!(to_json(AnyValue::Float32(1.1)), json!(1.1));
        assert_eq!(to_json(AnyValue::Float64(f64::NAN)), Value::Null);
        assert_eq!(to_json(AnyValue::Float64(f64::INFINITY)), Value::Null);
        assert_eq!(to_json(AnyValue::Boolean(true)), json!(true));
        assert_eq!(to_json(AnyValue::String("a\"b")), json!("a\"b"));
        assert_eq!(
            to_json(AnyValue::Int128(i128::MAX)),
            json!(i128::MAX.to_string())
        );
    }

    #[test]
    fn row_major() {
        let df = df!(
            "a" => [Some(1i64), None],
            "b" => ["x", "y"],
            "c" => [0.5f64, f64::NAN],
        )
        .unwrap();
        assert_eq!(
            rows(&df).unwrap(),
            vec![
                vec![json!(1), json!("x"), json!(0.5)],
                vec![Value::Null, json!("y"), Value::Null],
            ]
        );
    }
}

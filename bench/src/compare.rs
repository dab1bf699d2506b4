//! Checks that two grouped results are the same table: DAP's op-200 output against pandas'.
//!
//! Tables are `columns` + `rows` (JSON arrays, as DAP's result and `pandas_filter.py` print them).
//! Rows are matched by their key columns (order does not matter; a null key is its own group),
//! key and integer cells must be equal, float cells equal to a relative tolerance. It does not
//! compute anything itself.

use std::collections::BTreeMap;

use serde_json::Value;

/// One table as both sides print it.
#[derive(Debug, Clone)]
pub struct Table<'a> {
    pub columns: Vec<&'a str>,
    pub rows: &'a [Value],
}

impl<'a> Table<'a> {
    /// `{"columns": [...], "rows": [[...]]}` → a table; `None` when the shape is wrong.
    pub fn from_json(v: &'a Value) -> Option<Self> {
        let columns = v["columns"]
            .as_array()?
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()?;
        let rows = v["rows"].as_array()?;
        Some(Self { columns, rows })
    }
}

/// What to compare: the key columns, the exact (integer) columns and the float columns.
pub struct Spec<'a> {
    pub keys: &'a [&'a str],
    pub exact: &'a [&'a str],
    pub approx: &'a [&'a str],
    /// Largest accepted |a − b| / max(|a|, |b|) for the float columns.
    pub rel_tol: f64,
}

/// Ok(number of groups) when both tables hold the same rows; otherwise a message naming the
/// first difference found.
pub fn same_groups(dap: &Table<'_>, other: &Table<'_>, spec: &Spec<'_>) -> Result<usize, String> {
    let a = index(dap, spec, "DAP")?;
    let b = index(other, spec, "pandas")?;
    if let Some(k) = a.keys().find(|k| !b.contains_key(*k)) {
        return Err(format!("group {k} is in DAP's result but not in pandas'"));
    }
    if let Some(k) = b.keys().find(|k| !a.contains_key(*k)) {
        return Err(format!("group {k} is in pandas' result but not in DAP's"));
    }
    for (key, ra) in &a {
        let rb = &b[key];
        for (i, name) in spec.exact.iter().enumerate() {
            let (x, y) = (&ra[i], &rb[i]);
            let same = match (x.as_i64(), y.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.is_null() && y.is_null(),
            };
            if !same {
                return Err(format!("group {key}: {name} is {x} in DAP, {y} in pandas"));
            }
        }
        for (i, name) in spec.approx.iter().enumerate() {
            let (x, y) = (&ra[spec.exact.len() + i], &rb[spec.exact.len() + i]);
            let same = match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    let scale = x.abs().max(y.abs());
                    scale == 0.0 || (x - y).abs() / scale <= spec.rel_tol
                }
                _ => x.is_null() && y.is_null(),
            };
            if !same {
                return Err(format!(
                    "group {key}: {name} is {x} in DAP, {y} in pandas (tolerance {:e} relative)",
                    spec.rel_tol
                ));
            }
        }
    }
    Ok(a.len())
}

/// Key (as JSON text) → the exact then the approx cells of that row.
fn index<'v>(
    t: &Table<'v>,
    spec: &Spec<'_>,
    side: &str,
) -> Result<BTreeMap<String, Vec<&'v Value>>, String> {
    let at = |name: &str| {
        t.columns.iter().position(|c| *c == name).ok_or_else(|| {
            format!(
                "{side}'s result has no column `{name}` (has {:?})",
                t.columns
            )
        })
    };
    let keys = spec
        .keys
        .iter()
        .map(|k| at(k))
        .collect::<Result<Vec<_>, _>>()?;
    let values = spec
        .exact
        .iter()
        .chain(spec.approx)
        .map(|k| at(k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = BTreeMap::new();
    for (n, row) in t.rows.iter().enumerate() {
        let cells = row
            .as_array()
            .filter(|c| c.len() == t.columns.len())
            .ok_or_else(|| format!("{side}'s row {n} does not have {} cells", t.columns.len()))?;
        let key = Value::from(keys.iter().map(|&i| cells[i].clone()).collect::<Vec<_>>());
        let key = key.to_string();
        let picked = values.iter().map(|&i| &cells[i]).collect();
        if out.insert(key.clone(), picked).is_some() {
            return Err(format!("{side}'s result holds group {key} twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPEC: Spec<'static> = Spec {
        keys: &["region", "category"],
        exact: &["count"],
        approx: &["amount_sum", "amount_mean"],
        rel_tol: 1e-9,
    };

    fn dap() -> Value {
        json!({
            "columns": ["region", "category", "amount_sum", "amount_mean", "count"],
            "rows": [
                ["east", "books", 1000.25, 500.125, 2],
                ["east", null, 10.0, 10.0, 1],
                ["west", "toys", 0.0, null, 3],
            ],
        })
    }

    fn check(other: Value) -> Result<usize, String> {
        let d = dap();
        same_groups(
            &Table::from_json(&d).unwrap(),
            &Table::from_json(&other).unwrap(),
            &SPEC,
        )
    }

    #[test]
    fn same_table_in_another_order_and_column_order_matches() {
        let other = json!({
            "columns": ["category", "region", "count", "amount_mean", "amount_sum"],
            "rows": [
                ["toys", "west", 3, null, 0.0],
                [null, "east", 1, 10.0, 10.0],
                // Within 1e-9 relative.
                ["books", "east", 2, 500.125 * (1.0 + 1e-12), 1000.25 * (1.0 - 1e-12)],
            ],
        });
        assert_eq!(check(other), Ok(3));
    }

    #[test]
    fn differences_are_named() {
        let base = dap();
        let mutate = |row: usize, col: usize, v: Value| {
            let mut t = base.clone();
            t["rows"][row][col] = v;
            check(t).unwrap_err()
        };
        let e = mutate(0, 4, json!(3));
        assert!(e.contains("count") && e.contains("\"books\""), "{e}");
        let e = mutate(0, 2, json!(1000.25 * (1.0 + 1e-8)));
        assert!(e.contains("amount_sum"), "{e}");
        let e = mutate(2, 3, json!(1.0));
        assert!(e.contains("amount_mean"), "{e}");
        let e = mutate(1, 1, json!("music"));
        assert!(e.contains("not in"), "{e}");

        let mut fewer = base.clone();
        fewer["rows"].as_array_mut().unwrap().pop();
        assert!(check(fewer).unwrap_err().contains("\"toys\""));

        let mut twice = base.clone();
        let first = twice["rows"][0].clone();
        twice["rows"].as_array_mut().unwrap().push(first);
        assert!(check(twice).unwrap_err().contains("twice"));

        let missing = json!({"columns": ["region", "category"], "rows": []});
        assert!(check(missing).unwrap_err().contains("no column"));
    }
}

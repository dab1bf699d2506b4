//! Operation 100, fetch raw data: a dataset's schema, its row count and one page of rows.
//!
//! Reads lazily (polars `LazyCsvReader` via the catalog): the schema from a sample, the count
//! through a lazy `len()`, and only the requested slice of the requested columns (a page within
//! the first 100,000 rows from a prefix of the file, `Dataset::head`). It does not filter, sort
//! or aggregate (that is operation 200).
//!
//! Counting rows means reading the whole file, while the schema and a first page need only its
//! start; so files above [`COUNT_MAX_BYTES`] are not counted unless the task asks
//! (`count_rows: true`): their `row_count` is null and `row_count_skipped` true.
//!
//! Params: `dataset` (required), `columns` (optional list), `limit` (0–10000, default 100),
//! `offset` (default 0), `count_rows` (true / false; default: only files up to
//! [`COUNT_MAX_BYTES`]). Result: `{dataset, schema, row_count, row_count_skipped, columns, rows,
//! offset, limit}`.

use dap_protocol::TaskError;
use polars::prelude::*;
use serde_json::{json, Value};

use super::params::{invalid, Params, SourceRef};
use super::{check_cancelled, values};
use crate::catalog::{columns_of, count_rows_or_cancel, Catalog};
use crate::progress::ProgressReporter;

pub const DEFAULT_LIMIT: u64 = 100;
pub const MAX_LIMIT: u64 = 10_000;
/// Largest file counted for `row_count` when the task does not say (the same bound the catalog
/// uses at start): 256 MiB of CSV count in well under a second; a 1 GB one is read for nothing
/// when all a UI wants is the columns and a first page.
pub const COUNT_MAX_BYTES: u64 = crate::catalog::COUNT_AT_START_MAX_BYTES;
/// Pages ending within this many rows are read from a prefix of the file, not by a scan.
const HEAD_MAX_ROWS: u64 = 100_000;

/// Validated params of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchParams {
    pub dataset: SourceRef,
    pub columns: Option<Vec<String>>,
    pub limit: u64,
    pub offset: u64,
    /// `None`: count when the file is at most [`COUNT_MAX_BYTES`].
    pub count_rows: Option<bool>,
}

impl FetchParams {
    pub fn parse(value: &Value) -> Result<Self, TaskError> {
        let p = Params::new(value)?;
        p.deny_unknown(&[
            "dataset",
            "input",
            "columns",
            "limit",
            "offset",
            "count_rows",
        ])?;
        let count_rows = match p.value("count_rows") {
            Some(_) => Some(p.bool_or("count_rows", false)?),
            None => None,
        };
        Ok(Self {
            dataset: SourceRef::parse(&p)?,
            columns: p.string_list("columns")?,
            limit: p.u64_in("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)?,
            // polars slices take an i64 offset.
            offset: p.u64_in("offset", 0, 0, i64::MAX as u64)?,
            count_rows,
        })
    }
}

/// Run a fetch. Blocking.
pub fn run(
    params: &Value,
    catalog: &Catalog,
    progress: &ProgressReporter,
) -> Result<Value, TaskError> {
    run_counting_up_to(params, catalog, progress, COUNT_MAX_BYTES)
}

/// [`run`] with the size bound for counting as a parameter (tests use a small one).
fn run_counting_up_to(
    params: &Value,
    catalog: &Catalog,
    progress: &ProgressReporter,
    count_max_bytes: u64,
) -> Result<Value, TaskError> {
    let p = FetchParams::parse(params)?;
    let dataset = catalog.source(&p.dataset)?;

    progress.report(5, "reading schema");
    let mut lf = dataset.scan()?;
    let schema = lf.collect_schema().map_err(|e| dataset.data_error(&e))?;
    let columns = match p.columns {
        Some(cols) => {
            if let Some(unknown) = cols.iter().find(|c| !schema.contains(c.as_str())) {
                return Err(invalid(format!(
                    "params.columns: dataset `{}` has no column `{unknown}`",
                    dataset.name()
                )));
            }
            cols
        }
        None => schema.iter_names().map(|n| n.to_string()).collect(),
    };
    check_cancelled(progress)?;

    let count = match p.count_rows {
        Some(asked) => asked,
        // Kept outputs and Parquet count from metadata; big text files are not counted.
        None => dataset.file_len()?.is_none_or(|len| len <= count_max_bytes),
    };
    let row_count = if count {
        progress.report(20, "counting rows");
        let n = count_rows_or_cancel(lf.clone(), progress)?.map_err(|e| dataset.data_error(&e))?;
        check_cancelled(progress)?;
        Some(n)
    } else {
        None
    };

    progress.report(60, "reading page");
    let past_end = row_count.is_some_and(|n| p.offset >= n);
    let rows = if p.limit == 0 || past_end {
        Vec::new()
    } else {
        let exprs: Vec<Expr> = columns.iter().map(|c| col(c.as_str())).collect();
        let end = p.offset.saturating_add(p.limit);
        // limit ≤ MAX_LIMIT, so it fits polars' index type.
        let head = if end <= HEAD_MAX_ROWS {
            // A page near the start of a CSV: read just enough of the file (`Dataset::head`).
            dataset.head(end as usize, schema.clone())?
        } else {
            None
        };
        let page = if let Some(head) = head {
            head.lazy()
                .select(exprs)
                .slice(p.offset as i64, p.limit as IdxSize)
        } else {
            lf.select(exprs).slice(p.offset as i64, p.limit as IdxSize)
        }
        .collect()
        .map_err(|e| dataset.data_error(&e))?;
        check_cancelled(progress)?;
        progress.report(90, "converting");
        values::rows(&page).map_err(|e| dataset.data_error(&e))?
    };

    Ok(json!({
        "dataset": dataset.name(),
        "schema": columns_of(&schema),
        "row_count": row_count,
        "row_count_skipped": row_count.is_none(),
        "columns": columns,
        "rows": rows,
        "offset": p.offset,
        "limit": p.limit,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::ProgressUpdate;
    use crate::test_support::TempDir;
    use dap_protocol::failure;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const SALES: &str = "\
date,region,product,units,unit_price,paid
2024-01-01,north,widget,3,2.5,true
2024-01-02,south,gadget,,10.0,false
2024-01-03,east,widget,7,2.5,true
2024-01-04,west,gizmo,1,99.99,
2024-01-05,north,gadget,4,10.0,true
";

    fn catalog(dir: &TempDir) -> Catalog {
        let path = dir.write("sales.csv", SALES);
        crate::test_support::csv_catalog("sales", &path)
    }

    fn fetch(cat: &Catalog, params: Value) -> Result<Value, TaskError> {
        run(&params, cat, &ProgressReporter::discard())
    }

    #[test]
    fn schema_count_and_default_page() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let r = fetch(&cat, json!({"dataset": "sales"})).unwrap();
        assert_eq!(r["dataset"], "sales");
        assert_eq!(r["row_count"], 5);
        assert_eq!(r["offset"], 0);
        assert_eq!(r["limit"], 100);
        assert_eq!(
            r["schema"],
            json!([
                {"name": "date", "dtype": "str"},
                {"name": "region", "dtype": "str"},
                {"name": "product", "dtype": "str"},
                {"name": "units", "dtype": "i64"},
                {"name": "unit_price", "dtype": "f64"},
                {"name": "paid", "dtype": "bool"},
            ])
        );
        assert_eq!(
            r["columns"],
            json!(["date", "region", "product", "units", "unit_price", "paid"])
        );
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(
            rows[0],
            json!(["2024-01-01", "north", "widget", 3, 2.5, true])
        );
        // Empty cells are nulls.
        assert_eq!(rows[1][3], Value::Null);
        assert_eq!(rows[3][5], Value::Null);
        assert_eq!(rows[3][4], json!(99.99));
    }

    #[test]
    fn columns_subset_offset_and_limit() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let r = fetch(
            &cat,
            json!({"dataset": "sales", "columns": ["units", "region"], "offset": 1, "limit": 2}),
        )
        .unwrap();
        assert_eq!(r["row_count"], 5);
        assert_eq!(r["columns"], json!(["units", "region"]));
        assert_eq!(r["rows"], json!([[null, "south"], [7, "east"]]));
        assert_eq!(r["offset"], 1);
        assert_eq!(r["limit"], 2);
        // The schema is the whole dataset's, not the page's.
        assert_eq!(r["schema"].as_array().unwrap().len(), 6);

        let tail = fetch(
            &cat,
            json!({"dataset": "sales", "columns": ["product"], "offset": 4}),
        )
        .unwrap();
        assert_eq!(tail["rows"], json!([["gadget"]]));
        let past = fetch(&cat, json!({"dataset": "sales", "offset": 50})).unwrap();
        assert_eq!(past["rows"], json!([]));
        assert_eq!(past["row_count"], 5);
        let none = fetch(&cat, json!({"dataset": "sales", "limit": 0})).unwrap();
        assert_eq!(none["rows"], json!([]));
        assert_eq!(none["columns"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn big_files_are_not_counted_unless_asked() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let size = SALES.len() as u64;
        let fetch_with = |params: Value, bound: u64| {
            run_counting_up_to(&params, &cat, &ProgressReporter::discard(), bound).unwrap()
        };
        // At the bound it is counted; one byte above it is not.
        let counted = fetch_with(json!({"dataset": "sales"}), size);
        assert_eq!(counted["row_count"], 5);
        assert_eq!(counted["row_count_skipped"], false);
        let skipped = fetch_with(json!({"dataset": "sales", "limit": 2}), size - 1);
        assert_eq!(skipped["row_count"], Value::Null);
        assert_eq!(skipped["row_count_skipped"], true);
        // Schema and page are there all the same.
        assert_eq!(skipped["schema"], counted["schema"]);
        assert_eq!(
            skipped["rows"],
            json!([
                ["2024-01-01", "north", "widget", 3, 2.5, true],
                ["2024-01-02", "south", "gadget", null, 10.0, false],
            ])
        );
        // Without a count, an offset past the end is simply an empty page.
        let past = fetch_with(json!({"dataset": "sales", "offset": 50}), 0);
        assert_eq!(past["rows"], json!([]));
        assert_eq!(past["row_count"], Value::Null);
        // Asking overrides the bound either way.
        let forced = fetch_with(json!({"dataset": "sales", "count_rows": true}), 0);
        assert_eq!(forced["row_count"], 5);
        assert_eq!(forced["row_count_skipped"], false);
        let declined = fetch_with(json!({"dataset": "sales", "count_rows": false}), u64::MAX);
        assert_eq!(declined["row_count"], Value::Null);
        assert_eq!(declined["row_count_skipped"], true);
        assert_eq!(declined["rows"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn invalid_params_name_the_field() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let cases = [
            (
                json!({"dataset": "sales", "columns": ["units", "nope"]}),
                "nope",
            ),
            (json!({}), "params.dataset"),
            (json!({"dataset": 5}), "params.dataset"),
            (json!({"dataset": "sales", "limit": 10001}), "params.limit"),
            (json!({"dataset": "sales", "limit": -1}), "params.limit"),
            (json!({"dataset": "sales", "offset": "3"}), "params.offset"),
            (
                json!({"dataset": "sales", "count_rows": "yes"}),
                "params.count_rows",
            ),
            (
                json!({"dataset": "sales", "columns": "units"}),
                "params.columns",
            ),
            (
                json!({"dataset": "sales", "colums": ["units"]}),
                "params.colums",
            ),
            (json!("sales"), "params"),
        ];
        for (params, needle) in cases {
            let e = fetch(&cat, params.clone()).unwrap_err();
            assert_eq!(e.code, failure::INVALID_PARAMS, "{params}: {e:?}");
            assert!(e.message.contains(needle), "{params}: {}", e.message);
        }
    }

    #[test]
    fn names_not_paths() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let e = fetch(&cat, json!({"dataset": "/etc/passwd"})).unwrap_err();
        assert_eq!(e.code, failure::PATH_NOT_ALLOWED);
        let e = fetch(&cat, json!({"dataset": "orders"})).unwrap_err();
        assert_eq!(e.code, failure::UNKNOWN_DATASET);
    }

    #[test]
    fn reports_progress_and_honours_cancel() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressUpdate>();
        let reporter = ProgressReporter::new(tx, Arc::new(AtomicBool::new(false)));
        run(&json!({"dataset": "sales"}), &cat, &reporter).unwrap();
        let mut seen = Vec::new();
        while let Ok(u) = rx.try_recv() {
            seen.push(u.percent);
        }
        assert!(seen.len() >= 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

        let cancelled = ProgressReporter::new(
            tokio::sync::mpsc::unbounded_channel().0,
            Arc::new(AtomicBool::new(false)),
        );
        cancelled.cancel_flag().store(true, Ordering::Relaxed);
        let e = run(&json!({"dataset": "sales"}), &cat, &cancelled).unwrap_err();
        assert_eq!(e.code, failure::CANCELLED);
    }

    #[test]
    fn a_file_broken_after_declaration_is_a_data_error_without_paths() {
        let dir = TempDir::new();
        let path = dir.write("good.csv", "a,b\n1,2\n3,4\n");
        let cat = crate::test_support::csv_catalog("good", &path);
        // The owner's export job rewrites the file badly: more fields than the header has.
        std::fs::write(&path, "a,b\n1,2\n3,4,5,6\n").unwrap();
        let e = fetch(&cat, json!({"dataset": "good"})).unwrap_err();
        assert_eq!(e.code, failure::DATA_ERROR, "{e:?}");
        assert!(e.message.starts_with("dataset `good`: "), "{}", e.message);
        assert!(
            !e.message.contains(dir.path().to_str().unwrap()),
            "{}",
            e.message
        );
    }
}

//! The analysis benchmarks: operation 200 (filter + group-by) on a generated 10M-row CSV through
//! the real server and runner, against pandas doing the same query on the same file; and
//! operation 100 (schema + first page) on a ~1 GB CSV.
//!
//! Every DAP figure is end to end as a client sees it: POST /tasks → the terminal SSE event.
//! The pandas figure is read + compute inside one Python process (no process start-up). Before
//! any number is printed, DAP's groups are checked against pandas' (same groups, exact counts,
//! sums and means to 1e-9 relative); a mismatch is an error, not a number.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::compare::{same_groups, Spec, Table};
use crate::datagen::{self, Size};
use crate::stack::{peak_rss_bytes, Stack};

/// The query both sides run: `amount > AMOUNT_GT AND region IN REGIONS`, grouped by region and
/// category, with sum and mean of `amount` and a row count.
const AMOUNT_GT: f64 = 500.0;
const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];
const KEYS: [&str; 2] = ["region", "category"];
const OP_FETCH: u16 = 100;
const OP_FILTER: u16 = 200;

pub struct FilterArgs {
    pub rows: u64,
    pub seed: u64,
    pub runs: usize,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub python: PathBuf,
    pub script: PathBuf,
}

/// The query in the form `pandas_filter.py` reads.
fn pandas_query() -> Value {
    json!({
        "where": [
            {"column": "amount", "op": "gt", "value": AMOUNT_GT},
            {"column": "region", "op": "in", "value": REGIONS},
        ],
        "by": KEYS,
        "aggregations": aggregations(),
    })
}

fn aggregations() -> Value {
    json!([
        {"column": "amount", "fn": "sum", "as": "amount_sum"},
        {"column": "amount", "fn": "mean", "as": "amount_mean"},
        {"fn": "count", "as": "count"},
    ])
}

/// The same query as op-200 params.
fn dap_params(dataset: &str) -> Value {
    json!({
        "dataset": dataset,
        "where": {"all": [
            {"column": "amount", "op": "gt", "value": AMOUNT_GT},
            {"column": "region", "op": "in", "value": REGIONS},
        ]},
        "group_by": {"by": KEYS, "aggregations": aggregations()},
        "preview_limit": 10_000,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Minimum and median of some timings (ms).
fn min_p50(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Read the whole file once so both sides start with it in the page cache.
fn warm_page_cache(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::copy(&mut f, &mut std::io::sink())
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn ensure_data(dir: &Path, size: Size, seed: u64) -> Result<datagen::DataFile, String> {
    let t = std::time::Instant::now();
    let f = datagen::ensure(dir, size, seed).map_err(|e| format!("generating data: {e}"))?;
    eprintln!(
        "data: {} ({:.0} MiB, {})",
        f.path.display(),
        mib(f.bytes),
        if f.reused {
            "cached".to_owned()
        } else {
            format!("generated in {:.1} s", t.elapsed().as_secs_f64())
        }
    );
    Ok(f)
}

/// A short name for the size in metric names: `10m`, `1m`, `250k`, `1234`.
pub fn size_tag(rows: u64) -> String {
    if rows >= 1_000_000 && rows.checked_rem(1_000_000) == Some(0) {
        format!("{}m", rows / 1_000_000)
    } else if rows >= 1_000 && rows.checked_rem(1_000) == Some(0) {
        format!("{}k", rows / 1_000)
    } else {
        rows.to_string()
    }
}

pub async fn filter_vs_pandas(a: &FilterArgs) -> Result<(), String> {
    let data = ensure_data(&a.data_dir, Size::Rows(a.rows), a.seed)?;
    warm_page_cache(&data.path)?;
    let tag = format!("op200_{}", size_tag(a.rows));

    // DAP, through the real binaries.
    let (dap_ms, rss, dap_result) = {
        let stack = Stack::start(&a.bin_dir, &[("bench", &data.path)]).await?;
        let params = dap_params("bench");
        let mut times = Vec::with_capacity(a.runs);
        let mut last = None;
        for i in 0..a.runs {
            let done = stack.run_task(OP_FILTER, &params).await?;
            if done.status != "completed" {
                return Err(format!("op 200 run {i} {}: {}", done.status, done.event));
            }
            eprintln!("dap run {i}: {:.0} ms", ms(done.elapsed));
            times.push(ms(done.elapsed));
            last = Some(
                done.event["task_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        let id = last.ok_or("no runs (--runs 0)")?;
        let result = stack.get(&format!("/api/v1/tasks/{id}/result")).await?;
        let rss = peak_rss_bytes(stack.runner_pid())?;
        (times, rss, result["result_data"].clone())
    };
    if dap_result["input_row_count"].as_u64() != data.rows {
        return Err(format!(
            "DAP read {} input rows, the file holds {:?}",
            dap_result["input_row_count"], data.rows
        ));
    }

    // pandas, on the same file.
    let out = Command::new(&a.python)
        .arg(&a.script)
        .arg("--csv")
        .arg(&data.path)
        .arg("--query")
        .arg(pandas_query().to_string())
        .arg("--runs")
        .arg(a.runs.to_string())
        .output()
        .map_err(|e| format!("running {}: {e}", a.python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            a.script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let pandas: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} printed no JSON: {e}", a.script.display()))?;
    let pandas_ms: Vec<f64> = pandas["runs_ms"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if pandas_ms.is_empty() {
        return Err(format!("pandas printed no timings: {pandas}"));
    }
    let pandas_rss = pandas["peak_rss_bytes"].as_u64().unwrap_or(0);

    // Same answer, or no numbers.
    let spec = Spec {
        keys: &KEYS,
        exact: &["count"],
        approx: &["amount_sum", "amount_mean"],
        rel_tol: 1e-9,
    };
    let (dap_table, pandas_table) = match (Table::from_json(&dap_result), Table::from_json(&pandas))
    {
        (Some(d), Some(p)) => (d, p),
        _ => return Err("a result is not a {columns, rows} table".into()),
    };
    let groups = same_groups(&dap_table, &pandas_table, &spec)
        .map_err(|e| format!("RESULTS DIFFER: {e}"))?;
    let matched = dap_table
        .rows
        .iter()
        .filter_map(|r| r[dap_table.columns.iter().position(|c| *c == "count")?].as_u64())
        .sum::<u64>();

    let (dap_min, dap_p50) = min_p50(dap_ms);
    let (pandas_min, pandas_p50) = min_p50(pandas_ms);
    println!("{tag}_rows: {} rows", a.rows);
    println!("{tag}_file_size: {:.0} MiB", mib(data.bytes));
    println!("{tag}_matching_rows: {matched} rows");
    println!("{tag}_groups: {groups} count");
    println!("{tag}_results_equal: 1 bool");
    println!("{tag}_dap_min: {dap_min:.0} ms");
    println!("{tag}_dap_p50: {dap_p50:.0} ms");
    println!("{tag}_pandas_min: {pandas_min:.0} ms");
    println!("{tag}_pandas_p50: {pandas_p50:.0} ms");
    println!("{tag}_speedup: {:.2} x", pandas_p50 / dap_p50);
    println!("{tag}_runner_peak_rss: {:.0} MiB", mib(rss));
    println!("{tag}_pandas_peak_rss: {:.0} MiB", mib(pandas_rss));
    Ok(())
}

pub struct FetchArgs {
    pub bytes: u64,
    pub seed: u64,
    pub runs: usize,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
}

/// `1gb`, `100mb`: the file size in metric names.
fn bytes_tag(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB && bytes.checked_rem(GIB) == Some(0) {
        format!("{}gb", bytes / GIB)
    } else {
        format!("{}mb", bytes / MIB)
    }
}

pub async fn fetch_schema(a: &FetchArgs) -> Result<(), String> {
    let data = ensure_data(&a.data_dir, Size::Bytes(a.bytes), a.seed)?;
    warm_page_cache(&data.path)?;
    let tag = format!("fetch_schema_{}", bytes_tag(a.bytes));
    let stack = Stack::start(&a.bin_dir, &[("big", &data.path)]).await?;
    let params = json!({"dataset": "big", "limit": 100});
    let mut times = Vec::with_capacity(a.runs);
    let mut last = None;
    for i in 0..a.runs {
        let done = stack.run_task(OP_FETCH, &params).await?;
        if done.status != "completed" {
            return Err(format!("op 100 run {i} {}: {}", done.status, done.event));
        }
        eprintln!("fetch run {i}: {:.0} ms", ms(done.elapsed));
        times.push(ms(done.elapsed));
        last = done.event["task_id"].as_str().map(str::to_owned);
    }
    let id = last.ok_or("no runs (--runs 0)")?;
    let result = stack.get(&format!("/api/v1/tasks/{id}/result")).await?;
    let r = &result["result_data"];
    let columns = r["schema"].as_array().map_or(0, Vec::len);
    let rows = r["rows"].as_array().map_or(0, Vec::len);
    if columns != datagen::HEADER.split(',').count() || rows != 100 {
        return Err(format!(
            "fetch returned {columns} columns and {rows} rows, expected 7 and 100"
        ));
    }
    let (min, p50) = min_p50(times);
    println!("{tag}_file_size: {:.0} MiB", mib(data.bytes));
    println!("{tag}_min: {min:.0} ms");
    println!("{tag}: {p50:.0} ms");
    println!(
        "{tag}_row_count: {} rows",
        r["row_count"]
            .as_u64()
            .map_or("null".into(), |n| n.to_string())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_tags() {
        assert_eq!(min_p50(vec![3.0, 1.0, 2.0]), (1.0, 2.0));
        assert_eq!(min_p50(vec![4.0, 1.0, 2.0, 3.0]), (1.0, 2.5));
        assert_eq!(size_tag(10_000_000), "10m");
        assert_eq!(size_tag(250_000), "250k");
        assert_eq!(size_tag(1234), "1234");
        assert_eq!(bytes_tag(1 << 30), "1gb");
        assert_eq!(bytes_tag(300 << 20), "300mb");
    }

    #[test]
    fn both_sides_run_the_same_query() {
        let p = dap_params("d");
        let q = pandas_query();
        assert_eq!(p["where"]["all"], q["where"]);
        assert_eq!(p["group_by"]["by"], q["by"]);
        assert_eq!(p["group_by"]["aggregations"], q["aggregations"]);
    }
}

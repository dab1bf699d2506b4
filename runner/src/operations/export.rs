//! Operation 400, export report: a dataset (optionally filtered like operation 200) written as
//! one file — CSV, Parquet, NDJSON, or a self-contained HTML report — shipped as an artifact,
//! with a per-column summary (like pandas' `describe()`) returned inline.
//!
//! The rows are chosen with operation 200's steps ([`filter::query`]: `where` → `group_by` →
//! `select` → `sort` → `limit`, the same params with the same checks), collected in memory,
//! summarised, and written into the task's scratch directory as `report.<ext>`:
//! - `csv`: polars' CSV writer, a header line, nulls as empty fields (`text/csv`).
//! - `parquet`: polars' Parquet writer, zstd-compressed (`application/vnd.apache.parquet`).
//! - `json`: NDJSON, one object per row with the columns in order, values as in every inline
//!   result ([`values::to_json`]: NaN/±inf and nulls are `null`, other types as text)
//!   (`application/x-ndjson`). Written with serde_json rather than polars' `json` feature, which
//!   would pull in simd-json and struct dtypes for no gain here.
//! - `html`: one file with no external CSS, script, font or image: the title, the generation
//!   time (UTC), dataset name, row and column counts, the summary tables, inline-SVG charts (a
//!   histogram of the first numeric column; bars of the most frequent values of the first
//!   non-numeric column) and a preview table of the first `preview_rows` rows. Every piece of
//!   data is HTML-escaped (`text/html; charset=utf-8`).
//!
//! Summary semantics (pandas' `describe()` defaults): integer and float columns are numeric:
//! `count` (non-null, non-NaN values), `mean`, `std` (sample, ddof 1; null below two values),
//! `min`, `25%`, `50%`, `75%` (linear interpolation between closest ranks), `max`. Any other
//! column is summarised by its text: `count`, `unique`, `top` (most frequent value; ties go to
//! the value seen first) and `freq`. `null_count` is given for both.
//!
//! Params: `dataset` (required), `format` (required: csv, parquet, json, html), `where`,
//! `select`, `sort`, `group_by`, `limit` (as operation 200), `title` (html only, default
//! "DAP report: <dataset>"), `preview_rows` (html only, 0–200, default 20).
//! Result: `{dataset, format, row_count, columns, schema, artifact, summary}` (+ `title` for
//! html). It does not read an earlier task's output (pipelines are not built yet).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use dap_protocol::{failure, TaskError};
use polars::prelude::*;
use serde_json::{json, Map, Value};

use super::filter::{self, FilterParams};
use super::params::{invalid, shorten_json, Named, Params};
use super::{check_cancelled, collect_or_cancel, values, Output};
use crate::artifacts::{LocalArtifact, Scratch};
use crate::catalog::{columns_of, Catalog};
use crate::outputs::OutputTable;
use crate::progress::ProgressReporter;

pub const DEFAULT_PREVIEW_ROWS: u64 = 20;
pub const MAX_PREVIEW_ROWS: u64 = 200;
/// Longest accepted `title`, in characters.
pub const MAX_TITLE_CHARS: usize = 500;
/// Bars in the chart of a non-numeric column's most frequent values.
const TOP_VALUES: usize = 10;
/// Rows between cancel checks while writing NDJSON.
const CANCEL_EVERY: usize = 10_000;

/// The params that mean the same as operation 200's and are handed to its parser.
const FILTER_KEYS: [&str; 7] = [
    "dataset", "input", "where", "select", "sort", "group_by", "limit",
];
const PARAMS: [&str; 10] = [
    "dataset",
    "input",
    "where",
    "select",
    "sort",
    "group_by",
    "limit",
    "format",
    "title",
    "preview_rows",
];

/// The file an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
    Json,
    Html,
}

impl Named for Format {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("csv", Format::Csv),
        ("parquet", Format::Parquet),
        ("json", Format::Json),
        ("html", Format::Html),
    ];
}

impl Format {
    /// The artifact's name: `report.<ext>`.
    pub fn artifact(self) -> &'static str {
        match self {
            Format::Csv => "report.csv",
            Format::Parquet => "report.parquet",
            Format::Json => "report.ndjson",
            Format::Html => "report.html",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Json => "application/x-ndjson",
            Format::Html => "text/html; charset=utf-8",
        }
    }
}

/// Validated params of an export, as far as they can be checked without the dataset's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportParams {
    pub filter: FilterParams,
    pub format: Format,
    /// Html only.
    pub title: Option<String>,
    /// Html only.
    pub preview_rows: u64,
}

impl ExportParams {
    pub fn parse(value: &Value) -> Result<Self, TaskError> {
        let p = Params::new(value)?;
        p.deny_unknown(&PARAMS)?;
        let format_name = p.required_str("format")?;
        let format = Format::parse(format_name).ok_or_else(|| {
            invalid(format!(
                "params.format: unknown format {} (expected one of: {})",
                shorten_json(&Value::from(format_name)),
                Format::names()
            ))
        })?;
        let title = p.optional_str("title")?.map(str::to_owned);
        if title
            .as_ref()
            .is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS)
        {
            return Err(invalid(format!(
                "params.title must be at most {MAX_TITLE_CHARS} characters"
            )));
        }
        let preview_rows = p.u64_in("preview_rows", DEFAULT_PREVIEW_ROWS, 0, MAX_PREVIEW_ROWS)?;
        if format != Format::Html {
            for field in ["title", "preview_rows"] {
                if p.value(field).is_some() {
                    return Err(invalid(format!(
                        "params.{field} applies only to format \"html\" (not \"{}\")",
                        format.name()
                    )));
                }
            }
        }
        // The row-choosing params are operation 200's; its parser checks them (and names
        // them `params.where…`, as they are named here).
        let mut subset = Map::new();
        for key in FILTER_KEYS {
            if let Some(v) = p.value(key) {
                subset.insert(key.to_owned(), v.clone());
            }
        }
        let filter = FilterParams::parse(&Value::Object(subset))?;
        Ok(Self {
            filter,
            format,
            title,
            preview_rows,
        })
    }
}

/// Summary of one numeric column (pandas' `describe()` for numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct NumericSummary {
    pub count: usize,
    pub null_count: usize,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub q25: Option<f64>,
    pub q50: Option<f64>,
    pub q75: Option<f64>,
    pub max: Option<f64>,
    /// The values, sorted ascending (for the histogram; not serialised).
    sorted: Vec<f64>,
}

/// Summary of one non-numeric column (pandas' `describe()` for objects).
#[derive(Debug, Clone, PartialEq)]
pub struct TextSummary {
    pub count: usize,
    pub null_count: usize,
    pub unique: usize,
    pub top: Option<String>,
    pub freq: Option<usize>,
    /// The most frequent values with their counts, most frequent first (for the chart).
    top_values: Vec<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stats {
    Numeric(NumericSummary),
    Text(TextSummary),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSummary {
    pub column: String,
    pub dtype: String,
    pub stats: Stats,
}

impl ColumnSummary {
    pub fn to_json(&self) -> Value {
        let num = |v: Option<f64>| v.map_or(Value::Null, |v| values::to_json(AnyValue::Float64(v)));
        match &self.stats {
            Stats::Numeric(s) => json!({
                "column": self.column,
                "dtype": self.dtype,
                "kind": "numeric",
                "count": s.count,
                "null_count": s.null_count,
                "mean": num(s.mean),
                "std": num(s.std),
                "min": num(s.min),
                "25%": num(s.q25),
                "50%": num(s.q50),
                "75%": num(s.q75),
                "max": num(s.max),
            }),
            Stats::Text(s) => json!({
                "column": self.column,
                "dtype": self.dtype,
                "kind": "text",
                "count": s.count,
                "null_count": s.null_count,
                "unique": s.unique,
                "top": s.top,
                "freq": s.freq,
            }),
        }
    }
}

/// The `q` quantile (0–1) of ascending `sorted`, interpolating linearly between the closest
/// ranks (numpy's and pandas' default): position `q·(n−1)`.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = q * last as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// `describe()` of a numeric column.
fn numeric_summary(series: &Series) -> PolarsResult<NumericSummary> {
    let floats = series.cast(&DataType::Float64)?;
    let mut sorted: Vec<f64> = floats
        .f64()?
        .into_iter()
        .flatten()
        .filter(|v| !v.is_nan())
        .collect();
    sorted.sort_unstable_by(f64::total_cmp);
    let n = sorted.len();
    let mean = (n > 0).then(|| sorted.iter().sum::<f64>() / n as f64);
    let std = match mean {
        Some(m) if n >= 2 => {
            let ss: f64 = sorted.iter().map(|v| (v - m) * (v - m)).sum();
            Some((ss / (n - 1) as f64).sqrt())
        }
        _ => None,
    };
    Ok(NumericSummary {
        count: n,
        null_count: series.len() - n,
        mean,
        std,
        min: sorted.first().copied(),
        q25: quantile(&sorted, 0.25),
        q50: quantile(&sorted, 0.5),
        q75: quantile(&sorted, 0.75),
        max: sorted.last().copied(),
        sorted,
    })
}

/// `describe()` of any other column, by the text of its values.
fn text_summary(series: &Series) -> PolarsResult<TextSummary> {
    let text = series.cast(&DataType::String)?;
    // value → (count, first row seen)
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut count = 0;
    for (i, v) in text.str()?.into_iter().enumerate() {
        if let Some(v) = v {
            count += 1;
            counts.entry(v).or_insert((0, i)).0 += 1;
        }
    }
    let mut ranked: Vec<(&str, usize, usize)> = counts
        .into_iter()
        .map(|(v, (n, first))| (v, n, first))
        .collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    let top_values: Vec<(String, usize)> = ranked
        .iter()
        .take(TOP_VALUES)
        .map(|(v, n, _)| ((*v).to_owned(), *n))
        .collect();
    Ok(TextSummary {
        count,
        null_count: series.len() - count,
        unique: ranked.len(),
        top: top_values.first().map(|(v, _)| v.clone()),
        freq: top_values.first().map(|(_, n)| *n),
        top_values,
    })
}

fn is_numeric(dtype: &DataType) -> bool {
    dtype.is_integer() || dtype.is_float()
}

/// The summary of every column of `df`, in column order.
fn summarise(
    df: &DataFrame,
    progress: &ProgressReporter,
) -> Result<Vec<ColumnSummary>, PolarsError> {
    let mut out = Vec::with_capacity(df.width());
    for column in df.get_columns() {
        if progress.is_cancelled() {
            break;
        }
        let series = column.as_materialized_series();
        let stats = if is_numeric(series.dtype()) {
            Stats::Numeric(numeric_summary(series)?)
        } else {
            Stats::Text(text_summary(series)?)
        };
        out.push(ColumnSummary {
            column: series.name().to_string(),
            dtype: series.dtype().to_string(),
            stats,
        });
    }
    Ok(out)
}

/// Run an export; the file goes to `report.<ext>` in `scratch`. Blocking.
pub fn run(
    params: &Value,
    catalog: &Catalog,
    progress: &ProgressReporter,
    scratch: &Scratch,
) -> Result<Output, TaskError> {
    let p = ExportParams::parse(params)?;
    let dataset = catalog.source(&p.filter.dataset)?;
    let failed = |e: PolarsError| dataset.data_error(&e);

    progress.report(10, "reading");
    let mut scan = dataset.scan()?;
    let schema = scan.collect_schema().map_err(failed)?;
    let query = filter::query(&p.filter, scan, &schema, dataset.name())?;
    check_cancelled(progress)?;
    let mut df = collect_or_cancel(query, progress)?.map_err(failed)?;
    check_cancelled(progress)?;

    progress.report_with_message(
        40,
        "summarising",
        format!("{} rows × {} columns", df.height(), df.width()),
    );
    let summary = summarise(&df, progress).map_err(failed)?;
    check_cancelled(progress)?;

    let artifact = p.format.artifact();
    progress.report_with_message(80, "writing", format!("{} rows to {artifact}", df.height()));
    let path = scratch.path_for(artifact)?;
    let title = p
        .title
        .clone()
        .unwrap_or_else(|| format!("DAP report: {}", dataset.name()));
    match p.format {
        Format::Csv => write_with(&path, artifact, |w| {
            CsvWriter::new(w).include_header(true).finish(&mut df)
        })?,
        Format::Parquet => write_with(&path, artifact, |w| {
            ParquetWriter::new(w).finish(&mut df).map(|_| ())
        })?,
        Format::Json => write_ndjson(&df, &path, artifact, progress)?,
        Format::Html => {
            let html = html_report(&HtmlReport {
                title: &title,
                dataset: dataset.name(),
                generated_at: std::time::SystemTime::now(),
                df: &df,
                summary: &summary,
                preview_rows: p.preview_rows as usize,
            })
            .map_err(failed)?;
            write_with(&path, artifact, |w| {
                w.write_all(html.as_bytes()).map_err(PolarsError::from)
            })?
        }
    }
    check_cancelled(progress)?;

    let columns: Vec<String> = df
        .get_columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let mut result = json!({
        "dataset": dataset.name(),
        "format": p.format.name(),
        "row_count": df.height(),
        "columns": columns,
        "schema": columns_of(df.schema()),
        "artifact": artifact,
        "summary": summary.iter().map(ColumnSummary::to_json).collect::<Vec<_>>(),
    });
    if p.format == Format::Html {
        result["title"] = Value::from(title);
    }
    Ok(Output {
        result,
        table: Some(OutputTable::Frame(df)),
        artifacts: vec![LocalArtifact {
            name: artifact.to_owned(),
            path,
            content_type: p.format.content_type().to_owned(),
        }],
    })
}

fn write_failed(artifact: &str, e: &dyn std::fmt::Display) -> TaskError {
    TaskError::new(failure::INTERNAL, format!("writing {artifact} failed: {e}"))
}

/// Create `path` and fill it through a buffered writer. Errors name the artifact, not the path.
fn write_with(
    path: &Path,
    artifact: &str,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> PolarsResult<()>,
) -> Result<(), TaskError> {
    let file = std::fs::File::create(path).map_err(|e| write_failed(artifact, &e))?;
    let mut out = std::io::BufWriter::new(file);
    fill(&mut out).map_err(|e| write_failed(artifact, &e))?;
    out.flush().map_err(|e| write_failed(artifact, &e))
}

/// One JSON object per line, keys in column order.
fn write_ndjson(
    df: &DataFrame,
    path: &Path,
    artifact: &str,
    progress: &ProgressReporter,
) -> Result<(), TaskError> {
    let keys: Vec<String> = df
        .get_columns()
        .iter()
        .map(|c| Value::from(c.name().as_str()).to_string())
        .collect();
    let series: Vec<&Series> = df
        .get_columns()
        .iter()
        .map(|c| c.as_materialized_series())
        .collect();
    write_with(path, artifact, |w| {
        let mut line = String::new();
        for row in 0..df.height() {
            if row % CANCEL_EVERY == 0 && progress.is_cancelled() {
                return Ok(());
            }
            line.clear();
            line.push('{');
            for (i, (key, s)) in keys.iter().zip(&series).enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(key);
                line.push(':');
                line.push_str(&values::to_json(s.get(row)?).to_string());
            }
            line.push_str("}\n");
            w.write_all(line.as_bytes())?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// HTML

/// Everything the HTML report shows.
struct HtmlReport<'a> {
    title: &'a str,
    dataset: &'a str,
    generated_at: std::time::SystemTime,
    df: &'a DataFrame,
    summary: &'a [ColumnSummary],
    preview_rows: usize,
}

/// Text made safe for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number for people: integers without decimals, others to 6 significant-ish places.
fn human(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e15).contains(&a) {
        return format!("{v:.4e}");
    }
    if v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn opt_num(v: Option<f64>) -> String {
    v.map(human).unwrap_or_default()
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#222;\
background:#fff;line-height:1.4}\
h1{font-size:1.6rem;margin:0 0 .3rem}h2{font-size:1.2rem;margin:2rem 0 .6rem}\
.meta{color:#555;margin:.2rem 0}\
table{border-collapse:collapse;font-size:.85rem;margin:.4rem 0}\
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}\
td.null::after{content:'null';color:#999;font-style:italic}\
.scroll{overflow-x:auto}figure{margin:1rem 0}figcaption{font-weight:600;margin-bottom:.3rem}\
svg text{font-size:11px;fill:#333}svg .bar{fill:#4f81bd}svg .axis{stroke:#333}\
";

fn html_report(r: &HtmlReport<'_>) -> PolarsResult<String> {
    let mut h = String::with_capacity(16 * 1024);
    let title = escape(r.title);
    // `write!` into a String cannot fail.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"dap-runner {}\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n",
        env!("CARGO_PKG_VERSION")
    );
    let _ = write!(
        h,
        "<p class=\"meta\">Dataset <strong>{}</strong> · {} rows × {} columns</p>\n\
         <p class=\"meta\">Generated {} by dap-runner {}</p>\n",
        escape(r.dataset),
        r.df.height(),
        r.df.width(),
        utc_timestamp(r.generated_at),
        env!("CARGO_PKG_VERSION")
    );

    summary_tables(&mut h, r.summary);
    charts(&mut h, r.summary);
    preview_table(&mut h, r.df, r.preview_rows)?;
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

fn summary_tables(h: &mut String, summary: &[ColumnSummary]) {
    h.push_str("<h2>Summary</h2>\n");
    if summary.is_empty() {
        h.push_str("<p>No columns.</p>\n");
        return;
    }
    let numeric: Vec<(&ColumnSummary, &NumericSummary)> = summary
        .iter()
        .filter_map(|c| match &c.stats {
            Stats::Numeric(s) => Some((c, s)),
            Stats::Text(_) => None,
        })
        .collect();
    let text: Vec<(&ColumnSummary, &TextSummary)> = summary
        .iter()
        .filter_map(|c| match &c.stats {
            Stats::Text(s) => Some((c, s)),
            Stats::Numeric(_) => None,
        })
        .collect();
    if !numeric.is_empty() {
        h.push_str(
            "<div class=\"scroll\"><table class=\"summary numeric\">\n<thead><tr><th>column</th>\
             <th>type</th><th>count</th><th>nulls</th><th>mean</th><th>std</th><th>min</th>\
             <th>25%</th><th>50%</th><th>75%</th><th>max</th></tr></thead>\n<tbody>\n",
        );
        for (c, s) in numeric {
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                escape(&c.column),
                escape(&c.dtype),
                s.count,
                s.null_count
            );
            for v in [s.mean, s.std, s.min, s.q25, s.q50, s.q75, s.max] {
                let _ = write!(h, "<td class=\"num\">{}</td>", opt_num(v));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</tbody></table></div>\n");
    }
    if !text.is_empty() {
        h.push_str(
            "<div class=\"scroll\"><table class=\"summary text\">\n<thead><tr><th>column</th>\
             <th>type</th><th>count</th><th>nulls</th><th>unique</th><th>top</th><th>freq</th>\
             </tr></thead>\n<tbody>\n",
        );
        for (c, s) in text {
            let _ = writeln!(
                h,
                "<tr><th>{}</th><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                escape(&c.column),
                escape(&c.dtype),
                s.count,
                s.null_count,
                s.unique,
                s.top.as_deref().map(escape).unwrap_or_default(),
                s.freq.map(|f| f.to_string()).unwrap_or_default()
            );
        }
        h.push_str("</tbody></table></div>\n");
    }
}

fn charts(h: &mut String, summary: &[ColumnSummary]) {
    h.push_str("<h2>Charts</h2>\n");
    let mut drawn = 0;
    let first_numeric = summary.iter().find_map(|c| match &c.stats {
        Stats::Numeric(s) if s.count > 0 => Some((c, s)),
        _ => None,
    });
    if let Some((c, s)) = first_numeric {
        let _ = write!(
            h,
            "<figure><figcaption>Distribution of {}</figcaption>\n{}</figure>\n",
            escape(&c.column),
            histogram_svg(&c.column, &s.sorted)
        );
        drawn += 1;
    }
    let first_text = summary.iter().find_map(|c| match &c.stats {
        Stats::Text(s) if s.count > 0 => Some((c, s)),
        _ => None,
    });
    if let Some((c, s)) = first_text {
        let caption = if s.unique > s.top_values.len() {
            format!(
                "Most frequent values of {} (top {} of {})",
                escape(&c.column),
                s.top_values.len(),
                s.unique
            )
        } else {
            format!("Values of {}", escape(&c.column))
        };
        let _ = write!(
            h,
            "<figure><figcaption>{caption}</figcaption>\n{}</figure>\n",
            bars_svg(&c.column, &s.top_values)
        );
        drawn += 1;
    }
    if drawn == 0 {
        h.push_str("<p>No chart: no column has any values.</p>\n");
    }
}

/// Bins of a histogram of ascending `sorted` (non-empty): `(low, high, count)`, Sturges' rule
/// for their number; the last bin includes its upper edge.
pub fn histogram_bins(sorted: &[f64]) -> Vec<(f64, f64, usize)> {
    let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    if !(min.is_finite() && max.is_finite()) || min == max {
        return vec![(min, max, sorted.len())];
    }
    let k = ((sorted.len() as f64).log2().ceil() as usize + 1).clamp(1, 30);
    let width = (max - min) / k as f64;
    let mut counts = vec![0usize; k];
    for &v in sorted {
        let i = (((v - min) / width) as usize).min(k - 1);
        counts[i] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let lo = min + width * i as f64;
            let hi = if i == k - 1 { max } else { lo + width };
            (lo, hi, n)
        })
        .collect()
}

const SVG_W: f64 = 640.0;
const SVG_H: f64 = 300.0;

fn histogram_svg(column: &str, sorted: &[f64]) -> String {
    let bins = histogram_bins(sorted);
    let (left, right, top, bottom) = (60.0, 20.0, 15.0, 55.0);
    let plot_w = SVG_W - left - right;
    let plot_h = SVG_H - top - bottom;
    let max_count = bins.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64;
    let bar_w = plot_w / bins.len().max(1) as f64;
    let base = top + plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg class=\"chart histogram\" width=\"{SVG_W}\" height=\"{SVG_H}\" \
         viewBox=\"0 0 {SVG_W} {SVG_H}\" role=\"img\" aria-label=\"Histogram of {}\">",
        escape(column)
    );
    for (i, (lo, hi, n)) in bins.iter().enumerate() {
        let bh = *n as f64 / max_count * plot_h;
        let _ = writeln!(
            s,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\">\
             <title>{} to {}: {n}</title></rect>",
            left + i as f64 * bar_w + 1.0,
            base - bh,
            (bar_w - 2.0).max(1.0),
            human(*lo),
            human(*hi)
        );
    }
    axes(&mut s, left, top, plot_w, plot_h);
    // x ticks: every bin edge, thinned so labels do not overlap.
    let step = bins.len().div_ceil(8).max(1);
    let mut edges: Vec<f64> = bins.iter().map(|b| b.0).collect();
    edges.push(bins.last().map_or(0.0, |b| b.1));
    for (i, e) in edges.iter().enumerate() {
        if i % step != 0 && i != edges.len() - 1 {
            continue;
        }
        let x = left + i as f64 * bar_w;
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{base:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            base + 4.0,
            base + 16.0,
            human(*e)
        );
    }
    y_ticks(&mut s, left, top, plot_h, max_count);
    let _ = writeln!(
        s,
        "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text class=\"axis-label\" transform=\"translate(14 {:.1}) rotate(-90)\" \
         text-anchor=\"middle\">count</text>",
        left + plot_w / 2.0,
        SVG_H - 12.0,
        escape(column),
        top + plot_h / 2.0
    );
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, left: f64, top: f64, plot_w: f64, plot_h: f64) {
    let base = top + plot_h;
    let _ = writeln!(
        s,
        "<line class=\"axis\" x1=\"{left:.1}\" y1=\"{base:.1}\" x2=\"{:.1}\" y2=\"{base:.1}\"/>\
         <line class=\"axis\" x1=\"{left:.1}\" y1=\"{top:.1}\" x2=\"{left:.1}\" y2=\"{base:.1}\"/>",
        left + plot_w
    );
}

/// Count ticks on the y axis at 0, half and the maximum.
fn y_ticks(s: &mut String, left: f64, top: f64, plot_h: f64, max_count: f64) {
    let mut ticks = vec![0.0, max_count];
    if max_count >= 2.0 {
        ticks.insert(1, (max_count / 2.0).round());
    }
    for t in ticks {
        let y = top + plot_h - t / max_count * plot_h;
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{left:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>",
            left - 4.0,
            left - 6.0,
            y + 4.0
        );
    }
}

/// Vertical bars of `(value, count)`, labels under the bars (cut to 14 characters).
fn bars_svg(column: &str, counts: &[(String, usize)]) -> String {
    let (left, right, top, bottom) = (60.0, 20.0, 15.0, 70.0);
    let plot_w = SVG_W - left - right;
    let plot_h = SVG_H - top - bottom;
    let max_count = counts.iter().map(|c| c.1).max().unwrap_or(1).max(1) as f64;
    let slot = plot_w / counts.len().max(1) as f64;
    let base = top + plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg class=\"chart bars\" width=\"{SVG_W}\" height=\"{SVG_H}\" \
         viewBox=\"0 0 {SVG_W} {SVG_H}\" role=\"img\" aria-label=\"Counts of {}\">",
        escape(column)
    );
    for (i, (value, n)) in counts.iter().enumerate() {
        let bh = *n as f64 / max_count * plot_h;
        let x = left + i as f64 * slot;
        let label: String = if value.chars().count() > 14 {
            value.chars().take(13).chain(['…']).collect()
        } else {
            value.clone()
        };
        let _ = writeln!(
            s,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\">\
             <title>{}: {n}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x + slot * 0.15,
            base - bh,
            slot * 0.7,
            escape(value),
            x + slot / 2.0,
            base + 16.0,
            escape(&label)
        );
    }
    axes(&mut s, left, top, plot_w, plot_h);
    y_ticks(&mut s, left, top, plot_h, max_count);
    let _ = writeln!(
        s,
        "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text class=\"axis-label\" transform=\"translate(14 {:.1}) rotate(-90)\" \
         text-anchor=\"middle\">count</text>",
        left + plot_w / 2.0,
        SVG_H - 12.0,
        escape(column),
        top + plot_h / 2.0
    );
    s.push_str("</svg>\n");
    s
}

fn preview_table(h: &mut String, df: &DataFrame, preview_rows: usize) -> PolarsResult<()> {
    let shown = df.height().min(preview_rows);
    let _ = writeln!(
        h,
        "<h2>Preview</h2>\n<p class=\"meta\">First {shown} of {} rows</p>",
        df.height()
    );
    if shown == 0 {
        return Ok(());
    }
    h.push_str("<div class=\"scroll\"><table class=\"preview\">\n<thead><tr>");
    for c in df.get_columns() {
        let _ = write!(h, "<th>{}</th>", escape(c.name()));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    let numeric: Vec<bool> = df
        .get_columns()
        .iter()
        .map(|c| is_numeric(c.dtype()))
        .collect();
    for row in values::rows(&df.head(Some(shown)))? {
        h.push_str("<tr>");
        for (cell, num) in row.iter().zip(&numeric) {
            match cell {
                Value::Null => h.push_str("<td class=\"null\"></td>"),
                Value::String(s) => {
                    let _ = write!(h, "<td>{}</td>", escape(s));
                }
                other => {
                    let class = if *num { " class=\"num\"" } else { "" };
                    let _ = write!(h, "<td{class}>{}</td>", escape(&other.to_string()));
                }
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table></div>\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::ProgressUpdate;
    use crate::test_support::TempDir;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const XSS: &str = "<script>alert('x')</script>";

    /// The test data: the CSV is written from these rows and expectations computed from them.
    /// (id, name, score, team)
    const ROWS: [(i64, &str, Option<f64>, &str); 8] = [
        (1, "ann", Some(1.0), "red"),
        (2, "bob", Some(2.0), "blue"),
        (3, XSS, None, "red"),
        (4, "dee", Some(4.0), "green"),
        (5, "eve", Some(3.0), "red"),
        (6, "fay", Some(10.5), "blue"),
        (7, "gus", Some(-2.25), "blue"),
        (8, "hal", Some(7.0), "red"),
    ];

    fn csv() -> String {
        let mut s = String::from("id,name,score,team\n");
        for (id, name, score, team) in ROWS {
            let score = score.map(|v| v.to_string()).unwrap_or_default();
            s.push_str(&format!("{id},{name},{score},{team}\n"));
        }
        s
    }

    fn catalog(dir: &TempDir) -> Catalog {
        let path = dir.write("people.csv", &csv());
        crate::test_support::csv_catalog("people", &path)
    }

    /// Run an export; returns the result and the artifact's bytes.
    fn export(dir: &TempDir, cat: &Catalog, params: Value) -> Result<(Value, Vec<u8>), TaskError> {
        let scratch = Scratch::at(
            dir.path()
                .join(format!("scratch-{}", rand::random::<u32>())),
        );
        let out = run(&params, cat, &ProgressReporter::discard(), &scratch)?;
        assert_eq!(out.artifacts.len(), 1);
        let a = &out.artifacts[0];
        assert_eq!(out.result["artifact"], a.name.as_str());
        let bytes = std::fs::read(&a.path).unwrap();
        Ok((out.result, bytes))
    }

    fn close(actual: &Value, expected: f64, what: &str) {
        let a = actual
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: {actual}"));
        assert!((a - expected).abs() < 1e-9, "{what}: {a} vs {expected}");
    }

    /// pandas' default quantile, written out independently: rank h = (n-1)q, then
    /// x[floor h] + (h - floor h)(x[floor h + 1] - x[floor h]).
    fn pandas_quantile(values: &[f64], q: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let h = (v.len() - 1) as f64 * q;
        let i = h.floor() as usize;
        if i + 1 >= v.len() {
            return v[i];
        }
        v[i] + (h - i as f64) * (v[i + 1] - v[i])
    }

    #[test]
    fn quantiles_interpolate_like_pandas() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.25), Some(1.75));
        assert_eq!(quantile(&v, 0.5), Some(2.5));
        assert_eq!(quantile(&v, 0.75), Some(3.25));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 1.0), Some(4.0));
        assert_eq!(quantile(&[5.0], 0.25), Some(5.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn describe_matches_plain_rust() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (r, _) = export(&dir, &cat, json!({"dataset": "people", "format": "csv"})).unwrap();
        let summary = r["summary"].as_array().unwrap();
        assert_eq!(summary.len(), 4);

        // id: 1..=8
        let ids: Vec<f64> = ROWS.iter().map(|r| r.0 as f64).collect();
        // score: the non-null ones
        let scores: Vec<f64> = ROWS.iter().filter_map(|r| r.2).collect();
        for (s, values, nulls, name) in [
            (&summary[0], &ids, 0, "id"),
            (&summary[2], &scores, 1, "score"),
        ] {
            assert_eq!(s["column"], name);
            assert_eq!(s["kind"], "numeric");
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
            assert_eq!(s["count"], values.len());
            assert_eq!(s["null_count"], nulls);
            close(&s["mean"], mean, "mean");
            close(&s["std"], var.sqrt(), "std");
            close(
                &s["min"],
                values.iter().cloned().fold(f64::INFINITY, f64::min),
                "min",
            );
            close(
                &s["max"],
                values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                "max",
            );
            close(&s["25%"], pandas_quantile(values, 0.25), "25%");
            close(&s["50%"], pandas_quantile(values, 0.5), "50%");
            close(&s["75%"], pandas_quantile(values, 0.75), "75%");
        }
        // Known values, as pandas prints them for ids 1..8: 25% 2.75, 50% 4.5, 75% 6.25.
        close(&summary[0]["25%"], 2.75, "id 25%");
        close(&summary[0]["75%"], 6.25, "id 75%");
        close(&summary[0]["std"], 2.449489742783178, "id std");

        // team: red ×4 (seen first), blue ×3, green ×1.
        let team = &summary[3];
        assert_eq!(team["kind"], "text");
        assert_eq!(team["count"], 8);
        assert_eq!(team["unique"], 3);
        assert_eq!(team["top"], "red");
        assert_eq!(team["freq"], 4);
        // name: all distinct, so the top is the first row's value with frequency 1.
        assert_eq!(summary[1]["unique"], 8);
        assert_eq!(summary[1]["top"], "ann");
        assert_eq!(summary[1]["freq"], 1);

        // [1, 2, 3, 4] after a filter: the textbook example.
        let (r, _) = export(
            &dir,
            &cat,
            json!({"dataset": "people", "format": "csv",
                   "where": {"column": "id", "op": "le", "value": 4}, "select": ["id"]}),
        )
        .unwrap();
        let s = &r["summary"][0];
        close(&s["25%"], 1.75, "25%");
        close(&s["50%"], 2.5, "50%");
        close(&s["75%"], 3.25, "75%");
        close(&s["std"], (5.0f64 / 3.0).sqrt(), "std");
    }

    #[test]
    fn csv_round_trips_with_filter_sort_and_limit() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (r, bytes) = export(
            &dir,
            &cat,
            json!({"dataset": "people", "format": "csv",
                   "where": {"column": "team", "op": "ne", "value": "green"},
                   "select": ["id", "name", "score"],
                   "sort": [{"column": "id", "descending": true}], "limit": 5}),
        )
        .unwrap();
        let mut expected: Vec<_> = ROWS.iter().filter(|r| r.3 != "green").collect();
        expected.reverse();
        expected.truncate(5);
        assert_eq!(r["format"], "csv");
        assert_eq!(r["artifact"], "report.csv");
        assert_eq!(r["row_count"], 5);
        assert_eq!(r["columns"], json!(["id", "name", "score"]));
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "id,name,score");
        assert_eq!(lines.len(), 6);
        for (line, (id, name, score, _)) in lines[1..].iter().zip(expected) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f[0].parse::<i64>().unwrap(), *id);
            assert_eq!(f[1], *name);
            assert_eq!(f[2].parse::<f64>().ok(), *score, "{line}");
        }
    }

    #[test]
    fn parquet_round_trips() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (r, bytes) = export(
            &dir,
            &cat,
            json!({"dataset": "people", "format": "parquet"}),
        )
        .unwrap();
        assert_eq!(r["artifact"], "report.parquet");
        assert_eq!(r["row_count"], ROWS.len());
        let df = ParquetReader::new(std::io::Cursor::new(bytes))
            .finish()
            .unwrap();
        assert_eq!(df.height(), ROWS.len());
        let ids: Vec<Option<i64>> = df
            .column("id")
            .unwrap()
            .i64()
            .unwrap()
            .into_iter()
            .collect();
        let names: Vec<Option<&str>> = df
            .column("name")
            .unwrap()
            .str()
            .unwrap()
            .into_iter()
            .collect();
        let scores: Vec<Option<f64>> = df
            .column("score")
            .unwrap()
            .f64()
            .unwrap()
            .into_iter()
            .collect();
        let teams: Vec<Option<&str>> = df
            .column("team")
            .unwrap()
            .str()
            .unwrap()
            .into_iter()
            .collect();
        for (i, (id, name, score, team)) in ROWS.iter().enumerate() {
            assert_eq!(ids[i], Some(*id));
            assert_eq!(names[i], Some(*name));
            assert_eq!(scores[i], *score);
            assert_eq!(teams[i], Some(*team));
        }
    }

    #[test]
    fn json_is_ndjson_in_column_order() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (r, bytes) = export(
            &dir,
            &cat,
            json!({"dataset": "people", "format": "json", "select": ["team", "id", "score"]}),
        )
        .unwrap();
        assert_eq!(r["format"], "json");
        assert_eq!(r["artifact"], "report.ndjson");
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), ROWS.len());
        for (line, (id, _, score, team)) in lines.iter().zip(ROWS) {
            assert!(line.starts_with("{\"team\":"), "{line}");
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v, json!({"team": team, "id": id, "score": score}));
        }
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (r, bytes) =
            export(&dir, &cat, json!({"dataset": "people", "format": "html"})).unwrap();
        assert_eq!(r["artifact"], "report.html");
        assert_eq!(r["title"], "DAP report: people");
        assert_eq!(r["summary"].as_array().unwrap().len(), 4);
        let html = String::from_utf8(bytes).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>DAP report: people</title>"));
        assert!(html.contains("<h1>DAP report: people</h1>"));
        for c in ["id", "name", "score", "team"] {
            assert!(html.contains(&format!("<th>{c}</th>")), "{c}");
        }
        assert!(html.contains("8 rows × 4 columns"));
        assert!(html.contains("<svg"));
        assert!(html.contains("Distribution of id"));
        // Both charts have axis labels: the column below, "count" up the side.
        assert_eq!(html.matches("<svg").count(), 2);
        assert_eq!(html.matches(">count</text>").count(), 2);
        assert!(html.contains("text-anchor=\"middle\">id</text>"));
        assert!(html.contains("Values of name") || html.contains("of name"));
        // No external resources of any kind.
        for bad in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(!html.contains(bad), "{bad}");
        }
        // The malicious cell is shown as text, never as markup.
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(!html.contains("<script"));
        // Preview: 8 rows (fewer than the default 20), the null score as an empty null cell.
        assert_eq!(html.matches("<tr><td").count(), 8);
        assert!(html.contains("<td class=\"null\"></td>"));
        // The summary's numbers are there as well.
        assert!(html.contains("<td class=\"num\">4.5</td>"));
    }

    #[test]
    fn html_title_and_preview_rows() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (r, bytes) = export(
            &dir,
            &cat,
            json!({"dataset": "people", "format": "html", "title": "Q3 <b>\"report\"</b> & co",
                   "preview_rows": 3, "sort": ["score"]}),
        )
        .unwrap();
        assert_eq!(r["title"], "Q3 <b>\"report\"</b> & co");
        let html = String::from_utf8(bytes).unwrap();
        assert!(html.contains("<title>Q3 &lt;b&gt;&quot;report&quot;&lt;/b&gt; &amp; co</title>"));
        assert!(!html.contains("<b>"));
        assert_eq!(html.matches("<tr><td").count(), 3);
        assert!(html.contains("First 3 of 8 rows"));
        // Sorted by score ascending: gus (-2.25) first.
        let preview = &html[html.find("class=\"preview\"").unwrap()..];
        assert!(preview.find("gus").unwrap() < preview.find("ann").unwrap());

        // No rows at all still gives a report (and a csv with only its header).
        let none = json!({"column": "id", "op": "gt", "value": 100});
        let (r, bytes) = export(
            &dir,
            &cat,
            json!({"dataset": "people", "format": "html", "where": none, "preview_rows": 0}),
        )
        .unwrap();
        assert_eq!(r["row_count"], 0);
        assert_eq!(r["summary"][0]["count"], 0);
        assert_eq!(r["summary"][0]["mean"], Value::Null);
        let html = String::from_utf8(bytes).unwrap();
        assert!(html.contains("No chart"));
        assert!(html.contains("0 rows × 4 columns"));
        let (_, bytes) = export(
            &dir,
            &cat,
            json!({"dataset": "people", "format": "csv", "where": none}),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap().trim(),
            "id,name,score,team"
        );
    }

    #[test]
    fn group_by_output_is_exported() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (r, bytes) = export(
            &dir,
            &cat,
            json!({"dataset": "people", "format": "json",
                   "group_by": {"by": ["team"], "aggregations": [{"fn": "count"}]}}),
        )
        .unwrap();
        assert_eq!(r["columns"], json!(["team", "count"]));
        let rows: Vec<Value> = String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            rows,
            vec![
                json!({"team": "blue", "count": 3}),
                json!({"team": "green", "count": 1}),
                json!({"team": "red", "count": 4}),
            ]
        );
    }

    #[test]
    fn invalid_params_name_the_field() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let cases = [
            (json!({"dataset": "people"}), "params.format"),
            (
                json!({"dataset": "people", "format": "xlsx"}),
                "params.format",
            ),
            (json!({"dataset": "people", "format": 3}), "params.format"),
            (
                json!({"dataset": "people", "format": "csv", "select": ["id", "nope"]}),
                "params.select",
            ),
            (
                json!({"dataset": "people", "format": "csv",
                       "where": {"column": "nope", "op": "eq", "value": 1}}),
                "params.where.column",
            ),
            (
                json!({"dataset": "people", "format": "html", "sort": ["nope"]}),
                "params.sort[0]",
            ),
            (
                json!({"dataset": "people", "format": "html", "preview_rows": 201}),
                "params.preview_rows",
            ),
            (
                json!({"dataset": "people", "format": "html", "preview_rows": -1}),
                "params.preview_rows",
            ),
            (
                json!({"dataset": "people", "format": "html", "preview_rows": "5"}),
                "params.preview_rows",
            ),
            (
                json!({"dataset": "people", "format": "csv", "preview_rows": 5}),
                "params.preview_rows",
            ),
            (
                json!({"dataset": "people", "format": "csv", "title": "x"}),
                "params.title",
            ),
            (
                json!({"dataset": "people", "format": "html", "title": ""}),
                "params.title",
            ),
            (
                json!({"dataset": "people", "format": "html", "title": "x".repeat(501)}),
                "params.title",
            ),
            (
                json!({"dataset": "people", "format": "csv", "preview_limit": 5}),
                "params.preview_limit",
            ),
            (json!({"format": "csv"}), "params.dataset"),
        ];
        for (params, needle) in cases {
            let e = export(&dir, &cat, params.clone()).unwrap_err();
            assert_eq!(e.code, failure::INVALID_PARAMS, "{params}: {e:?}");
            assert!(e.message.contains(needle), "{params}: {}", e.message);
        }
        let e = export(
            &dir,
            &cat,
            json!({"dataset": "../people.csv", "format": "csv"}),
        )
        .unwrap_err();
        assert_eq!(e.code, failure::PATH_NOT_ALLOWED);
    }

    #[test]
    fn reports_progress_and_honours_cancel() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let scratch = Scratch::at(dir.path().join("s"));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressUpdate>();
        let reporter = ProgressReporter::new(tx, Arc::new(AtomicBool::new(false)));
        run(
            &json!({"dataset": "people", "format": "html"}),
            &cat,
            &reporter,
            &scratch,
        )
        .unwrap();
        let mut seen = Vec::new();
        while let Ok(u) = rx.try_recv() {
            seen.push((u.percent, u.stage));
        }
        let percents: Vec<u8> = seen.iter().map(|s| s.0).collect();
        assert_eq!(percents, [10, 40, 80], "{seen:?}");
        let stages: Vec<&str> = seen.iter().map(|s| s.1.as_deref().unwrap_or("")).collect();
        assert_eq!(stages, ["reading", "summarising", "writing"]);

        let cancelled = ProgressReporter::new(
            tokio::sync::mpsc::unbounded_channel().0,
            Arc::new(AtomicBool::new(false)),
        );
        cancelled.cancel_flag().store(true, Ordering::Relaxed);
        for format in ["csv", "json", "html"] {
            let e = run(
                &json!({"dataset": "people", "format": format}),
                &cat,
                &cancelled,
                &scratch,
            )
            .unwrap_err();
            assert_eq!(e.code, failure::CANCELLED);
        }
    }

    #[test]
    fn histogram_bins_cover_every_value() {
        let v: Vec<f64> = (0..100).map(f64::from).collect();
        let bins = histogram_bins(&v);
        assert_eq!(bins.len(), 8); // ceil(log2 100) + 1
        assert_eq!(bins.iter().map(|b| b.2).sum::<usize>(), 100);
        assert_eq!(bins[0].0, 0.0);
        assert_eq!(bins.last().unwrap().1, 99.0);
        assert_eq!(histogram_bins(&[2.0, 2.0]), vec![(2.0, 2.0, 2)]);
        assert!(histogram_bins(&[]).is_empty());
    }

    #[test]
    fn timestamps_and_numbers_for_people() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199);
        assert_eq!(utc_timestamp(t), "2024-02-29 23:59:59 UTC");
        assert_eq!(
            utc_timestamp(std::time::UNIX_EPOCH),
            "1970-01-01 00:00:00 UTC"
        );
        assert_eq!(human(4.0), "4");
        assert_eq!(human(2.75), "2.75");
        assert_eq!(human(1.0 / 3.0), "0.333333");
        assert_eq!(human(-2.25), "-2.25");
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
    }
}

//! The datasets this runner's owner declared: name → canonical file, format and schema.
//!
//! This is the only place that turns a task's dataset *name* into a file, and the only place that
//! opens dataset files: operations receive a polars `LazyFrame` from [`Dataset::scan`], never a
//! path. It does not run operations and does not talk to the server; the schema it advertises
//! ([`DatasetInfo`]) never carries a path.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dap_protocol::{failure, ColumnInfo, DatasetFormat, DatasetInfo, TaskError};
use polars::prelude::*;

use crate::csv_dialect::CsvRead;
use crate::csv_fixups::Fixups;
use crate::operations::params::SourceRef;
use crate::outputs::{Kept, OutputStore};
use crate::DatasetSpec;

/// Longest dataset name accepted (names travel in every task and the UI's dropdowns).
const MAX_NAME_LEN: usize = 128;
/// Rows polars reads to guess column types. The default (100) misreads columns whose first
/// hundred values look like integers and a later one is a float.
const INFER_SCHEMA_ROWS: usize = 10_000;
/// Field values a CSV reads as null: pandas' `read_csv` defaults (its `na_values`), the quoted
/// empty field `""` included (an unquoted empty field is null anyway). A column of numbers with `NA` or `N/A` gaps (R exports, spreadsheets) is then
/// numeric, as in pandas, and aggregates skip its gaps as pandas' do; `NaN` is a gap too, not a
/// float that would turn a sum or mean into NaN. A string column loses these values the same way.
const CSV_NULL_TOKENS: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];
/// How much of a CSV file's start is read to sniff its separator (the header line is in it).
const SNIFF_BYTES: u64 = 64 * 1024;
/// First prefix [`Dataset::head`] reads; it grows fourfold until it holds enough rows.
const HEAD_FIRST_READ_BYTES: u64 = 256 * 1024;
/// CSV and NDJSON files up to this size are counted at start so the server can show a row
/// count; counting a bigger one means reading all of it, which would delay every start.
/// Parquet files are always counted: the count is in their footer.
pub(crate) const COUNT_AT_START_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// A declared dataset that cannot be served. Reported at start, before connecting.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("dataset name `{name}` is not allowed: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("dataset `{name}` is declared twice")]
    Duplicate { name: String },
    #[error("dataset `{name}`: cannot open {}: {source}", .path.display())]
    Missing {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dataset `{name}`: {} is not a regular file", .path.display())]
    NotAFile { name: String, path: PathBuf },
    #[error("dataset `{name}`: cannot read {}: {message}", .path.display())]
    Unreadable {
        name: String,
        path: PathBuf,
        message: String,
    },
}

/// One declared dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    info: DatasetInfo,
    /// The path as declared, made absolute: re-resolved at every open to notice a swapped symlink.
    declared: PathBuf,
    /// Where `declared` pointed when the runner started; the only file ever opened for this name.
    canonical: PathBuf,
    /// Separator and decimal mark (CSV only; resolved at start, sniffed if not declared).
    csv: CsvRead,
    /// Corrections that make polars read the CSV as pandas does (decided at start).
    fixups: Fixups,
}

/// All declared datasets, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    datasets: BTreeMap<String, Dataset>,
    /// Outputs of earlier tasks that `params.input` may name; `None` keeps nothing.
    outputs: Option<Arc<OutputStore>>,
}

/// Longest chain of views (a fetch of a fetch of …) followed when resolving an input.
const MAX_VIEW_DEPTH: usize = 16;

/// An operation's input table, resolved: a dataset or a kept task output, ready to scan.
pub struct Source<'a> {
    label: String,
    dataset: Option<&'a Dataset>,
    lf: LazyFrame,
    /// Directory to take out of messages (the output store's), besides the dataset's paths.
    redact_dir: Option<PathBuf>,
}

impl Source<'_> {
    /// The dataset's name, or `task:<id>` for an earlier task's output.
    pub fn name(&self) -> &str {
        &self.label
    }

    /// A lazy scan of the table.
    pub fn scan(&self) -> Result<LazyFrame, TaskError> {
        Ok(self.lf.clone())
    }

    /// The declared dataset itself, when the source is one (not a kept output or a view).
    fn plain_dataset(&self) -> Option<&Dataset> {
        self.dataset.filter(|_| self.redact_dir.is_none())
    }

    /// The first `rows` rows read from a prefix of the file ([`Dataset::head`]) when the
    /// source is a CSV dataset; `None` otherwise (a lazy slice is cheap enough there).
    pub fn head(&self, rows: usize, schema: SchemaRef) -> Result<Option<DataFrame>, TaskError> {
        match self.plain_dataset() {
            Some(d) if d.info.format == DatasetFormat::Csv => d.head(rows, schema).map(Some),
            _ => Ok(None),
        }
    }

    /// Size in bytes of the text file that counting rows would read (CSV and NDJSON
    /// datasets); `None` when counting is cheap (Parquet footers, kept outputs).
    pub fn file_len(&self) -> Result<Option<u64>, TaskError> {
        match self.plain_dataset() {
            Some(d) if d.info.format != DatasetFormat::Parquet => d.file_len().map(Some),
            _ => Ok(None),
        }
    }

    /// A polars failure as a `data_error` naming the source, with local paths taken out.
    pub fn data_error(&self, err: &PolarsError) -> TaskError {
        let (dataset, dir) = match (self.dataset, &self.redact_dir) {
            (Some(d), None) => return d.data_error(err),
            (d, Some(dir)) => (d, dir),
            (None, None) => return TaskError::new(failure::DATA_ERROR, err.to_string()),
        };
        let mut message = match dataset {
            Some(d) => d.redact(&err.to_string()),
            None => err.to_string(),
        };
        message = message.replace(dir.to_string_lossy().as_ref(), "<outputs>");
        TaskError::new(
            failure::DATA_ERROR,
            format!("input `{}`: {message}", self.label),
        )
    }
}

impl Catalog {
    /// Check every declared file and read its schema. Blocking (polars reads the files).
    pub fn open(specs: &[DatasetSpec]) -> Result<Self, CatalogError> {
        let mut datasets = BTreeMap::new();
        for spec in specs {
            validate_dataset_name(&spec.name).map_err(|reason| CatalogError::InvalidName {
                name: spec.name.clone(),
                reason,
            })?;
            if datasets.contains_key(&spec.name) {
                return Err(CatalogError::Duplicate {
                    name: spec.name.clone(),
                });
            }
            let dataset = Dataset::declare(spec)?;
            datasets.insert(spec.name.clone(), dataset);
        }
        Ok(Self {
            datasets,
            outputs: None,
        })
    }

    /// Let tasks read the outputs kept in `store` (`params.input`).
    pub fn with_outputs(mut self, store: Arc<OutputStore>) -> Self {
        self.outputs = Some(store);
        self
    }

    /// Where kept outputs go, if this runner keeps them.
    pub fn outputs(&self) -> Option<&Arc<OutputStore>> {
        self.outputs.as_ref()
    }

    /// The table a task's `dataset` / `input` names, or the typed failure to report.
    pub fn source(&self, r: &SourceRef) -> Result<Source<'_>, TaskError> {
        self.source_at(r, 0)
    }

    fn source_at(&self, r: &SourceRef, depth: usize) -> Result<Source<'_>, TaskError> {
        let id = match r {
            SourceRef::Dataset(name) => {
                let d = self.resolve(name)?;
                return Ok(Source {
                    label: d.name().to_owned(),
                    dataset: Some(d),
                    lf: d.scan()?,
                    redact_dir: None,
                });
            }
            SourceRef::Task(id) => id,
        };
        let label = r.label();
        let unavailable = |why: &str| {
            TaskError::new(
                failure::INPUT_NOT_AVAILABLE,
                format!(
                    "params.input: the output of task {id} is not available on this runner: {why}"
                ),
            )
        };
        if depth >= MAX_VIEW_DEPTH {
            return Err(unavailable("the chain of inputs is too long"));
        }
        let store = self
            .outputs
            .as_ref()
            .ok_or_else(|| unavailable("this runner keeps no task outputs"))?;
        let kept = store.get(id).ok_or_else(|| {
            unavailable(
                "it did not complete here, produced no table, or was evicted \
                 (see --keep-outputs-bytes)",
            )
        })?;
        match kept {
            Kept::File { path, format } => {
                let mut source = Source {
                    label,
                    dataset: None,
                    lf: LazyFrame::default(),
                    redact_dir: Some(store.dir().to_path_buf()),
                };
                // Kept outputs are files this runner wrote: plain CSV.
                source.lf = scan_file(&path, format, CsvRead::default())
                    .map_err(|e| source.data_error(&e))?;
                Ok(source)
            }
            Kept::View { source, columns } => {
                let inner = self.source_at(&source, depth + 1)?;
                let lf = match columns {
                    Some(cols) => inner
                        .lf
                        .select(cols.iter().map(|c| col(c.as_str())).collect::<Vec<_>>()),
                    None => inner.lf,
                };
                Ok(Source {
                    label,
                    dataset: inner.dataset,
                    lf,
                    redact_dir: inner.redact_dir.or_else(|| Some(store.dir().to_path_buf())),
                })
            }
        }
    }

    /// What the greeting advertises, sorted by name.
    pub fn infos(&self) -> Vec<DatasetInfo> {
        self.datasets.values().map(|d| d.info.clone()).collect()
    }

    /// Names of the declared datasets, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.datasets.keys().map(String::as_str)
    }

    /// The dataset a task asked for, or the typed failure to report.
    ///
    /// Anything that is not shaped like a dataset name (a path, a URL, `..`) is refused as
    /// `path_not_allowed` so the person who wrote the task learns why, instead of a vague
    /// "unknown dataset".
    pub fn resolve(&self, requested: &str) -> Result<&Dataset, TaskError> {
        if let Some(d) = self.datasets.get(requested) {
            return Ok(d);
        }
        if looks_like_path(requested) {
            return Err(TaskError::new(
                failure::PATH_NOT_ALLOWED,
                format!(
                    "params.dataset must name a declared dataset, not a path or URL (got `{}`)",
                    shorten(requested)
                ),
            ));
        }
        let declared: Vec<&str> = self.names().collect();
        let declared = if declared.is_empty() {
            "none".to_owned()
        } else {
            declared.join(", ")
        };
        Err(TaskError::new(
            failure::UNKNOWN_DATASET,
            format!(
                "params.dataset `{requested}` is not declared on this runner (declared: {declared})"
            ),
        ))
    }
}

impl Dataset {
    fn declare(spec: &DatasetSpec) -> Result<Self, CatalogError> {
        let name = spec.name.clone();
        let declared = std::path::absolute(&spec.path).map_err(|source| CatalogError::Missing {
            name: name.clone(),
            path: spec.path.clone(),
            source,
        })?;
        let canonical =
            std::fs::canonicalize(&declared).map_err(|source| CatalogError::Missing {
                name: name.clone(),
                path: spec.path.clone(),
                source,
            })?;
        let meta = std::fs::metadata(&canonical).map_err(|source| CatalogError::Missing {
            name: name.clone(),
            path: spec.path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(CatalogError::NotAFile {
                name,
                path: spec.path.clone(),
            });
        }
        let mut dataset = Dataset {
            info: DatasetInfo {
                name: name.clone(),
                format: spec.format,
                columns: Vec::new(),
                row_count: None,
            },
            declared,
            canonical,
            csv: CsvRead::default(),
            fixups: Fixups::default(),
        };
        let unreadable = |message: String| CatalogError::Unreadable {
            name: name.clone(),
            path: spec.path.clone(),
            message,
        };
        if spec.format == DatasetFormat::Csv {
            dataset.csv = spec
                .csv
                .resolve(
                    &read_prefix(&dataset.canonical, SNIFF_BYTES)
                        .map_err(|e| unreadable(e.to_string()))?,
                )
                .map_err(unreadable)?;
        }
        let mut lf = dataset.scan().map_err(|e| unreadable(e.message))?;
        let mut schema = lf
            .collect_schema()
            .map_err(|e| unreadable(dataset.redact(&e.to_string())))?;
        if spec.format == DatasetFormat::Csv {
            // The rows polars inferred the types from, as it parsed them.
            let sample = dataset
                .head(INFER_SCHEMA_ROWS, schema)
                .map_err(|e| unreadable(e.message))?;
            dataset.fixups = Fixups::detect(&dataset.canonical, &sample, dataset.csv.decimal_comma)
                .map_err(|e| unreadable(e.to_string()))?;
            lf = dataset.scan().map_err(|e| unreadable(e.message))?;
            schema = lf
                .collect_schema()
                .map_err(|e| unreadable(dataset.redact(&e.to_string())))?;
        }
        dataset.info.columns = columns_of(&schema);
        if spec.format == DatasetFormat::Parquet || meta.len() <= COUNT_AT_START_MAX_BYTES {
            dataset.info.row_count =
                Some(count_rows(lf).map_err(|e| unreadable(dataset.redact(&e.to_string())))?);
        }
        Ok(dataset)
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }

    /// How the file is read when it is a CSV (separator, decimal mark); `None` otherwise.
    pub fn csv(&self) -> Option<CsvRead> {
        (self.info.format == DatasetFormat::Csv).then_some(self.csv)
    }

    /// What is corrected after polars parses the CSV (empty for other formats).
    pub fn fixups(&self) -> &Fixups {
        &self.fixups
    }

    /// A lazy scan of the declared file. Re-checks that the declared path still resolves to the
    /// file it resolved to at start: if a symlink was swapped (or the file removed), refuse
    /// rather than read whatever it points at now.
    pub fn scan(&self) -> Result<LazyFrame, TaskError> {
        let path = self.checked_path()?;
        scan_file(path, self.info.format, self.csv)
            .map(|lf| self.fixups.apply(lf))
            .map_err(|e| self.data_error(&e))
    }

    /// The first `rows` rows of the file (all of them if it has fewer), typed by `schema` (the
    /// scan's, i.e. the whole file's). Reads a growing prefix of the file instead of scanning:
    /// polars' CSV reader splits a file into chunks and parses many of them in parallel before
    /// noticing a row limit was reached, so `scan().slice(0, 100)` of a 1 GB CSV parsed most of it.
    pub fn head(&self, rows: usize, schema: SchemaRef) -> Result<DataFrame, TaskError> {
        use std::io::Read as _;
        let gone = || {
            TaskError::new(
                failure::DATA_ERROR,
                format!(
                    "dataset `{}` is no longer available at its declared location",
                    self.name()
                ),
            )
        };
        let mut file = std::fs::File::open(self.checked_path()?).map_err(|_| gone())?;
        // Parsed as polars parses the file, then corrected as the scan is.
        let schema = Arc::new(self.fixups.raw_schema(&schema));
        let mut buf: Vec<u8> = Vec::new();
        let mut want: u64 = HEAD_FIRST_READ_BYTES.max(rows as u64 * 128);
        loop {
            let missing = want.saturating_sub(buf.len() as u64);
            let read = (&mut file)
                .take(missing)
                .read_to_end(&mut buf)
                .map_err(|_| gone())?;
            let whole = (read as u64) < missing;
            // Parse whole records only (the reader refuses a quoted field cut in half); and
            // since a prefix may still end in a half line, the last record parsed is only
            // returned when the whole file was read.
            let end = if whole { buf.len() } else { records_end(&buf) };
            let df = CsvReadOptions::default()
                .with_has_header(true)
                .with_schema(Some(schema.clone()))
                .map_parse_options(|o| {
                    o.with_null_values(Some(csv_null_values()))
                        .with_separator(self.csv.separator)
                        .with_decimal_comma(self.csv.decimal_comma)
                })
                .into_reader_with_file_handle(std::io::Cursor::new(&buf[..end]))
                .finish()
                .and_then(|df| self.fixups.apply(df.lazy()).collect())
                .map_err(|e| self.data_error(&e))?;
            if whole || df.height() > rows {
                return Ok(df.head(Some(rows)));
            }
            want = want.saturating_mul(4);
        }
    }

    /// Size of the declared file now, in bytes (after the same checks as [`Dataset::scan`]).
    pub fn file_len(&self) -> Result<u64, TaskError> {
        let path = self.checked_path()?;
        std::fs::metadata(path).map(|m| m.len()).map_err(|_| {
            TaskError::new(
                failure::DATA_ERROR,
                format!(
                    "dataset `{}` is no longer available at its declared location",
                    self.name()
                ),
            )
        })
    }

    fn checked_path(&self) -> Result<&Path, TaskError> {
        let now = std::fs::canonicalize(&self.declared).map_err(|_| {
            TaskError::new(
                failure::DATA_ERROR,
                format!(
                    "dataset `{}` is no longer available at its declared location",
                    self.name()
                ),
            )
        })?;
        if now != self.canonical {
            return Err(TaskError::new(
                failure::DATA_ERROR,
                format!(
                    "dataset `{}` now resolves to a different file than when the runner started; \
                     refusing to read it (restart the runner to accept the new target)",
                    self.name()
                ),
            ));
        }
        let is_file = std::fs::metadata(&self.canonical)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !is_file {
            return Err(TaskError::new(
                failure::DATA_ERROR,
                format!("dataset `{}` is no longer a regular file", self.name()),
            ));
        }
        Ok(&self.canonical)
    }

    /// A polars failure as a `data_error`, with this machine's paths taken out: the message
    /// goes to the server and its users, who are told dataset names, never local paths.
    pub fn data_error(&self, err: &PolarsError) -> TaskError {
        TaskError::new(
            failure::DATA_ERROR,
            format!(
                "dataset `{}`: {}",
                self.name(),
                self.redact(&err.to_string())
            ),
        )
    }

    fn redact(&self, message: &str) -> String {
        let placeholder = format!("<dataset {}>", self.name());
        let mut out = message.to_owned();
        for p in [&self.canonical, &self.declared] {
            let p = p.to_string_lossy();
            if !p.is_empty() {
                out = out.replace(p.as_ref(), &placeholder);
            }
        }
        out
    }
}

/// A lazy scan of one local file in `format` (a CSV read as `csv` says). Globbing and hive
/// partitioning are off: the path names exactly one file, whatever characters it contains.
pub fn scan_file(path: &Path, format: DatasetFormat, csv: CsvRead) -> PolarsResult<LazyFrame> {
    match format {
        DatasetFormat::Csv => LazyCsvReader::new(path)
            .with_has_header(true)
            .with_glob(false)
            .with_separator(csv.separator)
            .with_decimal_comma(csv.decimal_comma)
            .with_null_values(Some(csv_null_values()))
            .with_infer_schema_length(Some(INFER_SCHEMA_ROWS))
            .finish(),
        DatasetFormat::Parquet => LazyFrame::scan_parquet(
            path,
            ScanArgsParquet {
                glob: false,
                hive_options: polars::io::HiveOptions {
                    enabled: Some(false),
                    ..Default::default()
                },
                ..Default::default()
            },
        ),
        DatasetFormat::Ndjson => LazyJsonLineReader::new(path)
            .with_infer_schema_length(NonZeroUsize::new(INFER_SCHEMA_ROWS))
            .finish(),
    }
}

/// The first `limit` bytes of the file at `path` (all of it if shorter).
fn read_prefix(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// [`CSV_NULL_TOKENS`] as polars takes them (every column), and a lone `\r`: what polars
/// makes of a blank line in a CRLF file (pandas skips the line; see [`crate::csv_fixups`]).
fn csv_null_values() -> NullValues {
    NullValues::AllColumns(
        CSV_NULL_TOKENS
            .iter()
            .chain(&["\r"])
            .map(|t| (*t).into())
            .collect(),
    )
}

/// Length of the longest prefix of `bytes` (the start of a CSV file) that ends with a record:
/// just past the last newline outside double quotes (the scan's quoting: `"`, doubled inside).
fn records_end(bytes: &[u8]) -> usize {
    let mut quoted = false;
    let mut end = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => end = i + 1,
            _ => {}
        }
    }
    end
}

/// Our column list from a polars schema; dtype names as polars prints them (`i64`, `str`, …).
pub fn columns_of(schema: &Schema) -> Vec<ColumnInfo> {
    schema
        .iter()
        .map(|(name, dtype)| ColumnInfo {
            name: name.to_string(),
            dtype: dtype.to_string(),
        })
        .collect()
}

/// Number of rows behind a lazy frame, via a lazy `len()` so polars can count without parsing.
pub fn count_rows(lf: LazyFrame) -> PolarsResult<u64> {
    let df = lf.select([len().alias("n")]).collect()?;
    let value = df.column("n")?.get(0)?;
    value
        .extract::<u64>()
        .ok_or_else(|| PolarsError::ComputeError("row count is not a number".into()))
}

/// [`count_rows`] for a task: gives up with `cancelled` as soon as the task is cancelled.
pub fn count_rows_or_cancel(
    lf: LazyFrame,
    progress: &crate::progress::ProgressReporter,
) -> Result<PolarsResult<u64>, TaskError> {
    let df = crate::operations::collect_or_cancel(lf.select([len().alias("n")]), progress)?;
    Ok(df.and_then(|df| {
        df.column("n")?
            .get(0)?
            .extract::<u64>()
            .ok_or_else(|| PolarsError::ComputeError("row count is not a number".into()))
    }))
}

/// Check a name an owner declares. Names are what tasks and UIs use, so they must not look like
/// paths either.
pub fn validate_dataset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("use only letters, digits, `_`, `.` and `-`".into());
    }
    if name.contains("..") || name == "." {
        return Err("it must not contain `..` or be `.`".into());
    }
    Ok(())
}

/// True when a requested dataset name is really a path or URL (or anything else that is not
/// shaped like a dataset name).
pub fn looks_like_path(s: &str) -> bool {
    s.contains('/')
        || s.contains('\\')
        || s.contains("..")
        || s.contains("://")
        || validate_dataset_name(s).is_err()
}

/// Echo at most a short prefix of caller input in messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn csv_spec(dir: &TempDir, name: &str, file: &str, body: &str) -> DatasetSpec {
        let path = dir.write(file, body);
        DatasetSpec {
            name: name.into(),
            path,
            format: DatasetFormat::Csv,
            csv: Default::default(),
        }
    }

    #[test]
    fn records_end_skips_newlines_in_quotes() {
        assert_eq!(records_end(b""), 0);
        assert_eq!(records_end(b"a,b"), 0);
        assert_eq!(records_end(b"a,b\n1,2"), 4);
        assert_eq!(records_end(b"a,b\n1,\"x\ny\"\n3,\"p"), 12);
        assert_eq!(records_end(b"a,b\n1,\"x\ny"), 4);
        // A doubled quote inside a quoted field is an escaped quote.
        assert_eq!(records_end(b"a\n\"say \"\"hi\"\"\n\"\n"), 16);
    }

    #[test]
    fn head_reads_the_first_rows_like_a_full_scan() {
        let dir = TempDir::new();
        // Long records (a quoted field with a newline in it) so the first prefix read holds too
        // few rows and has to grow, and its cut falls inside a quoted field.
        let mut body = String::from("id,note,x\n");
        for i in 0..3000 {
            let pad = "z".repeat(200 + i % 300);
            body.push_str(&format!(
                "{i},\"line one {i}\nline two {pad}\",{}.5\n",
                i % 7
            ));
        }
        let spec = csv_spec(&dir, "long", "long.csv", &body);
        let cat = Catalog::open(&[spec]).unwrap();
        let d = cat.resolve("long").unwrap();
        let mut scan = d.scan().unwrap();
        let schema = scan.collect_schema().unwrap();
        let full = scan.collect().unwrap();
        assert_eq!(full.height(), 3000);

        for rows in [0, 1, 999, 2500, 3000] {
            let head = d.head(rows, schema.clone()).unwrap();
            assert!(head.equals_missing(&full.head(Some(rows))), "{rows} rows");
            assert_eq!(head.schema(), full.schema());
        }
        // Asking for more than there is gives all of it.
        let all = d.head(10_000, schema.clone()).unwrap();
        assert!(all.equals_missing(&full));
    }

    /// Column names and dtypes as the greeting advertises them.
    fn advertised(cat: &Catalog, name: &str) -> Vec<(String, String)> {
        let info = cat.infos().into_iter().find(|i| i.name == name).unwrap();
        info.columns
            .into_iter()
            .map(|c| (c.name, c.dtype))
            .collect()
    }

    fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
        want.iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn a_semicolon_or_tab_csv_is_split_by_its_sniffed_separator() {
        let dir = TempDir::new();
        let semi = csv_spec(
            &dir,
            "semi",
            "semi.csv",
            "id;city, state;amount\n1;\"Paris; FR\";2.5\n2;Lyon;NA\n",
        );
        let tabs = csv_spec(&dir, "tabs", "tabs.txt", "id\tname\n1\ta,b\n2\tc\n");
        let one = csv_spec(&dir, "one", "one.csv", "amount\n1\n2\n");
        let cat = Catalog::open(&[semi, tabs, one]).unwrap();
        assert_eq!(
            advertised(&cat, "semi"),
            pairs(&[("id", "i64"), ("city, state", "str"), ("amount", "f64")])
        );
        assert_eq!(
            advertised(&cat, "tabs"),
            pairs(&[("id", "i64"), ("name", "str")])
        );
        assert_eq!(advertised(&cat, "one"), pairs(&[("amount", "i64")]));
        let d = cat.resolve("semi").unwrap();
        assert_eq!(d.csv().unwrap().separator, b';');
        let mut scan = d.scan().unwrap();
        let schema = scan.collect_schema().unwrap();
        let full = scan.collect().unwrap();
        assert_eq!(
            full.column("city, state").unwrap().str().unwrap().get(0),
            Some("Paris; FR")
        );
        assert_eq!(
            full.column("amount").unwrap().f64().unwrap().null_count(),
            1
        );
        // The first rows read on their own use the same separator.
        assert!(d.head(2, schema).unwrap().equals_missing(&full));
        let t = cat
            .resolve("tabs")
            .unwrap()
            .scan()
            .unwrap()
            .collect()
            .unwrap();
        assert_eq!(t.column("name").unwrap().str().unwrap().get(0), Some("a,b"));
    }

    #[test]
    fn a_declared_decimal_comma_reads_european_numbers() {
        let dir = TempDir::new();
        let body = "id;price;label\n1;3,25;a\n2;-1000,5;b\n3;;c\n";
        let spec = DatasetSpec {
            csv: crate::csv_dialect::CsvDialect {
                separator: None,
                decimal_comma: true,
            },
            ..csv_spec(&dir, "euro", "euro.csv", body)
        };
        // Undeclared, the same column is text: the decimal mark is never guessed.
        let plain = csv_spec(&dir, "plain", "euro2.csv", body);
        let cat = Catalog::open(&[spec, plain]).unwrap();
        assert_eq!(
            advertised(&cat, "euro"),
            pairs(&[("id", "i64"), ("price", "f64"), ("label", "str")])
        );
        assert_eq!(advertised(&cat, "plain")[1].1, "str");
        let d = cat.resolve("euro").unwrap();
        let mut scan = d.scan().unwrap();
        let schema = scan.collect_schema().unwrap();
        let full = scan.collect().unwrap();
        let price: Vec<Option<f64>> = full
            .column("price")
            .unwrap()
            .f64()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(price, [Some(3.25), Some(-1000.5), None]);
        assert!(d.head(3, schema).unwrap().equals_missing(&full));

        // A decimal comma in a comma-separated file cannot be read: refused at start.
        let clash = DatasetSpec {
            csv: crate::csv_dialect::CsvDialect {
                separator: None,
                decimal_comma: true,
            },
            ..csv_spec(&dir, "clash", "clash.csv", "a,b\n1,2\n")
        };
        let e = Catalog::open(&[clash]).unwrap_err();
        assert!(matches!(e, CatalogError::Unreadable { .. }), "{e}");
        assert!(e.to_string().contains("decimal comma"), "{e}");
    }

    #[test]
    fn blank_lines_are_skipped_and_padded_numbers_are_numbers_as_in_pandas() {
        let dir = TempDir::new();
        // UCI-style: `, ` between fields, CRLF, a blank line inside and two at the end.
        let body = "age, workclass, fnlwgt, rate\r\n39, State-gov, 77516, 0.5\r\n\r\n\
                    50, Self-emp,  83311 ,\t1e-3\r\n38, Private, 215646,\r\n\r\n\r\n";
        let spec = csv_spec(&dir, "adult", "adult.csv", body);
        // Spaces alone keep a column text (pandas too); a row of empty fields stays a row in a
        // file without blank lines (pandas keeps it as NaNs).
        let kept = csv_spec(&dir, "kept", "kept.csv", "a,b\n1, \n,\n2,x\n");
        let cat = Catalog::open(&[spec, kept]).unwrap();
        assert_eq!(
            advertised(&cat, "adult"),
            pairs(&[
                ("age", "i64"),
                (" workclass", "str"),
                (" fnlwgt", "i64"),
                (" rate", "f64")
            ])
        );
        assert_eq!(cat.infos()[0].row_count, Some(3));
        let d = cat.resolve("adult").unwrap();
        assert!(d.fixups().skips_blank_lines());
        let mut scan = d.scan().unwrap();
        let schema = scan.collect_schema().unwrap();
        let full = scan.collect().unwrap();
        let fnlwgt: Vec<Option<i64>> = full
            .column(" fnlwgt")
            .unwrap()
            .i64()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(fnlwgt, [Some(77516), Some(83311), Some(215646)]);
        let rate: Vec<Option<f64>> = full
            .column(" rate")
            .unwrap()
            .f64()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(rate, [Some(0.5), Some(0.001), None]);
        // Text keeps its padding, as in pandas (skipinitialspace is off there too).
        assert_eq!(
            full.column(" workclass").unwrap().str().unwrap().get(0),
            Some(" State-gov")
        );
        // Each head length agrees with the scan.
        for n in 1..=3 {
            assert!(
                d.head(n, schema.clone())
                    .unwrap()
                    .equals_missing(&full.head(Some(n))),
                "{n}"
            );
        }

        assert_eq!(
            advertised(&cat, "kept"),
            pairs(&[("a", "i64"), ("b", "str")])
        );
        let k = cat.resolve("kept").unwrap();
        assert!(!k.fixups().skips_blank_lines());
        assert_eq!(k.scan().unwrap().collect().unwrap().height(), 3);
    }

    #[test]
    fn a_padded_number_column_with_text_past_the_sample_is_refused_by_name() {
        let dir = TempDir::new();
        let mut body = String::from("id,n\n");
        for i in 0..INFER_SCHEMA_ROWS + 5 {
            body.push_str(&format!("{i}, {i}\n"));
        }
        body.push_str("7, seven\n");
        // Counted at start (small file), so the bad value is found before any task runs.
        let e = Catalog::open(&[csv_spec(&dir, "late", "late.csv", &body)]).unwrap_err();
        assert!(matches!(e, CatalogError::Unreadable { .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains("`n`") && m.contains("seven"), "{m}");
    }

    #[test]
    fn reads_pandas_missing_value_markers_as_null() {
        let dir = TempDir::new();
        let body = "id,score,label,note\n1,1.5,a,x\n2,NA,NA,\"\"\n3,N/A,,\"NA\"\n\
                    4,NaN,null,y\n5,#N/A,None,z\n6,4.5,b,NaNa\n";
        let spec = csv_spec(&dir, "gaps", "gaps.csv", body);
        let cat = Catalog::open(&[spec]).unwrap();
        let infos = cat.infos();
        let cols: Vec<(&str, &str)> = infos[0]
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.dtype.as_str()))
            .collect();
        let want = [
            ("id", "i64"),
            ("score", "f64"),
            ("label", "str"),
            ("note", "str"),
        ];
        assert_eq!(
            cols, want,
            "NA and friends do not make a number column text"
        );
        let d = cat.resolve("gaps").unwrap();
        let mut scan = d.scan().unwrap();
        let schema = scan.collect_schema().unwrap();
        let full = scan.collect().unwrap();
        let score = full.column("score").unwrap().f64().unwrap();
        assert_eq!(score.null_count(), 4, "NA, N/A, NaN and #N/A are gaps");
        assert_eq!(score.sum(), Some(6.0), "no NaN left to poison the sum");
        let label = full.column("label").unwrap().str().unwrap();
        let labels: Vec<Option<&str>> = label.into_iter().collect();
        assert_eq!(labels, [Some("a"), None, None, None, None, Some("b")]);
        // A value that only starts like a marker stays.
        let note = full.column("note").unwrap().str().unwrap();
        assert_eq!(note.get(5), Some("NaNa"));
        assert_eq!(note.get(2), None, "a quoted NA is a gap too, as in pandas");
        assert_eq!(note.get(1), None, "so is a quoted empty field");
        // The first rows read on their own agree with the scan.
        let head = d.head(6, schema).unwrap();
        assert!(head.equals_missing(&full));
    }

    #[test]
    fn declares_csv_with_schema_and_count() {
        let dir = TempDir::new();
        let spec = csv_spec(&dir, "sales", "sales.csv", "a,b,c\n1,x,1.5\n2,y,2.5\n3,,\n");
        let cat = Catalog::open(&[spec]).unwrap();
        let infos = cat.infos();
        assert_eq!(infos.len(), 1);
        let info = &infos[0];
        assert_eq!(info.name, "sales");
        assert_eq!(info.row_count, Some(3));
        let cols: Vec<(&str, &str)> = info
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.dtype.as_str()))
            .collect();
        assert_eq!(cols, vec![("a", "i64"), ("b", "str"), ("c", "f64")]);
        // The advertisement never carries the path.
        let json = serde_json::to_string(info).unwrap();
        assert!(!json.contains(dir.path().to_str().unwrap()), "{json}");
    }

    #[test]
    fn refuses_paths_urls_and_undeclared_names() {
        let dir = TempDir::new();
        let cat = Catalog::open(&[csv_spec(&dir, "sales", "s.csv", "a\n1\n")]).unwrap();
        assert_eq!(cat.resolve("sales").unwrap().name(), "sales");
        for bad in [
            "../x",
            "/etc/passwd",
            "http://example.com/data.csv",
            "..",
            "a\\b",
            "sales/../../etc",
            "file:///etc/passwd",
            "",
        ] {
            let e = cat.resolve(bad).unwrap_err();
            assert_eq!(e.code, failure::PATH_NOT_ALLOWED, "{bad}: {e:?}");
        }
        let e = cat.resolve("orders").unwrap_err();
        assert_eq!(e.code, failure::UNKNOWN_DATASET);
        assert!(
            e.message.contains("orders") && e.message.contains("sales"),
            "{}",
            e.message
        );
    }

    #[test]
    fn refuses_missing_files_directories_and_bad_names() {
        let dir = TempDir::new();
        let missing = DatasetSpec {
            name: "m".into(),
            path: dir.path().join("nope.csv"),
            format: DatasetFormat::Csv,
            csv: Default::default(),
        };
        assert!(matches!(
            Catalog::open(&[missing]),
            Err(CatalogError::Missing { .. })
        ));
        let a_dir = DatasetSpec {
            name: "d".into(),
            path: dir.path().to_path_buf(),
            format: DatasetFormat::Csv,
            csv: Default::default(),
        };
        assert!(matches!(
            Catalog::open(&[a_dir]),
            Err(CatalogError::NotAFile { .. })
        ));
        let bad_name = csv_spec(&dir, "../up", "u.csv", "a\n1\n");
        assert!(matches!(
            Catalog::open(&[bad_name]),
            Err(CatalogError::InvalidName { .. })
        ));
        let twice = vec![
            csv_spec(&dir, "x", "x1.csv", "a\n1\n"),
            csv_spec(&dir, "x", "x2.csv", "a\n1\n"),
        ];
        assert!(matches!(
            Catalog::open(&twice),
            Err(CatalogError::Duplicate { .. })
        ));
        let parquet = DatasetSpec {
            format: DatasetFormat::Parquet,
            ..csv_spec(&dir, "p", "p.parquet", "not really parquet")
        };
        let e = Catalog::open(&[parquet]).unwrap_err();
        assert!(matches!(e, CatalogError::Unreadable { .. }), "{e}");
        assert!(!e.to_string().contains("not really"), "{e}");
    }

    #[test]
    fn declares_parquet_and_ndjson_with_the_same_schema_as_csv() {
        let dir = TempDir::new();
        let csv = csv_spec(
            &dir,
            "c",
            "c.csv",
            "id,name,score\n1,ann,1.5\n2,bob,\n3,,3.25\n",
        );
        let mut df = CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(csv.path.clone()))
            .unwrap()
            .finish()
            .unwrap();
        let pq_path = dir.path().join("c.parquet");
        ParquetWriter::new(std::fs::File::create(&pq_path).unwrap())
            .finish(&mut df)
            .unwrap();
        let nd_path = dir.write(
            "c.ndjson",
            "{\"id\":1,\"name\":\"ann\",\"score\":1.5}\n\
             {\"id\":2,\"name\":\"bob\",\"score\":null}\n\
             {\"id\":3,\"name\":null,\"score\":3.25}\n",
        );
        let cat = Catalog::open(&[
            csv,
            DatasetSpec {
                name: "p".into(),
                path: pq_path,
                format: DatasetFormat::Parquet,
                csv: Default::default(),
            },
            DatasetSpec {
                name: "n".into(),
                path: nd_path,
                format: DatasetFormat::Ndjson,
                csv: Default::default(),
            },
        ])
        .unwrap();
        let expected = cat.resolve("c").unwrap().scan().unwrap().collect().unwrap();
        for name in ["p", "n"] {
            let d = cat.resolve(name).unwrap();
            assert_eq!(d.info().row_count, Some(3), "{name}");
            let cols: Vec<(&str, &str)> = d
                .info()
                .columns
                .iter()
                .map(|c| (c.name.as_str(), c.dtype.as_str()))
                .collect();
            assert_eq!(
                cols,
                vec![("id", "i64"), ("name", "str"), ("score", "f64")],
                "{name}"
            );
            let got = d.scan().unwrap().collect().unwrap();
            assert!(got.equals_missing(&expected), "{name}: {got} vs {expected}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_symlink_swapped_after_declaration() {
        let dir = TempDir::new();
        let real = dir.write("real.csv", "a\n1\n");
        dir.write("other.csv", "secret\n42\n");
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let cat = Catalog::open(&[DatasetSpec {
            name: "linked".into(),
            path: link.clone(),
            format: DatasetFormat::Csv,
            csv: Default::default(),
        }])
        .unwrap();
        let d = cat.resolve("linked").unwrap();
        assert!(d.scan().is_ok());

        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(dir.path().join("other.csv"), &link).unwrap();
        let e = d.scan().err().expect("scan refused");
        assert_eq!(e.code, failure::DATA_ERROR);
        assert!(e.message.contains("different file"), "{}", e.message);
        assert!(!e.message.contains(dir.path().to_str().unwrap()));

        std::fs::remove_file(&link).unwrap();
        let e = d.scan().err().expect("scan refused");
        assert_eq!(e.code, failure::DATA_ERROR);
    }

    #[test]
    fn names() {
        assert!(validate_dataset_name("sales_2024.v1-final").is_ok());
        assert!(validate_dataset_name("a b").is_err());
        assert!(validate_dataset_name("a..b").is_err());
        assert!(validate_dataset_name(".").is_err());
        assert!(validate_dataset_name(&"x".repeat(200)).is_err());
        assert!(looks_like_path("C:\\data"));
        assert!(!looks_like_path("sales"));
    }
}

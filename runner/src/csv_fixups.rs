//! Where polars' CSV reader and pandas' `read_csv` disagree on real files, and the corrections
//! applied to what polars parsed so a dataset reads as pandas reads it:
//!
//! - **Blank lines.** polars reads each as a row of nulls (and, in a CRLF file, the lone `\r`
//!   as a text value that turns the first column into text); pandas skips them
//!   (`skip_blank_lines`). UCI's `iris.data` ends with two. A file found to have one at start
//!   is read with all-null rows dropped — which also drops a row of empty fields (`,,,`) that
//!   pandas would keep as NaNs; only files with blank lines are filtered.
//! - **Numbers padded with spaces** (`39, 77516, 13` — UCI's `adult.data`). polars reads such a
//!   column as text; pandas as numbers. A text column whose every sampled value is a number once
//!   spaces and tabs around it are trimmed is read as `i64` (or `f64`); a value that is only
//!   spaces keeps it text, as in pandas.
//!
//! It decides from the file's start (and, for big files, its end) what to correct; it does not
//! choose separators (see [`crate::csv_dialect`]) or open datasets by name (see
//! [`crate::catalog`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use polars::prelude::*;

/// Files up to this size are searched whole for blank lines at start; bigger ones only in
/// their first and last [`EDGE_BYTES`] (where blank lines usually are: a trailing one).
pub const SEARCH_WHOLE_MAX_BYTES: u64 = crate::catalog::COUNT_AT_START_MAX_BYTES;
const EDGE_BYTES: u64 = 64 * 1024;

/// What to correct in one CSV dataset, decided once at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fixups {
    /// Every column, when the file has blank lines (their all-null rows are dropped).
    blank_rows_over: Option<Vec<PlSmallStr>>,
    /// Text columns (as polars infers them) that are padded numbers, and their number type.
    padded_numbers: Vec<(PlSmallStr, DataType)>,
    /// Numbers are written with a decimal comma (the padded ones are parsed so too).
    decimal_comma: bool,
}

impl Fixups {
    /// Decide from the file and the first rows polars parsed (`sample`, typed as the scan is).
    pub fn detect(path: &Path, sample: &DataFrame, decimal_comma: bool) -> std::io::Result<Self> {
        let blank = has_blank_lines(path)?;
        Ok(Self {
            blank_rows_over: blank.then(|| sample.get_column_names_owned()),
            padded_numbers: padded_numbers(sample, decimal_comma),
            decimal_comma,
        })
    }

    /// Whether the file has blank lines that are skipped.
    pub fn skips_blank_lines(&self) -> bool {
        self.blank_rows_over.is_some()
    }

    /// The corrections on a lazy scan of the file.
    pub fn apply(&self, mut lf: LazyFrame) -> LazyFrame {
        if let Some(columns) = &self.blank_rows_over {
            let all_null = columns
                .iter()
                .map(|c| col(c.clone()).is_null())
                .reduce(|a, b| a.and(b));
            if let Some(all_null) = all_null {
                lf = lf.filter(all_null.not());
            }
        }
        if !self.padded_numbers.is_empty() {
            let decimal_comma = self.decimal_comma;
            lf = lf.with_columns(
                self.padded_numbers
                    .iter()
                    .map(|(name, dtype)| {
                        let (column, to) = (name.clone(), dtype.clone());
                        col(name.clone()).map(
                            move |c| parse_padded(&c, &column, &to, decimal_comma).map(Some),
                            GetOutput::from_type(dtype.clone()),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
        lf
    }

    /// `schema` (the corrected scan's) as polars itself parses the file: padded numbers as text.
    pub fn raw_schema(&self, schema: &Schema) -> Schema {
        let mut raw = schema.clone();
        for (name, _) in &self.padded_numbers {
            raw.set_dtype(name, DataType::String);
        }
        raw
    }
}

/// Trim spaces and tabs around a number, and read a decimal comma as a point.
fn trimmed(s: &str, decimal_comma: bool) -> std::borrow::Cow<'_, str> {
    let t = s.trim_matches([' ', '\t']);
    if decimal_comma && t.contains(',') {
        t.replace(',', ".").into()
    } else {
        t.into()
    }
}

/// A padded integer, trimmed; `None` if it is not one.
fn parse_int(s: &str, decimal_comma: bool) -> Option<i64> {
    trimmed(s, decimal_comma).parse().ok()
}

/// A padded number (`1e3`, `inf` too, as pandas reads them), trimmed; `None` if it is not one.
fn parse_float(s: &str, decimal_comma: bool) -> Option<f64> {
    trimmed(s, decimal_comma).parse().ok()
}

/// The text columns of `sample` whose values (at least one) are all numbers once trimmed, with
/// the type they read as: `i64` if all are integers, else `f64`.
pub fn padded_numbers(sample: &DataFrame, decimal_comma: bool) -> Vec<(PlSmallStr, DataType)> {
    let mut found = Vec::new();
    for column in sample.get_columns() {
        let Ok(strings) = column.str() else { continue };
        let mut any = false;
        let mut ints = true;
        let mut numbers = true;
        for s in strings.into_iter().flatten() {
            any = true;
            if ints && parse_int(s, decimal_comma).is_some() {
                continue;
            }
            ints = false;
            if parse_float(s, decimal_comma).is_none() {
                numbers = false;
                break;
            }
        }
        if any && numbers {
            let dtype = if ints {
                DataType::Int64
            } else {
                DataType::Float64
            };
            found.push((column.name().clone(), dtype));
        }
    }
    found
}

/// Parse a text column of padded numbers as `dtype`. A value beyond the sample that is not a
/// number is an error naming it, as polars' own reader fails on a value that does not fit the
/// type it inferred.
fn parse_padded(
    c: &Column,
    name: &PlSmallStr,
    dtype: &DataType,
    decimal_comma: bool,
) -> PolarsResult<Column> {
    let strings = c.str()?;
    let bad = |s: &str| polars_err!(ComputeError: "column `{name}`: `{s}` is not a number, but the first rows of this column were");
    let out: Series = match dtype {
        DataType::Int64 => strings
            .into_iter()
            .map(|v| {
                v.map(|s| parse_int(s, decimal_comma).ok_or_else(|| bad(s)))
                    .transpose()
            })
            .collect::<PolarsResult<Int64Chunked>>()?
            .into_series(),
        _ => strings
            .into_iter()
            .map(|v| {
                v.map(|s| parse_float(s, decimal_comma).ok_or_else(|| bad(s)))
                    .transpose()
            })
            .collect::<PolarsResult<Float64Chunked>>()?
            .into_series(),
    };
    Ok(out.with_name(name.clone()).into_column())
}

/// Whether the CSV file at `path` has a blank line (empty, or only `\r`) outside quotes, after
/// its header. Files over [`SEARCH_WHOLE_MAX_BYTES`] are searched in their first and last
/// 64 KiB only.
pub fn has_blank_lines(path: &Path) -> std::io::Result<bool> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len <= SEARCH_WHOLE_MAX_BYTES {
        let mut all = Vec::with_capacity(len as usize);
        file.read_to_end(&mut all)?;
        return Ok(blank_line_in(&all, true));
    }
    let mut head = Vec::new();
    (&mut file).take(EDGE_BYTES).read_to_end(&mut head)?;
    if blank_line_in(&head, true) {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-(EDGE_BYTES as i64)))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    // The tail starts mid-record, quote state unknown: read it as unquoted from its first
    // line break on.
    Ok(tail
        .iter()
        .position(|&b| b == b'\n')
        .is_some_and(|i| blank_line_in(&tail[i + 1..], false)))
}

/// Whether `bytes` has an empty line (or one that is only `\r`) outside double quotes. With
/// `from_start`, the first line (the header) is not counted as a blank one.
fn blank_line_in(bytes: &[u8], from_start: bool) -> bool {
    let mut quoted = false;
    // Whether the current line has anything but `\r`; a file's first line is its header.
    let mut line_has_content = from_start;
    for &b in bytes {
        match b {
            b'"' => {
                quoted = !quoted;
                line_has_content = true;
            }
            b'\n' if !quoted => {
                if !line_has_content {
                    return true;
                }
                line_has_content = false;
            }
            b'\r' => {}
            _ => line_has_content = true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_found_outside_quotes_only() {
        assert!(!blank_line_in(b"a,b\n1,2\n", true));
        assert!(!blank_line_in(b"a,b\r\n1,2\r\n", true));
        assert!(!blank_line_in(b"a,b\n1,2", true));
        assert!(blank_line_in(b"a,b\n1,2\n\n", true));
        assert!(blank_line_in(b"a,b\r\n\r\n1,2\r\n", true));
        // A line of empty fields is not blank; an empty line inside quotes is data.
        assert!(!blank_line_in(b"a,b\n,\n1,2\n", true));
        assert!(!blank_line_in(b"a,b\n\"x\n\ny\",2\n", true));
        // A tail slice starts at a line start: a line break there ends an empty line.
        assert!(blank_line_in(b"\n", false));
        assert!(!blank_line_in(b"1,2\n", false));
    }

    #[test]
    fn padded_numbers_are_text_columns_of_trimmed_numbers() {
        let sample = df!(
            "ints" => [Some(" 1"), Some("2 "), None, Some("\t-3")],
            "floats" => [Some(" 1"), Some("2.5"), Some("1e3 "), Some("-inf")],
            "spaces" => [Some(" 1"), Some(" "), Some("2"), Some("3")],
            "words" => [Some(" 1"), Some("two"), Some("3"), Some("4")],
            "nulls" => [None::<&str>, None, None, None],
            "inner" => [Some("1 2"), Some("3"), Some("4"), Some("5")],
            "typed" => [1i64, 2, 3, 4]
        )
        .unwrap();
        assert_eq!(
            padded_numbers(&sample, false),
            [
                (PlSmallStr::from("ints"), DataType::Int64),
                (PlSmallStr::from("floats"), DataType::Float64)
            ]
        );
        let euro = df!("p" => [" 3,25", "4"]).unwrap();
        assert!(padded_numbers(&euro, false).is_empty());
        assert_eq!(
            padded_numbers(&euro, true),
            [(PlSmallStr::from("p"), DataType::Float64)]
        );
        let fixups = Fixups {
            blank_rows_over: None,
            padded_numbers: padded_numbers(&euro, true),
            decimal_comma: true,
        };
        let out = fixups.apply(euro.lazy()).collect().unwrap();
        let p: Vec<Option<f64>> = out
            .column("p")
            .unwrap()
            .f64()
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(p, [Some(3.25), Some(4.0)]);
    }
}

//! How a CSV dataset is written: its field separator and decimal mark, as the owner declares
//! them (`sep`, `decimal`, named as in pandas' `read_csv`) or, for the separator, as sniffed from
//! the header line.
//!
//! This module parses and resolves those two settings only; it does not open files for reading
//! data (that is [`crate::catalog`]) and does not guess the decimal mark, which a header cannot
//! show.

/// What the owner declared for a CSV dataset (ignored for Parquet and NDJSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CsvDialect {
    /// Field separator. `None`: sniffed from the header line (see [`sniff_separator`]).
    pub separator: Option<u8>,
    /// Numbers are written with a decimal comma (`3,14`), as in much of Europe.
    pub decimal_comma: bool,
}

/// The settings a CSV file is read with, once resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvRead {
    pub separator: u8,
    pub decimal_comma: bool,
}

impl Default for CsvRead {
    /// Plain CSV: comma-separated, decimal point (what the runner itself writes).
    fn default() -> Self {
        Self {
            separator: b',',
            decimal_comma: false,
        }
    }
}

/// Separators the sniffer considers, in order of preference on a tie.
const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];
/// Records (the header included) the sniffer compares.
const SNIFF_RECORDS: usize = 50;

/// A separator as the owner writes it: one ASCII character, or a name (`comma`, `semicolon`,
/// `tab`, `pipe`, `space`, `colon`) for those awkward in a shell or a comma-separated list.
pub fn parse_separator(word: &str) -> Result<u8, String> {
    let byte = match word.to_ascii_lowercase().as_str() {
        "comma" => b',',
        "semicolon" => b';',
        "tab" | "\\t" => b'\t',
        "pipe" => b'|',
        "space" => b' ',
        "colon" => b':',
        _ => match word.as_bytes() {
            [b] if b.is_ascii() => *b,
            _ => {
                return Err(format!(
                    "separator `{word}` must be one ASCII character or one of comma, semicolon, \
                     tab, pipe, space, colon"
                ))
            }
        },
    };
    if matches!(byte, b'"' | b'\n' | b'\r') || byte.is_ascii_alphanumeric() {
        return Err(format!(
            "separator `{word}` cannot be a quote, a line break, a letter or a digit"
        ));
    }
    Ok(byte)
}

/// A decimal mark as the owner writes it: `.` / `point` (the default) or `,` / `comma`.
/// Returns whether it is the comma.
pub fn parse_decimal(word: &str) -> Result<bool, String> {
    match word.to_ascii_lowercase().as_str() {
        "." | "point" | "dot" => Ok(false),
        "," | "comma" => Ok(true),
        _ => Err(format!(
            "decimal mark `{word}` must be `.` (point) or `,` (comma)"
        )),
    }
}

/// The separator the start of a CSV file (`bytes`) implies, in the spirit of Python's
/// `csv.Sniffer`: of `,` `;` tab `|`, those the header has outside quotes and every following
/// complete record has exactly as many of (up to 50 records) are consistent, and the one the
/// header has most of wins (a tie goes to the comma, then `;`, tab, `|`). If none is
/// consistent (ragged rows), the comma if the header has one (as pandas reads it), else the one
/// the header has most of; a header with none of them is a one-column file, read with commas.
pub fn sniff_separator(bytes: &[u8]) -> u8 {
    let records = counts_per_record(bytes);
    let Some((header, rest)) = records.split_first() else {
        return b',';
    };
    let consistent = |i: usize| header[i] > 0 && rest.iter().all(|r| r[i] == header[i]);
    let most = |ok: &dyn Fn(usize) -> bool| {
        (0..CANDIDATES.len())
            .filter(|&i| ok(i))
            .fold(None, |best: Option<usize>, i| match best {
                Some(b) if header[b] >= header[i] => Some(b),
                _ => Some(i),
            })
    };
    if let Some(i) = most(&consistent) {
        return CANDIDATES[i];
    }
    if header[0] > 0 {
        return b',';
    }
    most(&|i| header[i] > 0).map_or(b',', |i| CANDIDATES[i])
}

/// For each complete record at the start of `bytes` (quote-aware; blank lines skipped; the last
/// one only if a line break ends it), how many of each candidate separator it has outside quotes.
fn counts_per_record(bytes: &[u8]) -> Vec<[usize; 4]> {
    let mut records = Vec::new();
    let mut counts = [0usize; 4];
    let mut blank = true;
    let mut quoted = false;
    for &b in bytes {
        if records.len() == SNIFF_RECORDS {
            break;
        }
        match b {
            b'"' => {
                quoted = !quoted;
                blank = false;
            }
            b'\n' | b'\r' if !quoted => {
                if !blank {
                    records.push(counts);
                }
                counts = [0; 4];
                blank = true;
            }
            _ if quoted => {}
            _ => {
                if let Some(i) = CANDIDATES.iter().position(|&c| c == b) {
                    counts[i] += 1;
                }
                blank = false;
            }
        }
    }
    records
}

impl CsvDialect {
    /// Resolve against the file's first bytes: a declared separator wins over the sniffed one.
    /// A decimal comma with a comma separator is refused: the two cannot be told apart.
    pub fn resolve(self, head: &[u8]) -> Result<CsvRead, String> {
        let separator = self.separator.unwrap_or_else(|| sniff_separator(head));
        if self.decimal_comma && separator == b',' {
            return Err(
                "a decimal comma needs a separator other than the comma (declare sep, e.g. `;`)"
                    .into(),
            );
        }
        Ok(CsvRead {
            separator,
            decimal_comma: self.decimal_comma,
        })
    }
}

/// How a separator is shown to the owner in logs and errors.
pub fn separator_name(separator: u8) -> String {
    match separator {
        b'\t' => "tab".into(),
        b' ' => "space".into(),
        b => format!("`{}`", b as char),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_separator_that_every_record_agrees_on() {
        assert_eq!(sniff_separator(b"a,b,c\n1,2,3\n"), b',');
        assert_eq!(sniff_separator(b"a;b;c\n1,5;2;3\n"), b';');
        assert_eq!(sniff_separator(b"a\tb\tc\r\n1\t2\t3\r\n"), b'\t');
        assert_eq!(sniff_separator(b"a|b\n1|2"), b'|');
        // A comma inside a name does not outvote the semicolons that every row has.
        assert_eq!(
            sniff_separator(b"id;city, state;amount\n1;Paris;2,5\n2;Lyon;3\n"),
            b';'
        );
        // Semicolons in a text column of a comma file: the header has none, so commas.
        assert_eq!(sniff_separator(b"id,note\n1,a;b\n2,c;d\n"), b',');
        // A one-column file, or an empty one, is read as comma-separated (one column).
        assert_eq!(sniff_separator(b"amount\n1\n2\n"), b',');
        assert_eq!(sniff_separator(b""), b',');
        // Separators inside quotes (a quoted line break too) do not count.
        assert_eq!(sniff_separator(b"\"a;b\",\"c;d\"\n\"x\ny;z\",2\n"), b',');
        assert_eq!(
            sniff_separator(b"\"city, state\";zip\n\"Paris, FR\";75\n"),
            b';'
        );
        // Ragged rows: the comma if the header has one, as pandas would read it.
        assert_eq!(sniff_separator(b"a,b;c\n1,2,3;4\n5;6;7\n"), b',');
        assert_eq!(sniff_separator(b"a;b;c\n1;2\n"), b';');
        // A half record at the end of the sample is not compared; blank lines are skipped.
        assert_eq!(sniff_separator(b"a;b\n\n1;2\n3;4\n5"), b';');
        // Equal and consistent: the comma first.
        assert_eq!(sniff_separator(b"a;b,c\n1;2,3\n"), b',');
    }

    #[test]
    fn separators_and_decimal_marks_parse_by_character_or_name() {
        assert_eq!(parse_separator(";"), Ok(b';'));
        assert_eq!(parse_separator("semicolon"), Ok(b';'));
        assert_eq!(parse_separator("TAB"), Ok(b'\t'));
        assert_eq!(parse_separator("\t"), Ok(b'\t'));
        assert_eq!(parse_separator("pipe"), Ok(b'|'));
        assert_eq!(parse_separator("comma"), Ok(b','));
        for bad in ["", ";;", "\"", "x", "7", "é", "\n"] {
            assert!(parse_separator(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_decimal(","), Ok(true));
        assert_eq!(parse_decimal("comma"), Ok(true));
        assert_eq!(parse_decimal("."), Ok(false));
        assert!(parse_decimal(";").is_err());
    }

    #[test]
    fn a_declared_separator_wins_and_a_decimal_comma_needs_another_one() {
        let head = b"a;b\n1,5;2\n";
        let sniffed = CsvDialect::default().resolve(head).unwrap();
        assert_eq!(
            sniffed,
            CsvRead {
                separator: b';',
                decimal_comma: false
            }
        );
        let declared = CsvDialect {
            separator: Some(b'\t'),
            decimal_comma: false,
        };
        assert_eq!(declared.resolve(head).unwrap().separator, b'\t');
        let euro = CsvDialect {
            separator: None,
            decimal_comma: true,
        };
        assert_eq!(
            euro.resolve(head).unwrap(),
            CsvRead {
                separator: b';',
                decimal_comma: true
            }
        );
        let err = euro.resolve(b"a,b\n").unwrap_err();
        assert!(err.contains("decimal comma"), "{err}");
    }
}

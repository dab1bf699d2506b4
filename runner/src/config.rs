//! Turns command-line flags, `DAP_*` environment variables and an optional TOML file into a
//! [`RunnerConfig`], and checks it.
//!
//! Precedence: a flag (or its environment variable) beats the file; datasets from both are merged
//! by name, the command line winning. This module only parses and validates: it does not open the
//! dataset files (that is [`crate::catalog`]) and never prints the token.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::catalog::validate_dataset_name;
use crate::connection::Endpoints;
use crate::csv_dialect::{parse_decimal, parse_separator, CsvDialect};
use crate::{DatasetFormat, DatasetSpec, RunnerConfig, StopMode, MAX_SLOTS};

/// Command line of `dap-runner`. Every flag can also come from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "dap-runner",
    version,
    about = "Dials out to a DAP server and runs analysis tasks on the datasets you declare.",
    after_help = "Datasets: --dataset NAME=PATH[:FORMAT][:sep=X][:decimal=comma], FORMAT one of \
                  csv, parquet, ndjson (inferred from .csv/.tsv/.parquet/.ndjson/.jsonl/.json \
                  when omitted). A CSV's separator is sniffed from its header line unless sep \
                  is given (a character, or comma, semicolon, tab, pipe, space). \
                  Tasks name datasets; no other file on this machine is readable by them."
)]
pub struct Cli {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "DAP_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Runner credential printed by `dap-server runner create`.
    // hide_env_values: `--help` must not echo a token that happens to be in the environment.
    #[arg(
        long,
        env = "DAP_RUNNER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Declare a dataset (repeatable): NAME=PATH, NAME=PATH:FORMAT, and for a CSV
    /// `:sep=semicolon` / `:decimal=comma` options after it.
    #[arg(
        long = "dataset",
        env = "DAP_RUNNER_DATASETS",
        value_name = "NAME=PATH[:FORMAT][:sep=X][:decimal=comma]",
        value_delimiter = ','
    )]
    pub datasets: Vec<String>,

    /// How many tasks to run at once [default: 1].
    #[arg(long, env = "DAP_RUNNER_SLOTS", value_name = "N")]
    pub slots: Option<u32>,

    /// Display name shown in the server's runner list [default: host name].
    #[arg(long, env = "DAP_RUNNER_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// TOML file with `server`, `token`, `name`, `slots` and a `[datasets]` table.
    #[arg(long, env = "DAP_RUNNER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for what the runner keeps between tasks and restarts (task outputs for
    /// pipelines) [default: $XDG_STATE_HOME/dap-runner or ~/.local/state/dap-runner].
    #[arg(long, env = "DAP_RUNNER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Bytes of finished tasks' outputs kept for later tasks' `input` (oldest evicted first;
    /// 0 keeps none) [default: 2 GiB].
    #[arg(long, env = "DAP_RUNNER_KEEP_OUTPUTS_BYTES", value_name = "BYTES")]
    pub keep_outputs_bytes: Option<u64>,

    /// Extra CA certificate(s), PEM, to trust for an https:// server (e.g. a self-signed one);
    /// the built-in Mozilla roots are always trusted.
    #[arg(long, env = "DAP_RUNNER_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,

    /// On Ctrl-C / SIGTERM: `finish` the running tasks (up to --drain-timeout) or `hand-back`
    /// them to the server at once; either way no new task is taken, and a second signal hands
    /// back whatever is still running [default: finish].
    #[arg(long, env = "DAP_RUNNER_ON_STOP", value_name = "MODE", value_enum)]
    pub on_stop: Option<StopMode>,

    /// With --on-stop finish: seconds to wait for running tasks before handing back the rest
    /// [default: 300].
    #[arg(long, env = "DAP_RUNNER_DRAIN_TIMEOUT", value_name = "SECS")]
    pub drain_timeout: Option<u64>,

    /// Longest wait between reconnect attempts, in milliseconds (the delay starts at 250 ms
    /// and doubles, with jitter; while the runner holds work it is at most 5 s) [default: 30000].
    #[arg(long, env = "DAP_RUNNER_RECONNECT_MAX_DELAY_MS", value_name = "MS")]
    pub reconnect_max_delay_ms: Option<u64>,

    /// Never draw progress bars (they are drawn only when stderr is a terminal anyway).
    #[arg(long, env = "DAP_RUNNER_NO_PROGRESS")]
    pub no_progress: bool,
}

/// The TOML file. Unknown keys are refused so that a typo (`slot = 4`) is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub token: Option<String>,
    pub name: Option<String>,
    pub slots: Option<u32>,
    pub state_dir: Option<PathBuf>,
    pub keep_outputs_bytes: Option<u64>,
    pub ca_cert: Option<PathBuf>,
    pub on_stop: Option<StopMode>,
    pub drain_timeout: Option<u64>,
    pub reconnect_max_delay_ms: Option<u64>,
    #[serde(default)]
    pub datasets: toml::Table,
}

/// A `[datasets]` entry: `name = "path"` or
/// `name = { path = "…", format = "csv", sep = ";", decimal = "," }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileDataset {
    Path(String),
    Table(FileDatasetTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatasetTable {
    path: String,
    format: Option<String>,
    /// CSV field separator (pandas' name for it).
    sep: Option<String>,
    /// CSV decimal mark, `.` or `,` (pandas' name for it).
    decimal: Option<String>,
}

/// A setting that is missing or malformed. The message says which one and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// Build the runner configuration from parsed flags (and the file they point at).
pub fn load(cli: Cli) -> Result<RunnerConfig, ConfigError> {
    let (file, file_dir) = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                path: path.clone(),
                source,
            })?;
            let file = parse_file(&text).map_err(|message| ConfigError::ParseFile {
                path: path.clone(),
                message,
            })?;
            // Relative dataset paths in a file mean "next to the file", wherever it is run from.
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (file, dir)
        }
        None => (FileConfig::default(), PathBuf::from(".")),
    };
    merge(cli, file, &file_dir)
}

/// Parse the TOML text of a config file.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// Combine flags and file (flags win) and validate the result.
pub fn merge(cli: Cli, file: FileConfig, file_dir: &Path) -> Result<RunnerConfig, ConfigError> {
    let server = cli.server.or(file.server).ok_or_else(|| {
        invalid("no server URL: pass --server URL, set DAP_SERVER, or put `server = \"…\"` in the config file")
    })?;
    let token = cli.token.or(file.token).ok_or_else(|| {
        invalid("no runner token: pass --token, set DAP_RUNNER_TOKEN, or put `token = \"…\"` in the config file")
    })?;
    let name = cli.name.or(file.name).unwrap_or_else(default_runner_name);
    let slots = cli.slots.or(file.slots).unwrap_or(1);

    let mut datasets: Vec<DatasetSpec> = Vec::new();
    for (key, value) in file.datasets {
        let entry = value.try_into::<FileDataset>().map_err(|_| {
            invalid(format!(
                "config file: dataset `{key}` must be \"path\" or {{ path = \"…\", format = \"csv\" }}"
            ))
        })?;
        let (path, format, options) = match entry {
            FileDataset::Path(path) => (path, None, Vec::new()),
            FileDataset::Table(t) => {
                let options = [("sep", t.sep), ("decimal", t.decimal)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect();
                (t.path, t.format, options)
            }
        };
        let path = file_dir.join(path);
        let spec = dataset_spec(key.clone(), path, format.as_deref(), &options)
            .map_err(|e| invalid(format!("dataset `{key}`: {e}")))?;
        datasets.push(spec);
    }
    for arg in &cli.datasets {
        let spec = parse_dataset_arg(arg)?;
        // The command line overrides a file entry of the same name rather than clashing with it.
        datasets.retain(|d| d.name != spec.name);
        datasets.push(spec);
    }

    let config = RunnerConfig {
        server,
        token,
        name,
        slots,
        datasets,
        show_progress_bars: !cli.no_progress && std::io::stderr().is_terminal(),
        state_dir: cli
            .state_dir
            .or_else(|| file.state_dir.map(|d| file_dir.join(d))),
        keep_outputs_bytes: cli
            .keep_outputs_bytes
            .or(file.keep_outputs_bytes)
            .unwrap_or(crate::outputs::DEFAULT_MAX_BYTES),
        ca_cert: cli
            .ca_cert
            .or_else(|| file.ca_cert.map(|p| file_dir.join(p))),
        on_stop: cli.on_stop.or(file.on_stop).unwrap_or_default(),
        drain_timeout: cli
            .drain_timeout
            .or(file.drain_timeout)
            .map_or(crate::DEFAULT_DRAIN_TIMEOUT, std::time::Duration::from_secs),
        reconnect_max_delay: cli
            .reconnect_max_delay_ms
            .or(file.reconnect_max_delay_ms)
            .map_or(
                crate::connection::BACKOFF_CAP,
                std::time::Duration::from_millis,
            ),
    };
    validate(&config)?;
    Ok(config)
}

/// Options a dataset declaration may carry after its format (CSV only).
const DATASET_OPTIONS: [&str; 2] = ["sep", "decimal"];

/// Parse a `--dataset` value: `NAME=PATH`, `NAME=PATH:FORMAT`, then `:sep=X` / `:decimal=Y`.
pub fn parse_dataset_arg(arg: &str) -> Result<DatasetSpec, ConfigError> {
    let (name, rest) = arg.split_once('=').ok_or_else(|| {
        invalid(format!(
            "--dataset `{arg}`: expected NAME=PATH or NAME=PATH:FORMAT"
        ))
    })?;
    let name = name.trim();
    if rest.is_empty() {
        return Err(invalid(format!("--dataset `{arg}`: the path is empty")));
    }
    // Trailing `:key=value` segments with a known key are options (taken from the right).
    let mut rest = rest;
    let mut options: Vec<(&str, String)> = Vec::new();
    while let Some((head, segment)) = rest.rsplit_once(':') {
        match segment.split_once('=') {
            Some((key, value)) if !head.is_empty() && DATASET_OPTIONS.contains(&key) => {
                options.push((key, value.to_owned()));
                rest = head;
            }
            _ => break,
        }
    }
    // A trailing `:word` is a format only when the word has no path characters in it, so that
    // `C:\data\x.csv` or `./a:b/x.csv` are still read as plain paths.
    let (path, format) = match rest.rsplit_once(':') {
        Some((path, word))
            if !path.is_empty()
                && !word.is_empty()
                && word.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            (path, Some(word))
        }
        _ => (rest, None),
    };
    dataset_spec(name.to_owned(), PathBuf::from(path), format, &options)
        .map_err(|e| invalid(format!("--dataset `{arg}`: {e}")))
}

/// A declaration from its parts, however written: the format (inferred from the extension if
/// absent; `.tsv` / `.tab` mean tab-separated CSV) and the CSV options.
fn dataset_spec<K: AsRef<str>>(
    name: String,
    path: PathBuf,
    format: Option<&str>,
    options: &[(K, String)],
) -> Result<DatasetSpec, String> {
    let format = match format {
        Some(word) => parse_format(word)?,
        None => infer_format(&path)?,
    };
    let mut csv = CsvDialect {
        separator: tab_separated_extension(&path).then_some(b'\t'),
        decimal_comma: false,
    };
    for (key, value) in options {
        let key = key.as_ref();
        if format != DatasetFormat::Csv {
            return Err(format!("`{key}` applies to CSV datasets only"));
        }
        match key {
            "sep" => csv.separator = Some(parse_separator(value)?),
            "decimal" => csv.decimal_comma = parse_decimal(value)?,
            _ => return Err(format!("unknown dataset option `{key}`")),
        }
    }
    if csv.decimal_comma && csv.separator == Some(b',') {
        return Err("a decimal comma needs a separator other than the comma".into());
    }
    Ok(DatasetSpec {
        name,
        path,
        format,
        csv,
    })
}

/// `.tsv` and `.tab` files are CSV with tabs.
fn tab_separated_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv") || e.eq_ignore_ascii_case("tab"))
}

/// A format name as users write it. `json` and `jsonl` mean newline-delimited JSON.
pub fn parse_format(word: &str) -> Result<DatasetFormat, String> {
    match word.to_ascii_lowercase().as_str() {
        "csv" => Ok(DatasetFormat::Csv),
        "parquet" | "pq" => Ok(DatasetFormat::Parquet),
        "ndjson" | "jsonl" | "json" => Ok(DatasetFormat::Ndjson),
        _ => Err(format!(
            "unknown format `{word}` (expected csv, parquet or ndjson)"
        )),
    }
}

/// The format implied by a file's extension.
pub fn infer_format(path: &Path) -> Result<DatasetFormat, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") | Some("tsv") | Some("tab") => Ok(DatasetFormat::Csv),
        Some("parquet") | Some("pq") => Ok(DatasetFormat::Parquet),
        Some("ndjson") | Some("jsonl") | Some("json") => Ok(DatasetFormat::Ndjson),
        _ => Err(format!(
            "cannot tell the format of `{}` from its extension; append :csv, :parquet or :ndjson",
            path.display()
        )),
    }
}

/// Longest accepted `--drain-timeout`: a guard against typos, not a tuning knob.
const MAX_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Accepted range of `--reconnect-max-delay-ms`: not a hot loop, not gone for hours.
const MIN_RECONNECT_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_RECONNECT_DELAY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Check a configuration however it was built (also called by [`crate::run`], so in-process
/// callers get the same checks as the command line).
pub fn validate(config: &RunnerConfig) -> Result<(), ConfigError> {
    let endpoints = Endpoints::from_server(&config.server).map_err(invalid)?;
    if config.ca_cert.is_some() && !endpoints.needs_tls() {
        return Err(invalid("--ca-cert only applies to an https:// server URL"));
    }
    if config.token.trim().is_empty() {
        return Err(invalid("the runner token is empty"));
    }
    if config.slots == 0 || config.slots > MAX_SLOTS {
        return Err(invalid(format!(
            "slots must be between 1 and {MAX_SLOTS}, got {}",
            config.slots
        )));
    }
    if config.drain_timeout > MAX_DRAIN_TIMEOUT {
        return Err(invalid(format!(
            "the drain timeout must be at most {} s (one day), got {} s",
            MAX_DRAIN_TIMEOUT.as_secs(),
            config.drain_timeout.as_secs()
        )));
    }
    let delay = config.reconnect_max_delay;
    if delay < MIN_RECONNECT_DELAY || delay > MAX_RECONNECT_DELAY {
        return Err(invalid(format!(
            "the reconnect max delay must be between {} ms and {} ms, got {} ms",
            MIN_RECONNECT_DELAY.as_millis(),
            MAX_RECONNECT_DELAY.as_millis(),
            delay.as_millis()
        )));
    }
    let name = config.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(invalid(
            "the runner name must be 1–128 printable characters",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &config.datasets {
        validate_dataset_name(&d.name)
            .map_err(|e| invalid(format!("dataset `{}`: {e}", d.name)))?;
        if !seen.insert(d.name.as_str()) {
            return Err(invalid(format!("dataset `{}` is declared twice", d.name)));
        }
    }
    Ok(())
}

/// The machine's host name, so that several runners are told apart without configuration.
fn default_runner_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "dap-runner".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["dap-runner"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("test arguments parse")
    }

    #[test]
    fn dataset_arg_infers_or_takes_format() {
        let d = parse_dataset_arg("sales=./data/sales.csv").unwrap();
        assert_eq!(d.name, "sales");
        assert_eq!(d.path, PathBuf::from("./data/sales.csv"));
        assert_eq!(d.format, DatasetFormat::Csv);

        let d = parse_dataset_arg("ev=/var/events.jsonl").unwrap();
        assert_eq!(d.format, DatasetFormat::Ndjson);
        let d = parse_dataset_arg("ev=/var/events.json").unwrap();
        assert_eq!(d.format, DatasetFormat::Ndjson);
        let d = parse_dataset_arg("p=x.parquet").unwrap();
        assert_eq!(d.format, DatasetFormat::Parquet);

        let d = parse_dataset_arg("raw=/data/export.txt:csv").unwrap();
        assert_eq!(d.path, PathBuf::from("/data/export.txt"));
        assert_eq!(d.format, DatasetFormat::Csv);

        // A colon inside a path is not mistaken for a format.
        let d = parse_dataset_arg(r"w=C:\data\x.csv").unwrap();
        assert_eq!(d.path, PathBuf::from(r"C:\data\x.csv"));
        assert_eq!(d.format, DatasetFormat::Csv);
    }

    #[test]
    fn dataset_args_take_csv_options_after_the_format() {
        let d = parse_dataset_arg("ventes=./ventes.csv:csv:sep=semicolon:decimal=comma").unwrap();
        assert_eq!(d.path, PathBuf::from("./ventes.csv"));
        assert_eq!(d.format, DatasetFormat::Csv);
        assert_eq!(
            d.csv,
            CsvDialect {
                separator: Some(b';'),
                decimal_comma: true
            }
        );
        // Without a format, in any order; a literal character works as well as a name.
        let d = parse_dataset_arg("v=./v.txt:csv:sep=|").unwrap();
        assert_eq!(
            (d.path.to_str(), d.csv.separator),
            (Some("./v.txt"), Some(b'|'))
        );
        let d = parse_dataset_arg("v=./v.csv:decimal=,:sep=;").unwrap();
        assert_eq!(d.csv.separator, Some(b';'));
        assert!(d.csv.decimal_comma);
        let d = parse_dataset_arg(r"w=C:\data\x.csv:sep=tab").unwrap();
        assert_eq!(d.path, PathBuf::from(r"C:\data\x.csv"));
        assert_eq!(d.csv.separator, Some(b'\t'));
        // Not declared: sniffed at start. `.tsv` means tabs.
        assert_eq!(
            parse_dataset_arg("s=./s.csv").unwrap().csv,
            CsvDialect::default()
        );
        let t = parse_dataset_arg("t=./t.tsv").unwrap();
        assert_eq!(
            (t.format, t.csv.separator),
            (DatasetFormat::Csv, Some(b'\t'))
        );
        // A `key=value` segment with an unknown key is part of the path.
        let d = parse_dataset_arg("o=./a:mode=x/o.csv").unwrap();
        assert_eq!(d.path, PathBuf::from("./a:mode=x/o.csv"));
    }

    #[test]
    fn bad_csv_options_are_errors() {
        for (arg, want) in [
            ("p=./p.parquet:sep=;", "CSV datasets only"),
            ("v=./v.csv:sep=ab", "one ASCII character"),
            ("v=./v.csv:sep=\"", "cannot be a quote"),
            ("v=./v.csv:decimal=;", "decimal mark"),
            ("v=./v.csv:sep=comma:decimal=comma", "other than the comma"),
        ] {
            let e = parse_dataset_arg(arg).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(arg), "{arg}: {e}");
        }
        let file = parse_file(
            "server = \"http://s\"\ntoken = \"t\"\n[datasets]\nv = { path = \"v.json\", sep = \";\" }\n",
        )
        .unwrap();
        let e = merge(cli(&[]), file, Path::new("/d"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dataset `v`") && e.contains("CSV datasets only"),
            "{e}"
        );
    }

    #[test]
    fn bad_dataset_args_are_errors() {
        let e = parse_dataset_arg("sales=./sales.csv:xlsx").unwrap_err();
        assert!(e.to_string().contains("unknown format `xlsx`"), "{e}");
        let e = parse_dataset_arg("sales=./sales.txt").unwrap_err();
        assert!(e.to_string().contains("append :csv"), "{e}");
        assert!(parse_dataset_arg("sales").is_err());
        assert!(parse_dataset_arg("sales=").is_err());
    }

    #[test]
    fn toml_file_and_cli_override() {
        let file = parse_file(
            r#"
            server = "http://file:8080"
            token = "file-token"
            name = "from-file"
            slots = 2
            [datasets]
            sales = "data/sales.csv"
            events = { path = "/abs/events.log", format = "ndjson" }
            ventes = { path = "ventes.txt", format = "csv", sep = ";", decimal = "," }
            "#,
        )
        .unwrap();
        let c = merge(
            cli(&[
                "--server",
                "http://cli:9090",
                "--slots",
                "4",
                "--dataset",
                "sales=/other/sales2.csv",
            ]),
            file,
            Path::new("/etc/dap"),
        )
        .unwrap();
        assert_eq!(c.server, "http://cli:9090");
        assert_eq!(c.token, "file-token");
        assert_eq!(c.name, "from-file");
        assert_eq!(c.slots, 4);
        assert_eq!(c.datasets.len(), 3);
        let ventes = c.datasets.iter().find(|d| d.name == "ventes").unwrap();
        assert_eq!(ventes.path, PathBuf::from("/etc/dap/ventes.txt"));
        assert_eq!(
            ventes.csv,
            CsvDialect {
                separator: Some(b';'),
                decimal_comma: true
            }
        );
        let events = c.datasets.iter().find(|d| d.name == "events").unwrap();
        assert_eq!(events.path, PathBuf::from("/abs/events.log"));
        assert_eq!(events.format, DatasetFormat::Ndjson);
        // The CLI's `sales` replaced the file's.
        let sales = c.datasets.iter().find(|d| d.name == "sales").unwrap();
        assert_eq!(sales.path, PathBuf::from("/other/sales2.csv"));
    }

    #[test]
    fn file_relative_paths_are_next_to_the_file() {
        let file = parse_file(
            "server = \"http://s\"\ntoken = \"t\"\n[datasets]\nsales = \"data/s.csv\"\n",
        )
        .unwrap();
        let c = merge(cli(&[]), file, Path::new("/etc/dap")).unwrap();
        assert_eq!(c.datasets[0].path, PathBuf::from("/etc/dap/data/s.csv"));
        assert_eq!(c.slots, 1);
        assert!(!c.name.is_empty());
    }

    #[test]
    fn file_errors_are_clear() {
        let e = parse_file("slot = 3").unwrap_err();
        assert!(e.contains("slot"), "{e}");
        let file = parse_file(
            "server = \"http://s\"\ntoken = \"t\"\n[datasets]\nx = { path = \"a.csv\", format = \"xls\" }\n",
        )
        .unwrap();
        let e = merge(cli(&[]), file, Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("unknown format `xls`"), "{e}");
        let file = parse_file("server = \"http://s\"\ntoken = \"t\"\n[datasets]\nx = 3\n").unwrap();
        assert!(merge(cli(&[]), file, Path::new(".")).is_err());
    }

    #[test]
    fn missing_and_invalid_settings() {
        let e = merge(
            cli(&["--token", "t"]),
            FileConfig::default(),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--server"), "{e}");
        let e = merge(
            cli(&["--server", "http://s"]),
            FileConfig::default(),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--token"), "{e}");
        let e = merge(
            cli(&["--server", "http://s", "--token", "t", "--slots", "0"]),
            FileConfig::default(),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("slots"), "{e}");
        let e = merge(
            cli(&["--server", "ftp://s", "--token", "t"]),
            FileConfig::default(),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("http"), "{e}");
        let e = merge(
            cli(&[
                "--server",
                "http://s",
                "--token",
                "t",
                "--dataset",
                "../x=a.csv",
            ]),
            FileConfig::default(),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("../x"), "{e}");
        let e = merge(
            cli(&[
                "--server",
                "http://s",
                "--token",
                "t",
                "--dataset",
                "a=a.csv,a=b.csv",
            ]),
            FileConfig::default(),
            Path::new("."),
        );
        // The second `a` overrides the first rather than being declared twice.
        assert_eq!(e.unwrap().datasets[0].path, PathBuf::from("b.csv"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = merge(
            cli(&["--server", "http://s", "--token", "s3cr3t-token"]),
            FileConfig::default(),
            Path::new("."),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}

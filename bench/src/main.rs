//! `dap-bench`: DAP's benchmarks, printed as `name: value unit` lines on stdout (progress and
//! notes go to stderr).
//!
//! Without a subcommand it runs the push-loop benchmarks ([`noop`]); `filter-vs-pandas` and
//! `fetch-schema` time operations 200 and 100 through the real `dap-server` and `dap-runner`
//! binaries ([`dap_bench::ops`]); `idle-connections` and `sse-fanout` measure connections at
//! scale on the release `dap-server` ([`dap_bench::scale`]); `gen-data` only writes the
//! benchmark CSV. It is not a test:
//! only the operation benchmarks check anything (DAP's answer against pandas').

mod noop;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

use dap_bench::{datagen, ops, scale};

/// mimalloc instead of glibc's malloc: the push loop allocates and frees many small buffers
/// per task on several threads; measured in `dap-bench` (see ARCHITECTURE.md, Decisions).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    about = "DAP benchmarks: push loop, op 200 vs pandas, op 100 schema fetch, connections at scale"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    noop: NoopArgs,
}

/// Options of the push-loop benchmarks (the default command).
#[derive(Args)]
pub struct NoopArgs {
    /// Sequential create→complete iterations for the latency figures.
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Seconds of load per throughput run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Concurrent HTTP clients in the throughput runs (each with one request in flight; enough
    /// to keep a 2-core server busy: with 64 the server idles between commits).
    #[arg(long, default_value_t = 128)]
    pub clients: usize,
    /// Slots per runner in the throughput runs.
    #[arg(long, default_value_t = 16)]
    pub slots: u32,
    /// Runner counts for the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub runners: Vec<usize>,
    /// Tasks per `POST /api/v1/tasks/batch` in a second series of throughput runs (printed as
    /// `durable_throughput_<db>_batch<N>_<R>_runners`); 0 leaves that series out.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Database of the in-process server (e.g. `postgres://…`, an empty database); by default
    /// SQLite in a temp dir.
    #[arg(long, env = "DAP_BENCH_DATABASE")]
    pub database: Option<String>,
    /// Runs of the whole sequence, each on a fresh server; each figure printed is the median
    /// over them (a `#` line before it gives the range). This VM's neighbours move single runs
    /// by ±20 %.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

#[derive(Args)]
struct DataArgs {
    /// Where generated CSVs are cached (reused when the size and seed match).
    #[arg(long, env = "DAP_BENCH_DATA_DIR", default_value_os_t = datagen::default_dir())]
    data_dir: PathBuf,
    /// Seed of the data generator.
    #[arg(long, env = "DAP_BENCH_SEED", default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
struct StackArgs {
    /// Directory holding the dap-server and dap-runner binaries [default: dap-bench's own].
    #[arg(long, env = "DAP_BENCH_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Timed runs per side (min and median are reported).
    #[arg(long, env = "DAP_BENCH_RUNS", default_value_t = 3)]
    runs: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Op 200 (2-predicate filter + group-by with sum/mean/count) vs pandas on the same CSV.
    FilterVsPandas {
        /// Data rows in the generated CSV.
        #[arg(long, env = "DAP_BENCH_ROWS", default_value_t = 10_000_000)]
        rows: u64,
        /// Python with pandas [default: ~/.cache/dap-bench-venv/bin/python if present, else python3].
        #[arg(long, env = "DAP_BENCH_PYTHON")]
        python: Option<PathBuf>,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Op 100 (schema + first page) on a CSV of about this many bytes.
    FetchSchema {
        /// Size of the generated CSV in bytes (whole rows, so slightly more).
        #[arg(long, env = "DAP_BENCH_FETCH_BYTES", default_value_t = 1 << 30)]
        bytes: u64,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Server RSS per idle runner connection (N registered runners that only answer pings),
    /// and dispatch latency to one of them while all are connected.
    IdleConnections {
        /// Idle runner connections (each its own runner credential).
        #[arg(long, env = "DAP_BENCH_CONNECTIONS", default_value_t = 10_000)]
        connections: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds to let the connections settle (heartbeats) before reading the RSS.
        #[arg(long, default_value_t = 10)]
        settle_s: u64,
        /// No-op tasks pushed to idle runners while all are connected.
        #[arg(long, default_value_t = 20)]
        probes: usize,
        /// Directory holding the dap-server binary [default: dap-bench's own].
        #[arg(long, env = "DAP_BENCH_BIN_DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Latency of one progress event to many SSE subscribers (each with its own ticket).
    SseFanout {
        /// SSE subscribers.
        #[arg(long, env = "DAP_BENCH_SUBSCRIBERS", default_value_t = 1000)]
        subscribers: usize,
        /// Progress events sent (each is timed at every subscriber).
        #[arg(long, default_value_t = 100)]
        events: usize,
        /// Milliseconds between two progress events.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Directory holding the dap-server binary [default: dap-bench's own].
        #[arg(long, env = "DAP_BENCH_BIN_DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Only generate (or find) the benchmark CSV and print its path.
    GenData {
        /// Data rows (ignored with --bytes).
        #[arg(long, env = "DAP_BENCH_ROWS", default_value_t = 10_000_000)]
        rows: u64,
        /// Generate whole rows up to this many bytes instead of a row count.
        #[arg(long)]
        bytes: Option<u64>,
        #[command(flatten)]
        data: DataArgs,
    },
}

fn default_python() -> PathBuf {
    let venv = datagen::default_dir()
        .with_file_name("dap-bench-venv")
        .join("bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let bin_dir = |s: &StackArgs| {
        s.bin_dir
            .clone()
            .unwrap_or_else(dap_bench::stack::default_bin_dir)
    };
    let outcome = match cli.command {
        None => {
            noop::run(&cli.noop).await;
            Ok(())
        }
        Some(Cmd::FilterVsPandas {
            rows,
            python,
            data,
            stack,
        }) => {
            ops::filter_vs_pandas(&ops::FilterArgs {
                rows,
                seed: data.seed,
                runs: stack.runs,
                data_dir: data.data_dir,
                bin_dir: bin_dir(&stack),
                python: python.unwrap_or_else(default_python),
                script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pandas_filter.py"),
            })
            .await
        }
        Some(Cmd::FetchSchema { bytes, data, stack }) => {
            ops::fetch_schema(&ops::FetchArgs {
                bytes,
                seed: data.seed,
                runs: stack.runs,
                data_dir: data.data_dir,
                bin_dir: bin_dir(&stack),
            })
            .await
        }
        Some(Cmd::IdleConnections {
            connections,
            concurrency,
            settle_s,
            probes,
            bin_dir,
        }) => {
            scale::idle_connections(&scale::IdleArgs {
                connections,
                concurrency,
                settle: Duration::from_secs(settle_s),
                probes,
                bin_dir: bin_dir.unwrap_or_else(dap_bench::stack::default_bin_dir),
            })
            .await
        }
        Some(Cmd::SseFanout {
            subscribers,
            events,
            interval_ms,
            bin_dir,
        }) => {
            scale::sse_fanout(&scale::FanoutArgs {
                subscribers,
                events,
                interval: Duration::from_millis(interval_ms),
                bin_dir: bin_dir.unwrap_or_else(dap_bench::stack::default_bin_dir),
            })
            .await
        }
        Some(Cmd::GenData { rows, bytes, data }) => {
            let size = bytes.map_or(datagen::Size::Rows(rows), datagen::Size::Bytes);
            datagen::ensure(&data.data_dir, size, data.seed)
                .map(|f| println!("{}", f.path.display()))
                .map_err(|e| format!("generating data: {e}"))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dap-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

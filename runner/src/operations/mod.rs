//! The analysis operations a runner executes, dispatched by operation code.
//!
//! Operations are plain synchronous functions over the [`Catalog`]: they get the task's params,
//! a [`ProgressReporter`] and the task's [`Scratch`] directory, and return an [`Output`] (the
//! result JSON plus any files to ship as artifacts) or a typed [`TaskError`]. They know nothing
//! of WebSockets, HTTP, tokio or the outbox (the [`crate::executor`] runs them on a blocking
//! thread, uploads their artifacts and ships what they report); they read data only through the
//! catalog and write files only into the scratch directory.

pub mod cart;
pub mod export;
pub mod fetch;
pub mod filter;
pub mod model;
pub mod params;
pub mod values;

use std::time::Duration;

use dap_protocol::{failure, op, TaskError};
use polars::prelude::{DataFrame, LazyFrame, PolarsResult};
use serde_json::{json, Value};

use crate::artifacts::{LocalArtifact, Scratch};
use crate::catalog::Catalog;
use crate::outputs::OutputTable;
use crate::progress::ProgressReporter;

/// What an operation produced: the result JSON (sent inline with `completed`) and files to
/// upload first. The executor adds `"artifacts": [{name, size, sha256, content_type}]` to the
/// result once they are on the server.
#[derive(Debug)]
pub struct Output {
    pub result: Value,
    pub artifacts: Vec<LocalArtifact>,
    /// The table this task produced, kept on the runner for later tasks' `params.input`.
    pub table: Option<OutputTable>,
}

impl Output {
    /// A result with no artifacts.
    pub fn inline(result: Value) -> Self {
        Self {
            result,
            artifacts: Vec::new(),
            table: None,
        }
    }
}

/// Operation codes this runner version really implements (advertised in the greeting).
pub const SUPPORTED: [u16; 5] = [op::NOOP, op::FETCH, op::FILTER, op::MODEL, op::EXPORT];

/// Run operation `code` with `params`; files it writes go into `scratch`. Blocking: call it
/// from a blocking thread.
pub fn run(
    code: u16,
    params: &Value,
    catalog: &Catalog,
    progress: &ProgressReporter,
    scratch: &Scratch,
) -> Result<Output, TaskError> {
    match code {
        op::NOOP => Ok(Output::inline(noop())),
        op::FETCH => {
            let result = fetch::run(params, catalog, progress)?;
            // A fetch's output is its input (the columns it asked for), read again when used.
            let p = fetch::FetchParams::parse(params)?;
            Ok(Output {
                table: Some(OutputTable::View {
                    source: p.dataset,
                    columns: p.columns,
                }),
                ..Output::inline(result)
            })
        }
        op::FILTER => filter::run(params, catalog, progress, scratch),
        op::EXPORT => export::run(params, catalog, progress, scratch),
        op::MODEL => model::run(params, catalog, progress, scratch),
        other => Err(TaskError::new(
            failure::UNSUPPORTED_OPERATION,
            format!("operation code {other} is unknown to this runner"),
        )),
    }
}

/// Result of the diagnostic no-op (used to time round trips, so it does nothing at all).
pub fn noop() -> Value {
    json!({ "noop": true })
}

/// The failure a cancelled task ends with.
pub fn cancelled() -> TaskError {
    TaskError::new(failure::CANCELLED, "the task was cancelled")
}

/// Run a polars query, giving up as soon as the task is cancelled: the query runs on polars'
/// pool and this thread watches the cancel flag, so a cancel returns `Err(cancelled)` within a
/// few milliseconds even in the middle of a long scan (the abandoned query is told to stop and
/// does so at its next operator boundary). The inner result is the query's own outcome.
pub fn collect_or_cancel(
    lf: LazyFrame,
    progress: &ProgressReporter,
) -> Result<PolarsResult<DataFrame>, TaskError> {
    check_cancelled(progress)?;
    let query = match lf.collect_concurrently() {
        Ok(q) => q,
        Err(e) => return Ok(Err(e)),
    };
    let mut wait = Duration::from_micros(200);
    loop {
        if let Some(result) = query.fetch() {
            return Ok(result);
        }
        if progress.is_cancelled() {
            query.cancel();
            // The query sends its outcome from polars' pool with `unwrap()`: its receiver must
            // outlive it, or the pool thread panics and rayon aborts the process. A detached
            // thread waits for the (soon stopped) query and drops the outcome.
            let waiter = query.clone();
            let spawned = std::thread::Builder::new()
                .name("dap-cancelled-query".into())
                .spawn(move || drop(waiter.fetch_blocking()));
            if spawned.is_err() {
                // No thread to hand it to: wait here rather than risk the abort.
                drop(query.fetch_blocking());
            }
            return Err(cancelled());
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_millis(20));
    }
}

/// Return early with `cancelled` if the task was cancelled; operations call this between steps.
pub fn check_cancelled(progress: &ProgressReporter) -> Result<(), TaskError> {
    if progress.is_cancelled() {
        Err(cancelled())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn scratch(dir: &TempDir) -> Scratch {
        Scratch::at(dir.path().join("scratch"))
    }

    #[test]
    fn unknown_operations_are_unsupported() {
        let cat = Catalog::default();
        let p = ProgressReporter::discard();
        let dir = TempDir::new();
        let s = scratch(&dir);
        let e = run(150, &json!({}), &cat, &p, &s).unwrap_err();
        assert_eq!(e.code, failure::UNSUPPORTED_OPERATION);
        assert!(e.message.contains("150"), "{}", e.message);
    }

    #[test]
    fn collect_or_cancel_returns_at_once_and_the_abandoned_query_ends_quietly() {
        use polars::prelude::*;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let n = 3_000_000i64;
        let df = df!("a" => (0..n).map(|i| (i * 7919) % 1_000_003).collect::<Vec<i64>>()).unwrap();
        let slow = || {
            df.clone()
                .lazy()
                .sort(["a"], Default::default())
                .with_column((col("a") * lit(2)).alias("b"))
                .sort(
                    ["b"],
                    SortMultipleOptions::default().with_order_descending(true),
                )
        };
        let flag = Arc::new(AtomicBool::new(false));
        let progress =
            ProgressReporter::new(tokio::sync::mpsc::unbounded_channel().0, flag.clone());
        // Uncancelled, it runs to the end.
        let full = collect_or_cancel(slow(), &progress).unwrap().unwrap();
        assert_eq!(full.height(), n as usize);

        let f = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            f.store(true, Ordering::Relaxed);
        });
        let t0 = std::time::Instant::now();
        let e = collect_or_cancel(slow(), &progress).unwrap_err();
        assert_eq!(e.code, failure::CANCELLED);
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        // The abandoned query finishes on polars' pool while this process lives on: it must
        // not panic there (rayon would abort the whole runner).
        std::thread::sleep(Duration::from_secs(2));
        let again = collect_or_cancel(
            df.clone().lazy().select([len()]),
            &ProgressReporter::discard(),
        );
        assert!(again.unwrap().is_ok());
    }

    #[test]
    fn noop_completes_at_once() {
        let cat = Catalog::default();
        let dir = TempDir::new();
        let out = run(
            op::NOOP,
            &Value::Null,
            &cat,
            &ProgressReporter::discard(),
            &scratch(&dir),
        )
        .unwrap();
        assert_eq!(out.result, json!({"noop": true}));
        assert!(out.artifacts.is_empty());
    }

    #[test]
    fn advertises_only_what_it_implements() {
        assert_eq!(
            SUPPORTED,
            [op::NOOP, op::FETCH, op::FILTER, op::MODEL, op::EXPORT]
        );
    }

    #[test]
    fn filter_is_dispatched() {
        // An undeclared dataset fails inside the filter, not as an unsupported operation.
        let e = run(
            op::FILTER,
            &json!({"dataset": "x"}),
            &Catalog::default(),
            &ProgressReporter::discard(),
            &scratch(&TempDir::new()),
        )
        .unwrap_err();
        assert_eq!(e.code, failure::UNKNOWN_DATASET, "{e:?}");
    }

    #[test]
    fn model_is_dispatched() {
        let e = run(
            op::MODEL,
            &json!({"dataset": "x", "model": "kmeans", "features": ["a"]}),
            &Catalog::default(),
            &ProgressReporter::discard(),
            &scratch(&TempDir::new()),
        )
        .unwrap_err();
        assert_eq!(e.code, failure::UNKNOWN_DATASET, "{e:?}");
    }

    #[test]
    fn export_is_dispatched() {
        let e = run(
            op::EXPORT,
            &json!({"dataset": "x", "format": "csv"}),
            &Catalog::default(),
            &ProgressReporter::discard(),
            &scratch(&TempDir::new()),
        )
        .unwrap_err();
        assert_eq!(e.code, failure::UNKNOWN_DATASET, "{e:?}");
    }
}

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

use dap_protocol::{failure, op, TaskError};
use serde_json::{json, Value};

use crate::artifacts::{LocalArtifact, Scratch};
use crate::catalog::Catalog;
use crate::progress::ProgressReporter;

/// What an operation produced: the result JSON (sent inline with `completed`) and files to
/// upload first. The executor adds `"artifacts": [{name, size, sha256, content_type}]` to the
/// result once they are on the server.
#[derive(Debug)]
pub struct Output {
    pub result: Value,
    pub artifacts: Vec<LocalArtifact>,
}

impl Output {
    /// A result with no artifacts.
    pub fn inline(result: Value) -> Self {
        Self {
            result,
            artifacts: Vec::new(),
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
        op::FETCH => fetch::run(params, catalog, progress).map(Output::inline),
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

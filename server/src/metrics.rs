//! Prometheus metrics of one server process (the `prometheus` crate, a registry per server so
//! several in-process servers in tests never share counters) and their text exposition.
//!
//! Counts that the store or the dispatcher already know (tasks by status, connected runners,
//! queue depth, SSE subscribers) are read at scrape time, so they can never drift from the
//! truth; only events that leave no other trace (dispatch latencies, failed webhook attempts)
//! are counted here as they happen. This module knows nothing about HTTP: `http::metrics`
//! serves [`Metrics::render`] and decides who may read it. No label ever carries a secret or an
//! unbounded value (no task or runner ids).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::store::TaskStatus;
use crate::AppState;

/// Every task status, so a status with no tasks is exported as 0 instead of vanishing.
const STATUSES: [TaskStatus; 6] = [
    TaskStatus::Queued,
    TaskStatus::Assigned,
    TaskStatus::Running,
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

/// Dispatch latency buckets in seconds: fine below a millisecond (the direct push path), coarse
/// up to a minute (tasks that waited in the queue for a runner).
const DISPATCH_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric registration failed: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

pub struct Metrics {
    registry: Registry,
    tasks: IntGaugeVec,
    dispatch_latency: Histogram,
    runners_connected: IntGauge,
    queue_depth: IntGauge,
    sse_subscribers: IntGauge,
    webhook_failures: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let tasks = IntGaugeVec::new(
            Opts::new("dap_tasks", "Tasks in the store by status."),
            &["status"],
        )?;
        let dispatch_latency = Histogram::with_opts(
            HistogramOpts::new(
                "dap_dispatch_latency_seconds",
                "Time from a task's creation to its first assignment being handed to a runner's \
                 socket (attempt 1 only; requeues are not counted).",
            )
            .buckets(DISPATCH_BUCKETS.to_vec()),
        )?;
        let runners_connected = IntGauge::new(
            "dap_runners_connected",
            "Runners with an open socket to this server.",
        )?;
        let queue_depth = IntGauge::new(
            "dap_queue_depth",
            "Tasks waiting in this server's queue for a runner.",
        )?;
        let sse_subscribers = IntGauge::new(
            "dap_sse_subscribers",
            "Open SSE streams (GET /api/v1/events) on this server.",
        )?;
        let webhook_failures = IntCounterVec::new(
            Opts::new(
                "dap_webhook_delivery_failures_total",
                "Webhook delivery attempts that did not get a 2xx; outcome=retry when another \
                 attempt is scheduled, outcome=failed when the delivery was given up.",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(dispatch_latency.clone()))?;
        registry.register(Box::new(runners_connected.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(sse_subscribers.clone()))?;
        registry.register(Box::new(webhook_failures.clone()))?;
        for outcome in ["retry", "failed"] {
            webhook_failures.with_label_values(&[outcome]);
        }
        Ok(Self {
            registry,
            tasks,
            dispatch_latency,
            runners_connected,
            queue_depth,
            sse_subscribers,
            webhook_failures,
        })
    }

    /// A task's first assignment reached its runner's socket `elapsed` after it was created.
    pub fn observe_dispatch(&self, elapsed: Duration) {
        self.dispatch_latency.observe(elapsed.as_secs_f64());
    }

    /// Like [`Self::observe_dispatch`] for a task that waited in the queue: its creation time is
    /// read from its UUIDv7 id (millisecond precision, plenty for a wait in the queue).
    pub fn observe_dispatch_of_queued(&self, task_id: &str) {
        let Some((secs, nanos)) = uuid::Uuid::parse_str(task_id)
            .ok()
            .and_then(|u| u.get_timestamp())
            .map(|t| t.to_unix())
        else {
            return;
        };
        let created = UNIX_EPOCH + Duration::new(secs, nanos);
        if let Ok(waited) = SystemTime::now().duration_since(created) {
            self.observe_dispatch(waited);
        }
    }

    /// A webhook delivery attempt failed; `given_up` when no further attempt will be made.
    pub fn webhook_failed(&self, given_up: bool) {
        let outcome = if given_up { "failed" } else { "retry" };
        self.webhook_failures.with_label_values(&[outcome]).inc();
    }

    /// Refreshes the read-at-scrape values from the store, dispatcher and bus and returns the
    /// Prometheus text exposition (format 0.0.4).
    pub async fn render(&self, s: &AppState) -> Result<String, MetricsError> {
        let counts = s.store.count_tasks_by_status().await?;
        for status in STATUSES {
            let n = counts
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, n)| *n);
            self.tasks.with_label_values(&[status.as_str()]).set(n);
        }
        self.runners_connected
            .set(s.dispatcher.connected_runners() as i64);
        self.queue_depth.set(s.dispatcher.queue_depth() as i64);
        self.sse_subscribers.set(s.bus.subscribers() as i64);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

//! Progress of one running task: what an operation reports ([`ProgressReporter`]) and how much of
//! it is worth sending ([`ProgressThrottle`]).
//!
//! Operations report as often as they like; the throttle keeps the wire quiet (at most one
//! update per 100 ms unless the percent moved by at least 1), keeps percent monotonic, and
//! reserves 100 for "finished". This module does not send anything and knows nothing of sockets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Minimum gap between two updates that did not move the percent.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// One progress report from an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressUpdate {
    pub percent: u8,
    pub stage: Option<String>,
    pub message: Option<String>,
}

impl ProgressUpdate {
    pub fn new(percent: u8, stage: &str) -> Self {
        Self {
            percent,
            stage: Some(stage.to_owned()),
            message: None,
        }
    }
}

/// Handed to a (synchronous) operation to report progress and to learn whether it was cancelled.
/// Reporting never blocks: updates go to an unbounded channel drained by the task's driver.
#[derive(Debug, Clone)]
pub struct ProgressReporter {
    tx: Option<mpsc::UnboundedSender<ProgressUpdate>>,
    cancel: Arc<AtomicBool>,
}

impl ProgressReporter {
    pub fn new(tx: mpsc::UnboundedSender<ProgressUpdate>, cancel: Arc<AtomicBool>) -> Self {
        Self {
            tx: Some(tx),
            cancel,
        }
    }

    /// A reporter that drops every update (for callers that do not care, e.g. tests).
    pub fn discard() -> Self {
        Self {
            tx: None,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Report progress at `percent` (0–100) in `stage`.
    pub fn report(&self, percent: u8, stage: &str) {
        self.send(ProgressUpdate::new(percent, stage));
    }

    /// Report progress with a human message (e.g. "12 000 of 50 000 rows").
    pub fn report_with_message(&self, percent: u8, stage: &str, message: impl Into<String>) {
        self.send(ProgressUpdate {
            percent,
            stage: Some(stage.to_owned()),
            message: Some(message.into()),
        });
    }

    fn send(&self, update: ProgressUpdate) {
        if let Some(tx) = &self.tx {
            // The receiver only goes away when the task's driver is gone; nobody is listening then.
            let _ = tx.send(update);
        }
    }

    /// True once the task was cancelled; operations check this between steps.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The cancel flag itself, for whoever cancels.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancel)
    }
}

/// Decides which progress updates of one task are sent.
#[derive(Debug)]
pub struct ProgressThrottle {
    interval: Duration,
    last: Option<(ProgressUpdate, Instant)>,
}

impl ProgressThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// The first update of a task, always sent: 0 %, "started".
    pub fn start(&mut self, now: Instant) -> ProgressUpdate {
        let first = ProgressUpdate::new(0, "started");
        self.last = Some((first.clone(), now));
        first
    }

    /// Offer an operation's update; returns what to send, if anything.
    ///
    /// Percent is clamped to 99 (100 means finished, see [`finish`](Self::finish)) and never
    /// goes below what was already sent. An update that changes nothing is dropped; one that
    /// only changes stage or message waits for the interval.
    pub fn offer(&mut self, update: ProgressUpdate, now: Instant) -> Option<ProgressUpdate> {
        let (last_sent, at) = match &self.last {
            Some((u, at)) => (u.clone(), *at),
            None => {
                let mut first = update;
                first.percent = first.percent.min(99);
                self.last = Some((first.clone(), now));
                return Some(first);
            }
        };
        let percent = update.percent.min(99).max(last_sent.percent);
        let candidate = ProgressUpdate { percent, ..update };
        if candidate == last_sent {
            return None;
        }
        let moved = candidate.percent > last_sent.percent;
        if moved || now.duration_since(at) >= self.interval {
            self.last = Some((candidate.clone(), now));
            Some(candidate)
        } else {
            None
        }
    }

    /// The final 100 % sent before a successful completion (once).
    pub fn finish(&mut self) -> Option<ProgressUpdate> {
        if matches!(&self.last, Some((u, _)) if u.percent == 100) {
            return None;
        }
        let done = ProgressUpdate::new(100, "done");
        self.last = Some((done.clone(), Instant::now()));
        Some(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn throttle_is_monotonic_and_ends_at_100() {
        let t0 = Instant::now();
        let mut th = ProgressThrottle::new(PROGRESS_INTERVAL);
        let mut sent = vec![th.start(t0).percent];
        // A noisy operation: goes backwards, repeats itself, overshoots to 100 early.
        let reports: [(u64, u8); 9] = [
            (1, 0),
            (2, 5),
            (3, 3),
            (4, 5),
            (5, 40),
            (6, 100),
            (7, 60),
            (400, 60),
            (500, 99),
        ];
        for (ms, p) in reports {
            if let Some(u) = th.offer(ProgressUpdate::new(p, "work"), at(t0, ms)) {
                sent.push(u.percent);
            }
        }
        sent.push(th.finish().unwrap().percent);
        assert_eq!(sent.first(), Some(&0));
        assert_eq!(sent.last(), Some(&100));
        assert!(sent.windows(2).all(|w| w[0] <= w[1]), "{sent:?}");
        // 100 is only ever sent by finish().
        assert_eq!(sent.iter().filter(|p| **p == 100).count(), 1, "{sent:?}");
        assert!(th.finish().is_none());
    }

    #[test]
    fn throttle_limits_updates_that_do_not_move() {
        let t0 = Instant::now();
        let mut th = ProgressThrottle::new(PROGRESS_INTERVAL);
        th.start(t0);
        let sent = th.offer(ProgressUpdate::new(10, "a"), at(t0, 1));
        assert_eq!(sent.map(|u| u.percent), Some(10));
        // Same percent, new message, too soon: held back.
        let mut u = ProgressUpdate::new(10, "a");
        u.message = Some("row 5".into());
        assert!(th.offer(u.clone(), at(t0, 50)).is_none());
        // Same update after the interval: sent.
        assert_eq!(th.offer(u.clone(), at(t0, 150)), Some(u.clone()));
        // Identical update later still: nothing new to say.
        assert!(th.offer(u, at(t0, 1000)).is_none());
        // One percent more is sent at once.
        assert!(th
            .offer(ProgressUpdate::new(11, "a"), at(t0, 1001))
            .is_some());
    }

    #[test]
    fn reporter_carries_cancel_flag() {
        let r = ProgressReporter::discard();
        assert!(!r.is_cancelled());
        r.cancel_flag().store(true, Ordering::Relaxed);
        assert!(r.is_cancelled());
        r.report(10, "ignored");
    }
}

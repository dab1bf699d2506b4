//! How a runner stops: the phases it goes through after Ctrl-C / SIGTERM and when it is done.
//!
//! `Running` → `Draining` (no new tasks: the server is told `draining` and the executor hands
//! back any assignment that was already on its way; running tasks finish and their results are
//! delivered) → `HandingBack` (what still runs is stopped and handed back, so the server
//! requeues it at once instead of waiting out a grace period). `--on-stop hand-back` goes
//! straight to `HandingBack`; the drain timeout or a second signal moves `Draining` on to it.
//! This module decides phases and completion; it does not touch the socket (see
//! [`crate::connection`], which announces `draining` on every link and ends the session once
//! stopping is complete).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::executor::Executor;
use crate::outbox::Outbox;
use crate::StopMode;

/// After handing back, how long a connected runner waits for the server to acknowledge the
/// hand-backs before it leaves anyway (they stay journaled and are resent on the next start).
pub const ACK_WAIT: Duration = Duration::from_secs(5);
/// While draining, how long the server may stay unreachable before the runner hands back what
/// still runs: a task cannot finish without it (its result and artifacts go there), so waiting
/// out the whole drain timeout for a server that is gone would only delay the exit.
pub const OFFLINE_WHILE_DRAINING: Duration = Duration::from_secs(10);
/// How often completion is checked while stopping.
const POLL: Duration = Duration::from_millis(20);

/// Where the runner is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Taking nothing new; finishing what runs.
    Draining,
    /// Running tasks were stopped and handed back at this instant.
    HandingBack(Instant),
}

/// The phase as the connection sees it; cheap to clone.
#[derive(Clone)]
pub struct Stopping {
    phase: watch::Receiver<Phase>,
}

impl Stopping {
    /// A new phase channel, starting at `Running`; [`drive`] owns the sender.
    pub fn channel() -> (watch::Sender<Phase>, Self) {
        let (tx, rx) = watch::channel(Phase::Running);
        (tx, Self { phase: rx })
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn is_stopping(&self) -> bool {
        self.phase() != Phase::Running
    }

    /// Resolves when the phase leaves `Running` (at once if it already has).
    pub async fn started(&mut self) {
        let _ = self.phase.wait_for(|p| *p != Phase::Running).await;
    }

    /// Whether stopping is complete. Connected: nothing runs, everything queued was sent, and
    /// every result or hand-back was acknowledged (hand-backs get [`ACK_WAIT`], then the
    /// journal keeps them). Disconnected: nothing runs and, while draining, no result waits for
    /// its acknowledgement (the runner keeps reconnecting to deliver it until the drain timeout
    /// moves it to handing back).
    pub fn is_done(&self, executor: &Executor, outbox: &Outbox, connected: bool) -> bool {
        if !executor.is_idle() {
            return false;
        }
        let delivered = outbox.unacknowledged().is_empty() && (!connected || outbox.is_empty());
        match self.phase() {
            Phase::Running => false,
            Phase::Draining => delivered,
            Phase::HandingBack(at) => !connected || delivered || at.elapsed() >= ACK_WAIT,
        }
    }

    /// Resolves once stopping has started and [`Stopping::is_done`] holds.
    pub async fn done(&mut self, executor: &Executor, outbox: &Outbox, connected: bool) {
        self.started().await;
        while !self.is_done(executor, outbox, connected) {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Resolves once the link has been down for `limit` without a break.
async fn offline_for(mut link: watch::Receiver<bool>, limit: Duration) {
    loop {
        let down = link.wait_for(|up| !*up).await.is_ok();
        if !down {
            // The executor is gone; nothing will change any more.
            return std::future::pending().await;
        }
        let back = async { link.wait_for(|up| *up).await.is_ok() };
        tokio::select! {
            _ = tokio::time::sleep(limit) => return,
            ok = back => {
                if !ok {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Moves the phases: `stop` starts stopping per `mode`, then `stop_now` or the drain timeout
/// hands back what still runs. Never returns (run it in a `select!` next to the connection).
pub async fn drive(
    phase: watch::Sender<Phase>,
    mode: StopMode,
    drain_timeout: Duration,
    executor: Executor,
    stop: impl Future<Output = ()>,
    stop_now: impl Future<Output = ()>,
) -> std::convert::Infallible {
    let mut stop_now = std::pin::pin!(stop_now);
    tokio::select! {
        _ = stop => {}
        // A hard stop before any soft one still goes through the orderly hand back.
        _ = &mut stop_now => {}
    }
    executor.drain();
    let running = executor.running().len();
    let hand_back_now = mode == StopMode::HandBack;
    if !hand_back_now {
        phase.send_replace(Phase::Draining);
        if running > 0 {
            tracing::info!(
                running,
                "stopping: finishing {running} running task(s) first (at most {} s; stop again to hand them back now)",
                drain_timeout.as_secs()
            );
        } else {
            tracing::info!("stopping");
        }
        tokio::select! {
            _ = &mut stop_now => tracing::info!("stopping now: handing back running tasks"),
            _ = tokio::time::sleep(drain_timeout) => {
                if !executor.is_idle() {
                    tracing::warn!("drain timeout reached: handing back the tasks still running");
                }
            }
            _ = offline_for(executor.link(), OFFLINE_WHILE_DRAINING) => {
                if !executor.is_idle() {
                    tracing::warn!(
                        "the server has been unreachable for {} s while stopping: handing back the tasks still running",
                        OFFLINE_WHILE_DRAINING.as_secs()
                    );
                }
            }
        }
    }
    let n = executor.hand_back_all();
    if hand_back_now && n > 0 {
        tracing::info!(
            tasks = n,
            "stopping: handed running task(s) back to the server"
        );
    }
    phase.send_replace(Phase::HandingBack(Instant::now()));
    std::future::pending().await
}

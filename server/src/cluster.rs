//! Multi-node operation (`--cluster`): several `dap-server` processes ("nodes") on one
//! PostgreSQL database, each with its own runners. This module runs a node's three background
//! loops; everything else behaves as on a single server.
//!
//! - **The feed** LISTENs on `dap_events` (the writers of all nodes NOTIFY the last event id of
//!   each commit) and reads committed events from the log in id order. It is the only publisher
//!   on this node's bus, so every node's SSE streams see every node's events, in log order,
//!   once. It also keeps the dispatcher in step with the other nodes: tasks created or requeued
//!   anywhere are offered to the runners here (the conditional assignment lets exactly one node
//!   win), tasks assigned or finished anywhere leave the local queue, and a runner that
//!   connected to another node is forgotten here. A poll of the log every second covers lost
//!   notifications; after the listener reconnects, the feed catches up from the log.
//! - **Presence** writes which runners are on this node every few seconds (`runner_presence`,
//!   stamped with the database's clock).
//! - **The sweeper** requeues the in-flight tasks of runners no node has reported for a grace
//!   period (their node died and they did not reconnect anywhere). Every node sweeps; the
//!   requeue is a conditional write, so only one wins, and it is conditional on the runner
//!   still being absent when it commits, so a runner that reconnected to some node in the
//!   meantime keeps its task (that node records the runner's presence under the writers'
//!   advisory lock before it takes the runner's tasks over).
//!
//! It places no task itself (the dispatcher does) and writes tasks only through the writer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::dispatcher::Dispatcher;
use crate::events::EventBus;
use crate::store::{now_ms, Event, Store, StoreError};

/// Events read from the log per query.
const PAGE: u32 = 1000;
/// How often the feed reads the log without being notified (lost notifications, quiet nodes).
const POLL: Duration = Duration::from_secs(1);
/// Test-only: the sweeper waits this many milliseconds between reading the orphaned tasks and
/// requeueing them, so a test can land a runner's reconnect in that window every time. Unset
/// (the default) means no wait; not a setting anyone should use.
const TEST_SWEEP_DELAY_VAR: &str = "DAP_TEST_SWEEP_DELAY_MS";

/// A new node id: a UUIDv7, so ids sort by start time.
pub fn new_node_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What the listener tells the feed.
#[derive(Debug)]
enum Signal {
    /// A transaction committed events up to this id.
    Committed(i64),
    /// The listener (re)connected; notifications may have been lost before.
    Listening,
}

/// Starts the feed, presence and sweep loops of node `node_id`. The feed publishes every event
/// with an id above `published_up_to` (the log's end when the node started). All stop on
/// `stop`.
pub fn spawn(
    store: Store,
    bus: EventBus,
    dispatcher: Arc<Dispatcher>,
    published_up_to: i64,
    grace: Duration,
    stop: watch::Receiver<bool>,
) {
    let feed = Feed {
        store: store.clone(),
        bus,
        dispatcher: dispatcher.clone(),
        published: published_up_to,
        node_id: dispatcher.node_id().unwrap_or_default().to_owned(),
    };
    tokio::spawn(feed.run(stop.clone()));
    tokio::spawn(presence(dispatcher.clone(), grace, stop.clone()));
    tokio::spawn(sweep(store, dispatcher, grace, stop));
}

/// Holds the listener connection and forwards notifications, so the feed never cancels a read
/// of it halfway.
async fn listen(store: Store, tx: mpsc::UnboundedSender<Signal>) {
    loop {
        let mut listener = match store.event_listener().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: LISTEN failed; retrying");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        if tx.send(Signal::Listening).is_err() {
            return;
        }
        loop {
            let signal = match listener.try_recv().await {
                Ok(Some(n)) => Signal::Committed(n.payload().parse().unwrap_or(i64::MAX)),
                // The connection was lost and re-established (sqlx's eager reconnect).
                Ok(None) => Signal::Listening,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: listener failed; reconnecting");
                    break;
                }
            };
            if tx.send(signal).is_err() {
                return;
            }
        }
    }
}

struct Feed {
    store: Store,
    bus: EventBus,
    dispatcher: Arc<Dispatcher>,
    /// Id of the last event published on the bus.
    published: i64,
    node_id: String,
}

impl Feed {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listener = tokio::spawn(listen(self.store.clone(), tx));
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wanted = tokio::select! {
                s = rx.recv() => match s {
                    Some(Signal::Committed(id)) => id > self.published,
                    Some(Signal::Listening) => true,
                    None => break,
                },
                _ = poll.tick() => true,
                _ = stop.wait_for(|v| *v) => break,
            };
            // Whatever else arrived meanwhile is covered by the same read.
            while rx.try_recv().is_ok() {}
            if wanted {
                if let Err(e) = self.catch_up().await {
                    tracing::warn!(error = %e, "cluster: reading the event log failed");
                }
            }
        }
        listener.abort();
    }

    /// Publishes every committed event after the last one published, in id order, and feeds
    /// them to the dispatcher.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            let page = self.store.events_after(self.published, None, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            self.published = last.id;
            let full = page.len() == PAGE as usize;
            let candidates = self.observe(&page);
            self.bus.publish_all(page);
            let tasks = self.store.queued_tasks_among(&candidates).await?;
            self.dispatcher.enqueue_loaded(&tasks).await;
            if !full {
                return Ok(());
            }
        }
    }

    /// Applies what the dispatcher must know of `page` at once; returns the ids of tasks that
    /// were created or requeued (to load, if still queued).
    fn observe(&self, page: &[Event]) -> Vec<String> {
        for e in page.iter().filter(|e| e.kind == "runner.online") {
            let Ok(data) = serde_json::from_str::<Value>(&e.json) else {
                continue;
            };
            let node = data.get("node_id").and_then(Value::as_str);
            let runner = data.get("runner_id").and_then(Value::as_str);
            let at = data.get("at").and_then(Value::as_i64).unwrap_or(i64::MAX);
            if let (Some(node), Some(runner)) = (node, runner) {
                if node != self.node_id {
                    self.dispatcher.forget_moved(runner, at);
                }
            }
        }
        self.dispatcher.observe_log(page)
    }
}

/// How often presence is refreshed and orphans are swept: several times per grace period, so
/// one slow write does not make a runner look gone.
fn refresh_every(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// Writes this node's runners to the presence table. A loop of its own, so a slow sweep never
/// delays the refresh (which would make this node's runners look gone to the others).
///
/// A node that cannot write its presence for half a grace period fences itself off
/// ([`Dispatcher::fence`]): the other nodes will count its runners as gone after a grace period
/// and requeue their tasks, so its runners are told to reconnect elsewhere first (where they
/// resume those tasks) instead of running them on, fenced, into refused results.
async fn presence(dispatcher: Arc<Dispatcher>, grace: Duration, mut stop: watch::Receiver<bool>) {
    let every = refresh_every(grace);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        // A database that does not answer counts as a failure once a refresh period is up
        // (the pool's own acquire timeout is far longer than a grace period).
        let failure = match tokio::time::timeout(every, dispatcher.write_presence()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {every:?}")),
        };
        match failure {
            None => {
                written = tokio::time::Instant::now();
                if dispatcher.is_fenced() {
                    dispatcher.unfence();
                    tracing::info!("cluster: presence written again; accepting runners");
                }
            }
            Some(e) => {
                tracing::warn!(error = %e, "cluster: writing runner presence failed");
                if !dispatcher.is_fenced() && written.elapsed() >= grace / 2 {
                    let told = dispatcher.fence();
                    tracing::error!(
                        runners = told,
                        "cluster: no presence written for half a grace period; told this \
                         node's runners to reconnect elsewhere and refusing new ones"
                    );
                }
            }
        }
    }
}

/// Requeues (or fails, on their last attempt) in-flight tasks whose runner no node has
/// reported for a grace period. The read only proposes: each requeue checks the runner's
/// absence again in its own statement (see `WriteOp::Requeue`'s `unseen`), so a runner that
/// connects anywhere between the read and the requeue keeps its task.
async fn sweep(
    store: Store,
    dispatcher: Arc<Dispatcher>,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(refresh_every(grace));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let test_delay = std::env::var(TEST_SWEEP_DELAY_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    // Presence is judged by the database's clock; a task's last update by the clock of the
    // node that wrote it (a second condition, which under clock skew only delays a sweep).
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        let updated_before = now_ms().saturating_sub(grace_ms);
        match store.orphaned_in_flight(updated_before, grace_ms).await {
            Ok(orphans) if !orphans.is_empty() => {
                for (task_id, runner_id, attempt) in &orphans {
                    tracing::warn!(
                        %task_id, %runner_id, attempt,
                        "cluster: requeueing a task whose runner no node has reported for a grace period"
                    );
                }
                if let Some(d) = test_delay {
                    tokio::time::sleep(d).await;
                }
                dispatcher.requeue_orphans(orphans).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cluster: sweeping orphaned tasks failed"),
        }
    }
}

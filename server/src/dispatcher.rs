//! The dispatcher: which runners are connected, how many slots each has free, and which tasks
//! wait for one. It decides where a task goes and pushes it down that runner's socket.
//!
//! All of its state sits behind one `std::sync::Mutex` held only for short, non-async critical
//! sections (never across an `.await`), so a slot is reserved and checked atomically and a
//! runner can never be handed more tasks than its slots, however many creates race. The store
//! stays the source of truth: every assignment is a conditional write there, and the in-memory
//! queue is only an index of what to try next. It does not parse sockets or know HTTP.
//!
//! In cluster mode (several servers on one PostgreSQL database) it still knows only the runners
//! connected to *this* node; the `cluster` feed keeps its queue in step with the shared log
//! ([`Dispatcher::observe_log`]), and a runner that connects takes over what the store says it
//! holds, whichever node assigned it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use dap_protocol::{close_code, Assignment, DatasetInfo, Hello, ServerMessage};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::store::{now_ms, Event, Outcome, Presence, Store, StoreError, Task, Unseen, WriteOp};

/// What the socket's send half is told to do.
#[derive(Debug)]
pub enum Outbound {
    Send(ServerMessage),
    Close(u16, String),
}

/// Live state of a runner as shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerState {
    /// Connected with at least one free slot.
    Idle,
    /// Connected with every slot taken.
    Busy,
    /// Connected but stopping: finishing (or handing back) what it holds, taking nothing new.
    Draining,
    Offline,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Draining => "draining",
            Self::Offline => "offline",
        }
    }
}

/// Why a task could not be placed on the runner the caller named.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Every slot is taken; these tasks are running there.
    Busy {
        name: String,
        running: Vec<String>,
    },
    /// Connected but stopping (it said `draining`); these tasks are still running there.
    Draining {
        name: String,
        running: Vec<String>,
    },
    /// Not connected to this node.
    Offline,
    UnsupportedOperation,
    DatasetNotOnRunner(String),
}

/// A task waiting for a slot.
#[derive(Debug, Clone)]
pub struct QueuedTask {
    pub task_id: String,
    pub operation_code: u16,
    pub params: Arc<Value>,
    pub dataset: Option<String>,
    pub target: Option<String>,
    /// Attempt number of the last assignment (0 if never assigned); the next is this + 1.
    pub attempt: u32,
    /// Longest an attempt may run from its assignment.
    pub timeout_s: Option<u32>,
}

impl QueuedTask {
    pub fn from_task(t: &Task) -> Self {
        Self {
            task_id: t.id.clone(),
            operation_code: t.operation_code,
            dataset: dataset_of(&t.params),
            params: Arc::new(t.params.clone()),
            target: t.target_runner_id.clone(),
            attempt: t.attempt,
            timeout_s: t.timeout_s,
        }
    }
}

/// `params.dataset` when it is a string.
pub fn dataset_of(params: &Value) -> Option<String> {
    params
        .get("dataset")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Snapshot of a connected runner for listings.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub name: String,
    pub slots: u32,
    pub running: Vec<String>,
    pub operations: Vec<u16>,
    pub datasets: Vec<DatasetInfo>,
    pub connected_at: i64,
    pub draining: bool,
}

impl LiveView {
    pub fn state(&self) -> RunnerState {
        if self.draining {
            RunnerState::Draining
        } else if self.running.len() as u32 >= self.slots {
            RunnerState::Busy
        } else {
            RunnerState::Idle
        }
    }
}

struct LiveRunner {
    conn_id: u64,
    name: String,
    slots: u32,
    operations: Vec<u16>,
    dataset_names: HashSet<String>,
    datasets: Vec<DatasetInfo>,
    /// task id → attempt
    running: HashMap<String, u32>,
    tx: mpsc::UnboundedSender<Outbound>,
    connected_at: i64,
    /// Said `draining`: gets no new tasks until it reconnects without saying so.
    draining: bool,
}

impl LiveRunner {
    fn state(&self) -> RunnerState {
        if self.draining {
            RunnerState::Draining
        } else if self.running.len() as u32 >= self.slots {
            RunnerState::Busy
        } else {
            RunnerState::Idle
        }
    }

    fn has_free_slot(&self) -> bool {
        !self.draining && (self.running.len() as u32) < self.slots
    }

    fn can_take(&self, runner_id: &str, t: &QueuedTask) -> bool {
        self.has_free_slot()
            && self.operations.contains(&t.operation_code)
            && t.dataset
                .as_ref()
                .is_none_or(|d| self.dataset_names.contains(d))
            && t.target.as_deref().is_none_or(|r| r == runner_id)
    }
}

/// What a runner whose socket ended still holds during its grace period.
struct Lingering {
    /// task id → attempt
    running: HashMap<String, u32>,
    /// Identifies this disconnection, so a stale expiry timer does nothing.
    epoch: u64,
}

#[derive(Default)]
struct State {
    runners: HashMap<String, LiveRunner>,
    /// Runners that disconnected while holding tasks and may still come back and resume them.
    lingering: HashMap<String, Lingering>,
    next_epoch: u64,
    /// Waiting tasks keyed by id. Ids are UUIDv7 (time-ordered), so iteration is oldest task
    /// first, and a requeued task gets its old place back rather than going to the end.
    queue: BTreeMap<String, QueuedTask>,
    next_conn: u64,
}

impl State {
    fn enqueue(&mut self, t: QueuedTask) {
        self.queue.entry(t.task_id.clone()).or_insert(t);
    }

    fn remove_queued(&mut self, task_id: &str) -> Option<QueuedTask> {
        self.queue.remove(task_id)
    }
}

/// A state change of a runner, emitted as a `runner.*` event in the order it happened.
#[derive(Debug)]
struct StateChange {
    runner_id: String,
    kind: &'static str,
    data: Value,
    hello: Option<String>,
}

/// How long a vanished runner may take to come back, and how often a task may be lost.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    /// A runner whose socket ended keeps its tasks this long; if it reconnects and its greeting
    /// lists them (same attempt) they resume, otherwise they are requeued.
    pub grace: std::time::Duration,
    /// A task whose runner was lost this many times fails with `runner_lost`.
    pub max_attempts: u32,
}

pub struct Dispatcher {
    state: Mutex<State>,
    store: Store,
    changes: mpsc::UnboundedSender<StateChange>,
    leases: Leases,
    /// Flips to true when the server stops: lease and timeout timers then do nothing, so a
    /// stopping server never requeues or fails what the next process will handle.
    stopped: tokio::sync::watch::Sender<bool>,
    metrics: Arc<crate::metrics::Metrics>,
    /// This node's id in cluster mode (`None`: the only server on its database).
    node_id: Option<String>,
    /// Cluster mode: held while this node writes its presence rows. A runner's registration
    /// holds it from recording the runner's presence until the runner is in the registry, so a
    /// periodic rewrite (which deletes rows of runners not in the registry) cannot take the
    /// registry before and delete the row after.
    presence_writes: tokio::sync::Mutex<()>,
    /// Cluster mode: this node has not been able to write its presence for half a grace period
    /// (it lost the database). Its runners were told to go elsewhere and new ones are refused
    /// until a presence write succeeds again.
    fenced: std::sync::atomic::AtomicBool,
}

impl Dispatcher {
    /// A dispatcher for the only server on its database (`node_id` `None`) or for cluster node
    /// `node_id`.
    pub fn new(
        store: Store,
        metrics: Arc<crate::metrics::Metrics>,
        leases: Leases,
        node_id: Option<String>,
    ) -> Arc<Self> {
        let (changes, rx) = mpsc::unbounded_channel();
        let d = Arc::new(Self {
            state: Mutex::default(),
            store: store.clone(),
            changes,
            leases,
            stopped: tokio::sync::watch::channel(false).0,
            metrics,
            node_id,
            presence_writes: tokio::sync::Mutex::new(()),
            fenced: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(emit_state_changes(store, rx));
        d
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way later
        // callers can't cope with (each critical section is a few map operations), so recover.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's id in cluster mode.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// Rebuilds state from the store at start-up: the queue, and the tasks runners were holding
    /// when the previous process stopped (each runner gets its grace period to resume them).
    /// Returns (queued, in flight).
    ///
    /// A cluster node loads the queue only: in-flight tasks belong to runners that may be
    /// connected to other nodes; whichever node such a runner connects to takes them over, and
    /// those of runners no node reports are requeued by the cluster's sweeper.
    pub async fn load(self: &Arc<Self>) -> Result<(usize, usize), crate::store::StoreError> {
        let tasks = self.store.queued_tasks().await?;
        if self.node_id.is_some() {
            let mut st = self.lock();
            for t in &tasks {
                st.enqueue(QueuedTask::from_task(t));
            }
            return Ok((tasks.len(), 0));
        }
        let in_flight = self.store.in_flight_tasks().await?;
        let mut epochs = Vec::new();
        {
            let mut st = self.lock();
            for t in &tasks {
                st.enqueue(QueuedTask::from_task(t));
            }
            for (task, runner, attempt) in &in_flight {
                if !st.lingering.contains_key(runner) {
                    st.next_epoch += 1;
                    let epoch = st.next_epoch;
                    st.lingering.insert(
                        runner.clone(),
                        Lingering {
                            running: HashMap::new(),
                            epoch,
                        },
                    );
                    epochs.push((runner.clone(), epoch));
                }
                if let Some(l) = st.lingering.get_mut(runner) {
                    l.running.insert(task.clone(), *attempt);
                }
            }
        }
        for (runner, epoch) in epochs {
            self.schedule_expiry(runner, epoch);
        }
        // Timers of in-flight attempts resume with the time they had left (none if overdue).
        let now = now_ms();
        for (task, attempt, assigned_at, timeout_s) in self.store.timed_in_flight().await? {
            let due = assigned_at.saturating_add(i64::from(timeout_s) * 1000);
            let left = std::time::Duration::from_millis(due.saturating_sub(now).max(0) as u64);
            self.arm_timer(task, attempt, left);
        }
        Ok((tasks.len(), in_flight.len()))
    }

    /// Stops every lease and timeout timer (the server is shutting down).
    pub fn stop_timers(&self) {
        self.stopped.send_replace(true);
    }

    /// Sleeps `after`; false if the server stopped meanwhile.
    async fn sleep_unless_stopped(&self, after: std::time::Duration) -> bool {
        let mut stopped = self.stopped.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(after) => !*self.stopped.borrow(),
            _ = stopped.wait_for(|v| *v) => false,
        }
    }

    fn schedule_expiry(self: &Arc<Self>, runner_id: String, epoch: u64) {
        let me = Arc::clone(self);
        let grace = self.leases.grace;
        tokio::spawn(async move {
            if me.sleep_unless_stopped(grace).await {
                me.expire(&runner_id, epoch).await;
            }
        });
    }

    /// The grace period of a vanished runner ran out: requeue (or fail) what it held.
    async fn expire(self: &Arc<Self>, runner_id: &str, epoch: u64) {
        let tasks: Vec<(String, u32)> = {
            let mut st = self.lock();
            match st.lingering.get(runner_id) {
                Some(l) if l.epoch == epoch => {}
                _ => return,
            }
            let l = st.lingering.remove(runner_id).expect("checked above");
            let mut v: Vec<_> = l.running.into_iter().collect();
            v.sort();
            v
        };
        if !tasks.is_empty() && self.connected_elsewhere(runner_id).await {
            // It came back on another node, which took its tasks over.
            tracing::info!(%runner_id, "runner moved to another node; its tasks are that node's now");
            return;
        }
        if !tasks.is_empty() {
            tracing::warn!(%runner_id, tasks = tasks.len(), "runner did not come back within its grace period");
        }
        // In a cluster the runner may connect to another node between that read and the
        // requeue: the requeue itself checks that no other node has reported it meanwhile.
        let unseen = self.node_id.as_ref().map(|node| Unseen {
            for_ms: self.grace_ms(),
            except_node: Some(node.clone()),
        });
        self.requeue_with(
            runner_id,
            tasks,
            "runner_lost",
            Some(self.leases.max_attempts),
            unseen,
        )
        .await;
        self.pump_all().await;
    }

    /// Starts the timeout of attempt `attempt` of `task_id` (just assigned), if it has one.
    pub fn arm_timeout(self: &Arc<Self>, task_id: &str, attempt: u32, timeout_s: Option<u32>) {
        if let Some(t) = timeout_s {
            let after = std::time::Duration::from_secs(u64::from(t));
            self.arm_timer(task_id.to_owned(), attempt, after);
        }
    }

    fn arm_timer(self: &Arc<Self>, task_id: String, attempt: u32, after: std::time::Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if me.sleep_unless_stopped(after).await {
                me.time_out(&task_id, attempt).await;
            }
        });
    }

    /// Attempt `attempt` of `task_id` ran past its timeout: its lease ends now. The runner (if
    /// connected) is told to stop it, its slot is freed, and the task is requeued (attempt + 1,
    /// reason `timeout`) or, on its last attempt, failed with error code `timeout`. Does nothing
    /// if that attempt already finished or was superseded.
    async fn time_out(self: &Arc<Self>, task_id: &str, attempt: u32) {
        let (runner_id, became_idle) = {
            let mut st = self.lock();
            let live = st
                .runners
                .iter_mut()
                .find(|(_, r)| r.running.get(task_id) == Some(&attempt));
            if let Some((id, r)) = live {
                let was = r.state();
                r.running.remove(task_id);
                let _ = r.tx.send(Outbound::Send(ServerMessage::Cancel {
                    task_id: task_id.to_owned(),
                    attempt,
                }));
                (Some(id.clone()), was == RunnerState::Busy)
            } else {
                let gone = st
                    .lingering
                    .iter_mut()
                    .find(|(_, l)| l.running.get(task_id) == Some(&attempt));
                match gone {
                    Some((id, l)) => {
                        l.running.remove(task_id);
                        (Some(id.clone()), false)
                    }
                    None => (None, false),
                }
            }
        };
        let Some(runner_id) = runner_id else { return };
        tracing::warn!(%task_id, attempt, %runner_id, "attempt exceeded its timeout");
        if became_idle {
            self.emit(&runner_id, "runner.idle", RunnerState::Idle);
        }
        let op = WriteOp::Requeue {
            task_id: task_id.to_owned(),
            runner_id: runner_id.clone(),
            attempt,
            reason: "timeout",
            max_attempts: Some(self.leases.max_attempts),
            fail_code: "timeout",
            unseen: None,
        };
        match self.store.write(op).await {
            Ok(Outcome::Applied(true)) => {
                if let Ok(Some(t)) = self.store.get_task(task_id).await {
                    self.lock().enqueue(QueuedTask::from_task(&t));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, %task_id, "timeout requeue failed"),
        }
        self.pump_all().await;
    }

    /// Reserves a slot for a new task (attempt 1). `Ok(None)`: no runner can take it now.
    pub fn reserve_new(&self, t: &QueuedTask) -> Result<Option<String>, Refusal> {
        let mut st = self.lock();
        if let Some(target) = t.target.as_deref() {
            let r = st.runners.get_mut(target).ok_or(Refusal::Offline)?;
            if !r.operations.contains(&t.operation_code) {
                return Err(Refusal::UnsupportedOperation);
            }
            if let Some(d) = &t.dataset {
                if !r.dataset_names.contains(d) {
                    return Err(Refusal::DatasetNotOnRunner(d.clone()));
                }
            }
            if r.draining {
                let mut running: Vec<String> = r.running.keys().cloned().collect();
                running.sort();
                return Err(Refusal::Draining {
                    name: r.name.clone(),
                    running,
                });
            }
            if r.running.len() as u32 >= r.slots {
                let mut running: Vec<String> = r.running.keys().cloned().collect();
                running.sort();
                return Err(Refusal::Busy {
                    name: r.name.clone(),
                    running,
                });
            }
            r.running.insert(t.task_id.clone(), 1);
            let change = (r.state() == RunnerState::Busy).then(|| target.to_owned());
            drop(st);
            if let Some(id) = change {
                self.emit(&id, "runner.busy", RunnerState::Busy);
            }
            return Ok(Some(target.to_owned()));
        }
        // Least-loaded runner first, so work spreads over runners instead of piling on one.
        let best = st
            .runners
            .iter()
            .filter(|(id, r)| r.can_take(id, t))
            .min_by(|(ia, a), (ib, b)| {
                let la = a.running.len() as f64 / a.slots as f64;
                let lb = b.running.len() as f64 / b.slots as f64;
                la.total_cmp(&lb).then_with(|| ia.cmp(ib))
            })
            .map(|(id, _)| id.clone());
        let Some(id) = best else { return Ok(None) };
        let r = st.runners.get_mut(&id).expect("chosen from the map");
        r.running.insert(t.task_id.clone(), 1);
        let busy = r.state() == RunnerState::Busy;
        drop(st);
        if busy {
            self.emit(&id, "runner.busy", RunnerState::Busy);
        }
        Ok(Some(id))
    }

    /// Sends an assignment the runner holds a reservation for. False if the runner is gone
    /// (or no longer holds that attempt): the caller must requeue the task.
    pub fn push(&self, runner_id: &str, a: Assignment) -> bool {
        let st = self.lock();
        match st.runners.get(runner_id) {
            Some(r) if r.running.get(&a.task_id) == Some(&a.attempt) => {
                r.tx.send(Outbound::Send(ServerMessage::Assign(a))).is_ok()
            }
            _ => false,
        }
    }

    /// Puts a task in the queue and offers it to every runner with a free slot.
    pub async fn enqueue(self: &Arc<Self>, t: QueuedTask) {
        self.lock().enqueue(t);
        self.pump_all().await;
    }

    /// Takes a task out of the queue (cancelled). True if it was there.
    pub fn remove_queued(&self, task_id: &str) -> bool {
        self.lock().remove_queued(task_id).is_some()
    }

    /// Frees the slot `runner_id` holds for `task_id` at `attempt`, then fills free slots.
    pub async fn release(self: &Arc<Self>, runner_id: &str, task_id: &str, attempt: u32) {
        let freed = {
            let mut st = self.lock();
            match st.runners.get_mut(runner_id) {
                Some(r) if r.running.get(task_id) == Some(&attempt) => {
                    let was = r.state();
                    r.running.remove(task_id);
                    Some(was == RunnerState::Busy)
                }
                _ => None,
            }
        };
        if freed == Some(true) {
            self.emit(runner_id, "runner.idle", RunnerState::Idle);
        }
        if freed.is_some() {
            self.pump(runner_id).await;
        }
    }

    /// True if `runner_id` holds `task_id` at `attempt` (the fence for runner messages).
    pub fn holds(&self, runner_id: &str, task_id: &str, attempt: u32) -> bool {
        self.lock()
            .runners
            .get(runner_id)
            .is_some_and(|r| r.running.get(task_id) == Some(&attempt))
    }

    /// True if `runner_id` holds `task_id` at `attempt`, connected or within its grace period
    /// (uploads travel over HTTP and may arrive while the socket is reconnecting).
    pub fn leases(&self, runner_id: &str, task_id: &str, attempt: u32) -> bool {
        let st = self.lock();
        st.runners
            .get(runner_id)
            .is_some_and(|r| r.running.get(task_id) == Some(&attempt))
            || st
                .lingering
                .get(runner_id)
                .is_some_and(|l| l.running.get(task_id) == Some(&attempt))
    }

    /// The runner said it is stopping: it gets no new tasks on this connection (a targeted
    /// create is refused with [`Refusal::Draining`]); what it holds stays leased to it.
    pub fn drain(&self, runner_id: &str) {
        let changed = {
            let mut st = self.lock();
            match st.runners.get_mut(runner_id) {
                Some(r) if !r.draining => {
                    r.draining = true;
                    true
                }
                _ => false,
            }
        };
        if changed {
            tracing::info!(%runner_id, "runner is draining");
            self.emit(runner_id, "runner.draining", RunnerState::Draining);
        }
    }

    /// The runner gave `attempt` of `task_id` back unfinished: its lease ends now and the task
    /// is requeued (attempt + 1) for another runner without waiting for a grace period. A hand
    /// back is orderly, not a loss, so it never fails the task on `max_attempts`. False if the
    /// runner did not hold that attempt (nothing changes).
    ///
    /// Only a stopping runner hands back, so the runner counts as draining from here on, in the
    /// same lock that frees its slot: the requeued task can never be pushed straight back to it,
    /// even when its hand back overtakes its `draining` message.
    pub async fn hand_back(self: &Arc<Self>, runner_id: &str, task_id: &str, attempt: u32) -> bool {
        let (held, now_draining) = {
            let mut st = self.lock();
            match st.runners.get_mut(runner_id) {
                Some(r) if r.running.get(task_id) == Some(&attempt) => {
                    r.running.remove(task_id);
                    let was = std::mem::replace(&mut r.draining, true);
                    (true, !was)
                }
                _ => (false, false),
            }
        };
        if now_draining {
            tracing::info!(%runner_id, "runner is draining (it handed a task back)");
            self.emit(runner_id, "runner.draining", RunnerState::Draining);
        }
        if held {
            tracing::info!(%runner_id, %task_id, attempt, "task handed back");
            self.requeue(
                runner_id,
                vec![(task_id.to_owned(), attempt)],
                "handed_back",
            )
            .await;
            self.pump_all().await;
        }
        held
    }

    /// Asks the runner to stop a task.
    pub fn cancel_on_runner(&self, runner_id: &str, task_id: &str, attempt: u32) {
        if let Some(r) = self.lock().runners.get(runner_id) {
            let _ = r.tx.send(Outbound::Send(ServerMessage::Cancel {
                task_id: task_id.to_owned(),
                attempt,
            }));
        }
    }

    /// Closes a runner's live socket (revocation). True if it was connected.
    /// Cluster mode: whether this node is fenced off (see [`Self::fence`]).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cluster mode: this node lost the database (its presence has not been written for half a
    /// grace period, so other nodes will soon count its runners as gone and requeue their
    /// tasks). Tells every connected runner to reconnect — to another node, behind a load
    /// balancer — with [`close_code::UNAVAILABLE`], and refuses new runner connections until
    /// [`Self::unfence`]. Returns how many runners were told.
    pub fn fence(&self) -> usize {
        self.fenced
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let st = self.lock();
        st.runners
            .values()
            .filter(|r| {
                r.tx.send(Outbound::Close(
                    close_code::UNAVAILABLE,
                    "this node lost its database; reconnect (to another node)".to_owned(),
                ))
                .is_ok()
            })
            .count()
    }

    /// Cluster mode: presence writes succeed again; runners may connect here again.
    pub fn unfence(&self) {
        self.fenced
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn close_runner(&self, runner_id: &str, code: u16, reason: &str) -> bool {
        match self.lock().runners.get(runner_id) {
            Some(r) => r.tx.send(Outbound::Close(code, reason.to_owned())).is_ok(),
            None => false,
        }
    }

    /// Registers a runner after its greeting. Returns the connection id (to unregister with).
    ///
    /// What the server still counts as held by this runner — from a previous connection that
    /// is being replaced, or one that ended within the grace period — resumes if the greeting
    /// lists it with the same attempt, and is requeued otherwise (the runner lost it). Tasks the
    /// greeting lists that the server no longer holds for it are cancelled on the runner: their
    /// attempt is superseded and its results would be refused anyway.
    ///
    /// A cluster node first records the runner's presence here, then also takes over what the
    /// store says the runner holds (assigned by any node, e.g. one that died), so a runner
    /// that moves between nodes resumes its tasks like one that reconnects to the same node.
    pub async fn register(
        self: &Arc<Self>,
        runner_id: &str,
        hello: &Hello,
        tx: mpsc::UnboundedSender<Outbound>,
    ) -> u64 {
        let mut from_store = Vec::new();
        // Held until the runner is in the registry (see `presence_writes`).
        let mut presence_order = None;
        if let Some(node) = &self.node_id {
            presence_order = Some(self.presence_writes.lock().await);
            let here = Presence {
                runner_id: runner_id.to_owned(),
                node_id: node.clone(),
                slots: hello.slots,
                running: hello.running.len() as u32,
                draining: false,
                connected: true,
            };
            // Presence first, committed under the writers' lock, then the read: a sweep's (or
            // another node's grace expiry's) requeue of the runner's tasks either committed
            // before the presence, and the read sees those tasks requeued (the runner is told
            // to stop them), or it runs after and finds the runner present (no change). Without
            // the presence nothing is taken over: the runner is told to stop what it lists.
            match self.store.upsert_presence(&here).await {
                Ok(()) => match self.store.runner_in_flight(runner_id).await {
                    Ok(v) => from_store = v,
                    Err(e) => {
                        tracing::error!(error = %e, %runner_id, "reading the runner's in-flight tasks failed")
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, %runner_id, "recording runner presence failed; nothing taken over")
                }
            }
        }
        let (conn_id, orphans, state, resumed, rearm) = {
            let mut st = self.lock();
            st.next_conn += 1;
            let conn_id = st.next_conn;
            let mut held: HashMap<String, u32> = HashMap::new();
            // Attempts the store knows of that this node did not hold: their timeout timers
            // run on the node that assigned them (or died with it), so they are re-armed here.
            let mut known_here: HashSet<(String, u32)> = HashSet::new();
            if let Some(old) = st.runners.remove(runner_id) {
                let _ = old.tx.send(Outbound::Close(
                    close_code::REPLACED,
                    "replaced by a newer connection".into(),
                ));
                held.extend(old.running);
            }
            if let Some(l) = st.lingering.remove(runner_id) {
                held.extend(l.running);
            }
            known_here.extend(held.iter().map(|(t, a)| (t.clone(), *a)));
            for (task, attempt, _, _) in &from_store {
                let a = held.entry(task.clone()).or_insert(*attempt);
                *a = (*a).max(*attempt);
            }
            let mut running = HashMap::new();
            let mut orphans = Vec::new();
            for (task, attempt) in held {
                if hello
                    .running
                    .iter()
                    .any(|t| t.task_id == task && t.attempt == attempt)
                {
                    running.insert(task, attempt);
                } else {
                    orphans.push((task, attempt));
                }
            }
            for t in &hello.running {
                if running.get(&t.task_id) != Some(&t.attempt) {
                    let _ = tx.send(Outbound::Send(ServerMessage::Cancel {
                        task_id: t.task_id.clone(),
                        attempt: t.attempt,
                    }));
                }
            }
            let resumed = running.len();
            let r = LiveRunner {
                conn_id,
                name: hello.name.clone(),
                slots: hello.slots,
                operations: hello.operations.clone(),
                dataset_names: hello.datasets.iter().map(|d| d.name.clone()).collect(),
                datasets: hello.datasets.clone(),
                running,
                tx,
                connected_at: now_ms(),
                draining: false,
            };
            let rearm: Vec<_> = from_store
                .into_iter()
                .filter(|(t, a, _, _)| {
                    r.running.get(t) == Some(a) && !known_here.contains(&(t.clone(), *a))
                })
                .collect();
            let state = r.state();
            st.runners.insert(runner_id.to_owned(), r);
            (conn_id, orphans, state, resumed, rearm)
        };
        drop(presence_order);
        if resumed > 0 {
            tracing::info!(%runner_id, resumed, "runner resumed its tasks");
        }
        let now = now_ms();
        for (task, attempt, assigned_at, timeout_s) in rearm {
            if let (Some(at), Some(t)) = (assigned_at, timeout_s) {
                let due = at.saturating_add(i64::from(t) * 1000);
                let left = std::time::Duration::from_millis(due.saturating_sub(now).max(0) as u64);
                self.arm_timer(task, attempt, left);
            }
        }
        let hello_json = serde_json::to_string(hello).ok();
        let mut data = json!({ "runner_id": runner_id, "state": state.as_str(), "name": hello.name,
                               "slots": hello.slots, "resumed_tasks": resumed });
        if let Some(node) = &self.node_id {
            // Tells the other nodes which one the runner is on now (see `forget_moved`).
            data["node_id"] = Value::from(node.as_str());
        }
        let _ = self.changes.send(StateChange {
            runner_id: runner_id.to_owned(),
            kind: "runner.online",
            data,
            hello: hello_json,
        });
        self.requeue_lost(runner_id, orphans, "runner_lost_task")
            .await;
        self.pump_all().await;
        conn_id
    }

    /// Removes a runner whose connection `conn_id` ended. What it held stays reserved for the
    /// grace period (it may reconnect and resume); after that it is requeued.
    pub async fn unregister(self: &Arc<Self>, runner_id: &str, conn_id: u64) {
        let epoch = {
            let mut st = self.lock();
            match st.runners.get(runner_id) {
                Some(r) if r.conn_id == conn_id => {}
                _ => return,
            }
            let r = st.runners.remove(runner_id).expect("checked above");
            if r.running.is_empty() {
                None
            } else {
                st.next_epoch += 1;
                let epoch = st.next_epoch;
                st.lingering.insert(
                    runner_id.to_owned(),
                    Lingering {
                        running: r.running,
                        epoch,
                    },
                );
                Some(epoch)
            }
        };
        self.emit(runner_id, "runner.offline", RunnerState::Offline);
        if let Some(epoch) = epoch {
            self.schedule_expiry(runner_id.to_owned(), epoch);
        }
    }

    /// Requeues attempts a runner lost, failing with `runner_lost` those that were the last
    /// allowed attempt.
    async fn requeue_lost(
        self: &Arc<Self>,
        runner_id: &str,
        tasks: Vec<(String, u32)>,
        reason: &'static str,
    ) {
        self.requeue_with(
            runner_id,
            tasks,
            reason,
            Some(self.leases.max_attempts),
            None,
        )
        .await
    }

    /// Puts tasks a runner held back in the queue (store first, then memory). Used when a task
    /// never reached the runner, so it does not count against `max_attempts`.
    pub async fn requeue(
        self: &Arc<Self>,
        runner_id: &str,
        tasks: Vec<(String, u32)>,
        reason: &'static str,
    ) {
        self.requeue_with(runner_id, tasks, reason, None, None)
            .await
    }

    async fn requeue_with(
        self: &Arc<Self>,
        runner_id: &str,
        tasks: Vec<(String, u32)>,
        reason: &'static str,
        max_attempts: Option<u32>,
        unseen: Option<Unseen>,
    ) {
        for (task_id, attempt) in tasks {
            let op = WriteOp::Requeue {
                task_id: task_id.clone(),
                runner_id: runner_id.to_owned(),
                attempt,
                reason,
                max_attempts,
                fail_code: "runner_lost",
                unseen: unseen.clone(),
            };
            match self.store.write(op).await {
                Ok(Outcome::Applied(true)) => {
                    if let Ok(Some(t)) = self.store.get_task(&task_id).await {
                        self.lock().enqueue(QueuedTask::from_task(&t));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, %task_id, "requeue failed"),
            }
        }
    }

    /// What another cluster node last reported about `runner_id` connected there (within a
    /// grace period); `None` for the only server on its database, or when no other node has it.
    pub async fn elsewhere(&self, runner_id: &str) -> Option<Presence> {
        let node = self.node_id.as_ref()?;
        match self.store.runner_presence(runner_id, self.grace_ms()).await {
            Ok(rows) => rows.into_iter().find(|p| p.connected && p.node_id != *node),
            Err(e) => {
                tracing::warn!(error = %e, %runner_id, "reading runner presence failed");
                None
            }
        }
    }

    async fn connected_elsewhere(&self, runner_id: &str) -> bool {
        self.elsewhere(runner_id).await.is_some()
    }

    /// Cluster mode: `runner_id` connected to another node at `at` (epoch ms), and that node
    /// took over what it holds. This node forgets it without requeueing anything: a link
    /// registered here before then is closed as replaced, a grace period running here ends. A
    /// link registered here after `at` is the newer one and stays.
    pub fn forget_moved(&self, runner_id: &str, at: i64) {
        let mut st = self.lock();
        if st
            .runners
            .get(runner_id)
            .is_some_and(|r| r.connected_at <= at)
        {
            let old = st.runners.remove(runner_id).expect("checked above");
            let _ = old.tx.send(Outbound::Close(
                close_code::REPLACED,
                "replaced by a connection to another node".into(),
            ));
            tracing::info!(%runner_id, "runner moved to another node");
        }
        if !st.runners.contains_key(runner_id) {
            st.lingering.remove(runner_id);
        }
    }

    /// Cluster mode: brings the queue in step with committed events (in log order, from any
    /// node). Tasks that were assigned or finished leave the queue; a task cancelled through any
    /// node is stopped on its runner if that runner is connected here; returns the ids of tasks
    /// that were created or requeued, which the caller loads (if still queued) with
    /// [`enqueue_loaded`](Self::enqueue_loaded).
    pub fn observe_log(&self, events: &[Event]) -> Vec<String> {
        // The last event of each task in this page decides.
        let mut last: HashMap<&str, &str> = HashMap::new();
        for e in events {
            if let Some(t) = e.task_id.as_deref() {
                last.insert(t, e.kind.as_str());
            }
            if e.kind == "task.cancelled" {
                self.cancel_from_log(e);
            }
        }
        let mut candidates = Vec::new();
        let mut st = self.lock();
        for (task, kind) in last {
            match kind {
                "task.created" | "task.requeued" => candidates.push(task.to_owned()),
                "task.assigned" | "task.completed" | "task.failed" | "task.cancelled" => {
                    st.remove_queued(task);
                }
                _ => {}
            }
        }
        candidates.sort();
        candidates
    }

    /// A `task.cancelled` event names the runner and attempt it was cancelled on: tell that
    /// runner to stop, when it is connected here and still holds the attempt (the node that
    /// took the cancel request may be another one). Repeating a cancel the runner already got
    /// is harmless.
    fn cancel_from_log(&self, e: &Event) {
        let Ok(data) = serde_json::from_str::<Value>(&e.json) else {
            return;
        };
        let (Some(task), Some(runner), Some(attempt)) = (
            e.task_id.as_deref(),
            data.get("runner_id").and_then(Value::as_str),
            data.get("attempt")
                .and_then(Value::as_u64)
                .and_then(|a| u32::try_from(a).ok()),
        ) else {
            return;
        };
        let st = self.lock();
        if let Some(r) = st.runners.get(runner) {
            if r.running.get(task) == Some(&attempt) {
                let _ = r.tx.send(Outbound::Send(ServerMessage::Cancel {
                    task_id: task.to_owned(),
                    attempt,
                }));
            }
        }
    }

    /// Cluster mode: puts tasks another node created or requeued into this node's queue and
    /// offers them to its runners (whichever node's assignment commits first wins).
    pub async fn enqueue_loaded(self: &Arc<Self>, tasks: &[Task]) {
        if tasks.is_empty() {
            return;
        }
        {
            let mut st = self.lock();
            // Tasks a runner here holds are not queued, whatever the read said a moment ago.
            let held: HashSet<&str> = st
                .runners
                .values()
                .flat_map(|r| r.running.keys())
                .chain(st.lingering.values().flat_map(|l| l.running.keys()))
                .map(String::as_str)
                .collect();
            let fresh: Vec<QueuedTask> = tasks
                .iter()
                .filter(|t| !held.contains(t.id.as_str()))
                .map(QueuedTask::from_task)
                .collect();
            for t in fresh {
                st.enqueue(t);
            }
        }
        self.pump_all().await;
    }

    /// Cluster mode: requeues (or fails, on their last attempt) `(task, runner, attempt)`s that
    /// no node looks after any more, then fills free slots. Conditional, like every requeue:
    /// if another node did it first, nothing happens here; and conditional on the runner
    /// being still unseen by every node when the requeue runs, so a runner that connected to
    /// a node since the sweep read its tasks keeps them (see [`Unseen`]).
    pub async fn requeue_orphans(self: &Arc<Self>, tasks: Vec<(String, String, u32)>) {
        let unseen = Unseen {
            for_ms: self.grace_ms(),
            except_node: None,
        };
        for (task, runner, attempt) in tasks {
            self.requeue_with(
                &runner,
                vec![(task, attempt)],
                "runner_lost",
                Some(self.leases.max_attempts),
                Some(unseen.clone()),
            )
            .await;
        }
        self.pump_all().await;
    }

    /// The grace period in milliseconds.
    fn grace_ms(&self) -> i64 {
        i64::try_from(self.leases.grace.as_millis()).unwrap_or(i64::MAX)
    }

    /// Cluster mode: rewrites this node's rows of the shared presence table from its registry
    /// (runners connected or in their grace period here).
    pub async fn write_presence(&self) -> Result<(), StoreError> {
        let Some(node) = &self.node_id else {
            return Ok(());
        };
        let _order = self.presence_writes.lock().await;
        self.store.set_presence(node, &self.presence()).await
    }

    /// The presence rows of this node's runners.
    fn presence(&self) -> Vec<Presence> {
        let node = self.node_id.clone().unwrap_or_default();
        let st = self.lock();
        let live = st.runners.iter().map(|(id, r)| Presence {
            runner_id: id.clone(),
            node_id: node.clone(),
            slots: r.slots,
            running: r.running.len() as u32,
            draining: r.draining,
            connected: true,
        });
        let gone = st
            .lingering
            .iter()
            .filter(|(id, _)| !st.runners.contains_key(*id))
            .map(|(id, l)| Presence {
                runner_id: id.clone(),
                node_id: node.clone(),
                slots: 0,
                running: l.running.len() as u32,
                draining: false,
                connected: false,
            });
        live.chain(gone).collect()
    }

    /// Fills every runner's free slots from the queue.
    pub async fn pump_all(self: &Arc<Self>) {
        let ids: Vec<String> = {
            let st = self.lock();
            if st.queue.is_empty() {
                return;
            }
            st.runners
                .iter()
                .filter(|(_, r)| r.has_free_slot())
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in ids {
            self.pump(&id).await;
        }
    }

    /// Fills `runner_id`'s free slots with the oldest queued tasks it can run.
    pub async fn pump(self: &Arc<Self>, runner_id: &str) {
        loop {
            let picked = {
                let mut st = self.lock();
                let st = &mut *st;
                let Some(r) = st.runners.get_mut(runner_id) else {
                    return;
                };
                let mut picked = Vec::new();
                let mut taken = Vec::new();
                for (key, t) in st.queue.iter() {
                    if r.running.len() as u32 >= r.slots {
                        break;
                    }
                    if r.running.contains_key(&t.task_id) {
                        // A stale entry of a task this runner already holds (cluster mode: the
                        // feed can load a task again just before its assignment commits).
                        // Reserving it twice would let the losing reservation's cleanup drop
                        // the winning one.
                        taken.push(key.clone());
                        continue;
                    }
                    if !r.can_take(runner_id, t) {
                        continue;
                    }
                    let attempt = t.attempt + 1;
                    r.running.insert(t.task_id.clone(), attempt);
                    picked.push((t.clone(), attempt));
                    taken.push(key.clone());
                }
                for o in taken {
                    st.queue.remove(&o);
                }
                let busy = !picked.is_empty() && r.state() == RunnerState::Busy;
                (picked, busy)
            };
            let (picked, busy) = picked;
            if picked.is_empty() {
                return;
            }
            if busy {
                self.emit(runner_id, "runner.busy", RunnerState::Busy);
            }
            let mut retry = false;
            let mut failed = false;
            // Queue every assignment before waiting for any: they commit together.
            let mut pending = Vec::with_capacity(picked.len());
            for (t, attempt) in picked {
                let op = WriteOp::Assign {
                    task_id: t.task_id.clone(),
                    runner_id: runner_id.to_owned(),
                    attempt,
                };
                pending.push((t, attempt, self.store.writer().enqueue(op).await));
            }
            for (t, attempt, reply) in pending {
                let outcome = match reply {
                    Ok(rx) => rx.await.unwrap_or(Err(StoreError::WriterGone)),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(Outcome::Applied(true)) => {
                        let a = Assignment {
                            task_id: t.task_id.clone(),
                            attempt,
                            operation_code: t.operation_code,
                            params: (*t.params).clone(),
                        };
                        self.arm_timeout(&t.task_id, attempt, t.timeout_s);
                        let pushed = self.push(runner_id, a);
                        if pushed && attempt == 1 {
                            self.metrics.observe_dispatch_of_queued(&t.task_id);
                        }
                        if !pushed {
                            // The runner went away between pick and push; its unregister
                            // requeues what it held, but this task was not yet in the store
                            // as assigned when that ran, so requeue it here.
                            self.requeue(
                                runner_id,
                                vec![(t.task_id, attempt)],
                                "runner_disconnected",
                            )
                            .await;
                        }
                    }
                    Ok(_) => {
                        // Cancelled or otherwise taken meanwhile: give the slot back and look again.
                        self.drop_reservation(runner_id, &t.task_id, attempt);
                        retry = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, task_id = %t.task_id, "assign failed");
                        self.drop_reservation(runner_id, &t.task_id, attempt);
                        self.lock().enqueue(t);
                        failed = true;
                    }
                }
            }
            if failed || !retry {
                return;
            }
        }
    }

    /// Forgets a reservation without pumping (the caller decides what to do next).
    pub fn drop_reservation(&self, runner_id: &str, task_id: &str, attempt: u32) {
        let became_idle = {
            let mut st = self.lock();
            match st.runners.get_mut(runner_id) {
                Some(r) if r.running.get(task_id) == Some(&attempt) => {
                    let was = r.state();
                    r.running.remove(task_id);
                    was == RunnerState::Busy
                }
                _ => false,
            }
        };
        if became_idle {
            self.emit(runner_id, "runner.idle", RunnerState::Idle);
        }
    }

    fn emit(&self, runner_id: &str, kind: &'static str, state: RunnerState) {
        let _ = self.changes.send(StateChange {
            runner_id: runner_id.to_owned(),
            kind,
            data: json!({ "runner_id": runner_id, "state": state.as_str() }),
            hello: None,
        });
    }

    /// Live view of one runner, or `None` when it is not connected.
    pub fn live(&self, runner_id: &str) -> Option<LiveView> {
        self.lock().runners.get(runner_id).map(|r| {
            let mut running: Vec<String> = r.running.keys().cloned().collect();
            running.sort();
            LiveView {
                name: r.name.clone(),
                slots: r.slots,
                running,
                operations: r.operations.clone(),
                datasets: r.datasets.clone(),
                connected_at: r.connected_at,
                draining: r.draining,
            }
        })
    }

    pub fn connected_runners(&self) -> usize {
        self.lock().runners.len()
    }

    pub fn queue_depth(&self) -> usize {
        self.lock().queue.len()
    }
}

/// Writes runner state changes as events, one at a time and in order. When changes pile up
/// (a 1-slot runner flipping busy/idle thousands of times a second) only each runner's latest
/// state is written, so the event log records states, not every flap.
async fn emit_state_changes(store: Store, mut rx: mpsc::UnboundedReceiver<StateChange>) {
    let mut last: HashMap<String, &'static str> = HashMap::new();
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        // Collapse busy/idle flaps within the batch: keep online/offline, and for busy/idle
        // only the last one per runner.
        let mut latest: HashMap<String, usize> = HashMap::new();
        for (i, c) in batch.iter().enumerate() {
            if matches!(c.kind, "runner.busy" | "runner.idle") {
                latest.insert(c.runner_id.clone(), i);
            }
        }
        for (i, c) in batch.drain(..).enumerate() {
            let flap = matches!(c.kind, "runner.busy" | "runner.idle");
            if flap && latest.get(&c.runner_id) != Some(&i) {
                continue;
            }
            if flap && last.get(&c.runner_id) == Some(&c.kind) {
                continue;
            }
            last.insert(c.runner_id.clone(), c.kind);
            let op = WriteOp::RunnerState {
                runner_id: c.runner_id,
                kind: c.kind,
                data: c.data,
                hello: c.hello,
            };
            if let Err(e) = store.write(op).await {
                tracing::error!(error = %e, "recording runner state failed");
            }
        }
    }
}
